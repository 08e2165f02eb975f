//! The control plane's own subworker: a child process (`fastworker subworker`) that runs
//! the control plane's `--task-modules`, so no plugin code runs in the control plane's
//! process. A plugin that aborts, segfaults, runs out of memory or hangs there costs
//! that child (and the tasks running in it, which are redelivered), never the queue.
//!
//! [`Supervisor`] starts the child, restarts it with backoff when it exits (100 ms,
//! doubling to 10 s; back to 100 ms after a run of 10 s or more), and on
//! [`Supervisor::stop`] asks it to drain (SIGTERM) and kills it past a deadline. The
//! child registers like any other subworker, under the control plane's id and with the
//! secret the control plane chose for it (passed in its environment, never argv), and
//! it dies with the control plane (`PR_SET_PDEATHSIG` on Linux).

use std::{
    ffi::OsString,
    path::PathBuf,
    process::{Child, Command, ExitStatus},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// How to start the child.
#[derive(Debug, Clone)]
pub struct ChildCommand {
    /// The `fastworker` binary.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Environment variables to set (on top of the control plane's own, minus every
    /// other `FASTWORKER_*` variable, so the child sees only what it is given).
    pub env: Vec<(String, String)>,
    /// `FASTWORKER_*` variables the child may inherit.
    pub inherit: Vec<String>,
}

/// The child ended.
#[derive(Debug, Clone)]
pub struct ChildExit {
    /// How it ended.
    pub status: String,
    /// Whether it ended with exit code 0.
    pub success: bool,
    /// How long it ran.
    pub ran_for: Duration,
}

/// Runs and restarts the child on a thread of its own.
pub struct Supervisor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A run at least this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

impl Supervisor {
    /// Starts the child now; every exit is reported on `exits`.
    pub fn start(command: ChildCommand, exits: mpsc::UnboundedSender<ChildExit>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("own-subworker".into())
            .spawn(move || supervise(&command, &flag, &exits))
            .map_err(|err| error!("cannot start the thread that supervises the control plane's own subworker: {err}"))
            .ok();
        Supervisor { stop, thread }
    }

    /// Asks the child to finish what it runs (SIGTERM), kills it after
    /// [`STOP_KILL_AFTER`], and returns once it is gone.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            // The thread signals the child itself (it owns the handle).
            let _ = thread.join();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Not joined here: the thread stops the child on its own, and the process
        // exiting ends it (the child then gets its parent-death signal).
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn supervise(command: &ChildCommand, stop: &AtomicBool, exits: &mpsc::UnboundedSender<ChildExit>) {
    let mut backoff = FIRST_BACKOFF;
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let mut child = match spawn(command) {
            Ok(child) => child,
            Err(err) => {
                error!("cannot start the control plane's own subworker: {err}");
                let _ = exits.send(ChildExit {
                    status: format!("not started: {err}"),
                    success: false,
                    ran_for: Duration::ZERO,
                });
                if sleep_unless_stopped(backoff, stop) {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        info!(
            pid = child.id(),
            "the control plane's own subworker started"
        );
        let status = wait(&mut child, stop);
        let ran_for = started.elapsed();
        let exit = ChildExit {
            status: status
                .as_ref()
                .map_or_else(|e| format!("unknown ({e})"), describe),
            success: status.as_ref().is_ok_and(ExitStatus::success),
            ran_for,
        };
        if stop.load(Ordering::SeqCst) {
            info!(
                "the control plane's own subworker stopped ({})",
                exit.status
            );
            return;
        }
        if ran_for >= HEALTHY_RUN {
            backoff = FIRST_BACKOFF;
        }
        warn!(
            "the control plane's own subworker exited ({}) after {:.1?}; its running tasks go to others or wait for it; restarting in {backoff:?}",
            exit.status, ran_for
        );
        let _ = exits.send(exit);
        if sleep_unless_stopped(backoff, stop) {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Waits for the child to exit; once `stop` is set, sends it SIGTERM (it drains) and
/// kills it if it is still there after [`STOP_KILL_AFTER`].
fn wait(child: &mut Child, stop: &AtomicBool) -> std::io::Result<ExitStatus> {
    let mut terminated_at: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if stop.load(Ordering::SeqCst) {
            match terminated_at {
                None => {
                    terminate(child);
                    terminated_at = Some(Instant::now());
                }
                Some(at) if at.elapsed() >= STOP_KILL_AFTER => {
                    warn!("the control plane's own subworker did not stop in {STOP_KILL_AFTER:?}: killing it");
                    let _ = child.kill();
                    return child.wait();
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(POLL);
    }
}

/// How long the child gets to finish after SIGTERM when the control plane stops (the
/// control plane has already waited for its tasks, within its own `--shutdown-grace`).
const STOP_KILL_AFTER: Duration = Duration::from_secs(5);

fn terminate(child: &Child) {
    #[cfg(unix)]
    {
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) with a pid we own (our child, not yet reaped) and a
            // valid signal number; it touches no memory.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = child;
    }
}

fn describe(status: &ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let name = match signal {
                libc::SIGABRT => "SIGABRT",
                libc::SIGSEGV => "SIGSEGV",
                libc::SIGKILL => "SIGKILL",
                libc::SIGBUS => "SIGBUS",
                libc::SIGTERM => "SIGTERM",
                libc::SIGILL => "SIGILL",
                libc::SIGFPE => "SIGFPE",
                _ => "",
            };
            return format!("killed by signal {signal} {name}")
                .trim_end()
                .to_string();
        }
    }
    match status.code() {
        Some(code) => format!("exit code {code}"),
        None => status.to_string(),
    }
}

fn spawn(command: &ChildCommand) -> std::io::Result<Child> {
    let mut cmd = Command::new(&command.program);
    cmd.args(&command.args);
    for (key, _) in std::env::vars_os() {
        if let Some(key) = key.to_str() {
            if key.starts_with("FASTWORKER_") && !command.inherit.iter().any(|k| k == key) {
                cmd.env_remove(key);
            }
        }
    }
    for (key, value) in &command.env {
        cmd.env(key, value);
    }
    // It dies with the thread that started it (this supervisor, which lives as long
    // as the control plane supervises it).
    crate::child::dies_with_parent(&mut cmd);
    cmd.spawn()
}

/// Sleeps `delay` in short steps; true if `stop` was set meanwhile.
fn sleep_unless_stopped(delay: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + delay;
    while Instant::now() < until {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
    }
    stop.load(Ordering::SeqCst)
}
