//! Issue 4, the task lifecycle, the way users see it: real `fastworker control-plane`
//! and `fastworker subworker` processes on free ports of 127.0.0.1, driven by the real
//! `fastworker submit`, `status`, `cancel`, `dead-letters` and `list` commands.
//!
//! - retries: a task that always fails ends `failure` after exactly max_retries + 1
//!   attempts, and is seen `retrying` in between;
//! - timeouts: a cooperative task and one that ignores its timeout both end `timed_out`
//!   on time; a subworker whose task keeps ignoring it drains and restarts in place,
//!   and the tasks submitted meanwhile all complete;
//! - countdown / eta: never early, exactly once; a cancelled scheduled task never runs;
//! - cancel: queued, running, finished and unknown tasks;
//! - batches: every line accepted, or (an unknown task among them) none;
//! - periodic tasks: one run at start-up however many hosts serve them;
//! - callbacks: the final record reaches a ROUTER; an address nobody answers on holds
//!   nothing up;
//! - dead letters: a task whose workers keep dying ends `worker_lost`, is listed, and
//!   replays to success.
//!
//! Times are short and real (retry delays of 0.1 s, timeouts of 0.3 s). Every wait is
//! bounded in polls and in time, and every process belongs to a [`Proc`] guard that
//! kills it when the test ends. Records are read the way scripts read them: `--json`.
//!
//! Four tests pin bugs in the host (each names the code in its doc comment) and fail
//! until they are fixed: a countdown counted on the client's clock before it connects,
//! a retry counted as a lost delivery, a task that stops at its deadline reported with
//! its own error instead of `timed_out`, and an interval task run again as soon as its
//! subworker comes back.

use std::{
    io::{self, ErrorKind as IoErrorKind},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use fastworker_protocol::{now_ms, TaskId};
use serde_json::{json, Value};
use tokio::runtime::Runtime;
use zeromq::{RouterSocket, Socket, SocketRecv};

use crate::{
    procs::{free_address, free_port, mytasks_dir, ControlPlane, Proc, STARTUP},
    support::{run, Output, TestDir},
};

/// How often a test asks `fastworker status` (each ask is a process start).
const STATUS_POLL: Duration = Duration::from_millis(50);

/// How long a test waits for a task to reach a status it must reach.
const STATUS_WAIT: Duration = Duration::from_secs(20);

// ---- running the CLI -------------------------------------------------------------------

/// Polls `check` every `every` until it answers `Some`: at most `limit` long and at
/// most `limit / every + 1` times. `None` when it never did.
fn poll_every<T>(
    every: Duration,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    let max_polls = (limit.as_millis() / every.as_millis().max(1)) as usize + 1;
    for _ in 0..max_polls {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(every);
    }
    None
}

/// `fastworker <command> --control-plane-address <the control plane> <args>` in `dir`.
fn fw(dir: &TestDir, cp: &ControlPlane, command: &str, args: &[&str]) -> Output {
    let mut cmd = dir.fastworker();
    cmd.arg(command)
        .arg("--control-plane-address")
        .arg(&cp.base)
        .args(args);
    run(cmd)
}

/// The one JSON document on stdout.
fn json_out(out: &Output) -> Value {
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {out:?}"))
}

/// Every stdout line as JSON.
fn json_lines(out: &Output) -> Vec<Value> {
    out.stdout_lines()
        .iter()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("line {line:?} is not JSON ({e}): {out:?}"))
        })
        .collect()
}

/// `submit <args> --json`, waiting: the final record, whatever the exit code (a failed
/// task still prints its record; the exit code is checked by the caller).
fn submit_json(dir: &TestDir, cp: &ControlPlane, args: &[&str]) -> (Output, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = fw(dir, cp, "submit", &all);
    let record = json_out(&out);
    (out, record)
}

/// `submit <args> --non-blocking`: the task id it prints.
fn submit_id(dir: &TestDir, cp: &ControlPlane, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.push("--non-blocking");
    let out = fw(dir, cp, "submit", &all);
    assert!(out.status.success(), "{out:?}");
    let lines = out.stdout_lines();
    assert_eq!(lines.len(), 1, "one id expected: {out:?}");
    TaskId::parse(lines[0]).unwrap_or_else(|e| panic!("not a task id ({e}): {out:?}"));
    lines[0].to_string()
}

/// `status --task-id <id> --json`: the task's record now.
fn status(dir: &TestDir, cp: &ControlPlane, id: &str) -> Value {
    let out = fw(dir, cp, "status", &["--task-id", id, "--json"]);
    assert!(out.status.success(), "status of {id}: {out:?}");
    json_out(&out)
}

/// Polls `status` until `wanted` holds for the record; fails the test (with the
/// control plane's log) when it does not within [`STATUS_WAIT`].
fn wait_status(
    dir: &TestDir,
    cp: &ControlPlane,
    id: &str,
    what: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    poll_every(STATUS_POLL, STATUS_WAIT, || {
        last = status(dir, cp, id);
        wanted(&last).then(|| last.clone())
    })
    .unwrap_or_else(|| {
        panic!(
            "task {id} never became {what} within {STATUS_WAIT:?}; last record: {last}\n{}",
            cp.proc.describe()
        )
    })
}

fn is_final(record: &Value) -> bool {
    matches!(
        record["status"].as_str(),
        Some("success" | "failure" | "cancelled")
    )
}

/// The task's final record, polling for it.
fn wait_final(dir: &TestDir, cp: &ControlPlane, id: &str) -> Value {
    wait_status(dir, cp, id, "final", is_final)
}

fn status_is(record: &Value, wanted: &str) -> bool {
    record["status"] == json!(wanted)
}

/// The error kind of a record (`""` when it has no error).
fn kind(record: &Value) -> &str {
    record["error"]["kind"].as_str().unwrap_or("")
}

/// A Unix-ms field of a record that must be set.
fn ms(record: &Value, field: &str) -> u64 {
    record[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not set: {record}"))
}

/// How many lines of `text` contain every one of `needles`.
fn count_lines(text: &str, needles: &[&str]) -> usize {
    text.lines()
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .count()
}

/// Waits until `proc`'s log holds at least `n` lines containing every one of `needles`.
fn wait_log_count(proc: &Proc, needles: &[&str], n: usize, limit: Duration) {
    poll_every(Duration::from_millis(20), limit, || {
        (count_lines(&proc.stderr(), needles) >= n).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "fewer than {n} log lines with {needles:?} within {limit:?}\n{}",
            proc.describe()
        )
    });
}

/// Asserts a failed command printed nothing on stdout and exactly one line on stderr,
/// containing `says`.
fn assert_one_error_line(out: &Output, says: &str) {
    assert!(!out.status.success(), "should have failed: {out:?}");
    assert!(out.stdout.trim().is_empty(), "{out:?}");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "one error line expected: {out:?}");
    assert!(lines[0].contains(says), "{says:?} expected: {out:?}");
}

/// Starts a subworker `id` with the seed flags (like [`ControlPlane::subworker`]) whose
/// output goes to `<name>.out` / `<name>.err`, so the same id can be started twice in one
/// directory; waits for its own "registered" line only.
fn spawn_subworker(cp: &ControlPlane, dir: &TestDir, id: &str, name: &str) -> Proc {
    let args: Vec<String> = [
        "subworker",
        "--worker-id",
        id,
        "--control-plane-address",
        cp.base.as_str(),
        "--base-address",
        free_address().as_str(),
        "--task-modules",
        "mytasks",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut proc = Proc::spawn(dir, name, &args);
    proc.wait_for(true, "registered with the control plane", STARTUP);
    proc
}

// ---- retries -------------------------------------------------------------------------

#[test]
fn a_task_that_always_fails_ends_failure_after_exactly_max_retries_plus_one_attempts() {
    let dir = mytasks_dir();
    let cp = ControlPlane::start(&dir, &["--task-modules", "mytasks"]);

    let (out, failed) = submit_json(
        &dir,
        &cp,
        &[
            "--task-name",
            "fail",
            "--args",
            "boom",
            "--max-retries",
            "2",
            "--retry-delay",
            "0.1",
        ],
    );
    assert!(
        !out.status.success(),
        "a failed task exits non-zero: {out:?}"
    );
    assert_eq!(out.stderr_lines().len(), 1, "{out:?}");
    assert_eq!(failed["status"], json!("failure"), "{failed}");
    assert_eq!(kind(&failed), "failed", "{failed}");
    assert_eq!(failed["error"]["message"], json!("boom"), "{failed}");
    assert_eq!(
        failed["attempts"],
        json!(3),
        "2 retries = 3 attempts: {failed}"
    );
    // The delays were waited: 0.1 s, then 0.2 s (backoff ×2 by default).
    let took = ms(&failed, "completed_at") - ms(&failed, "submitted_at");
    assert!(
        took >= 300,
        "3 attempts with delays 0.1 + 0.2 s took {took} ms"
    );

    let (out, panicked) = submit_json(
        &dir,
        &cp,
        &[
            "--task-name",
            "panic",
            "--args",
            "oops",
            "--max-retries",
            "1",
            "--retry-delay",
            "0.1",
        ],
    );
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(panicked["status"], json!("failure"), "{panicked}");
    assert_eq!(kind(&panicked), "panicked", "{panicked}");
    assert_eq!(
        panicked["attempts"],
        json!(2),
        "1 retry = 2 attempts: {panicked}"
    );

    // They ended: well past another retry delay, nothing ran again.
    thread::sleep(Duration::from_millis(500));
    for record in [&failed, &panicked] {
        let id = record["task_id"].as_str().expect("an id");
        let later = status(&dir, &cp, id);
        assert_eq!(
            (&later["status"], &later["attempts"], &later["completed_at"]),
            (
                &record["status"],
                &record["attempts"],
                &record["completed_at"]
            ),
            "a finished task ran again: {later}"
        );
    }
}

#[test]
fn a_retrying_task_is_seen_retrying_then_ends_failure() {
    let dir = mytasks_dir();
    let cp = ControlPlane::start(&dir, &["--task-modules", "mytasks"]);

    let id = submit_id(
        &dir,
        &cp,
        &[
            "--task-name",
            "fail",
            "--args",
            "boom",
            "--max-retries",
            "1",
            "--retry-delay",
            "1.0",
        ],
    );
    // Every status seen, in order, without repeats.
    let mut seen: Vec<String> = Vec::new();
    let mut retrying: Option<Value> = None;
    let last = poll_every(STATUS_POLL, STATUS_WAIT, || {
        let record = status(&dir, &cp, &id);
        let now = record["status"].as_str().unwrap_or("?").to_string();
        if seen.last() != Some(&now) {
            seen.push(now.clone());
        }
        if now == "retrying" && retrying.is_none() {
            retrying = Some(record.clone());
        }
        is_final(&record).then_some(record)
    })
    .unwrap_or_else(|| panic!("never final; seen {seen:?}\n{}", cp.proc.describe()));

    let at = |s: &str| seen.iter().position(|x| x == s);
    assert!(
        at("retrying").is_some(),
        "`retrying` was never visible during a 1 s retry delay; seen {seen:?}"
    );
    assert!(at("retrying") < at("failure"), "seen {seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("failure"), "{seen:?}");
    let retrying = retrying.expect("seen above");
    assert_eq!(retrying["attempts"], json!(1), "{retrying}");
    assert_eq!(
        kind(&retrying),
        "failed",
        "the first failure is shown: {retrying}"
    );
    assert_eq!(last["attempts"], json!(2), "{last}");
    assert_eq!(kind(&last), "failed", "{last}");
    // The retry waited its delay: it started at least 1 s after the first attempt did.
    let retry_started = ms(&last, "started_at");
    let submitted = ms(&last, "submitted_at");
    assert!(
        retry_started >= submitted + 1000,
        "the retry started {} ms after submission, before its 1 s delay: {last}",
        retry_started - submitted
    );
}

// ---- timeouts ------------------------------------------------------------------------

#[test]
fn a_task_past_its_timeout_ends_timed_out_on_time() {
    let dir = mytasks_dir();
    let cp = ControlPlane::start(&dir, &["--task-modules", "mytasks"]);

    let started = Instant::now();
    let (out, record) = submit_json(
        &dir,
        &cp,
        &[
            "--task-name",
            "sleep_ms",
            "--args",
            "5000",
            "--timeout",
            "0.3",
        ],
    );
    let took = started.elapsed();
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(record["status"], json!("failure"), "{record}");
    // Whether the executor's timer or the task's own look at its deadline came first.
    assert_eq!(kind(&record), "timed_out", "{record}");
    assert!(out.stderr_lines()[0].contains(kind(&record)), "{out:?}");
    assert_eq!(record["attempts"], json!(1), "{record}");
    assert!(
        took < Duration::from_secs(3),
        "a 0.3 s timeout on a 5 s task ended after {took:?}"
    );
    // The deadline is set when the task is handed out, a moment before the executor
    // stamps `started_at`, so the attempt may look a few ms shorter than 300.
    let ran = ms(&record, "completed_at") - ms(&record, "started_at");
    assert!(
        (250..1500).contains(&ran),
        "the attempt ran {ran} ms: {record}"
    );
}

/// Regression: a cooperative task polls `ctx.is_cancelled()`, which the SDK makes true
/// once the deadline has passed (plugin-sdk/src/context.rs). It then stops and returns
/// its own error; when that return beat the executor's own timer (often, under load),
/// the executor reported it as `failed: cancelled while sleeping` instead of
/// `timed_out`. Sixteen at once, up to six rounds, make the race show.
#[test]
fn a_task_that_stops_itself_at_its_deadline_is_reported_timed_out() {
    const AT_ONCE: usize = 16;
    let dir = mytasks_dir();
    let cp = ControlPlane::start(
        &dir,
        &[
            "--task-modules",
            "mytasks",
            "--concurrency",
            &AT_ONCE.to_string(),
        ],
    );
    let batch = dir.child("timeouts.jsonl");
    std::fs::write(
        &batch,
        "{\"task_name\": \"sleep_ms\", \"args\": [5000], \"timeout\": 0.3}\n".repeat(AT_ONCE),
    )
    .expect("write the batch file");
    let path = batch.to_str().expect("a UTF-8 path");
    for round in 1..=6 {
        let out = fw(&dir, &cp, "submit", &["--batch", path, "--json"]);
        assert!(!out.status.success(), "{out:?}");
        let records = json_lines(&out);
        assert_eq!(records.len(), AT_ONCE, "{out:?}");
        for record in &records {
            assert_eq!(record["status"], json!("failure"), "{record}");
            assert_eq!(
                kind(record),
                "timed_out",
                "round {round}: a task that ran past its 0.3 s timeout (and stopped because \
                 of it) is reported as its own error, not as timed out: {record}"
            );
        }
    }
}

#[test]
fn a_hung_task_times_out_and_its_subworker_restarts_in_place_losing_nothing() {
    let dir = mytasks_dir();
    // No task modules: every task must go through the one subworker.
    let mut cp = ControlPlane::start(&dir, &[]);
    let mut sw = cp.subworker(
        &dir,
        "swh",
        &["--hung-task-grace", "0.5", "--heartbeat-interval", "0.2"],
    );

    let started = Instant::now();
    let (out, hung) = submit_json(
        &dir,
        &cp,
        &[
            "--task-name",
            "hang_ms",
            "--args",
            "3000",
            "--timeout",
            "0.2",
        ],
    );
    let took = started.elapsed();
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(
        (
            hung["status"].as_str(),
            kind(&hung),
            hung["worker_id"].as_str()
        ),
        (Some("failure"), "timed_out", Some("swh")),
        "{hung}"
    );
    assert!(
        took < Duration::from_secs(2),
        "a 0.2 s timeout on a task hanging for 3 s was reported after {took:?}"
    );

    // Work submitted while the subworker is about to drain: 12 × 150 ms on one slot,
    // longer than the grace, so it straddles the restart.
    let batch = dir.child("batch.jsonl");
    std::fs::write(
        &batch,
        "{\"task_name\": \"sleep_ms\", \"args\": [150]}\n".repeat(12),
    )
    .expect("write the batch file");
    let mut cmd = dir.fastworker();
    cmd.args(["submit", "--control-plane-address", &cp.base, "--json"])
        .arg("--batch")
        .arg(&batch)
        .args(["--wait", "30"]);
    let submitted = thread::spawn(move || run(cmd));

    sw.wait_for(
        true,
        "draining, then restarting in place",
        Duration::from_secs(10),
    );
    let drain_seen_ms = now_ms();
    wait_log_count(
        &sw,
        &["registered with the control plane"],
        2,
        Duration::from_secs(10),
    );
    let back_seen_ms = now_ms();
    assert!(
        sw.stderr().contains("restarting in place:"),
        "{}",
        sw.describe()
    );
    assert!(
        sw.try_exit().is_none(),
        "the subworker exited instead of restarting in place\n{}",
        sw.describe()
    );
    wait_log_count(
        &cp.proc,
        &["subworker registered worker=swh "],
        2,
        Duration::from_secs(10),
    );
    let out = submitted.join().expect("the batch thread did not panic");
    assert!(out.status.success(), "{out:?}\n{}", cp.proc.describe());
    let records = json_lines(&out);
    assert_eq!(records.len(), 12, "{out:?}");
    for record in &records {
        assert_eq!(
            (
                record["status"].as_str(),
                &record["result"],
                record["worker_id"].as_str(),
                &record["attempts"]
            ),
            (Some("success"), &json!(150), Some("swh"), &json!(1)),
            "{record}"
        );
    }
    // The premise: the batch really ran across the restart.
    assert!(
        records
            .iter()
            .any(|r| ms(r, "completed_at") <= drain_seen_ms),
        "no task of the batch finished before the drain"
    );
    assert!(
        records.iter().any(|r| ms(r, "started_at") >= back_seen_ms),
        "no task of the batch started after the restart"
    );

    // Same process (same pid: our child handle), serving again.
    let (out, sum) = submit_json(&dir, &cp, &["--task-name", "add", "--args", "2", "3"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        (&sum["result"], sum["worker_id"].as_str()),
        (&json!(5), Some("swh"))
    );
    assert!(sw.try_exit().is_none(), "{}", sw.describe());
}

// ---- countdown and eta ---------------------------------------------------------------

/// Asserts the task ran once: the record says one attempt and one delivery, and says
/// the same a moment later.
fn assert_ran_once(dir: &TestDir, cp: &ControlPlane, record: &Value) {
    assert_eq!(
        (
            &record["status"],
            &record["attempts"],
            &record["delivery_count"]
        ),
        (&json!("success"), &json!(1), &json!(1)),
        "{record}"
    );
    thread::sleep(Duration::from_millis(300));
    let id = record["task_id"].as_str().expect("an id");
    let later = status(dir, cp, id);
    assert_eq!(
        (
            &later["attempts"],
            &later["delivery_count"],
            &later["started_at"]
        ),
        (
            &record["attempts"],
            &record["delivery_count"],
            &record["started_at"]
        ),
        "it ran again: {later}"
    );
}

#[test]
fn countdown_runs_no_earlier_than_its_delay_and_exactly_once() {
    let dir = mytasks_dir();
    let cp = ControlPlane::start(&dir, &["--task-modules", "mytasks"]);

    let before_ms = now_ms();
    let (out, record) = submit_json(
        &dir,
        &cp,
        &["--task-name", "add", "--args", "1", "2", "--countdown", "1"],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(record["result"], json!(3), "{record}");
    let started = ms(&record, "started_at");
    assert!(
        started >= before_ms + 1000,
        "a 1 s countdown ran {} ms after the command started: {record}",
        started - before_ms
    );
    assert!(
        started < before_ms + 5000,
        "a 1 s countdown ran {} ms late: {record}",
        started - before_ms
    );
    assert_ran_once(&dir, &cp, &record);
}

/// A TCP relay to a `tcp://127.0.0.1:PORT` address that holds every new connection for
/// `delay` before passing anything through: a slow network between a client and the
/// control plane. It stops accepting when dropped (and after two minutes regardless); a
/// relayed connection ends when either side closes it or after 30 s without traffic.
struct SlowLink {
    address: String,
    stop: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl SlowLink {
    fn to(target: &str, delay: Duration) -> SlowLink {
        let port: u16 = target
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{target} is not tcp://host:port"));
        let listener = TcpListener::bind("127.0.0.1:0").expect("the relay can bind");
        listener
            .set_nonblocking(true)
            .expect("the relay's listener is non-blocking");
        let address = format!(
            "tcp://{}",
            listener.local_addr().expect("the relay has an address")
        );
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let acceptor = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stopped.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((client, _)) => {
                        thread::spawn(move || relay(client, port, delay));
                    }
                    Err(e) if e.kind() == IoErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
        });
        SlowLink {
            address,
            stop,
            acceptor: Some(acceptor),
        }
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn relay(client: TcpStream, port: u16, delay: Duration) {
    thread::sleep(delay);
    let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    for stream in [&client, &server] {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    }
    let (Ok(client_reader), Ok(server_reader)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let upstream = thread::spawn(move || pipe(client_reader, server));
    pipe(server_reader, client);
    let _ = upstream.join();
}

/// Copies until EOF or an error (a read timeout included), then closes `to` both ways,
/// which ends the copy in the other direction too.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
}

/// Regression (fixed): `submit --countdown` turns the countdown into an absolute `not_before_ms`
/// on the client's clock, *before* it connects (host/src/commands/submit.rs, `build`),
/// while the record's `submitted_at` is the control plane's time of acceptance. Every
/// millisecond between the two (discovery, connecting, the handshake, a slow network,
/// clock skew between hosts) is taken off the countdown, and the record then shows the
/// task starting less than its countdown after it was submitted. On a plain local run
/// it is a few ms (and the test would be flaky); a 400 ms slow link makes it certain.
#[test]
fn countdown_counts_from_when_the_control_plane_accepts_the_task() {
    let dir = mytasks_dir();
    let cp = ControlPlane::start(&dir, &["--task-modules", "mytasks"]);
    let link = SlowLink::to(&cp.base, Duration::from_millis(400));

    let mut cmd = dir.fastworker();
    cmd.args(["submit", "--control-plane-address", &link.address])
        .args(["--task-name", "add", "--args", "1", "2", "--countdown", "1"])
        .arg("--json");
    let out = run(cmd);
    assert!(out.status.success(), "{out:?}");
    let record = json_out(&out);
    assert_eq!(record["result"], json!(3), "{record}");
    let waited = ms(&record, "started_at") as i64 - ms(&record, "submitted_at") as i64;
    assert!(
        waited >= 1000,
        "submitted with --countdown 1, the record says it started {waited} ms after it \
         was submitted: the countdown was counted from before the client reached the \
         control plane (400 ms slow link): {record}"
    );
}

#[test]
fn eta_runs_no_earlier_than_its_time_and_exactly_once() {
    let dir = mytasks_dir();
    let cp = ControlPlane::start(&dir, &["--task-modules", "mytasks"]);

    let eta_ms = now_ms() + 1500;
    let eta = format!("{}.{:03}", eta_ms / 1000, eta_ms % 1000);
    let (out, record) = submit_json(
        &dir,
        &cp,
        &["--task-name", "add", "--args", "4", "5", "--eta", &eta],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(record["result"], json!(9), "{record}");
    let started = ms(&record, "started_at");
    assert!(
        started >= eta_ms,
        "it started {} ms before its eta: {record}",
        eta_ms - started
    );
    assert!(
        started < eta_ms + 3000,
        "it started {} ms after its eta: {record}",
        started - eta_ms
    );
    assert_ran_once(&dir, &cp, &record);
}

// ---- cancel --------------------------------------------------------------------------

#[test]
fn cancelling_a_queued_and_a_running_task_on_the_control_plane() {
    let dir = mytasks_dir();
    let cp = ControlPlane::start(&dir, &["--task-modules", "mytasks", "--concurrency", "1"]);

    let busy = submit_id(&dir, &cp, &["--task-name", "sleep_ms", "--args", "5000"]);
    wait_status(&dir, &cp, &busy, "running", |r| status_is(r, "running"));
    let queued = submit_id(&dir, &cp, &["--task-name", "sleep_ms", "--args", "100"]);
    let record = status(&dir, &cp, &queued);
    assert_eq!(record["status"], json!("queued"), "{record}");

    let out = fw(&dir, &cp, "cancel", &["--task-id", &queued]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("cancelled before it ran"), "{out:?}");
    let cancelled = status(&dir, &cp, &queued);
    assert_eq!(
        (cancelled["status"].as_str(), kind(&cancelled)),
        (Some("cancelled"), "cancelled"),
        "{cancelled}"
    );

    // The running one is told to stop and stops (sleep_ms checks its context).
    let asked = Instant::now();
    let out = fw(&dir, &cp, "cancel", &["--task-id", &busy]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("told to stop"), "{out:?}");
    let stopped = wait_final(&dir, &cp, &busy);
    let took = asked.elapsed();
    assert_eq!(
        (stopped["status"].as_str(), kind(&stopped)),
        (Some("cancelled"), "cancelled"),
        "{stopped}"
    );
    assert!(
        took < Duration::from_secs(3),
        "a cancelled 5 s sleep took {took:?} to stop"
    );

    // The slot is free (a new task runs in it), and the cancelled one still never ran.
    let (out, sum) = submit_json(&dir, &cp, &["--task-name", "add", "--args", "1", "1"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sum["result"], json!(2));
    thread::sleep(Duration::from_millis(300));
    let never = status(&dir, &cp, &queued);
    assert_eq!(
        (
            never["status"].as_str(),
            &never["started_at"],
            &never["attempts"],
            &never["delivery_count"]
        ),
        (Some("cancelled"), &Value::Null, &json!(0), &json!(0)),
        "the cancelled queued task ran: {never}"
    );
}

#[test]
fn cancelling_a_finished_task_says_so_and_an_unknown_one_fails_in_one_line() {
    let dir = mytasks_dir();
    let cp = ControlPlane::start(&dir, &["--task-modules", "mytasks"]);

    let (out, done) = submit_json(&dir, &cp, &["--task-name", "add", "--args", "2", "3"]);
    assert!(out.status.success(), "{out:?}");
    let id = done["task_id"].as_str().expect("an id").to_string();
    let out = fw(&dir, &cp, "cancel", &["--task-id", &id]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("already finished"), "{out:?}");
    assert!(out.stdout.contains("success"), "{out:?}");
    let after = status(&dir, &cp, &id);
    assert_eq!(
        (after["status"].as_str(), &after["result"]),
        (Some("success"), &json!(5)),
        "cancelling a finished task changed it: {after}"
    );

    let unknown = TaskId::new().to_string();
    let out = fw(&dir, &cp, "cancel", &["--task-id", &unknown]);
    assert_one_error_line(&out, &unknown);
}

#[test]
fn cancel_on_a_subworker_a_scheduled_task_never_runs_and_a_running_one_stops() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &[]);
    // DEBUG: the subworker logs "assigned task=<id>" for every task it is handed.
    let sw = cp.subworker(&dir, "sw1", &["--log-level", "DEBUG"]);

    let doomed = submit_id(
        &dir,
        &cp,
        &["--task-name", "add", "--args", "1", "2", "--countdown", "2"],
    );
    let witness = submit_id(
        &dir,
        &cp,
        &["--task-name", "add", "--args", "3", "4", "--countdown", "2"],
    );
    let record = status(&dir, &cp, &doomed);
    assert_eq!(record["status"], json!("scheduled"), "{record}");
    let out = fw(&dir, &cp, "cancel", &["--task-id", &doomed]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("cancelled before it ran"), "{out:?}");

    // The witness, due at the same moment, runs; the cancelled one never does.
    let ran = wait_final(&dir, &cp, &witness);
    assert_eq!(ran["result"], json!(7), "{ran}");
    thread::sleep(Duration::from_millis(300));
    let never = status(&dir, &cp, &doomed);
    assert_eq!(
        (
            never["status"].as_str(),
            &never["started_at"],
            &never["attempts"]
        ),
        (Some("cancelled"), &Value::Null, &json!(0)),
        "{never}"
    );
    let log = sw.stderr();
    assert_eq!(
        count_lines(&log, &["assigned", &witness]),
        1,
        "{}",
        sw.describe()
    );
    assert_eq!(
        count_lines(&log, &[&doomed]),
        0,
        "the cancelled scheduled task reached the subworker\n{}",
        sw.describe()
    );

    // A running task on the subworker: told to stop, it ends cancelled quickly.
    let busy = submit_id(&dir, &cp, &["--task-name", "sleep_ms", "--args", "5000"]);
    wait_status(&dir, &cp, &busy, "running on sw1", |r| {
        status_is(r, "running") && r["worker_id"] == json!("sw1")
    });
    let asked = Instant::now();
    let out = fw(&dir, &cp, "cancel", &["--task-id", &busy]);
    assert!(out.stdout.contains("told to stop"), "{out:?}");
    let stopped = wait_final(&dir, &cp, &busy);
    assert_eq!(
        (stopped["status"].as_str(), kind(&stopped)),
        (Some("cancelled"), "cancelled"),
        "{stopped}"
    );
    assert!(asked.elapsed() < Duration::from_secs(3), "{stopped}");
}

// ---- batches -------------------------------------------------------------------------

#[test]
fn a_batch_file_submits_every_line_and_returns_every_result() {
    let dir = mytasks_dir();
    let cp = ControlPlane::start(&dir, &["--task-modules", "mytasks", "--concurrency", "2"]);
    let batch = dir.child("three.jsonl");
    std::fs::write(
        &batch,
        "{\"task_name\": \"add\", \"args\": [1, 2]}\n\
         # comments and blank lines are skipped\n\
         \n\
         {\"task_name\": \"echo\", \"args\": [\"hi\"], \"priority\": \"high\"}\n\
         {\"task_name\": \"sleep_ms\", \"args\": [50], \"countdown\": 0.2}\n",
    )
    .expect("write the batch file");
    let path = batch.to_str().expect("a UTF-8 path");

    let out = fw(&dir, &cp, "submit", &["--batch", path, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let records = json_lines(&out);
    let got: Vec<(&Value, &Value, &Value)> = records
        .iter()
        .map(|r| (&r["task_name"], &r["status"], &r["result"]))
        .collect();
    assert_eq!(
        got,
        [
            (&json!("add"), &json!("success"), &json!(3)),
            (&json!("echo"), &json!("success"), &json!("hi")),
            (&json!("sleep_ms"), &json!("success"), &json!(50)),
        ],
        "{out:?}"
    );

    let out = fw(&dir, &cp, "submit", &["--batch", path, "--non-blocking"]);
    assert!(out.status.success(), "{out:?}");
    let ids: Vec<String> = out.stdout_lines().iter().map(|s| s.to_string()).collect();
    assert_eq!(ids.len(), 3, "{out:?}");
    let first_ids: Vec<&Value> = records.iter().map(|r| &r["task_id"]).collect();
    for id in &ids {
        assert!(
            !first_ids.contains(&&json!(id)),
            "ids are fresh per submission"
        );
        let record = wait_final(&dir, &cp, id);
        assert_eq!(record["status"], json!("success"), "{record}");
    }
}

/// A ROUTER bound on a free port of 127.0.0.1, where callbacks are sent.
struct CallbackListener {
    socket: Option<RouterSocket>,
    address: String,
    rt: Runtime,
}

impl CallbackListener {
    fn bind() -> CallbackListener {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let address = format!("tcp://127.0.0.1:{}", free_port());
        let socket = rt.block_on(async {
            let mut socket = RouterSocket::new();
            tokio::time::timeout(Duration::from_secs(5), socket.bind(&address))
                .await
                .expect("bind in time")
                .unwrap_or_else(|e| panic!("cannot bind {address}: {e}"));
            socket
        });
        CallbackListener {
            socket: Some(socket),
            address,
            rt,
        }
    }

    /// The next message's last frame, as JSON; `None` when none came within `limit`.
    fn next(&mut self, limit: Duration) -> Option<Value> {
        let socket = self.socket.as_mut().expect("bound");
        let message = self
            .rt
            .block_on(async { tokio::time::timeout(limit, socket.recv()).await })
            .ok()?
            .expect("the callback socket receives");
        let frames = message.into_vec();
        let last = frames.last().expect("a message has a frame");
        Some(
            serde_json::from_slice(last)
                .unwrap_or_else(|e| panic!("callback frame is not JSON ({e}): {last:?}")),
        )
    }
}

impl Drop for CallbackListener {
    fn drop(&mut self) {
        // The socket's tasks live on this runtime: close it inside it.
        let _guard = self.rt.enter();
        drop(self.socket.take());
    }
}

/// All or none: a batch naming an unknown task is refused, and none of its tasks runs.
/// The refused submission returns no ids, so what would show a task that ran anyway is
/// its callback: every task of the batch carries `--callback-address` (the CLI applies
/// it to each line). The same batch without the unknown line, accepted, shows that the
/// callback does arrive.
#[test]
fn a_batch_with_an_unknown_task_is_refused_whole() {
    let dir = mytasks_dir();
    let cp = ControlPlane::start(&dir, &["--task-modules", "mytasks"]);
    let mut listener = CallbackListener::bind();
    let valid = "{\"task_name\": \"add\", \"args\": [20, 22]}\n";
    let refused = dir.child("refused.jsonl");
    std::fs::write(
        &refused,
        format!("{valid}{{\"task_name\": \"no_such_task\", \"args\": []}}\n"),
    )
    .expect("write the batch file");
    let accepted = dir.child("accepted.jsonl");
    std::fs::write(&accepted, valid).expect("write the batch file");
    let callback_address = listener.address.clone();
    let with_callback = |file: &std::path::Path, data: &str| {
        fw(
            &dir,
            &cp,
            "submit",
            &[
                "--batch",
                file.to_str().expect("a UTF-8 path"),
                "--non-blocking",
                "--callback-address",
                &callback_address,
                "--callback-data",
                data,
            ],
        )
    };

    let out = with_callback(&refused, "refused");
    assert_one_error_line(&out, "no_such_task");
    assert_eq!(
        listener.next(Duration::from_millis(1500)),
        None,
        "a task of the refused batch ran"
    );

    let out = with_callback(&accepted, "accepted");
    assert!(out.status.success(), "{out:?}");
    let id = out.stdout_lines()[0].to_string();
    let callback = listener.next(Duration::from_secs(10)).unwrap_or_else(|| {
        panic!(
            "the accepted batch's callback never came\n{}",
            cp.proc.describe()
        )
    });
    assert_eq!(
        (
            &callback["task_id"],
            &callback["result"],
            &callback["callback_data"]
        ),
        (&json!(id), &json!(42), &json!("accepted")),
        "{callback}"
    );
}

// ---- periodic tasks ------------------------------------------------------------------

/// The ids of the `heartbeat` runs the control plane's DEBUG log says it submitted.
fn heartbeat_runs(cp: &ControlPlane) -> Vec<String> {
    cp.proc
        .stderr()
        .lines()
        .filter(|l| l.contains("periodic task due") && l.contains("name=heartbeat"))
        .map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("task="))
                .unwrap_or_else(|| panic!("no task id in {l:?}"))
                .to_string()
        })
        .collect()
}

#[test]
fn heartbeat_runs_once_at_start_up_however_many_hosts_serve_it() {
    let dir = mytasks_dir();
    let started = Instant::now();
    let mut cp = ControlPlane::start(&dir, &["--task-modules", "mytasks", "--log-level", "DEBUG"]);
    let _sw1 = cp.subworker(&dir, "sw1", &[]);
    let _sw2 = cp.subworker(&dir, "sw2", &[]);
    let runs = poll_every(Duration::from_millis(20), STARTUP, || {
        let runs = heartbeat_runs(&cp);
        (!runs.is_empty()).then_some(runs)
    })
    .unwrap_or_else(|| panic!("heartbeat never ran\n{}", cp.proc.describe()));
    // Three seconds after start-up, all three hosts serving it, still only one run.
    if let Some(rest) = Duration::from_secs(3).checked_sub(started.elapsed()) {
        thread::sleep(rest);
    }
    let runs_after = heartbeat_runs(&cp);
    assert_eq!(
        runs_after.len(),
        1,
        "heartbeat (every 30 s) ran {} times at start-up with the control plane and two \
         subworkers serving it\n{}",
        runs_after.len(),
        cp.proc.describe()
    );
    assert_eq!(runs, runs_after);

    // The run itself: a real task that succeeded, returning the time it ran.
    let record = wait_final(&dir, &cp, &runs[0]);
    assert_eq!(
        (record["task_name"].as_str(), record["status"].as_str()),
        (Some("heartbeat"), Some("success")),
        "{record}"
    );
    let ran_at = record["result"].as_u64().expect("Unix seconds") * 1000;
    let now = now_ms();
    assert!(
        ran_at + 60_000 > now && ran_at <= now,
        "heartbeat returned {ran_at} at {now}: {record}"
    );
}

/// Regression (fixed): the periodic scheduler forgets a schedule as soon as no host serves the
/// task (host/src/control_plane/periodic.rs, `sync`: "missing ones stop", and a new one
/// "fires at once"). A control plane without the task's plugin therefore re-runs an
/// `every = 30` task each time the subworkers serving it come back after all were gone
/// for a tick (20 ms): a crash and a restart, a redeploy, a network blip. A subworker
/// crash-looping every few seconds runs it every few seconds.
#[test]
fn heartbeat_does_not_run_again_early_when_its_subworker_comes_back() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &["--log-level", "DEBUG"]);
    let mut first = cp.subworker(&dir, "sw1", &[]);
    let second = cp.subworker(&dir, "sw2", &[]);
    poll_every(Duration::from_millis(20), STARTUP, || {
        (!heartbeat_runs(&cp).is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("heartbeat never ran\n{}", cp.proc.describe()));
    assert_eq!(
        heartbeat_runs(&cp).len(),
        1,
        "two subworkers serving it: one run\n{}",
        cp.proc.describe()
    );

    // Both subworkers go away (crash) and one comes back (a supervisor restarts it).
    first.kill();
    drop(second);
    wait_log_count(
        &cp.proc,
        &["subworker connection lost"],
        2,
        Duration::from_secs(10),
    );
    let _again = spawn_subworker(&cp, &dir, "sw1", "sw1-restarted");
    wait_log_count(&cp.proc, &["subworker registered worker=sw1 "], 2, STARTUP);
    thread::sleep(Duration::from_secs(1));
    let runs = heartbeat_runs(&cp);
    assert_eq!(
        runs.len(),
        1,
        "heartbeat is `every = 30` but ran {} times within seconds: it ran again as soon \
         as its subworker came back\n{}",
        runs.len(),
        cp.proc.describe()
    );
}

#[test]
fn list_periodic_shows_heartbeat_with_its_schedule() {
    let dir = mytasks_dir();
    let mut cmd = dir.fastworker();
    cmd.args(["list", "--task-modules", "mytasks", "--list-periodic"]);
    let out = run(cmd);
    assert!(out.status.success(), "{out:?}");
    let lines = out.stdout_lines();
    assert_eq!(lines.len(), 1, "only heartbeat is periodic: {out:?}");
    for part in ["heartbeat", "every 30s", "next:"] {
        assert!(lines[0].contains(part), "{part:?} missing: {out:?}");
    }
}

// ---- callbacks -----------------------------------------------------------------------

#[test]
fn a_callback_receives_the_final_record() {
    let dir = mytasks_dir();
    let cp = ControlPlane::start(&dir, &["--task-modules", "mytasks"]);
    let mut listener = CallbackListener::bind();

    let (out, record) = submit_json(
        &dir,
        &cp,
        &[
            "--task-name",
            "add",
            "--args",
            "2",
            "3",
            "--callback-address",
            &listener.address,
            "--callback-data",
            "hello",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let callback = listener
        .next(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no callback within 10 s\n{}", cp.proc.describe()));
    assert_eq!(
        (
            &callback["task_id"],
            &callback["status"],
            &callback["result"],
            &callback["callback_data"],
            &callback["error"]
        ),
        (
            &record["task_id"],
            &json!("success"),
            &json!(5),
            &json!("hello"),
            &Value::Null
        ),
        "{callback}"
    );
    assert_eq!(callback["started_at"], record["started_at"], "{callback}");
    assert_eq!(
        callback["completed_at"], record["completed_at"],
        "{callback}"
    );
    assert_eq!(
        listener.next(Duration::from_millis(700)),
        None,
        "a second callback for one task"
    );
}

/// One address refuses connections (nobody listens); at the other a TCP listener accepts
/// but never speaks ZeroMQ, so each connect attempt hangs for its whole timeout (2 s).
/// Neither holds up the tasks after them.
#[test]
fn a_callback_nobody_answers_does_not_hold_up_other_tasks() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &["--task-modules", "mytasks"]);
    let nobody = free_address();
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind a silent listener");
    let silent_address = format!("tcp://{}", silent.local_addr().expect("an address"));

    for address in [&nobody, &silent_address] {
        let asked = Instant::now();
        let (out, record) = submit_json(
            &dir,
            &cp,
            &[
                "--task-name",
                "add",
                "--args",
                "1",
                "1",
                "--callback-address",
                address,
            ],
        );
        assert!(out.status.success(), "{out:?}");
        assert_eq!(record["result"], json!(2));
        assert!(asked.elapsed() < Duration::from_millis(1500), "{record}");
    }
    // While those callbacks are still being tried, plain tasks are answered at once (a
    // blocked dispatch would hold them for the 3 tries: over 6 s).
    let gave_up_once = format!("callback to {silent_address} failed");
    for n in 0..3 {
        let asked = Instant::now();
        let (out, record) = submit_json(
            &dir,
            &cp,
            &["--task-name", "add", "--args", "1", &n.to_string()],
        );
        let took = asked.elapsed();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(record["result"], json!(1 + n));
        assert!(
            took < Duration::from_millis(1500),
            "add #{n} took {took:?} while a callback was pending\n{}",
            cp.proc.describe()
        );
        if n == 0 {
            // The premise: the silent listener's callback was still on its first try.
            assert!(
                !cp.proc.stderr().contains(&gave_up_once),
                "the callback to the silent listener failed early: the test proves \
                 nothing\n{}",
                cp.proc.describe()
            );
        }
    }
    cp.proc
        .wait_for(true, &gave_up_once, Duration::from_secs(10));
}

// ---- lost workers and dead letters ---------------------------------------------------

/// `dead-letters --json`: the dead-lettered records.
fn dead_letters(dir: &TestDir, cp: &ControlPlane) -> Vec<Value> {
    let out = fw(dir, cp, "dead-letters", &["--json"]);
    assert!(out.status.success(), "{out:?}");
    match json_out(&out) {
        Value::Array(records) => records,
        other => panic!("not a list: {other}"),
    }
}

#[test]
fn a_task_whose_workers_keep_dying_is_dead_lettered_and_replays_to_success() {
    let dir = mytasks_dir();
    // No task modules: only subworkers run tasks.
    let mut cp = ControlPlane::start(&dir, &["--max-deliveries", "2"]);
    let mut sw1 = cp.subworker(&dir, "sw1", &[]);
    let id = submit_id(&dir, &cp, &["--task-name", "sleep_ms", "--args", "5000"]);

    wait_status(&dir, &cp, &id, "running on sw1", |r| {
        status_is(r, "running") && r["worker_id"] == json!("sw1")
    });
    sw1.kill();
    let requeued = wait_status(&dir, &cp, &id, "queued again", |r| status_is(r, "queued"));
    assert_eq!(requeued["delivery_count"], json!(1), "{requeued}");

    let mut sw2 = cp.subworker(&dir, "sw2", &[]);
    wait_status(&dir, &cp, &id, "running on sw2", |r| {
        status_is(r, "running") && r["worker_id"] == json!("sw2")
    });
    sw2.kill();
    let dead = wait_final(&dir, &cp, &id);
    assert_eq!(
        (
            dead["status"].as_str(),
            kind(&dead),
            &dead["delivery_count"],
            &dead["attempts"]
        ),
        (Some("failure"), "worker_lost", &json!(2), &json!(1)),
        "{dead}"
    );
    assert!(
        dead["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("lost 2 times"),
        "{dead}"
    );

    // It ended: a new subworker does not get it.
    let sw3 = cp.subworker(&dir, "sw3", &["--log-level", "DEBUG"]);
    thread::sleep(Duration::from_millis(300));
    let still = status(&dir, &cp, &id);
    assert_eq!(
        (&still["status"], &still["delivery_count"]),
        (&json!("failure"), &json!(2)),
        "{still}"
    );
    assert_eq!(count_lines(&sw3.stderr(), &["assigned", &id]), 0);

    let listed = dead_letters(&dir, &cp);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (&listed[0]["task_id"], kind(&listed[0])),
        (&json!(id), "worker_lost"),
        "{listed:?}"
    );
    let out = fw(&dir, &cp, "dead-letters", &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains(&id), "{out:?}");

    let out = fw(&dir, &cp, "dead-letters", &["--replay", &id]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("queued again"), "{out:?}");
    let replayed = wait_final(&dir, &cp, &id);
    assert_eq!(
        (
            replayed["status"].as_str(),
            &replayed["result"],
            replayed["worker_id"].as_str(),
            &replayed["delivery_count"],
            &replayed["attempts"]
        ),
        (
            Some("success"),
            &json!(5000),
            Some("sw3"),
            &json!(1),
            &json!(1)
        ),
        "{replayed}"
    );
    assert!(
        dead_letters(&dir, &cp).is_empty(),
        "a replayed task is no longer a dead letter"
    );
}

/// Regression (fixed): `--max-deliveries` is meant to count how often a task's worker was lost
/// (README: "past --max-deliveries it fails as worker_lost"; PROTOCOL §7.6: "a task
/// whose worker is lost --max-deliveries times"), but the dispatcher compares the
/// task's `delivery_count`, which every hand-out raises, retries included
/// (host/src/control_plane/dispatcher.rs, `worker_lost_task`). So a task that failed
/// once and was retried is dead-lettered the first time its worker dies, with a message
/// saying the worker was lost twice.
#[test]
fn a_retry_is_not_a_lost_delivery() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &["--max-deliveries", "2"]);
    let mut sw1 = cp.subworker(&dir, "sw1", &[]);
    // Attempt 1 times out after 1 s; attempt 2 (a retry) is running when sw1 dies.
    let id = submit_id(
        &dir,
        &cp,
        &[
            "--task-name",
            "sleep_ms",
            "--args",
            "5000",
            "--timeout",
            "1",
            "--max-retries",
            "1",
            "--retry-delay",
            "0.1",
        ],
    );
    wait_status(&dir, &cp, &id, "running its retry on sw1", |r| {
        status_is(r, "running") && r["attempts"] == json!(2)
    });
    sw1.kill();
    let after = wait_status(&dir, &cp, &id, "queued again or final", |r| {
        status_is(r, "queued") || is_final(r)
    });
    assert!(
        status_is(&after, "queued") && dead_letters(&dir, &cp).is_empty(),
        "its worker was lost once (max deliveries 2), yet the task was dead-lettered: \
         {after}"
    );
}
