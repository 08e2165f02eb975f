//! What the process benchmarks share: finding the release plugins, free ports, and
//! `fastworker` processes that are killed when dropped. Each benchmark uses a part.
#![allow(dead_code)]

use std::{
    collections::HashSet,
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

/// `lib<name>.so` in this binary's profile directory (`target/<profile>/deps/..`).
/// Exits with a message naming `build` (the command that builds it) when missing.
pub fn plugin_path(lib_name: &str, build: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the benchmark knows its own path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the benchmark lives in target/<profile>/deps");
    let path = profile_dir.join(format!(
        "{}{lib_name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    if !path.is_file() {
        eprintln!(
            "error: {} is missing: run `{build}` before this benchmark",
            path.display()
        );
        std::process::exit(2);
    }
    path
}

/// A port on 127.0.0.1 nobody listened on a moment ago, never handed out twice.
pub fn free_address() -> String {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("can bind 127.0.0.1:0")
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return format!("tcp://127.0.0.1:{port}");
        }
    }
    panic!("no fresh free port in 100 tries");
}

/// The port of `tcp://host:port`.
pub fn port_of(address: &str) -> &str {
    address.rsplit(':').next().expect("an address with a port")
}

/// `fastworker` in `dir`, with a private shadow directory and no inherited settings.
pub fn fastworker(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fastworker"));
    cmd.current_dir(dir);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FASTWORKER_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("FASTWORKER_SHADOW_DIR", dir.join("shadow"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    if let Some(key) = bench_key() {
        cmd.env("FASTWORKER_AUTH_KEY", key);
    }
    // FASTWORKER_PROTOCOL_MAX=1 runs every process (and the bench's own client) on
    // protocol version 1, to compare its headers with version 2's.
    if let Some(max) = std::env::var_os("FASTWORKER_PROTOCOL_MAX") {
        cmd.env("FASTWORKER_PROTOCOL_MAX", max);
    }
    cmd
}

/// With `BENCH_WITH_KEY=1`, the cluster key every process of the run uses (so the
/// numbers include the handshake and a seal on every message).
pub fn bench_key() -> Option<String> {
    static KEY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        (std::env::var("BENCH_WITH_KEY").as_deref() == Ok("1"))
            .then(fastworker_transport::auth::ClusterKey::generate_hex)
    })
    .clone()
}

/// What the benchmark's library client connects with: the run's key, if any.
pub fn client_config() -> fastworker_transport::TransportConfig {
    fastworker_transport::TransportConfig::default().with_key(
        bench_key()
            .map(|k| fastworker_transport::auth::ClusterKey::parse(&k).expect("the key parses")),
    )
}

/// The library client connected to `address` with the run's key (60 s timeout).
pub fn connect(rt: &tokio::runtime::Runtime, address: &str) -> fastworker_client::Client {
    rt.block_on(fastworker_client::Client::connect_with(
        address,
        Duration::from_secs(60),
        &client_config(),
    ))
    .expect("the benchmark connects")
}

/// A fresh temp directory holding `plugins/<name>.so`, a copy of `plugin`.
pub fn dir_with_plugin(plugin: &Path, name: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("fastworker-bench-")
        .tempdir()
        .expect("a temp dir");
    fs::create_dir_all(dir.path().join("plugins")).expect("plugins dir");
    fs::copy(plugin, dir.path().join(format!("plugins/{name}.so"))).expect("copy the plugin");
    dir
}

/// A running `fastworker`, killed and reaped when dropped.
pub struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    /// Starts `fastworker args...` in `dir`, its output in `dir/<name>.out|.err`.
    pub fn spawn(dir: &Path, name: &str, args: &[&str]) -> Proc {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        let child = fastworker(dir)
            .args(args)
            .stdout(fs::File::create(&stdout).expect("stdout file"))
            .stderr(fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            stdout,
            stderr,
        }
    }

    /// Waits (bounded: 30 s, 3,000 polls) until stdout or stderr contains `needle`.
    pub fn wait_for(&mut self, in_stderr: bool, needle: &str) {
        let path = if in_stderr {
            &self.stderr
        } else {
            &self.stdout
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        for _ in 0..3_000 {
            if fs::read_to_string(path)
                .unwrap_or_default()
                .contains(needle)
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before printing {needle:?}:\n{}",
                    self.name,
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "{} did not print {needle:?} within 30 s:\n{}",
            self.name,
            self.log()
        );
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
