//! Prefetching, the way users run it: a real control plane and subworker, the real
//! `mytasks` plugin.
//!
//! - On a saturated cluster, a critical task submitted behind a full prefetch window
//!   is passed by at most the window minus one lower-priority starts (counted from
//!   the start times the tasks themselves return, not from timings).
//! - A prefetched task is `assigned` until it starts, and a cancel takes it off the
//!   subworker's queue without running it.
//! - A long task is never prefetched: it stays `queued` on the control plane.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fastworker_client::{decode_value, Client};
use fastworker_protocol::{
    CancelOutcome, Codec, Priority, TaskEnvelope, TaskId, TaskRecord, TaskStatus,
};
use serde_json::{json, Value};
use tokio::runtime::Runtime;

use crate::{
    dashboard::{self, get_json},
    procs::{connect, mytasks_dir, poll_until, runtime},
    support::TestDir,
};

const WAIT: Duration = Duration::from_secs(30);

/// The control plane's `--prefetch` here: no window holds more than this many (the
/// default would be as many as this machine runs in 1 ms).
const WINDOW: u64 = 4;

/// `sleep_ms(ms)`: a long task (never prefetched).
fn sleep_ms(ms: u64, priority: Priority) -> TaskEnvelope {
    let mut task = TaskEnvelope::new(
        "sleep_ms",
        Codec::Json,
        Bytes::from(json!([ms]).to_string()),
    );
    task.priority = priority;
    task
}

/// Subworker flags that keep prefetched tasks waiting behind a long one (by default
/// they are handed back after 50 ms), for tests that look at them there.
const HOLD: &[&str] = &["--handback-after", "60"];

/// How long each short task sleeps, in µs.
const SHORT_US: u64 = 0;

/// `stamp(us)`: sleeps `us` µs and returns its start in Unix ns.
fn stamp(us: u64, priority: Priority) -> TaskEnvelope {
    let mut task = TaskEnvelope::new("stamp", Codec::Json, Bytes::from(json!([us]).to_string()));
    task.priority = priority;
    task
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as u64
}

fn final_record(rt: &Runtime, client: &Client, id: TaskId) -> TaskRecord {
    let record = rt
        .block_on(client.result(id, WAIT))
        .unwrap_or_else(|e| panic!("no result for {id}: {e}"))
        .unwrap_or_else(|| panic!("{id} unknown"));
    assert_eq!(record.status, TaskStatus::Success, "{record:?}");
    record
}

fn started_ns(record: &TaskRecord) -> u64 {
    decode_value(record).unwrap_or_else(|e| panic!("{record:?}: {e}"))
}

/// The one subworker `sw1` as the dashboard shows it.
fn worker(d: &dashboard::Dashboard) -> Value {
    let workers = get_json(d, "api/workers");
    workers
        .as_array()
        .and_then(|w| w.iter().find(|w| w["worker_id"] == "sw1"))
        .cloned()
        .unwrap_or_else(|| panic!("no sw1 in {workers}"))
}

/// A control plane with its dashboard (to read windows) and subworker `sw1` (one slot,
/// the default, and `sw_args`) that has run `stamp` enough for its run time to be
/// measured.
fn cluster(
    dir: &TestDir,
    rt: &Runtime,
    sw_args: &[&str],
) -> (dashboard::Dashboard, crate::procs::Proc, Client) {
    let mut d = dashboard::start(dir, &["--prefetch", &WINDOW.to_string()], &[]);
    let sw = d.cp.subworker(dir, "sw1", sw_args);
    let client = connect(rt, &d.cp.base);
    // A run time goes up at once with one long call (a call preempted on a loaded
    // machine is one) and down by an eighth per short call: warm up until it is down.
    let mut measured = Value::Null;
    for _ in 0..10 {
        let warm: Vec<TaskEnvelope> = (0..20).map(|_| stamp(SHORT_US, Priority::Normal)).collect();
        let records = rt
            .block_on(client.submit_batch_wait(warm, WAIT))
            .expect("the warm-up runs");
        assert!(records.iter().all(|r| r.status == TaskStatus::Success));
        measured = poll_until(Duration::from_secs(10), || {
            let w = worker(&d);
            (w["run_us"]["stamp"].as_f64()? > 0.0).then_some(w)
        })
        .expect("sw1 reports the run time of stamp");
        if measured["windows"]["stamp"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
    }
    let window = measured["windows"]["stamp"].as_u64().unwrap_or(0);
    assert!(
        (2..=WINDOW).contains(&window),
        "short tasks get more than one place per slot, at most --prefetch: {measured}"
    );
    (d, sw, client)
}

#[test]
fn a_critical_task_is_passed_by_at_most_the_window_minus_one() {
    let dir = mytasks_dir();
    let rt = runtime();
    let (d, _sw, client) = cluster(&dir, &rt, HOLD);
    for round in 0..3 {
        // A long task holds the one slot while the window fills with short low ones
        // and more wait on the control plane: saturated, and nothing starts while the
        // critical task is submitted, so every start is known to be before or after.
        let blocker = rt
            .block_on(client.delay(sleep_ms(500, Priority::Low)))
            .expect("the blocker is accepted");
        let low: Vec<TaskEnvelope> = (0..600).map(|_| stamp(SHORT_US, Priority::Low)).collect();
        let low_ids = rt
            .block_on(client.submit_batch(low))
            .expect("the low tasks are accepted");
        let window = poll_until(Duration::from_secs(10), || {
            let w = worker(&d);
            let window = w["windows"]["stamp"].as_u64()?;
            (window >= 2 && w["running"].as_u64()? == window).then_some(window)
        });
        assert!(window.is_some(), "the window fills: {}", worker(&d));
        let sent = now_ns();
        let critical_id = rt
            .block_on(client.delay(stamp(0, Priority::Critical)))
            .expect("the critical task is accepted");
        let accepted = now_ns();
        let critical_start = started_ns(&final_record(&rt, &client, critical_id));
        let starts: Vec<u64> = low_ids
            .iter()
            .map(|id| started_ns(&final_record(&rt, &client, *id)))
            .collect();
        final_record(&rt, &client, blocker);
        let first_low = starts.iter().min().copied().unwrap_or(0);
        assert!(
            first_low > accepted,
            "round {round}: premise broken, a low task started while the critical one was submitted (the blocker ended too soon)"
        );
        let passed = starts
            .iter()
            .filter(|s| (sent..critical_start).contains(s))
            .count() as u64;
        let after = starts.iter().filter(|s| **s > critical_start).count();
        assert!(
            after > 0,
            "round {round}: premise broken, every low task started before the critical one"
        );
        eprintln!(
            "round {round}: window {window:?} (at most {WINDOW}); {passed} lower-priority tasks started after the critical one was submitted and before it started, {after} after it"
        );
        assert!(
            passed < WINDOW,
            "round {round}: {passed} lower-priority tasks started after the critical one was submitted and before it started; no window holds more than {WINDOW}"
        );
    }
}

#[test]
fn a_prefetched_task_is_assigned_until_it_starts_and_cancels_without_running() {
    let dir = mytasks_dir();
    let rt = runtime();
    let (d, _sw, client) = cluster(&dir, &rt, HOLD);
    let window = worker(&d)["windows"]["stamp"]
        .as_u64()
        .expect("a window for stamp") as usize;
    // A long blocker takes the one slot; the window's other places go to short tasks
    // that wait on the subworker behind it; two more wait on the control plane.
    let blocker = rt
        .block_on(client.delay(stamp(1_500_000, Priority::Normal)))
        .expect("accepted");
    let short: Vec<TaskEnvelope> = (0..window + 1)
        .map(|_| stamp(SHORT_US, Priority::Normal))
        .collect();
    let ids = rt.block_on(client.submit_batch(short)).expect("accepted");
    let mut expected = vec![Some(TaskStatus::Assigned); window - 1];
    expected.extend([Some(TaskStatus::Queued); 2]);
    let mut seen = Vec::new();
    let settled = poll_until(Duration::from_secs(10), || {
        let now: Vec<Option<TaskStatus>> = ids
            .iter()
            .map(|id| {
                rt.block_on(client.status(*id))
                    .ok()
                    .flatten()
                    .map(|r| r.status)
            })
            .collect();
        let done = now == expected;
        seen.push(now);
        done.then_some(())
    });
    assert!(
        settled.is_some(),
        "window {window}: expected {expected:?}, saw {seen:?}"
    );
    let outcome = rt.block_on(client.cancel(ids[0])).expect("answers");
    assert_eq!(outcome, CancelOutcome::Signalled, "held by the subworker");
    let cancelled = rt
        .block_on(client.result(ids[0], WAIT))
        .expect("answers")
        .expect("known");
    assert_eq!(cancelled.status, TaskStatus::Cancelled, "{cancelled:?}");
    let message = cancelled.error.as_ref().map(|e| e.message.clone());
    assert_eq!(
        message.as_deref(),
        Some("cancelled before it started"),
        "{cancelled:?}"
    );
    let blocker = final_record(&rt, &client, blocker);
    let blocker_start = started_ns(&blocker);
    for id in &ids[1..] {
        let record = final_record(&rt, &client, *id);
        assert!(started_ns(&record) > blocker_start, "{record:?}");
    }
}

#[test]
fn a_long_task_is_never_prefetched() {
    let dir = mytasks_dir();
    let rt = runtime();
    let (_d, _sw, client) = cluster(&dir, &rt, &[]);
    // A long sleep_ms takes the slot: the status of a short one submitted behind it.
    let behind_a_long_one = || {
        let sleep = |ms: u64| sleep_ms(ms, Priority::Normal);
        let long = rt.block_on(client.delay(sleep(500))).expect("accepted");
        let short = rt.block_on(client.delay(sleep(10))).expect("accepted");
        let status = poll_until(Duration::from_secs(10), || {
            let a = rt.block_on(client.status(long)).ok()??;
            let b = rt.block_on(client.status(short)).ok()??;
            (a.status == TaskStatus::Running).then_some(b.status)
        })
        .expect("the long one runs");
        final_record(&rt, &client, long);
        final_record(&rt, &client, short);
        status
    };
    // sleep_ms has never run here: its run time is unknown, so it is not prefetched.
    assert_eq!(behind_a_long_one(), TaskStatus::Queued, "unmeasured");
    // Now its run time is measured, and long: still never prefetched.
    assert_eq!(behind_a_long_one(), TaskStatus::Queued, "measured long");
}

#[test]
fn tasks_waiting_behind_a_long_one_are_handed_back_and_run_elsewhere() {
    let dir = mytasks_dir();
    let rt = runtime();
    let (mut d, _sw1, client) = cluster(&dir, &rt, &[]);
    // sw1's one slot takes a long task before anyone else is there.
    let long = rt
        .block_on(client.delay(sleep_ms(2_000, Priority::Normal)))
        .expect("accepted");
    let running = poll_until(Duration::from_secs(10), || {
        let r = rt.block_on(client.status(long)).ok()??;
        (r.status == TaskStatus::Running).then_some(())
    });
    assert!(running.is_some(), "the long task runs on sw1");
    let _sw2 = d.cp.subworker(&dir, "sw2", &[]);
    // One short task takes sw2's free slot; the others are prefetched behind the long
    // one on sw1 (sw1 has measured them short), which hands them back once its slot
    // has been on the long one for a while, and they run on sw2.
    let short: Vec<TaskEnvelope> = (0..3).map(|_| stamp(0, Priority::Normal)).collect();
    let ids = rt.block_on(client.submit_batch(short)).expect("accepted");
    let records: Vec<TaskRecord> = ids
        .iter()
        .map(|id| final_record(&rt, &client, *id))
        .collect();
    let long = final_record(&rt, &client, long);
    for record in &records {
        assert_eq!(
            record.worker_id.as_ref().map(|w| w.as_str()),
            Some("sw2"),
            "{record:?}"
        );
        assert!(
            record.completed_ms < long.completed_ms,
            "a short task waited for the long one: {record:?}"
        );
    }
}
