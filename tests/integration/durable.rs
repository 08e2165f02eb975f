//! `--data-dir`: nothing accepted is lost. A control plane killed with SIGKILL under load
//! and started again on the same directory finishes every task it had accepted, with
//! each task's own result, and still answers for results it had; Ctrl+C keeps queued
//! tasks for the next start; a resent submission is the same task; a data directory
//! of a newer schema is refused naming both versions; a full disk refuses new tasks
//! clearly and loses none it had.

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use fastworker_client::{decode_value, Client};
use fastworker_protocol::{Codec, TaskEnvelope, TaskId, TaskRecord, TaskStatus};
use serde_json::json;
use tokio::runtime::Runtime;

use crate::{
    procs::{
        connect, control_plane_args, free_address, free_port, mytasks_dir, runtime, Proc, STARTUP,
    },
    support::{client_config, TestDir},
};

const RESULT_WAIT: Duration = Duration::from_secs(60);

/// A control plane's fixed addresses, so it can be started again on them.
struct Addresses {
    base: String,
    discovery: String,
    subworker_port: String,
}

impl Addresses {
    fn new() -> Self {
        Addresses {
            base: free_address(),
            discovery: free_address(),
            subworker_port: free_port().to_string(),
        }
    }

    /// Starts `fastworker control-plane` on these addresses with `extra`, as `name`,
    /// and waits for its "ready" line.
    fn start(&self, dir: &TestDir, name: &str, extra: &[&str]) -> Proc {
        let mut args = control_plane_args(&self.base, &self.discovery, &self.subworker_port);
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut proc = Proc::spawn(dir, name, &args);
        proc.wait_for(false, "ready on", STARTUP);
        proc
    }

    /// Starts a subworker serving `mytasks` against these addresses.
    fn subworker(&self, dir: &TestDir, id: &str, extra: &[&str]) -> Proc {
        let mut args: Vec<String> = [
            "subworker",
            "--worker-id",
            id,
            "--control-plane-address",
            &self.base,
            "--task-modules",
            "mytasks",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut proc = Proc::spawn(dir, id, &args);
        proc.wait_for(true, "registered with the control plane", STARTUP);
        proc
    }
}

fn add(i: i64) -> TaskEnvelope {
    TaskEnvelope::new(
        "add",
        Codec::Json,
        Bytes::from(json!([i, 100_000]).to_string()),
    )
}

/// Waits for the final record of every id (each must be `add(i)` answering
/// `i + 100000`); panics naming what was lost, failed or answered for another task.
fn all_final(rt: &Runtime, client: &Client, ids: &[(i64, TaskId)]) -> Vec<TaskRecord> {
    let (mut lost, mut failed, mut foreign) = (Vec::new(), Vec::new(), Vec::new());
    let mut records = Vec::new();
    for (i, id) in ids {
        match rt.block_on(client.result(*id, RESULT_WAIT)) {
            Ok(Some(record)) if record.status == TaskStatus::Success => {
                if record.task_id != *id || decode_value::<i64>(&record).ok() != Some(i + 100_000) {
                    foreign.push(*id);
                }
                records.push(record);
            }
            Ok(Some(record)) if record.status.is_final() => failed.push(record),
            other => lost.push((*id, format!("{other:?}"))),
        }
    }
    assert!(
        lost.is_empty() && failed.is_empty() && foreign.is_empty(),
        "accepted {}, lost {}: {:?}, failed {}: {:?}, foreign {}",
        ids.len(),
        lost.len(),
        lost.first(),
        failed.len(),
        failed.first(),
        foreign.len()
    );
    records
}

/// SIGKILL of the control plane under load, then a restart on the same data
/// directory: every accepted task ends exactly once as a success with its own value,
/// and every result readable before is readable after.
#[test]
fn sigkill_under_load_then_restart_loses_nothing_accepted() {
    let dir = mytasks_dir();
    let at = Addresses::new();
    let flags = [
        "--data-dir",
        "data",
        "--task-modules",
        "mytasks",
        "--concurrency",
        "2",
    ];
    let mut cp = at.start(&dir, "control-plane", &flags);
    let _sw = at.subworker(&dir, "sw", &["--concurrency", "2"]);
    let rt = runtime();
    let client = connect(&rt, &at.base);

    // 500 tasks finished and read before the kill.
    let mut done: Vec<(i64, TaskId)> = Vec::new();
    for batch in 0..5 {
        let tasks: Vec<TaskEnvelope> = (0..100).map(|n| add(batch * 100 + n)).collect();
        let ids = rt.block_on(client.submit_batch(tasks)).expect("accepted");
        done.extend((batch * 100..).zip(ids));
    }
    let before: HashMap<TaskId, TaskRecord> = all_final(&rt, &client, &done)
        .into_iter()
        .map(|r| (r.task_id, r))
        .collect();

    // 1,000 more, the kill right after the last `Accepted`.
    let mut pending: Vec<(i64, TaskId)> = Vec::new();
    for batch in 5..15 {
        let tasks: Vec<TaskEnvelope> = (0..100).map(|n| add(batch * 100 + n)).collect();
        let ids = rt.block_on(client.submit_batch(tasks)).expect("accepted");
        pending.extend((batch * 100..).zip(ids));
    }
    cp.kill();
    drop(client);

    let cp2 = at.start(&dir, "control-plane-2", &flags);
    let client = connect(&rt, &at.base);
    let after = all_final(&rt, &client, &pending);
    assert_eq!(after.len(), 1000);
    for (_, id) in &done {
        let record = rt
            .block_on(client.status(*id))
            .expect("status")
            .unwrap_or_else(|| panic!("result of {id} was readable before the kill, not after"));
        assert_eq!(&record, &before[id]);
    }
    // The kill came with work outstanding: the restart resumed some of it.
    let log = cp2.stderr();
    let resumed: usize = log
        .split("resumed ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'resumed N task(s)' line\n{log}"));
    eprintln!("resumed {resumed} of 1000 tasks after SIGKILL");
    assert!(resumed > 0, "{log}");
}

/// A client that resends a submission (its `Accepted` was lost) gets `Accepted` for
/// the same task, which runs once; the same id under another name is refused.
#[test]
fn a_resent_submission_is_the_same_task() {
    let dir = mytasks_dir();
    let at = Addresses::new();
    let _cp = at.start(
        &dir,
        "control-plane",
        &["--data-dir", "data", "--task-modules", "mytasks"],
    );
    let rt = runtime();
    let client = connect(&rt, &at.base);
    let task = TaskEnvelope::new("sleep_ms", Codec::Json, Bytes::from_static(b"[300]"));
    let id = rt.block_on(client.delay(task.clone())).expect("accepted");
    // While it runs, and after it finished: the same answer, no second run.
    let again = rt
        .block_on(client.delay(task.clone()))
        .expect("accepted again");
    assert_eq!(again, id);
    let record = rt
        .block_on(client.result(id, RESULT_WAIT))
        .expect("result")
        .expect("known");
    let third = rt
        .block_on(client.submit(task.clone(), RESULT_WAIT))
        .expect("accepted after it finished");
    assert_eq!(third, record);
    assert_eq!(
        (record.attempts, record.delivery_count),
        (1, 1),
        "{record:?}"
    );

    let mut other = TaskEnvelope::new("add", Codec::Json, Bytes::from_static(b"[1,2]"));
    other.id = id;
    let err = rt
        .block_on(client.delay(other))
        .expect_err("another task under a used id");
    assert!(err.to_string().contains("already in use"), "{err}");
}

/// Ctrl+C with `--data-dir`: the running task finishes, the queued ones stay in the
/// directory (not failed), and the next start runs them.
#[test]
fn ctrl_c_keeps_queued_tasks_for_the_next_start() {
    let dir = mytasks_dir();
    let at = Addresses::new();
    let flags = ["--data-dir", "data"];
    let mut cp = at.start(&dir, "control-plane", &flags);
    let _sw = at.subworker(&dir, "sw", &[]);
    let rt = runtime();
    let client = connect(&rt, &at.base);
    let tasks: Vec<TaskEnvelope> = (0..10)
        .map(|_| TaskEnvelope::new("sleep_ms", Codec::Json, Bytes::from_static(b"[200]")))
        .collect();
    let ids = rt.block_on(client.submit_batch(tasks)).expect("accepted");
    std::thread::sleep(Duration::from_millis(100));
    cp.signal("INT");
    let status = cp.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{}", cp.describe());
    cp.wait_for(true, "in the data directory for the next start", STARTUP);
    drop(client);

    let _cp2 = at.start(&dir, "control-plane-2", &flags);
    let client = connect(&rt, &at.base);
    for id in &ids {
        let record = rt
            .block_on(client.result(*id, RESULT_WAIT))
            .expect("result")
            .expect("known after the restart");
        assert_eq!(record.status, TaskStatus::Success, "{record:?}");
    }
}

/// A data directory written by a newer fastworker is refused, naming both versions.
#[test]
fn a_data_directory_of_a_newer_schema_is_refused_naming_both_versions() {
    let dir = TestDir::new();
    std::fs::create_dir_all(dir.child("data")).expect("mkdir");
    {
        let db = redb::Database::create(dir.child("data/fastworker.redb")).expect("create");
        let txn = db.begin_write().expect("txn");
        let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
        txn.open_table(meta)
            .expect("meta")
            .insert("schema", 99)
            .expect("insert");
        txn.commit().expect("commit");
    }
    let at = Addresses::new();
    let mut args = control_plane_args(&at.base, &at.discovery, &at.subworker_port);
    args.extend(["--data-dir".to_string(), "data".to_string()]);
    let mut cp = Proc::spawn(&dir, "control-plane", &args);
    let status = cp.wait_exit(STARTUP);
    assert!(!status.success());
    let log = cp.stderr();
    assert!(
        log.contains("schema version 99") && log.contains("reads schema version 1"),
        "{log}"
    );
}

/// A full disk (here: a 2 MiB file-size limit on the control plane): submissions are
/// refused saying why, the control plane stays up, and every task it had accepted
/// ends as a success.
#[test]
fn a_full_disk_refuses_new_tasks_clearly_and_loses_none_accepted() {
    let dir = mytasks_dir();
    let at = Addresses::new();
    let mut args = control_plane_args(&at.base, &at.discovery, &at.subworker_port);
    args.extend(["--data-dir".to_string(), "data".to_string()]);
    let mut cmd = dir.fastworker();
    cmd.args(&args);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(|| rlimit::setrlimit(rlimit::Resource::FSIZE, 2 << 20, 2 << 20));
        }
    }
    let mut cp = Proc::spawn_command(&dir, "control-plane", cmd, None);
    cp.wait_for(false, "ready on", STARTUP);
    let _sw = at.subworker(&dir, "sw", &["--concurrency", "4"]);
    let rt = runtime();
    let client = connect(&rt, &at.base);
    let payload = json!(["x".repeat(60_000)]).to_string();
    let mut accepted = Vec::new();
    let mut refusal = None;
    for _ in 0..200 {
        let tasks: Vec<TaskEnvelope> = (0..4)
            .map(|_| TaskEnvelope::new("echo", Codec::Json, Bytes::from(payload.clone())))
            .collect();
        match rt.block_on(client.submit_batch(tasks)) {
            Ok(ids) => accepted.extend(ids),
            Err(err) => {
                refusal = Some(err.to_string());
                break;
            }
        }
    }
    let refusal = refusal.expect("a 2 MiB limit refuses some of 800 tasks of 60 KB");
    eprintln!("{} tasks accepted before: {refusal}", accepted.len());
    assert!(refusal.contains("data directory"), "{refusal}");
    assert!(
        !accepted.is_empty(),
        "nothing was accepted before the disk filled"
    );
    assert!(cp.try_exit().is_none(), "{}", cp.describe());
    for id in &accepted {
        let record = rt
            .block_on(client.result(*id, RESULT_WAIT))
            .expect("result")
            .expect("known");
        assert_eq!(record.status, TaskStatus::Success, "{record:?}");
    }
    assert!(cp.try_exit().is_none(), "{}", cp.describe());
}

/// A subworker refuses an assignment of an older epoch than one it has seen (it comes
/// from a control plane that has since been replaced). Driven by a stand-in control
/// plane on the library's transport, so the epochs are chosen by the test.
#[test]
fn a_subworker_refuses_assignments_of_an_older_epoch() {
    use fastworker_protocol::{
        self as protocol, FromControlPlane, LeaseToken, ToControlPlane, WorkerSecret,
    };
    use fastworker_transport::{self as transport, ServerEvent};
    let dir = mytasks_dir();
    let address = free_address();
    let rt = runtime();
    let mut server = rt
        .block_on(transport::bind(
            std::slice::from_ref(&address),
            &client_config(),
        ))
        .expect("the stand-in binds");
    let args: Vec<String> = [
        "subworker",
        "--worker-id",
        "swe",
        "--control-plane-address",
        &address,
        "--task-modules",
        "mytasks",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut sw = Proc::spawn(&dir, "swe", &args);
    let send = |server: &transport::Server, peer: &transport::PeerId, msg: FromControlPlane| {
        server
            .outbox
            .send(peer, protocol::encode(&msg).expect("encodes"));
    };
    let outcomes = rt.block_on(async {
        let mut peer = None;
        let mut outcomes = Vec::new();
        let (newer, older) = (add(1), add(2));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut sent_older_at = None;
        loop {
            let event = tokio::time::timeout_at(deadline, server.events.recv()).await;
            let Ok(Some(event)) = event else { break };
            let ServerEvent::Message { peer: from, frames } = event else {
                continue;
            };
            match protocol::decode::<ToControlPlane>(&frames) {
                Ok(ToControlPlane::Hello(_)) => {
                    // A subworker registers once the control plane has welcomed it.
                    send(
                        &server,
                        &from,
                        FromControlPlane::Welcome(protocol::Welcome::new(
                            protocol::PROTOCOL_VERSION,
                            "fake",
                        )),
                    );
                }
                Ok(ToControlPlane::Register(_)) => {
                    send(
                        &server,
                        &from,
                        FromControlPlane::Registered {
                            secret: WorkerSecret::new(),
                        },
                    );
                    for (task, epoch) in [(newer.clone(), 5), (older.clone(), 3)] {
                        let mut task = task;
                        task.delivery_count = 1;
                        send(
                            &server,
                            &from,
                            FromControlPlane::Assign {
                                task,
                                lease: LeaseToken::new(),
                                epoch,
                            },
                        );
                    }
                    sent_older_at = Some(tokio::time::Instant::now());
                    peer = Some(from);
                }
                Ok(ToControlPlane::Outcome(outcome)) => outcomes.push(outcome),
                _ => {}
            }
            // A second after both were sent, whatever was going to run has run.
            if sent_older_at.is_some_and(|at| at.elapsed() > Duration::from_secs(1))
                || outcomes.len() == 2
            {
                break;
            }
        }
        assert!(
            peer.is_some(),
            "the subworker never registered\n{}",
            sw.describe()
        );
        (outcomes, newer.id, older.id)
    });
    let (outcomes, newer, older) = outcomes;
    sw.wait_for(true, "refused this assignment of epoch 3", STARTUP);
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    let ran = outcomes
        .iter()
        .find(|o| o.task_id == newer)
        .expect("the newer ran");
    assert_eq!(ran.result, fastworker_protocol::AttemptResult::Success);
    let refused = outcomes
        .iter()
        .find(|o| o.task_id == older)
        .expect("the older was answered");
    match &refused.result {
        fastworker_protocol::AttemptResult::Failure(error) => {
            assert_eq!(
                error.kind,
                fastworker_protocol::task_error::ErrorKind::Rejected
            );
            assert!(
                error.message.contains("epoch 5 has taken over"),
                "{error:?}"
            );
        }
        other => panic!("the older epoch's task ran: {other:?}"),
    }
}

/// A task that finishes while the control plane is down: its subworker keeps the
/// outcome, claims the task by its lease when it registers with the restarted control
/// plane, and reports it; the task is not run again (before: re-queued, run twice).
#[test]
fn a_result_finished_while_the_control_plane_is_down_is_reported_not_rerun() {
    let dir = mytasks_dir();
    let at = Addresses::new();
    let flags = ["--data-dir", "data"];
    let mut cp = at.start(&dir, "control-plane", &flags);
    let sw = at.subworker(&dir, "swd", &[]);
    let rt = runtime();
    let client = connect(&rt, &at.base);
    let task = TaskEnvelope::new("sleep_ms", Codec::Json, Bytes::from_static(b"[1500]"));
    let id = rt.block_on(client.delay(task)).expect("accepted");
    let started = crate::procs::poll_until(Duration::from_secs(10), || {
        let record = rt.block_on(client.status(id)).ok()??;
        (record.status == TaskStatus::Running).then_some(())
    });
    assert!(started.is_some(), "it never started\n{}", cp.describe());
    cp.kill();
    drop(client);
    // It finishes while nobody listens.
    std::thread::sleep(Duration::from_millis(2500));
    let _cp2 = at.start(&dir, "control-plane-2", &flags);
    let client = connect(&rt, &at.base);
    let record = rt
        .block_on(client.result(id, RESULT_WAIT))
        .expect("result")
        .expect("known");
    assert_eq!(record.status, TaskStatus::Success, "{record:?}");
    assert_eq!(
        record.delivery_count,
        1,
        "run again instead of reported: {record:?}\n{}",
        sw.describe()
    );
}
