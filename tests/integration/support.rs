//! Helpers shared by the integration tests: where cargo put the binary and the plugins,
//! a fresh directory per test, and running the real `fastworker` with a bounded wait.
//!
//! The plugins are separate workspace packages (`plugins/mytasks`, `tests/fixtures/*`)
//! that `cargo test -p fastworker` does not build, so the tests look for them next to
//! this test binary and say how to build them when one is missing.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

/// How long one run of the binary may take before the test fails. `list` takes
/// milliseconds; this only keeps a hung process from hanging the suite.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The cargo profile directory this test binary was built into (`target/debug`):
/// the binary is `target/debug/deps/integration-<hash>`. Deriving it from the running
/// executable follows `CARGO_TARGET_DIR` and `--target` without extra configuration.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    let deps = exe.parent().expect("the test binary is in a directory");
    deps.parent()
        .expect("the test binary's directory has a parent")
        .to_path_buf()
}

/// The `fastworker` binary cargo built for this test run.
pub fn fastworker_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fastworker"))
}

/// The shared library cargo built for the package whose library is named `lib_name`
/// (`mytasks`, `versioned_v1`, `bad_abi`, ...). Panics, saying what to run, when it
/// has not been built.
pub fn plugin_artifact(lib_name: &str) -> PathBuf {
    let file = format!(
        "{}{lib_name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let path = profile_dir().join(&file);
    assert!(
        path.is_file(),
        "{} is missing. The test plugins are workspace packages that `cargo test -p \
         fastworker` does not build: run `cargo build --workspace` first (the README's \
         test command does both).",
        path.display()
    );
    path
}

/// A fresh directory for one test, removed when dropped.
pub struct TestDir {
    dir: tempfile::TempDir,
    suite_key: bool,
}

impl TestDir {
    /// A new empty directory.
    pub fn new() -> Self {
        TestDir {
            dir: tempfile::Builder::new()
                .prefix("fastworker-test-")
                .tempdir()
                .expect("a temp dir can be created"),
            suite_key: true,
        }
    }

    /// The same, for tests that choose each process's key themselves: its processes
    /// never get the suite's key.
    pub fn without_suite_key(mut self) -> Self {
        self.suite_key = false;
        self
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `self/rel`, with its parent directories created.
    pub fn child(&self, rel: &str) -> PathBuf {
        let path = self.path().join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("parent directories can be created");
        }
        path
    }

    /// Copies `from` to `self/rel` (a new file, so a new inode) and returns its path.
    pub fn copy_in(&self, from: &Path, rel: &str) -> PathBuf {
        let to = self.child(rel);
        fs::copy(from, &to)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
        to
    }

    /// A directory for the loader's shadow copies, private to this test.
    pub fn shadow_dir(&self) -> PathBuf {
        self.path().join(".shadow")
    }

    /// `fastworker` with this directory as its working directory, a private shadow
    /// directory, and none of the caller's `FASTWORKER_*` settings.
    pub fn fastworker(&self) -> Command {
        self.fastworker_from(&fastworker_bin())
    }

    /// [`TestDir::fastworker`] with another `fastworker` binary (an older release).
    pub fn fastworker_from(&self, binary: &Path) -> Command {
        let mut cmd = Command::new(binary);
        cmd.current_dir(self.path());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("FASTWORKER_") {
                cmd.env_remove(key);
            }
        }
        // FASTWORKER_TEST_LOG (a `FASTWORKER_LOG` filter such as `debug`) turns up
        // the logs of every process the test starts, to see what a failure shows.
        if let Some(filter) = std::env::var_os("FASTWORKER_TEST_LOG") {
            cmd.env("FASTWORKER_LOG", filter);
        }
        if let Some(key) = suite_key().filter(|_| self.suite_key) {
            cmd.env("FASTWORKER_AUTH_KEY", key);
        }
        // A control plane serves its dashboard on 8080 by default: tests run many at
        // once, so each picks a free port unless the test says otherwise.
        cmd.env("FASTWORKER_GUI_PORT", "0");
        cmd.env("FASTWORKER_SHADOW_DIR", self.shadow_dir())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }
}

/// The cluster key every process of this test run gets (by `FASTWORKER_AUTH_KEY`),
/// when the run asks for one with `FASTWORKER_TEST_WITH_KEY=1` (`.ci/run`'s second
/// pass): the whole suite then runs with authentication on.
pub fn suite_key() -> Option<String> {
    static KEY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        (std::env::var("FASTWORKER_TEST_WITH_KEY").as_deref() == Ok("1"))
            .then(fastworker_transport::auth::ClusterKey::generate_hex)
    })
    .clone()
}

/// What the library client in a test connects with: the suite's key, if any.
pub fn client_config() -> fastworker_transport::TransportConfig {
    fastworker_transport::TransportConfig::default().with_key(
        suite_key().map(|k| {
            fastworker_transport::auth::ClusterKey::parse(&k).expect("the suite key parses")
        }),
    )
}

/// Runs tests that load the machine (or measure rates under load) one at a time: the
/// hot-reload-under-load tests, big payloads, floods of connections. A test that
/// panics poisons the lock; the next one takes it anyway.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a finished run printed.
#[derive(Debug)]
pub struct Output {
    /// How it exited.
    pub status: ExitStatus,
    /// Standard output, as text.
    pub stdout: String,
    /// Standard error, as text.
    pub stderr: String,
}

impl Output {
    /// The non-empty lines of standard output.
    pub fn stdout_lines(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    /// The non-empty lines of standard error that are not tracing log lines.
    pub fn stderr_lines(&self) -> Vec<String> {
        non_log_lines(&self.stderr)
    }
}

/// The non-empty lines of `text` that are not tracing log lines, without colours.
pub fn non_log_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(strip_ansi)
        .filter(|l| !l.trim().is_empty() && !is_tracing_line(l))
        .collect()
}

/// Runs `cmd` to completion, failing the test if it takes longer than
/// [`COMMAND_TIMEOUT`] (the process is killed first).
pub fn run(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("stdout is piped")));
    let stderr = read_all(Box::new(child.stderr.take().expect("stderr is piped")));
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {COMMAND_TIMEOUT:?}; killed it");
        }
        thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Removes ANSI colour sequences (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Does `line` look like a `tracing_subscriber::fmt` line (`2026-01-01T12:00:00Z ...`)?
fn is_tracing_line(line: &str) -> bool {
    let b = line.trim_start().as_bytes();
    b.len() > 11
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
}

#[test]
fn log_lines_and_colours_are_filtered_out_and_error_lines_kept() {
    let stderr =
        "\u{1b}[2m2026-11-27T21:09:21.242863Z\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m skipping\n\
                  2026-11-27T21:09:21.242863Z  INFO loaded\n\
                  error: x.so: not a shared library\n\n";
    assert_eq!(non_log_lines(stderr), ["error: x.so: not a shared library"]);
    assert_eq!(non_log_lines("2026 was a year\n"), ["2026 was a year"]);
}
