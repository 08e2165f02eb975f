//! The distributed core, the way users run it: real `fastworker control-plane` and
//! `fastworker subworker` processes on free ports of 127.0.0.1, driven by the real
//! `fastworker submit` and by the library [`Client`].
//!
//! - the seed page's commands, as written, with and without subworkers;
//! - many concurrent submissions on one client, each answered with its own result;
//! - strict priority order on a saturated executor; least-loaded spreading;
//! - a subworker killed (its task is re-delivered), one started mid-run (it takes
//!   work), one interrupted with Ctrl+C (it finishes what it holds and exits 0), and
//!   four interrupted while their tasks finish together (each must report them all);
//! - discovery; SIGTERM on the control plane; bad frames and bad commands.
//!
//! Every process belongs to a [`Proc`] guard that kills it when the test ends, and
//! every wait is bounded.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use fastworker_client::{decode_value, Client, ClientError};
use fastworker_protocol::task_error::ErrorKind;
use fastworker_protocol::{
    self as protocol, now_ms, Codec, FromControlPlane, Hello, PeerKind, Priority, TaskEnvelope,
    TaskId, TaskRecord, TaskStatus, ToControlPlane, PROTOCOL_VERSION,
};
use fastworker_transport::{self as transport, Connection};
use serde_json::{json, Value};
use tokio::runtime::Runtime;

use crate::{
    procs::{connect, free_address, mytasks_dir, poll_until, runtime, ControlPlane, Proc, STARTUP},
    support::{client_config, run, Output, TestDir},
};

/// The library client's connect and request timeout.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a test waits for a submitted task's result.
const RESULT_WAIT: Duration = Duration::from_secs(30);

/// A task with JSON arguments.
fn json_task(name: &str, args: Value) -> TaskEnvelope {
    TaskEnvelope::new(name, Codec::Json, Bytes::from(args.to_string()))
}

fn sleep_task(ms: u64) -> TaskEnvelope {
    json_task("sleep_ms", json!([ms]))
}

fn value(record: &TaskRecord) -> i64 {
    decode_value(record).unwrap_or_else(|e| panic!("{record:?}: value does not decode: {e}"))
}

fn worker(record: &TaskRecord) -> &str {
    record
        .worker_id
        .as_ref()
        .map(|w| w.as_str())
        .unwrap_or("<none>")
}

/// The final record of `id`, waiting for it.
fn final_record(rt: &Runtime, client: &Client, id: TaskId) -> TaskRecord {
    let record = rt
        .block_on(client.result(id, Duration::from_secs(30)))
        .unwrap_or_else(|e| panic!("no result for {id}: {e}"))
        .unwrap_or_else(|| panic!("task {id} is unknown to the control plane"));
    assert!(record.status.is_final(), "{record:?}");
    record
}

fn assert_success(record: &TaskRecord) {
    assert_eq!(
        record.status,
        TaskStatus::Success,
        "task {} ({}) did not succeed: {:?}",
        record.task_id,
        record.name,
        record.error
    );
}

/// Polls `check` on the runtime until it answers `Some`, bounded like [`poll_until`].
fn poll_async<T, F, Fut>(rt: &Runtime, limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_until(limit, || rt.block_on(check()))
}

/// `fastworker submit <args>` in `dir`.
fn submit_cli(dir: &TestDir, args: &[&str]) -> Output {
    let mut cmd = dir.fastworker();
    cmd.arg("submit").args(args);
    run(cmd)
}

/// The seed page's `add 5 3`, found through discovery.
fn seed_add(dir: &TestDir, cp: &ControlPlane, json: bool) -> Output {
    let mut args = vec![
        "--discovery-address",
        cp.discovery.as_str(),
        "--task-name",
        "add",
        "--args",
        "5",
        "3",
    ];
    if json {
        args.push("--json");
    }
    submit_cli(dir, &args)
}

fn assert_prints_8(out: &Output) {
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, "8\n", "{out:?}");
    assert!(out.stderr_lines().is_empty(), "{out:?}");
}

fn json_record(out: &Output) -> Value {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("--json output is not JSON ({e}): {out:?}"))
}

// ---- the seed page -----------------------------------------------------------------

#[test]
fn seed_commands_work_as_written() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &["--task-modules", "mytasks"]);

    // The control plane alone runs it itself.
    assert_prints_8(&seed_add(&dir, &cp, false));
    let alone = json_record(&seed_add(&dir, &cp, true));
    assert_eq!(alone["result"], json!(8), "{alone}");
    assert_eq!(alone["worker_id"], json!("control-plane"), "{alone}");

    // Three subworkers with the seed's flags: now a subworker runs it.
    let _subworkers: Vec<Proc> = ["sw1", "sw2", "sw3"]
        .iter()
        .map(|id| cp.subworker(&dir, id, &[]))
        .collect();
    assert_prints_8(&seed_add(&dir, &cp, false));
    let record = json_record(&seed_add(&dir, &cp, true));
    assert_eq!(record["status"], json!("success"), "{record}");
    assert_eq!(record["result"], json!(8), "{record}");
    let who = record["worker_id"].as_str().unwrap_or_default();
    assert!(
        who.starts_with("sw"),
        "with subworkers registered, a subworker should run it, not `{who}`: {record}"
    );
}

// ---- many at once --------------------------------------------------------------------

#[test]
fn a_thousand_concurrent_submissions_each_get_their_own_result() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &[]);
    let _sw = cp.subworker(&dir, "sw1", &["--concurrency", "4"]);
    let rt = runtime();
    let client = connect(&rt, &cp.base);

    // Even i: JSON through `submit`, checking the record; odd i: bincode through `call`.
    let handles: Vec<_> = (0..1000i64)
        .map(|i| {
            let client = client.clone();
            rt.spawn(async move {
                let (x, y) = (i, 1000 * i);
                if i % 2 == 0 {
                    let task = json_task("add", json!([x, y]));
                    let id = task.id;
                    let record = client
                        .submit(task, RESULT_WAIT)
                        .await
                        .unwrap_or_else(|e| panic!("add({x}, {y}): {e}"));
                    assert_eq!(
                        record.task_id, id,
                        "add({x}, {y}) got another task's record"
                    );
                    assert_eq!(worker(&record), "sw1", "{record:?}");
                    (i, value(&record))
                } else {
                    let sum = client
                        .call::<(i64, i64), i64>("add", &(x, y))
                        .await
                        .unwrap_or_else(|e| panic!("add({x}, {y}): {e}"));
                    (i, sum)
                }
            })
        })
        .collect();
    let results = rt.block_on(futures::future::join_all(handles));
    assert_eq!(results.len(), 1000);
    for result in results {
        let (i, sum) = result.expect("the submission task did not panic");
        assert_eq!(sum, i + 1000 * i, "add({i}, {}) came back wrong", 1000 * i);
    }
}

// ---- priorities and placement --------------------------------------------------------

#[test]
fn strict_priority_when_the_only_executor_is_saturated() {
    use rand::{seq::SliceRandom, SeedableRng};

    let dir = mytasks_dir();
    let cp = ControlPlane::start(&dir, &["--task-modules", "mytasks", "--concurrency", "1"]);
    let rt = runtime();
    let client = connect(&rt, &cp.base);

    let blocker = rt
        .block_on(client.delay(sleep_task(300)))
        .expect("the blocker is accepted");
    let mut mix: Vec<Priority> = Priority::ALL
        .iter()
        .flat_map(|p| std::iter::repeat_n(*p, 4))
        .collect();
    mix.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));
    assert!(
        !mix.is_sorted(),
        "a shuffled mix, or FIFO order would pass too"
    );
    let mut submitted: Vec<(TaskId, Priority)> = Vec::new();
    for priority in &mix {
        let mut task = sleep_task(20);
        task.priority = *priority;
        let id = rt
            .block_on(client.delay(task))
            .unwrap_or_else(|e| panic!("{priority:?} task refused: {e}"));
        submitted.push((id, *priority));
    }

    let records: Vec<TaskRecord> = submitted
        .iter()
        .map(|(id, _)| final_record(&rt, &client, *id))
        .collect();
    records.iter().for_each(assert_success);
    let blocker = final_record(&rt, &client, blocker);
    let last_submitted = records.iter().map(|r| r.submitted_ms).max().unwrap();
    assert!(
        last_submitted <= blocker.completed_ms.unwrap(),
        "premise broken: the 300 ms blocker finished before all 16 tasks were submitted"
    );

    let mut by_start: Vec<(u64, TaskId)> = records
        .iter()
        .map(|r| {
            (
                r.started_ms.expect("a finished task has started"),
                r.task_id,
            )
        })
        .collect();
    by_start.sort();
    let ran: Vec<TaskId> = by_start.iter().map(|(_, id)| *id).collect();
    // Expected: by priority, and within one priority in submission order (stable sort).
    let mut expected = submitted.clone();
    expected.sort_by_key(|(_, p)| *p);
    let expected_ids: Vec<TaskId> = expected.iter().map(|(id, _)| *id).collect();
    let priority_of: HashMap<TaskId, Priority> = submitted.iter().copied().collect();
    assert_eq!(
        ran,
        expected_ids,
        "run order {:?}, submission order {:?}",
        ran.iter().map(|id| priority_of[id]).collect::<Vec<_>>(),
        mix
    );
}

#[test]
fn least_loaded_spreading_records_who_ran_it() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &[]);
    let _subworkers: Vec<Proc> = ["sw1", "sw2", "sw3"]
        .iter()
        .map(|id| cp.subworker(&dir, id, &["--concurrency", "1"]))
        .collect();
    let rt = runtime();
    let client = connect(&rt, &cp.base);

    let handles: Vec<_> = (0..30)
        .map(|_| {
            let client = client.clone();
            rt.spawn(async move { client.submit(sleep_task(30), RESULT_WAIT).await })
        })
        .collect();
    let mut per_worker: HashMap<String, usize> = HashMap::new();
    for joined in rt.block_on(futures::future::join_all(handles)) {
        let record = joined
            .expect("no panic")
            .unwrap_or_else(|e| panic!("sleep_ms failed: {e}"));
        assert_eq!(value(&record), 30);
        *per_worker.entry(worker(&record).to_string()).or_default() += 1;
    }
    assert_eq!(per_worker.values().sum::<usize>(), 30, "{per_worker:?}");
    for id in ["sw1", "sw2", "sw3"] {
        let ran = per_worker.get(id).copied().unwrap_or(0);
        assert!(ran >= 5, "{id} ran {ran} of 30: {per_worker:?}");
    }
}

// ---- subworkers coming and going -----------------------------------------------------

#[test]
fn a_killed_subworkers_tasks_are_redelivered() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &[]);
    let mut sw1 = cp.subworker(&dir, "sw1", &[]);
    let _sw2 = cp.subworker(&dir, "sw2", &[]);
    let rt = runtime();
    let client = connect(&rt, &cp.base);

    let ids: Vec<TaskId> = (0..2)
        .map(|_| {
            rt.block_on(client.delay(sleep_task(1500)))
                .expect("accepted")
        })
        .collect();
    // Both running, one on each subworker.
    let placed = poll_async(&rt, Duration::from_secs(10), || async {
        let mut on = HashMap::new();
        for id in &ids {
            let record = client.status(*id).await.ok()??;
            if record.status != TaskStatus::Running {
                return None;
            }
            on.insert(worker(&record).to_string(), *id);
        }
        (on.len() == 2).then_some(on)
    })
    .unwrap_or_else(|| {
        panic!(
            "the two tasks never ran one per subworker\n{}",
            cp.proc.describe()
        )
    });
    let lost = placed["sw1"];
    let kept = placed["sw2"];

    sw1.kill();
    let started = Instant::now();
    // Noticed (the connection dropped) and back in the queue within 2 s.
    let requeued = poll_async(&rt, Duration::from_secs(2), || async {
        let r = client.status(lost).await.ok()??;
        (r.status != TaskStatus::Running || r.delivery_count >= 2).then_some(())
    });
    assert!(
        requeued.is_some(),
        "the killed subworker's task was not re-queued within 2 s\n{}",
        cp.proc.describe()
    );
    let lost = final_record(&rt, &client, lost);
    let kept = final_record(&rt, &client, kept);
    assert_success(&lost);
    assert_success(&kept);
    assert_eq!(value(&lost), 1500);
    assert_eq!(
        (worker(&lost), lost.delivery_count),
        ("sw2", 2),
        "the killed worker's task should be re-delivered to the survivor: {lost:?}"
    );
    assert_eq!(lost.attempts, 1, "a re-delivery is not a retry: {lost:?}");
    assert_eq!((worker(&kept), kept.delivery_count), ("sw2", 1), "{kept:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "re-delivery took {:?}: the loss was not noticed promptly",
        started.elapsed()
    );
}

/// A subworker paused (SIGSTOP) past `--inactive-after` goes inactive and its task runs
/// elsewhere; once resumed it gets work again. Its slot is still taken by the task it
/// was running when paused, so the first task handed to it may wait there and come
/// back unstarted: that task runs elsewhere (before, the control plane kept it as
/// running on that worker and it never ended).
#[test]
fn a_frozen_subworker_goes_inactive_its_task_moves_and_it_comes_back() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &["--inactive-after", "2.5"]);
    let subworkers: HashMap<&str, Proc> = ["sw1", "sw2"]
        .into_iter()
        .map(|id| (id, cp.subworker(&dir, id, &[])))
        .collect();
    let rt = runtime();
    let client = connect(&rt, &cp.base);

    let id = rt
        .block_on(client.delay(sleep_task(1000)))
        .expect("accepted");
    let frozen = poll_async(&rt, Duration::from_secs(10), || async {
        let record = client.status(id).await.ok()??;
        (record.status == TaskStatus::Running).then(|| worker(&record).to_string())
    })
    .expect("the task started");
    let survivor = if frozen == "sw1" { "sw2" } else { "sw1" };
    // SIGSTOP: the connection stays open, but nothing is heard from it.
    subworkers[frozen.as_str()].signal("STOP");
    let record = final_record(&rt, &client, id);
    subworkers[frozen.as_str()].signal("CONT");
    assert_success(&record);
    assert_eq!(
        (worker(&record), record.delivery_count),
        (survivor, 2),
        "the silent worker's task should move to {survivor}: {record:?}"
    );
    let who = format!("worker={frozen}");
    cp.proc
        .wait_for_line(true, &["subworker inactive", &who], STARTUP);

    // Once it speaks again it gets work again, and its late answer changed nothing.
    let ran_on_frozen = poll_async(&rt, Duration::from_secs(15), || async {
        let tasks: Vec<TaskEnvelope> = (0..4).map(|_| sleep_task(100)).collect();
        let records = client.submit_batch_wait(tasks, RESULT_WAIT).await.ok()?;
        records.iter().any(|r| worker(r) == frozen).then_some(())
    });
    assert!(
        ran_on_frozen.is_some(),
        "{frozen} never got work again after it woke up\n{}{}",
        cp.proc.describe(),
        subworkers[frozen.as_str()].describe()
    );
    let again = rt
        .block_on(client.status(id))
        .expect("status")
        .expect("still cached");
    assert_eq!(again, record);
}

/// A subworker paused (SIGSTOP) for 4.5 s, longer than three missed heartbeat
/// acknowledgements but less than `--inactive-after`: on resuming it checks its
/// connection instead of replacing it, and its four running tasks stay with it, each
/// delivered once (before, it reconnected, they were re-queued and one ran twice).
#[test]
fn a_subworker_paused_for_less_than_inactive_after_keeps_its_tasks() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &[]);
    let sw = cp.subworker(&dir, "swp", &["--concurrency", "4"]);
    let rt = runtime();
    let client = connect(&rt, &cp.base);
    let ids: Vec<TaskId> = (0..4)
        .map(|_| {
            rt.block_on(client.delay(sleep_task(1500)))
                .expect("accepted")
        })
        .collect();
    let running = poll_async(&rt, Duration::from_secs(10), || async {
        for id in &ids {
            let record = client.status(*id).await.ok()??;
            if record.status != TaskStatus::Running {
                return None;
            }
        }
        Some(())
    });
    assert!(
        running.is_some(),
        "the four tasks did not start\n{}",
        cp.proc.describe()
    );
    sw.signal("STOP");
    std::thread::sleep(Duration::from_millis(4500));
    sw.signal("CONT");
    for id in &ids {
        let record = final_record(&rt, &client, *id);
        assert_success(&record);
        assert_eq!(
            (worker(&record), record.delivery_count),
            ("swp", 1),
            "{record:?}\n{}",
            sw.describe()
        );
    }
    let log = sw.stderr();
    assert!(log.contains("was paused for"), "{log}");
    assert!(!log.contains("reconnecting"), "{log}");
}

#[test]
fn a_subworker_started_mid_run_takes_work() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &[]);
    let _sw1 = cp.subworker(&dir, "sw1", &[]);
    let rt = runtime();
    let client = connect(&rt, &cp.base);

    let done = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let (client, done) = (client.clone(), done.clone());
            rt.spawn(async move {
                let result = client.submit(sleep_task(150), RESULT_WAIT).await;
                done.fetch_add(1, Ordering::SeqCst);
                result
            })
        })
        .collect();
    poll_until(Duration::from_secs(10), || {
        (done.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .expect("sw1 alone finished two tasks");
    let sw2_started_ms = now_ms();
    let _sw2 = cp.subworker(&dir, "sw2", &[]);

    let mut per_worker: HashMap<String, usize> = HashMap::new();
    for joined in rt.block_on(futures::future::join_all(handles)) {
        let record = joined.expect("no panic").expect("sleep_ms succeeds");
        if worker(&record) == "sw2" {
            assert!(record.started_ms.unwrap() >= sw2_started_ms, "{record:?}");
        }
        *per_worker.entry(worker(&record).to_string()).or_default() += 1;
    }
    assert_eq!(per_worker.values().sum::<usize>(), 16, "{per_worker:?}");
    let by_sw2 = per_worker.get("sw2").copied().unwrap_or(0);
    assert!(
        by_sw2 >= 3,
        "the late subworker ran {by_sw2} of the remaining tasks: {per_worker:?}"
    );
}

#[test]
fn ctrl_c_on_a_busy_subworker_loses_nothing() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &[]);
    let mut sw1 = cp.subworker(&dir, "sw1", &["--concurrency", "2"]);
    let _sw2 = cp.subworker(&dir, "sw2", &["--concurrency", "2"]);
    let rt = runtime();
    let client = connect(&rt, &cp.base);

    let tasks: Vec<TaskEnvelope> = (0..20).map(|_| sleep_task(100)).collect();
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
    let done = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = tasks
        .into_iter()
        .map(|task| {
            let (client, done) = (client.clone(), done.clone());
            rt.spawn(async move {
                let result = client.submit(task, RESULT_WAIT).await;
                done.fetch_add(1, Ordering::SeqCst);
                result
            })
        })
        .collect();
    // Mid-way: some finished, and sw1 is running one.
    poll_async(&rt, Duration::from_secs(10), || async {
        if done.load(Ordering::SeqCst) < 2 {
            return None;
        }
        for id in &ids {
            if let Ok(Some(r)) = client.status(*id).await {
                if r.status == TaskStatus::Running && worker(&r) == "sw1" {
                    return Some(());
                }
            }
        }
        None
    })
    .expect("sw1 was running a task mid-way");
    let sigint_ms = now_ms();
    sw1.signal("INT");

    let records: Vec<TaskRecord> = rt
        .block_on(futures::future::join_all(handles))
        .into_iter()
        .map(|joined| joined.expect("no panic").expect("every task succeeds"))
        .collect();
    assert_eq!(records.len(), 20);
    // Every task succeeded. (Whether the interrupted subworker reported all it held,
    // rather than having some re-delivered, is pinned by the next test.)
    for record in &records {
        assert_eq!(value(record), 100, "{record:?}");
    }
    assert!(
        records.iter().any(|r| worker(r) == "sw1"
            && r.started_ms.unwrap() <= sigint_ms
            && r.completed_ms.unwrap() >= sigint_ms),
        "no sw1 task was running when it got SIGINT; the test did not test anything"
    );
    let status = sw1.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", sw1.describe());
    cp.proc
        .wait_for_line(true, &["subworker unregistered", "worker=sw1"], STARTUP);
}

/// Regression: a draining subworker checked "nothing running" without looking at the
/// outcomes its executor had queued but it had not sent yet (the executor forgets a
/// task before it queues the outcome). When several tasks finished together, it
/// unregistered with outcomes unsent, and the control plane re-ran those tasks
/// elsewhere. The race is timing-dependent, so four subworkers are interrupted at once.
#[test]
fn a_draining_subworker_reports_tasks_that_finish_together() {
    const WORKERS: usize = 4;
    const EACH: usize = 16;
    let dir = mytasks_dir();
    // The control plane can run the tasks too, so a re-delivered one still finishes
    // (and shows up as delivery 2 on `control-plane`).
    let mut cp = ControlPlane::start(&dir, &["--task-modules", "mytasks", "--concurrency", "64"]);
    let mut subworkers: Vec<Proc> = (1..=WORKERS)
        .map(|n| cp.subworker(&dir, &format!("sw{n}"), &["--concurrency", "16"]))
        .collect();
    let rt = runtime();
    let client = connect(&rt, &cp.base);

    // Long enough that all of them are seen running at once by the status calls below
    // (64 sequential round trips, slow in a debug build with a key on a busy machine:
    // with 400 ms tasks the first ones could finish before the last were seen).
    let tasks: Vec<TaskEnvelope> = (0..WORKERS * EACH).map(|_| sleep_task(2000)).collect();
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
    let batch = {
        let client = client.clone();
        rt.spawn(async move { client.submit_batch_wait(tasks, RESULT_WAIT).await })
    };
    poll_async(&rt, Duration::from_secs(10), || async {
        for id in &ids {
            let record = client.status(*id).await.ok()??;
            if record.status != TaskStatus::Running || !worker(&record).starts_with("sw") {
                return None;
            }
        }
        Some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the tasks never all ran on subworkers\n{}",
            cp.proc.describe()
        )
    });
    for sw in &subworkers {
        sw.signal("INT");
    }

    let records = rt
        .block_on(batch)
        .expect("no panic")
        .expect("the batch finishes");
    for sw in &mut subworkers {
        let status = sw.wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(0), "{}", sw.describe());
    }
    records.iter().for_each(assert_success);
    let rerun: Vec<String> = records
        .iter()
        .filter(|r| r.delivery_count != 1 || !worker(r).starts_with("sw"))
        .map(|r| {
            format!(
                "{} (delivery {} on {})",
                r.task_id,
                r.delivery_count,
                worker(r)
            )
        })
        .collect();
    assert!(
        rerun.is_empty(),
        "{WORKERS} subworkers were interrupted while running {EACH} tasks each; each said \
         \"all tasks finished and reported\", but {} tasks were re-run: {rerun:?}\n{}",
        rerun.len(),
        cp.proc.describe()
    );
}

// ---- finding the control plane, and stopping it --------------------------------------

#[test]
fn a_client_that_knows_only_the_discovery_address_works() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &["--worker-id", "cp-disc"]);
    // A subworker that also knows only the discovery address (it is told to use the
    // control plane's subworker port).
    let args: Vec<String> = [
        "subworker",
        "--worker-id",
        "swd",
        "--discovery-address",
        cp.discovery.as_str(),
        "--task-modules",
        "mytasks",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut swd = Proc::spawn(&dir, "swd", &args);
    swd.wait_for(true, "registered with the control plane", STARTUP);
    cp.wait_registered("swd");

    let rt = runtime();
    let client = rt
        .block_on(Client::discover_with(
            &cp.discovery,
            CLIENT_TIMEOUT,
            &client_config(),
        ))
        .expect("discovery finds the control plane");
    assert_eq!(client.control_plane_id(), "cp-disc");
    let sum: i64 = rt
        .block_on(client.call("add", &(40i64, 2i64)))
        .expect("add through discovery");
    assert_eq!(sum, 42);
    let record = rt
        .block_on(client.submit(json_task("add", json!([5, 3])), RESULT_WAIT))
        .expect("add succeeds");
    assert_eq!((value(&record), worker(&record)), (8, "swd"));
}

#[test]
fn control_plane_sigterm_finishes_in_flight_and_exits_0() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &["--task-modules", "mytasks", "--concurrency", "1"]);
    let rt = runtime();
    let waiter = connect(&rt, &cp.base);
    let other = connect(&rt, &cp.base);

    let task = sleep_task(500);
    let id = task.id;
    let blocking = {
        let waiter = waiter.clone();
        rt.spawn(async move { waiter.submit(task, RESULT_WAIT).await })
    };
    poll_async(&rt, Duration::from_secs(10), || async {
        let record = other.status(id).await.ok()??;
        (record.status == TaskStatus::Running).then_some(())
    })
    .expect("the task started");
    cp.proc.signal("TERM");

    // New work is refused (once the signal is seen), with a clear reason.
    let refusal = poll_async(&rt, Duration::from_secs(2), || async {
        match other.delay(json_task("add", json!([1, 2]))).await {
            Err(ClientError::Rejected(error)) => Some(error),
            _ => None,
        }
    })
    .unwrap_or_else(|| panic!("new tasks were still accepted\n{}", cp.proc.describe()));
    assert_eq!(refusal.kind, ErrorKind::Rejected, "{refusal}");
    assert!(refusal.message.contains("shutting down"), "{refusal}");

    let record = rt
        .block_on(blocking)
        .expect("no panic")
        .unwrap_or_else(|e| panic!("the in-flight task lost its result: {e}"));
    assert_eq!(value(&record), 500);
    let status = cp.proc.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", cp.proc.describe());
}

// ---- bad input -----------------------------------------------------------------------

/// Sends `frames` as they are (sealed, when the suite runs with a cluster key) on a
/// bare transport connection, and decodes the one reply.
async fn exchange(socket: &mut Connection, frames: Vec<Bytes>) -> FromControlPlane {
    tokio::time::timeout(Duration::from_secs(5), socket.sender.send(frames))
        .await
        .expect("send in time")
        .expect("send");
    recv(socket).await
}

async fn recv(socket: &mut Connection) -> FromControlPlane {
    let reply = tokio::time::timeout(Duration::from_secs(5), socket.receiver.recv())
        .await
        .expect("a reply within 5 s")
        .expect("a reply");
    protocol::decode::<FromControlPlane>(&reply).expect("the reply decodes")
}

fn expect_rejected(reply: FromControlPlane, what: &str, says: &str) {
    match reply {
        FromControlPlane::Rejected { request_id, error } => {
            assert_eq!(request_id, 0, "{what}");
            assert_eq!(error.kind, ErrorKind::Rejected, "{what}: {error}");
            assert!(error.message.contains(says), "{what}: {error}");
        }
        other => panic!("{what}: expected Rejected, got {other:?}"),
    }
}

#[test]
fn bad_frames_get_a_clear_error_and_lose_nothing() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &["--task-modules", "mytasks"]);
    let rt = runtime();
    rt.block_on(async {
        let mut socket = transport::connect(&cp.base, Duration::from_secs(5), &client_config())
            .await
            .expect("connect");

        expect_rejected(
            exchange(
                &mut socket,
                vec![Bytes::from_static(b"garbage, not a header")],
            )
            .await,
            "garbage",
            "magic",
        );
        match exchange(&mut socket, vec![Bytes::from_static(b"FW\x09whatever")]).await {
            FromControlPlane::Refused { reason } => {
                assert!(reason.contains('9') && reason.contains('1'), "{reason}")
            }
            other => panic!("version 9: expected Refused, got {other:?}"),
        }
        let hello = protocol::encode(&ToControlPlane::Hello({
            let mut value = Hello::new(PeerKind::Client, "raw");
            value.protocol_version = PROTOCOL_VERSION;
            value.features = vec![];
            value
        }))
        .unwrap();
        assert!(matches!(
            exchange(&mut socket, hello).await,
            FromControlPlane::Welcome(_)
        ));
        let submit = |request_id| {
            protocol::encode(&ToControlPlane::Submit {
                request_id,
                task: json_task("add", json!([5, 3])),
                wait: true,
            })
            .unwrap()
        };
        let whole = submit(1);
        let truncated = vec![whole[0].slice(..whole[0].len() - 5), whole[1].clone()];
        expect_rejected(
            exchange(&mut socket, truncated).await,
            "truncated header",
            "malformed",
        );
        let mut no_payload = submit(2);
        no_payload.pop();
        expect_rejected(
            exchange(&mut socket, no_payload).await,
            "missing payload frame",
            "payload frames",
        );

        // The same connection still works: accepted, then the result.
        let mut replies = [
            exchange(&mut socket, submit(3)).await,
            recv(&mut socket).await,
        ];
        replies.sort_by_key(|r| matches!(r, FromControlPlane::Result(_)));
        match &replies[..] {
            [FromControlPlane::Accepted { request_id: 3, .. }, FromControlPlane::Result(r)] => {
                assert_eq!(value(r), 8)
            }
            other => panic!("expected Accepted and Result, got {other:?}"),
        }
    });
    // And so does everyone else.
    assert_prints_8(&seed_add(&dir, &cp, false));
    assert!(cp.proc.try_exit().is_none(), "{}", cp.proc.describe());
}

#[test]
fn bad_commands_fail_in_one_line() {
    let dir = mytasks_dir();
    let cp = ControlPlane::start(&dir, &["--task-modules", "mytasks"]);
    let one_error_line = |out: &Output, says: &str| {
        assert!(!out.status.success(), "{out:?}");
        assert!(out.stdout.trim().is_empty(), "{out:?}");
        let lines = out.stderr_lines();
        assert_eq!(lines.len(), 1, "{out:?}");
        assert!(lines[0].contains(says), "{out:?}");
    };

    let unknown = submit_cli(
        &dir,
        &["--discovery-address", &cp.discovery, "--task-name", "nope"],
    );
    one_error_line(&unknown, "`nope`");

    let bad_args = submit_cli(
        &dir,
        &[
            "--control-plane-address",
            &cp.base,
            "--task-name",
            "add",
            "--args",
            "x",
            "y",
        ],
    );
    one_error_line(
        &bad_args,
        "failed (bad_arguments): the arguments of add(x: i64, y: i64) do not decode",
    );

    for flag in ["--control-plane-address", "--discovery-address"] {
        let nobody = free_address();
        let started = Instant::now();
        let out = submit_cli(
            &dir,
            &[
                flag,
                &nobody,
                "--connect-timeout",
                "1",
                "--task-name",
                "add",
                "--args",
                "5",
                "3",
            ],
        );
        let took = started.elapsed();
        one_error_line(&out, &nobody);
        assert!(took < Duration::from_secs(10), "{flag}: took {took:?}");
    }
}

/// `zeromq` 0.7's DEALER does not reconnect by itself: the client must, so a
/// long-lived client keeps working across a control plane restart at the same address.
#[test]
fn a_client_reconnects_after_the_control_plane_restarts() {
    let dir = mytasks_dir();
    let mut first = ControlPlane::start(&dir, &["--task-modules", "mytasks"]);
    let rt = runtime();
    let client = connect(&rt, &first.base);
    let sum: i64 = rt.block_on(client.call("add", &(2i64, 3i64))).expect("add");
    assert_eq!(sum, 5);
    first.proc.signal("TERM");
    assert_eq!(
        first.proc.wait_exit(Duration::from_secs(10)).code(),
        Some(0)
    );

    let args: Vec<String> = [
        "control-plane",
        "--no-gui",
        "--task-modules",
        "mytasks",
        "--base-address",
        first.base.as_str(),
        "--discovery-address",
        free_address().as_str(),
        "--subworker-port",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut second = Proc::spawn(&dir, "control-plane-2", &args);
    second.wait_for(false, "ready on", STARTUP);

    // Calls on the lost connection may fail (Disconnected); the client reconnects by
    // itself within its keepalive and backoff, and a later call works.
    let answer = poll_async(&rt, Duration::from_secs(20), || async {
        client.call::<_, i64>("add", &(40i64, 2i64)).await.ok()
    });
    assert_eq!(answer, Some(42), "{}", second.describe());
}

/// Two live subworkers sharing an id would evict each other forever: the second is
/// refused with one clear line and exits non-zero; the first keeps working.
#[test]
fn a_second_subworker_with_an_id_in_use_is_refused() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &[]);
    let _first = cp.subworker(&dir, "sw1", &[]);
    let args: Vec<String> = [
        "subworker",
        "--worker-id",
        "sw1",
        "--control-plane-address",
        cp.base.as_str(),
        "--task-modules",
        "mytasks",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut second = Proc::spawn(&dir, "sw1-again", &args);
    let status = second.wait_exit(Duration::from_secs(15));
    assert!(!status.success(), "{}", second.describe());
    assert!(second.stderr().contains("in use"), "{}", second.describe());

    let out = submit_cli(
        &dir,
        &[
            "--control-plane-address",
            &cp.base,
            "--task-name",
            "add",
            "--args",
            "5",
            "3",
            "--json",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(json_record(&out)["worker_id"], json!("sw1"));
}

/// The queue is not on disk yet, so what a stopping control plane still holds when its
/// grace runs out cannot survive it; but nobody waiting for such a task is left
/// hanging: each gets a failure that says why.
#[test]
fn control_plane_shutdown_tells_waiters_of_tasks_it_could_not_finish() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(
        &dir,
        &[
            "--task-modules",
            "mytasks",
            "--concurrency",
            "1",
            "--shutdown-grace",
            "0.5",
        ],
    );
    let rt = runtime();
    let client = connect(&rt, &cp.base);
    let wait_for = |task: TaskEnvelope, status: TaskStatus| {
        let id = task.id;
        let waiting = {
            let client = client.clone();
            rt.spawn(async move { client.submit(task, RESULT_WAIT).await })
        };
        poll_async(&rt, Duration::from_secs(10), || async {
            let record = client.status(id).await.ok()??;
            (record.status == status).then_some(())
        })
        .unwrap_or_else(|| panic!("task {id} never reached {status:?}"));
        waiting
    };
    // The one slot is taken by the sleep, so the add waits in the queue.
    let waits = [
        wait_for(sleep_task(5_000), TaskStatus::Running),
        wait_for(json_task("add", json!([1, 2])), TaskStatus::Queued),
    ];
    cp.proc.signal("TERM");
    for wait in waits {
        match rt.block_on(wait).expect("no panic") {
            Err(ClientError::TaskFailed { status, error, .. }) => {
                assert_eq!(status, TaskStatus::Failure);
                assert_eq!(error.kind, ErrorKind::Internal, "{error}");
                assert!(error.message.contains("shut down"), "{error}");
            }
            other => panic!("expected a failure saying the control plane stopped: {other:?}"),
        }
    }
    // It exits although the 5 s plugin call is still running on one of its threads.
    let status = cp.proc.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{}", cp.proc.describe());
}

/// A subworker running `sleep_ms 20000`, the task's id, and a client.
fn busy_subworker(
    dir: &TestDir,
    cp: &mut ControlPlane,
    extra: &[&str],
) -> (Proc, TaskId, Client, Runtime) {
    let mut args = vec!["--log-level", "DEBUG"];
    args.extend(extra);
    let mut sw = cp.subworker(dir, "slow", &args);
    let rt = runtime();
    let client = connect(&rt, &cp.base);
    let id = rt
        .block_on(client.delay(sleep_task(20_000)))
        .expect("accepted");
    poll_async(&rt, Duration::from_secs(10), || async {
        let r = client.status(id).await.ok()??;
        (r.status == TaskStatus::Running).then_some(())
    })
    .expect("the control plane handed the task out");
    // Running on the control plane's side from the hand-out; on the subworker's once
    // it logs taking it (a stop signal before that finds it idle).
    sw.wait_for_line(
        true,
        &["assigned", &format!("task={id}")],
        Duration::from_secs(10),
    );
    (sw, id, client, rt)
}

#[test]
fn a_stopping_subworker_hands_back_what_it_cannot_finish_within_its_grace() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &[]);
    let (mut sw, id, client, rt) = busy_subworker(&dir, &mut cp, &["--shutdown-grace", "1"]);
    let started = Instant::now();
    sw.signal("TERM");
    let status = sw.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{}", sw.describe());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it waited {:?}, not its 1 s grace",
        started.elapsed()
    );
    assert!(
        sw.stderr().contains("--shutdown-grace"),
        "{}",
        sw.describe()
    );
    // The task went back to the queue (no worker serves it now), not lost.
    let record = rt
        .block_on(client.status(id))
        .expect("answers")
        .expect("still known");
    assert_eq!(record.status, TaskStatus::Queued, "{record:?}");
    assert!(cp.proc.try_exit().is_none());
}

#[test]
fn a_second_ctrl_c_stops_a_draining_subworker_at_once() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &[]);
    let (mut sw, id, client, rt) = busy_subworker(&dir, &mut cp, &[]);
    sw.signal("INT");
    sw.wait_for(true, "shutting down", Duration::from_secs(5));
    let started = Instant::now();
    sw.signal("INT");
    let status = sw.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(130), "{}", sw.describe());
    assert!(started.elapsed() < Duration::from_secs(3));
    // The control plane saw the connection drop and queued the task again.
    let requeued = poll_async(&rt, Duration::from_secs(5), || async {
        let r = client.status(id).await.ok()??;
        (r.status == TaskStatus::Queued).then_some(())
    });
    assert!(requeued.is_some(), "{}", cp.proc.describe());
}

#[test]
fn tasks_whose_only_worker_is_gone_say_why_and_fail_after_the_unserved_timeout() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &["--unserved-timeout", "3"]);
    let mut sw = cp.subworker(&dir, "only", &[]);
    let rt = runtime();
    let client = connect(&rt, &cp.base);
    let first = rt
        .block_on(client.delay(sleep_task(20_000)))
        .expect("accepted");
    poll_async(&rt, Duration::from_secs(10), || async {
        let r = client.status(first).await.ok()??;
        (r.status == TaskStatus::Running).then_some(())
    })
    .expect("it runs");
    sw.kill();
    // It says why it waits.
    let why = poll_async(&rt, Duration::from_secs(5), || async {
        let r = client.status(first).await.ok()??;
        r.error.map(|e| e.message)
    })
    .expect("the status says why the task waits");
    assert!(
        why.starts_with("waiting: no worker serves sleep_ms since"),
        "{why}"
    );
    // The same name is still accepted while work waits for it.
    let second = rt
        .block_on(client.delay(sleep_task(10)))
        .expect("accepted while sleep_ms work waits");
    // Past --unserved-timeout both fail, saying why.
    for id in [first, second] {
        let record = rt
            .block_on(client.result(id, Duration::from_secs(20)))
            .expect("answers")
            .expect("known");
        assert_eq!(record.status, TaskStatus::Failure, "{record:?}");
        let error = record.error.expect("an error");
        assert!(error.message.contains("--unserved-timeout"), "{error}");
    }
    assert!(cp.proc.try_exit().is_none());
}

/// A connection to `cp` that said `Hello` (in version 1) with `features`.
async fn raw_client(cp: &ControlPlane, features: Vec<String>) -> transport::Connection {
    let mut conn = transport::connect(&cp.base, Duration::from_secs(5), &client_config())
        .await
        .expect("connect");
    let mut hello = Hello::new(PeerKind::Client, "raw");
    hello.features = features;
    conn.sender
        .send(protocol::encode_as(1, &ToControlPlane::Hello(hello)).unwrap())
        .await
        .unwrap();
    conn
}

/// Pushes the results of a 300-task batch to a raw connection; returns how many
/// records came in `Result` and in `Results` messages, and every task id seen.
fn results_of_a_batch(cp: &ControlPlane, mut features: Vec<String>) -> (usize, usize, Vec<TaskId>) {
    let rt = runtime();
    rt.block_on(async {
        features.push(format!(
            "{}{PROTOCOL_VERSION}",
            protocol::PROTOCOL_MAX_FEATURE
        ));
        let mut conn = raw_client(cp, features).await;
        let tasks: Vec<TaskEnvelope> = (0..300)
            .map(|i| TaskEnvelope::new("add", Codec::Json, Bytes::from(format!("[{i},1]"))))
            .collect();
        // Each value must come with its own record: add(i, 1) = i + 1.
        let expected: HashMap<TaskId, String> = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id, (i + 1).to_string()))
            .collect();
        let check = |record: &TaskRecord| {
            assert_eq!(record.status, TaskStatus::Success, "{record:?}");
            assert_eq!(
                std::str::from_utf8(&record.value).unwrap(),
                expected[&record.task_id],
                "the value of {}",
                record.task_id
            );
        };
        let (mut single, mut grouped, mut ids) = (0, 0, Vec::new());
        let submit = ToControlPlane::SubmitBatch {
            request_id: 1,
            tasks,
            wait: true,
        };
        let mut sent = false;
        let deadline = Instant::now() + Duration::from_secs(30);
        while ids.len() < 300 && Instant::now() < deadline {
            let frames = tokio::time::timeout(Duration::from_secs(10), conn.receiver.recv())
                .await
                .expect("a message in time")
                .expect("a message");
            match protocol::decode::<FromControlPlane>(&frames).expect("decodes") {
                FromControlPlane::Welcome(w) => {
                    conn.sender
                        .send(protocol::encode_as(w.protocol_version, &submit).unwrap())
                        .await
                        .unwrap();
                    sent = true;
                }
                FromControlPlane::Accepted { task_ids, .. } => assert_eq!(task_ids.len(), 300),
                FromControlPlane::Result(record) => {
                    check(&record);
                    single += 1;
                    ids.push(record.task_id);
                }
                FromControlPlane::Results { records } => {
                    assert!(records.len() > 1, "a Results of one record");
                    for record in records {
                        check(&record);
                        grouped += 1;
                        ids.push(record.task_id);
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(sent, "no Welcome");
        (single, grouped, ids)
    })
}

#[test]
fn results_to_a_peer_that_reads_them_share_messages_and_others_get_one_each() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &[]);
    let _sw = cp.subworker(&dir, "sw1", &["--concurrency", "16"]);
    // A peer that says it reads `Results`: every record once, most of them grouped.
    let (single, grouped, mut ids) =
        results_of_a_batch(&cp, vec![protocol::RESULTS_BATCH_FEATURE.to_string()]);
    assert_eq!(single + grouped, 300);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 300, "each result exactly once");
    assert!(grouped > 0, "no Results at all ({single} single)");
    // A peer that does not (an older client): one `Result` each.
    let (single, grouped, _) = results_of_a_batch(&cp, Vec::new());
    assert_eq!((single, grouped), (300, 0));
}

/// What a raw client that says `features` in its `Hello` hears, in order, for three
/// `Submit`s with `wait`: `add` (runs), `no_such_task` (refused) and `add` again.
fn answers_to_waiting_submits(cp: &ControlPlane, features: Vec<String>) -> Vec<String> {
    let rt = runtime();
    rt.block_on(async {
        let mut conn = raw_client(cp, features).await;
        let mut version = 1;
        let mut heard = Vec::new();
        for (request_id, name) in [(1, "add"), (2, "no_such_task"), (3, "add")] {
            let submit = ToControlPlane::Submit {
                request_id,
                task: TaskEnvelope::new(name, Codec::Json, Bytes::from_static(b"[2,3]")),
                wait: true,
            };
            conn.sender
                .send(protocol::encode_as(version, &submit).unwrap())
                .await
                .unwrap();
            // Read until this submit's final answer: a `Result` or a `Rejected`.
            loop {
                let frames = tokio::time::timeout(Duration::from_secs(10), conn.receiver.recv())
                    .await
                    .expect("an answer in time")
                    .expect("an answer");
                match protocol::decode::<FromControlPlane>(&frames).expect("decodes") {
                    FromControlPlane::Welcome(w) => version = w.protocol_version,
                    FromControlPlane::Accepted { request_id, .. } => {
                        heard.push(format!("Accepted {request_id}"))
                    }
                    FromControlPlane::Rejected { request_id, .. } => {
                        heard.push(format!("Rejected {request_id}"));
                        break;
                    }
                    FromControlPlane::Result(record) => {
                        assert_eq!(&record.value[..], b"5", "{record:?}");
                        heard.push(format!("Result {request_id}"));
                        break;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        heard
    })
}

/// A client that says `accepted-by-result` gets no `Accepted` for a task it waits for
/// (its result answers it; one wake-up per task instead of two), and still gets
/// `Rejected` for one that is refused. Other clients hear `Accepted` first, as before.
#[test]
fn a_waiting_submit_is_answered_by_its_result_alone_when_the_client_asks() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &[]);
    let _sw = cp.subworker(&dir, "sw1", &[]);
    let quiet =
        answers_to_waiting_submits(&cp, vec![protocol::ACCEPTED_BY_RESULT_FEATURE.to_string()]);
    assert_eq!(quiet, ["Result 1", "Rejected 2", "Result 3"]);
    let older = answers_to_waiting_submits(&cp, Vec::new());
    assert_eq!(
        older,
        [
            "Accepted 1",
            "Result 1",
            "Rejected 2",
            "Accepted 3",
            "Result 3"
        ]
    );
}
