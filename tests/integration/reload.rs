//! Hot reload, the way users run it: a real control plane (no task modules, so every
//! task crosses to the subworker) and a real subworker watching `<dir>/plugins`,
//! serving the `versioned` fixture (`version()` answers "1.0.0" or "2.0.0") from
//! `plugins/versioned.so` while the test replaces that file.
//!
//! - under steady load (≥ 1,000 tasks/s for ≥ 5 s, measured), v1 is swapped for v2 the
//!   `cargo build` way (temp file, unlink, hard link), by `cp` over the file and by
//!   `mv` onto it: no task fails or is lost, and once a v2 result is out no task that
//!   started later gets v1;
//! - the new code answers within 1 s of the file landing;
//! - a text file is rejected in one log line and v1 keeps serving; a truncated copy of
//!   the v2 library (a half-written file) is rejected too, and the subworker lives;
//! - a second plugin dropped into the directory serves its task, and removing it
//!   retires the task (the CLI names it) while `version` still works; the same through
//!   a symlinked plugin directory;
//! - `--max-reloads` makes the subworker re-exec itself in place (same pid), and a
//!   trickle of tasks submitted before, during and after all succeed;
//! - `--no-watch` ignores a changed file.
//!
//! The tests in this file run one at a time ([`serial`]): two of them assert a
//! throughput and a latency, and the machine they run on may have two cores.
//! Every process belongs to a [`Proc`] guard that kills it when the test ends, and
//! every wait is bounded in count and time.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use fastworker_client::{decode_value, Client, ClientError};
use fastworker_host::plugin::{watch::watch, LivePlugins, PluginLoader, ReloadReport};
use fastworker_protocol::task_error::ErrorKind;
use fastworker_protocol::{now_ms, Codec, TaskEnvelope, TaskRecord, TaskStatus};
use tokio::runtime::Runtime;

use crate::{
    procs::{connect, free_address, poll_until, runtime, ControlPlane, Proc, STARTUP},
    support::{plugin_artifact, run, TestDir},
};

/// How long one submission may wait for its result before it counts as lost.
const RESULT_WAIT: Duration = Duration::from_secs(30);

/// The most submissions one submitter loop makes, whatever happens (a bound in count
/// beside the one in time; far more than a run needs).
const MAX_ROUNDS: usize = 200_000;

/// The log line a subworker writes for each new version it serves.
const RELOADED: &str = "plugin versioned reloaded from";

/// The start of the log line for a file that did not load (`ReloadReport::Rejected`).
const REJECTED: &str = "rejected, previous version keeps serving";

/// Holds the file's tests to one at a time (see the module docs), and apart from the
/// other tests that need the machine to themselves.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    crate::support::heavy()
}

// ---- the cluster ---------------------------------------------------------------------

/// A test directory with `plugins/`, a control plane without task modules, and one
/// subworker `sw1` serving `--task-modules plugins`.
struct Reloading {
    dir: TestDir,
    cp: ControlPlane,
    sw: Proc,
}

impl Reloading {
    /// `plugins/versioned.so` starts as v1; `more` are other artifacts to put in
    /// `plugins/` first (`("mytasks", "mytasks.so")`); `extra` are subworker flags.
    fn start(more: &[(&str, &str)], extra: &[&str]) -> Reloading {
        let dir = TestDir::new();
        dir.copy_in(&plugin_artifact("versioned_v1"), "plugins/versioned.so");
        for (lib, file) in more {
            dir.copy_in(&plugin_artifact(lib), &format!("plugins/{file}"));
        }
        Reloading::start_in(dir, "plugins", extra)
    }

    /// Starts the processes in `dir`, the subworker watching `modules`.
    fn start_in(dir: TestDir, modules: &str, extra: &[&str]) -> Reloading {
        let mut cp = ControlPlane::start(&dir, &[]);
        let mut args: Vec<String> = vec![
            "subworker".into(),
            "--worker-id".into(),
            "sw1".into(),
            "--control-plane-address".into(),
            cp.base.clone(),
            "--base-address".into(),
            free_address(),
            "--task-modules".into(),
            modules.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut sw = Proc::spawn(&dir, "sw1", &args);
        sw.wait_for(true, "registered with the control plane", STARTUP);
        cp.wait_registered("sw1");
        Reloading { dir, cp, sw }
    }

    fn plugin(&self, file: &str) -> PathBuf {
        self.dir.path().join("plugins").join(file)
    }

    /// Replaces `plugins/versioned.so` with the artifact `lib` (`versioned_v2`) the
    /// way `how` says; returns when the new file is in place.
    fn swap(&self, lib: &str, how: Swap) -> Instant {
        how.replace(&plugin_artifact(lib), &self.plugin("versioned.so"));
        Instant::now()
    }

    /// Both processes' output, for failure messages.
    fn describe(&self) -> String {
        format!("{}{}", self.cp.proc.describe(), self.sw.describe())
    }

    /// Fails the test, with both logs, unless both processes still run.
    fn assert_alive(&mut self, when: &str) {
        if let Some(status) = self.sw.try_exit() {
            panic!(
                "the subworker died {when} ({status}; signal {:?})\n{}",
                std::os::unix::process::ExitStatusExt::signal(&status),
                self.describe()
            );
        }
        if let Some(status) = self.cp.proc.try_exit() {
            panic!(
                "the control plane died {when} ({status})\n{}",
                self.describe()
            );
        }
    }
}

/// How a new build replaces a plugin file.
#[derive(Debug, Clone, Copy)]
enum Swap {
    /// What `cargo build` does: the new file is written under a temp name in the same
    /// directory (not ending in `.so`), then the old name is unlinked and hard-linked
    /// to the new file.
    CargoBuild,
    /// `cp new.so plugins/versioned.so`: the same inode, truncated and rewritten.
    Copy,
    /// `mv new.so plugins/versioned.so`: a new inode renamed onto the name.
    Move,
}

impl Swap {
    fn replace(self, from: &Path, target: &Path) {
        let temp = target.with_file_name(".versioned.tmp");
        let step = |what: &str, result: std::io::Result<()>| {
            result.unwrap_or_else(|e| panic!("{self:?}: {what}: {e}"));
        };
        match self {
            Swap::CargoBuild => {
                // The temp name may still be linked to the served file from an earlier
                // swap: unlink it first so the copy is a new inode.
                let _ = fs::remove_file(&temp);
                step("write the temp file", fs::copy(from, &temp).map(drop));
                step("unlink the old file", fs::remove_file(target));
                step("hard-link the new one", fs::hard_link(&temp, target));
            }
            Swap::Copy => step("copy over the file", fs::copy(from, target).map(drop)),
            Swap::Move => {
                let _ = fs::remove_file(&temp);
                step("write the temp file", fs::copy(from, &temp).map(drop));
                step("rename it onto the file", fs::rename(&temp, target));
            }
        }
    }
}

// ---- tasks ---------------------------------------------------------------------------

fn version_task() -> TaskEnvelope {
    TaskEnvelope::new("version", Codec::Json, Bytes::from_static(b"[]"))
}

fn add_task(x: i64, y: i64) -> TaskEnvelope {
    TaskEnvelope::new("add", Codec::Json, Bytes::from(format!("[{x},{y}]")))
}

fn sleep_task(ms: u64) -> TaskEnvelope {
    TaskEnvelope::new("sleep_ms", Codec::Json, Bytes::from(format!("[{ms}]")))
}

/// The version the subworker answers now.
fn version(rt: &Runtime, client: &Client, cluster: &Reloading) -> String {
    let record = rt
        .block_on(client.submit(version_task(), RESULT_WAIT))
        .unwrap_or_else(|e| panic!("`version` failed: {e}\n{}", cluster.describe()));
    decode_value(&record).expect("`version` answers a string")
}

/// Polls `version` as fast as it answers until it says `want`; how long that took
/// after `since`. Fails the test when it does not within 5 s (or 2,000 calls).
fn first_answer(
    rt: &Runtime,
    client: &Client,
    cluster: &Reloading,
    want: &str,
    since: Instant,
) -> Duration {
    let limit = Duration::from_secs(5);
    for _ in 0..2_000 {
        if version(rt, client, cluster) == want {
            return since.elapsed();
        }
        if since.elapsed() > limit {
            break;
        }
    }
    panic!(
        "`version` did not answer {want:?} within {limit:?} of the file landing\n{}",
        cluster.describe()
    );
}

// ---- load ----------------------------------------------------------------------------

/// One successful `version` under load.
struct Served {
    version: String,
    /// When the subworker started it (its clock), Unix ms.
    started_ms: u64,
    /// When the control plane recorded it final (its clock), Unix ms.
    completed_ms: u64,
}

/// What a run of [`Load`] saw.
struct LoadReport {
    submitted: usize,
    served: Vec<Served>,
    /// Every submission that did not come back a success, with why.
    failures: Vec<String>,
    elapsed: Duration,
}

impl LoadReport {
    fn rate(&self) -> f64 {
        self.served.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// `loops` concurrent submitters on one [`Client`], each submitting `version` and
/// waiting for its result, over and over, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    submitted: Arc<AtomicUsize>,
    started: Instant,
    handles: Vec<tokio::task::JoinHandle<(Vec<Served>, Vec<String>)>>,
}

impl Load {
    fn start(rt: &Runtime, client: &Client, loops: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let submitted = Arc::new(AtomicUsize::new(0));
        let handles = (0..loops)
            .map(|_| {
                let (client, stop, submitted) = (client.clone(), stop.clone(), submitted.clone());
                rt.spawn(async move {
                    let mut served = Vec::new();
                    let mut failures = Vec::new();
                    for _ in 0..MAX_ROUNDS {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let task = version_task();
                        let id = task.id;
                        submitted.fetch_add(1, Ordering::Relaxed);
                        match client.submit(task, RESULT_WAIT).await {
                            Ok(record) if record.task_id != id => failures
                                .push(format!("{id}: got the record of another task: {record:?}")),
                            Ok(record) => served.push(Served {
                                version: decode_value(&record)
                                    .unwrap_or_else(|e| format!("<undecodable: {e}>")),
                                started_ms: record.started_ms.unwrap_or(0),
                                completed_ms: record.completed_ms.unwrap_or(0),
                            }),
                            Err(err) => failures.push(format!("{id}: {err}")),
                        }
                    }
                    (served, failures)
                })
            })
            .collect();
        Load {
            stop,
            submitted,
            started: Instant::now(),
            handles,
        }
    }

    /// Runs until `total` has passed since the start, then stops and collects.
    fn finish_after(self, rt: &Runtime, total: Duration) -> LoadReport {
        if let Some(rest) = total.checked_sub(self.started.elapsed()) {
            thread::sleep(rest);
        }
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        let mut report = LoadReport {
            submitted: 0,
            served: Vec::new(),
            failures: Vec::new(),
            elapsed,
        };
        // Each loop finishes the submission it is waiting on (bounded by RESULT_WAIT).
        for joined in rt.block_on(futures::future::join_all(self.handles)) {
            let (served, failures) = joined.expect("a submitter did not panic");
            report.served.extend(served);
            report.failures.extend(failures);
        }
        report.submitted = self.submitted.load(Ordering::Relaxed);
        report
    }
}

/// A summary of failures for an assertion message (the first few, and how many).
fn first_failures(failures: &[String]) -> String {
    let shown: Vec<&str> = failures.iter().take(5).map(String::as_str).collect();
    format!("{} failures, first: {shown:#?}", failures.len())
}

/// Swaps v1 for v2 `how`, 1.5 s into 6.5 s of steady load, and checks that nothing
/// failed, nothing was lost, the rate held, and the swap never went backwards.
fn swap_under_load(how: Swap) {
    const LOAD_FOR: Duration = Duration::from_millis(6_500);
    const SWAP_AT: Duration = Duration::from_millis(1_500);
    // A floor for "under load", not a speed goal (benchmarks measure speed): a debug
    // build on two shared cores, with a cluster key sealing every message, runs about
    // 900 tasks/s here while other tests run.
    const MIN_RATE: f64 = 500.0;
    let _serial = serial();
    let mut cluster = Reloading::start(&[], &["--concurrency", "8"]);
    let rt = runtime();
    let client = connect(&rt, &cluster.cp.base);
    assert_eq!(version(&rt, &client, &cluster), "1.0.0");

    let load = Load::start(&rt, &client, 64);
    thread::sleep(SWAP_AT);
    cluster.swap("versioned_v2", how);
    let report = load.finish_after(&rt, LOAD_FOR);
    cluster.assert_alive("under load");

    assert!(
        report.failures.is_empty(),
        "{how:?} swap under load: {} of {} tasks did not succeed: {}\n{}",
        report.failures.len(),
        report.submitted,
        first_failures(&report.failures),
        cluster.describe()
    );
    assert_eq!(
        report.served.len(),
        report.submitted,
        "{how:?}: tasks submitted but never answered"
    );
    assert!(
        report.elapsed >= Duration::from_secs(5),
        "the load ran {:?}",
        report.elapsed
    );
    assert!(
        report.rate() >= MIN_RATE,
        "{how:?}: the load reached {:.0} tasks/s ({} in {:?}), below the {MIN_RATE} this \
         test needs to mean \"under load\"",
        report.rate(),
        report.served.len(),
        report.elapsed
    );
    let count = |v: &str| report.served.iter().filter(|s| s.version == v).count();
    let (v1, v2) = (count("1.0.0"), count("2.0.0"));
    assert_eq!(
        v1 + v2,
        report.served.len(),
        "answers other than 1.0.0 / 2.0.0"
    );
    assert!(
        v1 > 0 && v2 > 0,
        "{how:?}: {v1} v1 and {v2} v2 answers: the swap did not happen under load\n{}",
        cluster.describe()
    );

    // One reload, logged once; nothing retired (the `cargo build` way unlinks the file
    // for a moment) and nothing rejected (`cp` rewrites it in place).
    let sw_log = cluster.sw.stderr();
    assert_eq!(
        sw_log.matches(RELOADED).count(),
        1,
        "{how:?}: one reload line expected\n{sw_log}"
    );
    assert!(
        sw_log.contains("1.0.0 -> 2.0.0")
            && !sw_log.contains("retired")
            && !sw_log.contains(REJECTED),
        "{how:?}: the swap should be one clean reload\n{sw_log}"
    );
    // The line names both builds by content hash, so a rebuild that kept the crate
    // version still shows as a new build.
    let builds = sw_log
        .split(RELOADED)
        .nth(1)
        .and_then(|line| line.split("(build ").nth(1))
        .and_then(|rest| rest.split_once(';'))
        .map(|(builds, _)| builds.to_string())
        .unwrap_or_default();
    let (old, new) = builds.split_once(" -> ").unwrap_or_default();
    assert!(
        old.len() == 8
            && new.len() == 8
            && old != new
            && old.chars().all(|c| c.is_ascii_hexdigit()),
        "{how:?}: the reload line names both builds: {builds:?}\n{sw_log}"
    );

    // Never backwards. Clocks: all three processes run on this host and stamp with the
    // same realtime clock (`now_ms`, whole ms). The subworker takes `started_ms` in
    // `Executor::start` *before* it reads the plugin registry; the control plane takes
    // `completed_ms` when the outcome reaches it, so the call that produced the first
    // v2 result read the registry (and found v2) before `first_v2`. A task whose
    // `started_ms` is *strictly* greater than `first_v2` read the registry after that
    // instant (truncation to whole ms cannot reorder two stamps that differ by ≥ 1 ms
    // in this direction), so it must have found v2 too. (A clock step during the few
    // seconds of the test could break this; we accept that.)
    let first_v2 = report
        .served
        .iter()
        .filter(|s| s.version == "2.0.0")
        .map(|s| s.completed_ms)
        .min()
        .expect("v2 answered");
    let backwards: Vec<(u64, u64)> = report
        .served
        .iter()
        .filter(|s| s.version == "1.0.0" && s.started_ms > first_v2)
        .map(|s| (s.started_ms, s.completed_ms))
        .collect();
    assert!(
        backwards.is_empty(),
        "{how:?}: the first v2 result was final at {first_v2} ms, yet {} tasks started \
         later got v1 (started, completed): {:?}",
        backwards.len(),
        &backwards[..backwards.len().min(5)]
    );
    eprintln!(
        "{how:?} swap under load: {} tasks in {:?} ({:.0}/s), {v1} v1, {v2} v2, 0 failed",
        report.served.len(),
        report.elapsed,
        report.rate()
    );
}

#[test]
fn a_cargo_build_swap_under_load_fails_no_task_and_loses_none() {
    swap_under_load(Swap::CargoBuild);
}

#[test]
fn a_cp_over_the_file_under_load_fails_no_task_and_loses_none() {
    swap_under_load(Swap::Copy);
}

#[test]
fn an_mv_onto_the_file_under_load_fails_no_task_and_loses_none() {
    swap_under_load(Swap::Move);
}

// ---- latency -------------------------------------------------------------------------

#[test]
fn new_code_answers_within_a_second_of_the_file_landing() {
    let _serial = serial();
    let cluster = Reloading::start(&[], &[]);
    let rt = runtime();
    let client = connect(&rt, &cluster.cp.base);
    assert_eq!(version(&rt, &client, &cluster), "1.0.0");

    let mut took = Vec::new();
    for (lib, want, how) in [
        ("versioned_v2", "2.0.0", Swap::Copy),
        ("versioned_v1", "1.0.0", Swap::CargoBuild),
        ("versioned_v2", "2.0.0", Swap::Move),
    ] {
        let landed = cluster.swap(lib, how);
        let after = first_answer(&rt, &client, &cluster, want, landed);
        took.push((how, after));
        assert!(
            after < Duration::from_secs(1),
            "{how:?} to {want}: the new code first answered {after:?} after the file landed \
             (all so far: {took:?})\n{}",
            cluster.describe()
        );
    }
    eprintln!("file landed -> first new answer: {took:?}");
}

// ---- bad files, a second plugin ------------------------------------------------------

/// The subworker's log lines that say a reload was rejected.
fn rejected_lines(sw: &Proc) -> Vec<String> {
    sw.stderr()
        .lines()
        .filter(|l| l.contains(REJECTED))
        .map(str::to_string)
        .collect()
}

/// Waits until the subworker has logged `n` rejections, then a little longer to catch
/// duplicates; returns the lines.
fn wait_rejections(cluster: &mut Reloading, n: usize) -> Vec<String> {
    let seen = poll_until(Duration::from_secs(5), || {
        if cluster.sw.try_exit().is_some() {
            return Some(false);
        }
        (rejected_lines(&cluster.sw).len() >= n).then_some(true)
    });
    cluster.assert_alive("loading a broken plugin file");
    assert_eq!(
        seen,
        Some(true),
        "no rejection logged within 5 s\n{}",
        cluster.describe()
    );
    // Longer than the watcher's 100 ms debounce: a second line would be there by now.
    thread::sleep(Duration::from_millis(400));
    rejected_lines(&cluster.sw)
}

#[test]
fn a_text_file_is_rejected_in_one_line_and_a_dropped_in_plugin_comes_and_goes() {
    let _serial = serial();
    let mut cluster = Reloading::start(&[], &[]);
    let rt = runtime();
    let client = connect(&rt, &cluster.cp.base);
    assert_eq!(version(&rt, &client, &cluster), "1.0.0");

    // Not a library at all, written over the served file.
    fs::write(
        cluster.plugin("versioned.so"),
        "this is not a shared library\n",
    )
    .expect("write the text file");
    let lines = wait_rejections(&mut cluster, 1);
    assert_eq!(lines.len(), 1, "one rejection, one line: {lines:#?}");
    assert!(
        lines[0].contains("versioned.so") && lines[0].contains("not a shared library"),
        "the line should name the file and say why: {}",
        lines[0]
    );
    assert_eq!(
        version(&rt, &client, &cluster),
        "1.0.0",
        "v1 keeps serving after a rejected reload"
    );

    // A second plugin dropped into the directory serves its task.
    let dropped = Instant::now();
    fs::copy(plugin_artifact("mytasks"), cluster.plugin("mytasks.so")).expect("copy mytasks");
    let sum = poll_until(Duration::from_secs(5), || {
        match rt.block_on(client.submit(add_task(2, 3), RESULT_WAIT)) {
            Ok(record) => Some(decode_value::<i64>(&record).expect("add answers an integer")),
            Err(_) => None,
        }
    })
    .unwrap_or_else(|| {
        panic!(
            "`add` was not served within 5 s of mytasks.so landing\n{}",
            cluster.describe()
        )
    });
    assert_eq!(sum, 5);
    eprintln!("dropped-in plugin served after {:?}", dropped.elapsed());

    // Removed: `add` is refused, naming it, and `version` still works.
    fs::remove_file(cluster.plugin("mytasks.so")).expect("remove mytasks.so");
    wait_until_refused(&rt, &client, &cluster);
    let out = run({
        let mut cmd = cluster.dir.fastworker();
        cmd.args([
            "submit",
            "--control-plane-address",
            &cluster.cp.base,
            "--task-name",
            "add",
            "--args",
            "2",
            "3",
        ]);
        cmd
    });
    assert!(!out.status.success(), "`add` still ran: {out:?}");
    let errors = out.stderr_lines();
    assert_eq!(errors.len(), 1, "one error line: {out:?}");
    assert!(
        errors[0].contains("`add`"),
        "the error should name the task: {out:?}"
    );
    assert_eq!(version(&rt, &client, &cluster), "1.0.0");
    cluster.assert_alive("after the plugin came and went");
}

/// Polls `add` until the control plane refuses it as unknown (bounded, 5 s).
fn wait_until_refused(rt: &Runtime, client: &Client, cluster: &Reloading) {
    let refused = poll_until(Duration::from_secs(5), || {
        match rt.block_on(client.submit(add_task(2, 3), RESULT_WAIT)) {
            Err(ClientError::Rejected(error)) if error.kind == ErrorKind::UnknownTask => {
                Some(error)
            }
            _ => None,
        }
    })
    .unwrap_or_else(|| {
        panic!(
            "`add` was still accepted 5 s after mytasks.so was removed\n{}",
            cluster.describe()
        )
    });
    assert!(refused.message.contains("`add`"), "{refused}");
}

/// A half-written library (`cp` caught mid-copy, a full disk) must be rejected like
/// any bad file. The first 256 KiB of the v2 build keep its ELF header (so it passes
/// the magic check) but end well inside its loadable segments, which span the first
/// MB of this debug build.
///
/// Pins a crash: the loader hands such a file to `dlopen`, which maps segments past
/// the end of the file and touches them, and the subworker dies of SIGBUS.
#[test]
fn a_truncated_library_is_rejected_and_the_subworker_keeps_serving_v1() {
    let _serial = serial();
    let mut cluster = Reloading::start(&[], &[]);
    let rt = runtime();
    let client = connect(&rt, &cluster.cp.base);
    assert_eq!(version(&rt, &client, &cluster), "1.0.0");

    let v2 = fs::read(plugin_artifact("versioned_v2")).expect("read the v2 build");
    fs::write(cluster.plugin("versioned.so"), &v2[..256 * 1024]).expect("write the truncated copy");
    let lines = wait_rejections(&mut cluster, 1);
    assert_eq!(lines.len(), 1, "one rejection, one line: {lines:#?}");
    assert!(lines[0].contains("versioned.so"), "{}", lines[0]);
    assert_eq!(version(&rt, &client, &cluster), "1.0.0");
    cluster.assert_alive("after the truncated library");
}

/// A deployment that reaches its plugin directory through a symlink
/// (`plugins -> releases/42/plugins`) must see a removal like any other.
///
/// Regression (fixed): the watcher reports the removed file under the symlinked path, which no
/// longer canonicalizes, while the registry knows the plugin by its canonical path, so
/// the removal was not matched and the task kept being served.
#[test]
fn a_plugin_removed_from_a_symlinked_directory_is_retired() {
    let _serial = serial();
    let dir = TestDir::new();
    dir.copy_in(
        &plugin_artifact("versioned_v1"),
        "releases/42/plugins/versioned.so",
    );
    dir.copy_in(
        &plugin_artifact("mytasks"),
        "releases/42/plugins/mytasks.so",
    );
    std::os::unix::fs::symlink("releases/42/plugins", dir.path().join("plugins"))
        .expect("symlink plugins");
    let cluster = Reloading::start_in(dir, "plugins", &[]);
    let rt = runtime();
    let client = connect(&rt, &cluster.cp.base);
    let sum: i64 = decode_value(
        &rt.block_on(client.submit(add_task(2, 3), RESULT_WAIT))
            .expect("add runs"),
    )
    .expect("an integer");
    assert_eq!(sum, 5);

    fs::remove_file(cluster.plugin("mytasks.so")).expect("remove mytasks.so");
    wait_until_refused(&rt, &client, &cluster);
    assert_eq!(version(&rt, &client, &cluster), "1.0.0");
}

// ---- --max-reloads -------------------------------------------------------------------

/// `--max-reloads 2`, then v1 -> v2 -> v1: the subworker drains, re-executes itself
/// (same pid, same worker id) and registers again, while a trickle of `version` and
/// `sleep_ms 300` keeps coming. Every task submitted before, during and after must
/// succeed.
///
/// Pins a gap: the draining subworker unregisters before it re-executes, and until it
/// registers again a control plane without task modules knows no host for its tasks,
/// so submissions in that window are refused as unknown.
#[test]
fn max_reloads_restarts_in_place_and_loses_no_task() {
    let _serial = serial();
    let mut cluster = Reloading::start(
        &[("mytasks", "mytasks.so")],
        &["--max-reloads", "2", "--concurrency", "4"],
    );
    let pid = cluster.sw.pid();
    let rt = runtime();
    let client = connect(&rt, &cluster.cp.base);
    assert_eq!(version(&rt, &client, &cluster), "1.0.0");

    // The trickle: three loops of `version` one after another, and one loop of
    // `sleep_ms 300` (so the drain has something to wait for).
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for n in 0..4 {
        let (client, stop) = (client.clone(), stop.clone());
        loops.push(rt.spawn(async move {
            let mut done: Vec<TaskRecord> = Vec::new();
            let mut failures: Vec<String> = Vec::new();
            for _ in 0..MAX_ROUNDS {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // A refused submission comes back at once: pause a little so a loop
                // does not spin.
                let (task, pause) = if n == 0 {
                    (sleep_task(300), Duration::from_millis(5))
                } else {
                    (version_task(), Duration::from_millis(2))
                };
                let (name, id, submitted_ms) = (task.name.clone(), task.id, now_ms());
                match client.submit_record(task, RESULT_WAIT).await {
                    Ok(record) if record.status == TaskStatus::Success => done.push(record),
                    Ok(record) => failures.push(format!(
                        "{name} {id} (submitted at {submitted_ms}): {:?}: {:?}",
                        record.status, record.error
                    )),
                    Err(err) => {
                        failures.push(format!("{name} {id} (submitted at {submitted_ms}): {err}"))
                    }
                }
                tokio::time::sleep(pause).await;
            }
            (done, failures)
        }));
    }

    thread::sleep(Duration::from_millis(500));
    let first = cluster.swap("versioned_v2", Swap::Move);
    first_answer(&rt, &client, &cluster, "2.0.0", first);
    thread::sleep(Duration::from_millis(300));
    let swap_back_ms = now_ms();
    cluster.swap("versioned_v1", Swap::CargoBuild);
    cluster
        .sw
        .wait_for(true, "restarting in place", Duration::from_secs(20));
    let registered = poll_until(STARTUP, || {
        let registrations = cluster
            .sw
            .stderr()
            .matches("registered with the control plane")
            .count();
        (registrations >= 2).then_some(())
    });
    cluster.assert_alive("restarting in place");
    assert!(
        registered.is_some(),
        "the subworker did not register again after restarting\n{}",
        cluster.describe()
    );
    // The control plane was told it is restarting (so its tasks stayed known) and saw
    // it come back under the same id.
    let cp_registrations = poll_until(Duration::from_secs(5), || {
        let log = cluster.cp.proc.stderr();
        let n = log.matches("subworker registered worker=sw1 ").count();
        (n >= 2 && log.contains("subworker restarting in place worker=sw1")).then_some(n)
    });
    assert_eq!(cp_registrations, Some(2), "{}", cluster.describe());
    let registered_ms = now_ms();
    thread::sleep(Duration::from_millis(1_000));
    stop.store(true, Ordering::Relaxed);

    let mut done = Vec::new();
    let mut failures = Vec::new();
    for joined in rt.block_on(futures::future::join_all(loops)) {
        let (d, f) = joined.expect("a submitter did not panic");
        done.extend(d);
        failures.extend(f);
    }
    cluster.assert_alive("after the restart");
    // Same pid, still a subworker: it re-executed itself rather than being replaced.
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("subworker"),
        "pid {pid} is no longer the subworker"
    );
    let sw_log = cluster.sw.stderr();
    assert_eq!(
        sw_log.matches("restarting in place: ").count(),
        1,
        "one restart\n{sw_log}"
    );
    assert!(
        sw_log.contains("2 plugin reloads (--max-reloads 2)"),
        "the restart says why\n{sw_log}"
    );
    let during = done
        .iter()
        .filter(|r| r.submitted_ms >= swap_back_ms && r.submitted_ms <= registered_ms)
        .count();
    let refused = failures
        .iter()
        .filter(|f| f.contains("unknown_task: no loaded plugin serves"))
        .count();
    assert!(
        failures.is_empty(),
        "tasks submitted around the restart did not succeed ({} succeeded, {during} of \
         them submitted between the second swap at {swap_back_ms} and the \
         re-registration seen at {registered_ms}; {refused} of the failures were \
         submissions refused as unknown while the subworker was between its Unregister \
         and its new Register): {}\n{}",
        done.len(),
        first_failures(&failures),
        cluster.describe()
    );
    assert!(
        during > 0,
        "no task was submitted during the restart; the test tested nothing"
    );
    assert!(
        done.iter().any(|r| r.name == "sleep_ms"),
        "no long task ran"
    );
    assert_eq!(
        version(&rt, &client, &cluster),
        "1.0.0",
        "after the restart the file's current build (v1) serves"
    );
}

// ---- --no-watch ----------------------------------------------------------------------

#[test]
fn no_watch_ignores_a_changed_file() {
    let _serial = serial();
    let cluster = Reloading::start(&[], &["--no-watch"]);
    let rt = runtime();
    let client = connect(&rt, &cluster.cp.base);
    assert_eq!(version(&rt, &client, &cluster), "1.0.0");

    let landed = cluster.swap("versioned_v2", Swap::Copy);
    // Without --no-watch the new code answers within ~0.2 s (see the latency test).
    let mut calls = 0;
    while landed.elapsed() < Duration::from_secs(1) && calls < 1_000 {
        assert_eq!(
            version(&rt, &client, &cluster),
            "1.0.0",
            "--no-watch, yet the changed file was loaded after {:?}\n{}",
            landed.elapsed(),
            cluster.describe()
        );
        calls += 1;
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !cluster.sw.stderr().contains(RELOADED),
        "{}",
        cluster.describe()
    );
}

// ---- the control plane's own plugins --------------------------------------------------

/// The control plane's own plugins run in its child subworker, which reloads them and,
/// after `--max-reloads`, drains and re-executes itself like every subworker: the
/// control plane (and its queue) stays up, and the new child goes on reloading.
#[test]
fn the_control_planes_own_subworker_reloads_and_restarts_after_max_reloads() {
    let _serial = serial();
    let dir = TestDir::new();
    dir.copy_in(&plugin_artifact("versioned_v1"), "plugins/versioned.so");
    let mut cp = ControlPlane::start(&dir, &["--task-modules", "plugins", "--max-reloads", "1"]);
    let rt = runtime();
    let client = connect(&rt, &cp.base);
    let ask = || -> Option<String> {
        let record = rt
            .block_on(client.submit(version_task(), RESULT_WAIT))
            .ok()?;
        decode_value(&record).ok()
    };
    assert_eq!(ask().as_deref(), Some("1.0.0"));

    let target = dir.path().join("plugins/versioned.so");
    Swap::Move.replace(&plugin_artifact("versioned_v2"), &target);
    let v2 = poll_until(Duration::from_secs(5), || {
        (ask().as_deref() == Some("2.0.0")).then_some(())
    });
    assert!(v2.is_some(), "no reload\n{}", cp.proc.describe());
    cp.proc.wait_for(
        true,
        "1 plugin reloads (--max-reloads 1): draining, then restarting in place",
        Duration::from_secs(5),
    );
    cp.proc
        .wait_for(true, "restarting in place: ", Duration::from_secs(10));

    // The re-executed child loads what is on disk and watches again.
    Swap::Move.replace(&plugin_artifact("versioned_v1"), &target);
    let v1 = poll_until(Duration::from_secs(10), || {
        (ask().as_deref() == Some("1.0.0")).then_some(())
    });
    assert!(
        v1.is_some(),
        "the restarted child did not reload\n{}",
        cp.proc.describe()
    );
    assert!(cp.proc.try_exit().is_none(), "{}", cp.proc.describe());

    // The restarted child still dies with the control plane, as the first one would:
    // it restarted by an exec from a runtime thread, which dropped the parent-death
    // signal its first thread had (an orphan per run of this test, before).
    let children = crate::bench::live_children(cp.proc.pid());
    assert!(
        !children.is_empty(),
        "the own subworker is the control plane's child"
    );
    cp.proc.kill();
    let gone = poll_until(Duration::from_secs(5), || {
        children
            .iter()
            .all(|child| !crate::bench::alive(*child))
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "the restarted own subworker outlived its control plane: {children:?}"
    );
}

/// A plugin replaced after its host loaded it and before the watch began (what a
/// subworker restarting in place met when a build landed in between) is reloaded
/// when the watch starts: that change raised no event the watch could see. Without
/// the watch's look at every source, v1 served until the next change.
#[test]
fn a_plugin_replaced_between_loading_and_watching_is_reloaded_when_the_watch_starts() {
    let dir = TestDir::new();
    let target = dir.copy_in(&plugin_artifact("versioned_v1"), "plugins/versioned.so");
    let loader = PluginLoader::with_shadow_dir(dir.shadow_dir()).expect("shadow dir");
    let words = vec![dir.path().join("plugins").display().to_string()];
    let live = LivePlugins::load(loader, &words, dir.path()).expect("v1 loads");
    let registry = live.shared();
    let served = |registry: &fastworker_host::plugin::SharedRegistry| {
        registry
            .load()
            .task("version")
            .map(|t| t.plugin().version.clone())
    };
    assert_eq!(served(&registry).as_deref(), Some("1.0.0"));

    Swap::Move.replace(&plugin_artifact("versioned_v2"), &target);
    let (reports_tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let _watching = watch(Arc::new(std::sync::Mutex::new(live)), reports_tx).expect("watch");
    let report = poll_until(Duration::from_secs(5), || reports.try_recv().ok());
    match report {
        Some(ReloadReport::Loaded { new_version, .. }) => assert_eq!(new_version, "2.0.0"),
        other => panic!("no reload of the file replaced before the watch began: {other:?}"),
    }
    assert_eq!(served(&registry).as_deref(), Some("2.0.0"));
    // Nothing else changed: no second report.
    thread::sleep(Duration::from_millis(300));
    assert!(reports.try_recv().is_err());
}

/// Every reload, ok or rejected, reaches the control plane's event stream (what the
/// dashboard will show), with plugin, old and new version; `fastworker events` reads it.
#[test]
fn reloads_reach_the_control_planes_event_stream() {
    let _serial = serial();
    let mut cluster = Reloading::start(&[], &[]);
    let rt = runtime();
    let client = connect(&rt, &cluster.cp.base);
    assert_eq!(version(&rt, &client, &cluster), "1.0.0");
    let landed = cluster.swap("versioned_v2", Swap::Move);
    first_answer(&rt, &client, &cluster, "2.0.0", landed);
    fs::write(cluster.plugin("versioned.so"), b"not a library").expect("write junk");
    wait_rejections(&mut cluster, 1);

    let mut cmd = cluster.dir.fastworker();
    cmd.args([
        "events",
        "--control-plane-address",
        &cluster.cp.base,
        "--json",
    ]);
    let out = run(cmd);
    assert!(out.status.success(), "{out:?}");
    let events: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
    let events = events.as_array().expect("a list");
    let find = |kind: &str| {
        events
            .iter()
            .find(|e| e["kind"] == kind && e["subject"] == "sw1")
            .unwrap_or_else(|| panic!("no {kind} event from sw1 in {events:#?}"))
    };
    find("worker.registered");
    let reloaded = find("plugin.reloaded")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reloaded.contains("versioned") && reloaded.contains("1.0.0 -> 2.0.0"),
        "{reloaded}"
    );
    let rejected = find("plugin.rejected")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(rejected.contains("not a shared library"), "{rejected}");
}
