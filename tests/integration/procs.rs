//! Real `fastworker` processes for the cluster tests: free ports, a control plane and
//! subworkers started in a test's own directory, each owned by a guard that kills and
//! reaps it when dropped (so a failing test leaves nothing running).
//!
//! Every wait here is bounded twice, by a number of polls and by a deadline, and a
//! wait that runs out fails the test with the process's own output attached.

use std::{
    collections::HashSet,
    fs,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use crate::support::{plugin_artifact, TestDir};

/// How often a wait polls.
pub const POLL: Duration = Duration::from_millis(10);

/// How long a process may take to come up (debug build, two busy cores).
pub const STARTUP: Duration = Duration::from_secs(20);

/// A TCP port on 127.0.0.1 that nobody listened on a moment ago. The kernel picks it
/// (bind to port 0); ports already handed to another test in this process are never
/// handed out again, so parallel tests cannot collide with each other.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("can bind 127.0.0.1:0")
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("no fresh free port in 100 tries");
}

/// `tcp://127.0.0.1:<a free port>`.
pub fn free_address() -> String {
    format!("tcp://127.0.0.1:{}", free_port())
}

/// A fresh test directory holding `plugins/mytasks.so`, copied from the cargo-built
/// `libmytasks.so`, so the bare name `mytasks` resolves as the seed page expects.
pub fn mytasks_dir() -> TestDir {
    let dir = TestDir::new();
    dir.copy_in(&plugin_artifact("mytasks"), "plugins/mytasks.so");
    dir
}

/// Polls `check` until it returns `Some`, at most `limit` long (and at most
/// `limit / POLL + 1` times). `None` when it never did.
pub fn poll_until<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    let max_polls = (limit.as_millis() / POLL.as_millis()) as usize + 1;
    for _ in 0..max_polls {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(POLL);
    }
    check()
}

/// A running `fastworker` process; killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Starts `fastworker <args>` in `dir`, with a private shadow directory, none of the
    /// caller's `FASTWORKER_*` settings, and its output in `<name>.out` / `<name>.err`.
    pub fn spawn(dir: &TestDir, name: &str, args: &[String]) -> Proc {
        let mut cmd: Command = dir.fastworker();
        cmd.args(args);
        Proc::spawn_command(dir, name, cmd, None)
    }

    /// Starts `cmd` (made by `dir.fastworker()`) as [`Proc::spawn`] does; with
    /// `descriptor_limit`, under that soft and hard limit of open files.
    pub fn spawn_command(
        dir: &TestDir,
        name: &str,
        mut cmd: Command,
        descriptor_limit: Option<u64>,
    ) -> Proc {
        let stdout = dir.child(&format!("{name}.out"));
        let stderr = dir.child(&format!("{name}.err"));
        if let Some(limit) = descriptor_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, limit, limit));
            }
        }
        cmd.env("FASTWORKER_SHADOW_DIR", dir.path().join("shadow"))
            .stdout(Stdio::from(
                fs::File::create(&stdout).expect("stdout file can be created"),
            ))
            .stderr(Stdio::from(
                fs::File::create(&stderr).expect("stderr file can be created"),
            ));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_string(),
            child,
            stdout,
            stderr,
            exited: None,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// What it printed to stderr (its log) so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Both outputs, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "--- {name} stdout ---\n{}--- {name} stderr ---\n{}",
            self.stdout(),
            self.stderr(),
            name = self.name
        )
    }

    /// Has it exited? Reaps it if so.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("the child can be waited for");
        }
        self.exited
    }

    /// Waits until `stdout` (or stderr, when `in_stderr`) contains `needle`; fails the
    /// test when it does not within `limit` or the process exits first.
    pub fn wait_for(&mut self, in_stderr: bool, needle: &str, limit: Duration) {
        self.wait_for_line(in_stderr, &[needle], limit);
    }

    /// Waits until one line of stdout (or stderr) contains every one of `needles`;
    /// fails the test when none does within `limit` or the process exits first.
    pub fn wait_for_line(&mut self, in_stderr: bool, needles: &[&str], limit: Duration) {
        let found = poll_until(limit, || {
            let text = if in_stderr {
                self.stderr()
            } else {
                self.stdout()
            };
            if text
                .lines()
                .any(|line| needles.iter().all(|n| line.contains(n)))
            {
                return Some(true);
            }
            self.try_exit().map(|_| false)
        });
        match found {
            Some(true) => {}
            Some(false) => panic!(
                "{} exited ({:?}) before printing a line with {needles:?}\n{}",
                self.name,
                self.exited,
                self.describe()
            ),
            None => panic!(
                "{} did not print a line with {needles:?} within {limit:?}\n{}",
                self.name,
                self.describe()
            ),
        }
    }

    /// Sends `signal` (`INT`, `TERM`, ...) with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }

    /// Waits at most `limit` for it to exit by itself; fails the test otherwise.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        match poll_until(limit, || self.try_exit()) {
            Some(status) => status,
            None => panic!(
                "{} did not exit within {limit:?}\n{}",
                self.name,
                self.describe()
            ),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `control-plane --no-gui` on these endpoints (a port of 0 for no subworker port).
pub fn control_plane_args(base: &str, discovery: &str, subworker_port: &str) -> Vec<String> {
    [
        "control-plane",
        "--no-gui",
        "--base-address",
        base,
        "--discovery-address",
        discovery,
        "--subworker-port",
        subworker_port,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A running control plane and where to reach it.
pub struct ControlPlane {
    /// The process.
    pub proc: Proc,
    /// Where clients and subworkers connect (`--base-address`).
    pub base: String,
    /// Its discovery endpoint (`--discovery-address`).
    pub discovery: String,
    /// Its extra endpoint for subworkers (`--subworker-port` on the base host).
    pub subworker_endpoint: String,
}

impl ControlPlane {
    /// Starts `fastworker control-plane --no-gui` on free ports with `extra` flags, and
    /// waits for its "ready on" line.
    pub fn start(dir: &TestDir, extra: &[&str]) -> ControlPlane {
        ControlPlane::start_with(dir, extra, &[])
    }

    /// [`ControlPlane::start`] with `env` set for the process.
    pub fn start_with(dir: &TestDir, extra: &[&str], env: &[(&str, &str)]) -> ControlPlane {
        let base = free_address();
        let discovery = free_address();
        let subworker_port = free_port();
        let mut args = control_plane_args(&base, &discovery, &subworker_port.to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = dir.fastworker();
        cmd.args(&args).envs(env.iter().copied());
        let mut proc = Proc::spawn_command(dir, "control-plane", cmd, None);
        proc.wait_for(false, "ready on", STARTUP);
        ControlPlane {
            proc,
            base,
            discovery,
            subworker_endpoint: format!("tcp://127.0.0.1:{subworker_port}"),
        }
    }

    /// Waits until the control plane has logged that subworker `id` registered, so the
    /// next task can go to it.
    pub fn wait_registered(&mut self, id: &str) {
        let worker = format!("worker={id} ");
        self.proc
            .wait_for_line(true, &["subworker registered", &worker], STARTUP);
    }

    /// Starts subworker `id` with the seed page's flags (`--worker-id`,
    /// `--control-plane-address`, `--base-address` on a free port, `--task-modules
    /// mytasks`) plus `extra`, and waits until both sides say it registered.
    pub fn subworker(&mut self, dir: &TestDir, id: &str, extra: &[&str]) -> Proc {
        self.subworker_with_env(dir, id, extra, &[])
    }

    /// [`ControlPlane::subworker`] with `env` set for the process.
    pub fn subworker_with_env(
        &mut self,
        dir: &TestDir,
        id: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        let mut args: Vec<String> = vec![
            "subworker".into(),
            "--worker-id".into(),
            id.into(),
            "--control-plane-address".into(),
            self.base.clone(),
            "--base-address".into(),
            free_address(),
            "--task-modules".into(),
            "mytasks".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = dir.fastworker();
        cmd.args(&args).envs(env.iter().copied());
        let mut proc = Proc::spawn_command(dir, id, cmd, None);
        proc.wait_for(true, "registered with the control plane", STARTUP);
        self.wait_registered(id);
        proc
    }
}

/// The library client connected to `address` (with the run's key, if any), or a
/// failed test.
pub fn connect(rt: &tokio::runtime::Runtime, address: &str) -> fastworker_client::Client {
    rt.block_on(fastworker_client::Client::connect_with(
        address,
        Duration::from_secs(20),
        &crate::support::client_config(),
    ))
    .unwrap_or_else(|e| panic!("cannot connect to {address}: {e}"))
}

/// A small runtime for the library client; test bodies stay synchronous so process
/// guards and bounded polls never block a runtime thread.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
