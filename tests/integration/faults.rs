//! Faults in task code: a plugin that aborts, writes through a null pointer, fails an
//! allocation, or ignores its timeout. The control plane runs no plugin code itself
//! (its `--task-modules` run in a child subworker it supervises), so each fault costs
//! only the process it happens in and the task that caused it; every other task ends
//! as a success. Each test counts accepted, final, lost (0) and foreign (0) results.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use bytes::Bytes;
use fastworker_client::{decode_value, Client};
use fastworker_protocol::task_error::ErrorKind;
use fastworker_protocol::{Codec, Priority, TaskEnvelope, TaskId, TaskRecord, TaskStatus};
use serde_json::json;
use tokio::runtime::Runtime;

use crate::{
    procs::{connect, free_address, poll_until, runtime, ControlPlane, Proc, STARTUP},
    support::{plugin_artifact, TestDir},
};

const RESULT_WAIT: Duration = Duration::from_secs(60);

/// Tasks of other names submitted around each fault (as many as were lost when the
/// control plane ran plugins itself).
const OTHERS: i64 = 35;

fn task(name: &str, args: serde_json::Value) -> TaskEnvelope {
    TaskEnvelope::new(name, Codec::Json, Bytes::from(args.to_string()))
}

/// `plugins/` holding the example plugin and the crashing fixture.
fn crash_dir() -> TestDir {
    let dir = TestDir::new();
    dir.copy_in(&plugin_artifact("mytasks"), "plugins/mytasks.so");
    dir.copy_in(&plugin_artifact("crashing"), "plugins/crashing.so");
    dir
}

/// What a run of tasks came to.
#[derive(Debug, Default)]
struct Tally {
    accepted: usize,
    finished: usize,
    lost: usize,
    foreign: usize,
}

/// Waits for the final record of every id; counts the ones that never end (lost) and
/// records that name another task (foreign).
fn collect(rt: &Runtime, client: &Client, ids: &[TaskId]) -> (Tally, Vec<TaskRecord>) {
    let mut tally = Tally {
        accepted: ids.len(),
        ..Tally::default()
    };
    let mut records = Vec::new();
    for id in ids {
        match rt.block_on(client.result(*id, RESULT_WAIT)) {
            Ok(Some(record)) if record.status.is_final() => {
                if record.task_id != *id {
                    tally.foreign += 1;
                }
                tally.finished += 1;
                records.push(record);
            }
            _ => tally.lost += 1,
        }
    }
    (tally, records)
}

/// Submits the crashing task `crash` first (critical, so it is always the next task
/// handed out while it waits), then [`OTHERS`] `add` tasks, and checks that each
/// `add` succeeded with its own sum and the crashing one was dead-lettered as
/// `worker_lost` after `--max-deliveries 2`: once in the subworker, once in the
/// control plane's own child.
fn a_crash_costs_only_its_process(crash: &str, signal: &str) {
    let dir = crash_dir();
    let mut cp = ControlPlane::start(
        &dir,
        &[
            "--task-modules",
            "plugins",
            "--max-deliveries",
            "2",
            "--concurrency",
            "1",
        ],
    );
    let mut sw = cp.subworker(&dir, "sw", &["--task-modules", "plugins/crashing.so"]);
    let rt = runtime();
    let client = connect(&rt, &cp.base);

    let mut crashing = task(crash, json!([]));
    crashing.priority = Priority::Critical;
    let crash_id = rt.block_on(client.delay(crashing)).expect("accepted");
    let others: Vec<TaskEnvelope> = (0..OTHERS).map(|i| task("add", json!([i, 1000]))).collect();
    let ids = rt.block_on(client.submit_batch(others)).expect("accepted");

    let (tally, records) = collect(&rt, &client, &ids);
    assert_eq!(
        (tally.accepted, tally.finished, tally.lost, tally.foreign),
        (OTHERS as usize, OTHERS as usize, 0, 0),
        "{tally:?}\n{}",
        cp.proc.describe()
    );
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.status, TaskStatus::Success, "{record:?}");
        assert_eq!(decode_value::<i64>(record).ok(), Some(i as i64 + 1000));
    }

    let crashed = rt
        .block_on(client.result(crash_id, RESULT_WAIT))
        .expect("status")
        .expect("known");
    assert_eq!(crashed.status, TaskStatus::Failure, "{crashed:?}");
    let error = crashed.error.clone().expect("an error");
    assert_eq!(error.kind, ErrorKind::WorkerLost, "{error:?}");
    assert!(error.message.contains("dead-lettered"), "{error:?}");
    let dead = rt.block_on(client.dead_letters()).expect("dead letters");
    assert!(dead.iter().any(|r| r.task_id == crash_id), "{dead:?}");

    // The subworker died of it; the control plane did not, and says what killed its child.
    let status = sw.wait_exit(STARTUP);
    assert!(!status.success(), "{status:?}");
    assert!(cp.proc.try_exit().is_none(), "{}", cp.proc.describe());
    cp.proc.wait_for_line(
        true,
        &["own subworker exited", signal],
        Duration::from_secs(5),
    );
    // And its child is back: new work still runs.
    let record = rt
        .block_on(client.submit(task("add", json!([2, 3])), RESULT_WAIT))
        .expect("runs after the crash");
    assert_eq!(decode_value::<i64>(&record).ok(), Some(5));
}

#[test]
fn a_plugin_that_aborts_costs_only_its_process_and_its_task() {
    a_crash_costs_only_its_process("crash_abort", "SIGABRT");
}

#[test]
fn a_plugin_that_writes_through_a_null_pointer_costs_only_its_process_and_its_task() {
    a_crash_costs_only_its_process("crash_segfault", "SIGSEGV");
}

#[test]
fn a_plugin_whose_allocation_fails_costs_only_its_process_and_its_task() {
    a_crash_costs_only_its_process("crash_alloc", "SIGABRT");
}

/// A task that ignores its timeout in the control plane's own child: it is reported as
/// timed out, its slot is given back at once (the 35 tasks after it all run), and the
/// child drains and restarts in place to free the stuck thread.
#[test]
fn a_hung_task_in_the_control_planes_child_frees_its_slot_and_restarts_the_child() {
    let dir = crash_dir();
    let mut cp = ControlPlane::start(
        &dir,
        &[
            "--task-modules",
            "plugins",
            "--concurrency",
            "1",
            "--hung-task-grace",
            "1",
        ],
    );
    let rt = runtime();
    let client = connect(&rt, &cp.base);
    let mut hung = task("hang_ms", json!([600_000]));
    hung.timeout_secs = Some(0.5);
    let hung_id = rt.block_on(client.delay(hung)).expect("accepted");
    let others: Vec<TaskEnvelope> = (0..OTHERS).map(|i| task("add", json!([i, 1]))).collect();
    let ids = rt.block_on(client.submit_batch(others)).expect("accepted");

    let (tally, records) = collect(&rt, &client, &ids);
    assert_eq!(
        (tally.finished, tally.lost, tally.foreign),
        (OTHERS as usize, 0, 0),
        "{tally:?}\n{}",
        cp.proc.describe()
    );
    assert!(records.iter().all(|r| r.status == TaskStatus::Success));
    let timed_out = rt
        .block_on(client.result(hung_id, RESULT_WAIT))
        .expect("status")
        .expect("known");
    assert_eq!(
        timed_out.error.as_ref().map(|e| e.kind),
        Some(ErrorKind::TimedOut),
        "{timed_out:?}"
    );
    cp.proc
        .wait_for(true, "ignored their timeout", Duration::from_secs(10));
    cp.proc
        .wait_for(true, "restarting in place: ", Duration::from_secs(10));
    let seen: HashSet<TaskId> = records.iter().map(|r| r.task_id).collect();
    assert_eq!(seen.len(), OTHERS as usize);
    // The restarted child serves again.
    let after = poll_until(Duration::from_secs(10), || {
        rt.block_on(client.submit(task("add", json!([1, 1])), Duration::from_secs(5)))
            .ok()
    })
    .expect("the restarted child runs tasks");
    assert_eq!(decode_value::<i64>(&after).ok(), Some(2));
}

/// A task whose calls have been short runs on the subworker's async runtime, not on a
/// call thread (`--inline-below-us`, raised here so 1 ms calls count as short). When
/// one of its calls hangs, its deadline is still watched: it is reported timed out at
/// its timeout (a watchdog on the runtime, spawned from inside the call, would never
/// run while the call held that worker, and the call would end as a success after
/// 20 s), the subworker says which thread it holds, and it serves on with the other.
#[test]
fn a_short_task_that_hangs_on_the_runtime_is_timed_out_and_the_subworker_serves_on() {
    let dir = crash_dir();
    let mut cp = ControlPlane::start(&dir, &[]);
    let mut sw = cp.subworker_with_env(
        &dir,
        "sw-inline",
        &["--concurrency", "2", "--inline-below-us", "1000000"],
        // Two runtime workers whatever the machine's cores: short calls run on the
        // runtime only when it has two or more.
        &[("TOKIO_WORKER_THREADS", "2")],
    );
    let rt = runtime();
    let client = connect(&rt, &cp.base);
    // The first call of a name runs on a call thread and measures it; the next run on
    // the runtime.
    for _ in 0..3 {
        rt.block_on(client.submit(task("hang_ms", json!([1])), RESULT_WAIT))
            .expect("a 1 ms call");
    }
    let mut hung = task("hang_ms", json!([20_000]));
    hung.timeout_secs = Some(0.5);
    let submitted = Instant::now();
    let hung_id = rt.block_on(client.delay(hung)).expect("accepted");
    let timed_out = rt
        .block_on(client.result(hung_id, RESULT_WAIT))
        .expect("status")
        .expect("known");
    let waited = submitted.elapsed();
    assert_eq!(
        timed_out.error.as_ref().map(|e| e.kind),
        Some(ErrorKind::TimedOut),
        "{timed_out:?}\n{}",
        sw.describe()
    );
    assert!(
        waited < Duration::from_secs(10),
        "timed out after {waited:?}, not at its 0.5 s timeout"
    );
    sw.wait_for(
        true,
        "holds one of the runtime's threads",
        Duration::from_secs(10),
    );
    // The hung call still holds its runtime thread: tasks keep running meanwhile.
    for i in 0..20 {
        let record = rt
            .block_on(client.submit(task("add", json!([i, 1])), Duration::from_secs(5)))
            .expect("a task while the hung call holds its thread");
        assert_eq!(decode_value::<i64>(&record).ok(), Some(i + 1));
    }
    assert!(
        submitted.elapsed() < Duration::from_secs(20),
        "the tasks after it waited for the hung call to return"
    );
}

/// Nobody but the control plane's own child registers under the control plane's id:
/// that worker id would otherwise receive (and answer for) the control plane's tasks.
#[test]
fn no_other_process_registers_under_the_control_planes_worker_id() {
    let dir = crash_dir();
    let cp = ControlPlane::start(&dir, &[]);
    let args: Vec<String> = [
        "subworker",
        "--worker-id",
        "control-plane",
        "--control-plane-address",
        &cp.base,
        "--base-address",
        &free_address(),
        "--task-modules",
        "mytasks",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut impostor = Proc::spawn(&dir, "impostor", &args);
    let status = impostor.wait_exit(STARTUP);
    assert!(!status.success());
    assert!(
        impostor
            .stderr()
            .contains("is the control plane's own subworker"),
        "{}",
        impostor.describe()
    );
}

/// SIGKILL of a subworker under load: 2,000 `add` tasks over two subworkers with four
/// slots each, one killed once a quarter are done. Every task ends once as a success
/// with its own sum; the killed one's tasks are redelivered to the other.
#[test]
fn sigkill_of_a_subworker_under_load_loses_nothing() {
    let dir = crash_dir();
    let mut cp = ControlPlane::start(&dir, &[]);
    let mut sw1 = cp.subworker(&dir, "swk1", &["--concurrency", "4"]);
    let _sw2 = cp.subworker(&dir, "swk2", &["--concurrency", "4"]);
    let rt = runtime();
    let client = connect(&rt, &cp.base);
    let mut ids = Vec::new();
    for batch in 0..10i64 {
        let tasks: Vec<TaskEnvelope> = (0..200)
            .map(|n| task("add", json!([batch * 200 + n, 7])))
            .collect();
        ids.extend(rt.block_on(client.submit_batch(tasks)).expect("accepted"));
    }
    let quarter = rt
        .block_on(client.result(ids[499], RESULT_WAIT))
        .expect("a quarter done");
    assert!(quarter.is_some());
    sw1.kill();

    let (tally, records) = collect(&rt, &client, &ids);
    assert_eq!(
        (tally.accepted, tally.finished, tally.lost, tally.foreign),
        (2000, 2000, 0, 0),
        "{tally:?}\n{}",
        cp.proc.describe()
    );
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.status, TaskStatus::Success, "{record:?}");
        assert_eq!(
            decode_value::<i64>(record).ok(),
            Some(i as i64 + 7),
            "{record:?}"
        );
    }
    let by_killed = records
        .iter()
        .filter(|r| r.worker_id.as_ref().is_some_and(|w| w.as_str() == "swk1"))
        .count();
    let redelivered = records.iter().filter(|r| r.delivery_count > 1).count();
    eprintln!(
        "{by_killed} finished on the killed subworker before it died; {redelivered} redelivered"
    );
    assert!(by_killed > 0, "the killed subworker had taken no work");
}
