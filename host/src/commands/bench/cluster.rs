//! A cluster the bench starts and measures: a control plane with default flags (its
//! dashboard on a free port, its own child subworker running the plugin) and N
//! subworkers, each a real process of this binary, killed when the cluster is
//! dropped; and what one process costs (`/proc`: CPU time, RSS).

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use fastworker_client::{Client, TransportConfig};
use fastworker_protocol::{Codec, TaskEnvelope};

/// How long a process may take to come up.
const STARTUP: Duration = Duration::from_secs(30);

/// A process of the cluster; killed and reaped when dropped.
pub struct Process {
    /// What it is, for the report.
    pub name: String,
    child: Child,
    stdout: Option<PathBuf>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Starts `command` (its output discarded) as `name`.
    pub fn start(name: &str, mut command: Command) -> anyhow::Result<Process> {
        command.stdout(Stdio::null()).stderr(Stdio::null());
        Process::launch(name, command, None)
    }

    /// Starts `command` (its output already directed; `stdout` is where it goes, to
    /// wait for lines in).
    fn launch(
        name: &str,
        mut command: Command,
        stdout: Option<PathBuf>,
    ) -> anyhow::Result<Process> {
        // Killing the bench (say by `timeout`) takes its cluster and floor with it. The
        // bench starts them from its runtime's worker threads, which live as long as
        // the bench.
        fastworker_host::child::dies_with_parent(&mut command);
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Process {
            name: name.to_string(),
            child,
            stdout,
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line of its stdout starting with `prefix`; returns the line.
    fn wait_line(&mut self, prefix: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            let text = self
                .stdout
                .as_ref()
                .and_then(|path| fs::read_to_string(path).ok())
                .unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with(prefix)) {
                return Ok(line.to_string());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("{} exited ({status}) before it was ready", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{} was not ready within {STARTUP:?}", self.name)
    }
}

/// CPU time (user + system) and memory of a process, from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// CPU seconds used so far.
    pub cpu_secs: f64,
    /// Resident memory now, MiB.
    pub rss_mib: f64,
    /// The most resident memory so far, MiB.
    pub peak_rss_mib: f64,
}

/// `pid`'s usage now (zeros when it cannot be read).
pub fn usage(pid: u32) -> Usage {
    let ticks = {
        // SAFETY: sysconf reads a constant of the system; no memory is touched.
        let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if per_sec > 0 {
            per_sec as f64
        } else {
            100.0
        }
    };
    let cpu_secs = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / ticks)
        })
        .unwrap_or(0.0);
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Usage {
        cpu_secs,
        rss_mib: kib("VmRSS:") / 1024.0,
        peak_rss_mib: kib("VmHWM:") / 1024.0,
    }
}

/// Context switches of each thread of `pid` so far, voluntary and not, by thread id
/// (none when they cannot be read). Each hand-off of a message between threads or
/// processes costs one at least, whatever the machine's speed: a steady count where
/// timings are noisy.
fn context_switches(pid: u32) -> HashMap<u32, u64> {
    let Ok(threads) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return HashMap::new();
    };
    threads
        .flatten()
        .filter_map(|thread| {
            let tid = thread.file_name().to_str()?.parse::<u32>().ok()?;
            let status = fs::read_to_string(thread.path().join("status")).ok()?;
            let switches = status
                .lines()
                .filter(|l| {
                    l.starts_with("voluntary_ctxt_switches:")
                        || l.starts_with("nonvoluntary_ctxt_switches:")
                })
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
            Some((tid, switches))
        })
        .collect()
}

/// CPU time of `pid` so far, in ns: its CPU clock (every thread's, ended ones too, up
/// to date, in ns), else the clock ticks of `/proc/PID/stat`.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return 0;
    };
    let mut clock: libc::clockid_t = 0;
    // SAFETY: clock_getcpuclockid writes one clockid_t through the pointer, which
    // points to a local of that type.
    let found = unsafe { libc::clock_getcpuclockid(pid_t, &mut clock) } == 0;
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the pointer, which points to a
    // local of that type.
    if found && unsafe { libc::clock_gettime(clock, &mut now) } == 0 {
        return (now.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(now.tv_nsec as u64);
    }
    (usage(pid).cpu_secs * 1e9) as u64
}

/// What a named process has spent so far.
#[derive(Debug, Clone)]
pub struct Spent {
    name: String,
    /// Context switches, thread by thread.
    switches: HashMap<u32, u64>,
    cpu_ns: u64,
}

/// What each named process has spent so far.
pub fn spent(processes: &[(String, u32)]) -> Vec<Spent> {
    processes
        .iter()
        .map(|(name, pid)| Spent {
            name: name.clone(),
            switches: context_switches(*pid),
            cpu_ns: cpu_ns(*pid),
        })
        .collect()
}

/// What one process spent per round trip.
#[derive(Debug, Clone, Default)]
pub struct PerRoundTrip {
    /// The process's name.
    pub name: String,
    /// Context switches.
    pub switches: f64,
    /// CPU time (user + system), µs. Round trips run one after another, one process
    /// at a time: these add up to about the round trip itself.
    pub cpu_us: f64,
}

/// What each process spent per round trip, from what it had spent before and after
/// `round_trips` of them. Switches are counted per thread, so a thread that ends
/// meanwhile takes only its own share away, not its whole life's count (one that
/// starts counts all of its own).
pub fn per_round_trip(before: &[Spent], after: &[Spent], round_trips: usize) -> Vec<PerRoundTrip> {
    let n = round_trips.max(1) as f64;
    before
        .iter()
        .zip(after)
        .map(|(before, after)| {
            let switches: u64 = after
                .switches
                .iter()
                .map(|(tid, now)| {
                    now.saturating_sub(before.switches.get(tid).copied().unwrap_or(0))
                })
                .sum();
            PerRoundTrip {
                name: before.name.clone(),
                switches: switches as f64 / n,
                cpu_us: after.cpu_ns.saturating_sub(before.cpu_ns) as f64 / 1e3 / n,
            }
        })
        .collect()
}

/// How a cluster is started.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Subworkers beside the control plane's own child.
    pub subworkers: usize,
    /// Their `--concurrency` (`None`: the default).
    pub concurrency: Option<u32>,
    /// Give the control plane a `--data-dir`.
    pub durable: bool,
    /// Give every process a cluster key.
    pub keyed: bool,
}

/// A running cluster.
pub struct Cluster {
    /// The control plane (first) and the subworkers.
    pub processes: Vec<Process>,
    /// Where clients connect.
    pub address: String,
    /// What clients connect with.
    pub transport: TransportConfig,
    dir: PathBuf,
}

/// The name the control plane's own child subworker is reported under.
pub const OWN_WORKER: &str = "own-worker";

impl Cluster {
    /// Every process that serves the cluster, by name and pid: the control plane, its
    /// own child subworker (which takes tasks like the others), and the subworkers.
    pub fn measured(&self) -> Vec<(String, u32)> {
        let mut measured: Vec<(String, u32)> = self
            .processes
            .iter()
            .map(|p| (p.name.clone(), p.pid()))
            .collect();
        if let Some(control_plane) = self.processes.first() {
            for child in children(control_plane.pid()) {
                measured.insert(1, (OWN_WORKER.to_string(), child));
            }
        }
        measured
    }
}

/// The children of `pid` (none when they cannot be read).
fn children(pid: u32) -> Vec<u32> {
    let Ok(threads) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    threads
        .flatten()
        .filter_map(|thread| fs::read_to_string(thread.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.processes.clear();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn spawn(dir: &Path, name: &str, args: &[String], key: Option<&str>) -> anyhow::Result<Process> {
    let stdout = dir.join(format!("{name}.out"));
    let stderr = dir.join(format!("{name}.err"));
    let mut command = Command::new(std::env::current_exe().context("this binary's path")?);
    command
        .args(args)
        .stdout(fs::File::create(&stdout)?)
        .stderr(fs::File::create(&stderr)?);
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("FASTWORKER_") {
            command.env_remove(var);
        }
    }
    if let Some(key) = key {
        command.env("FASTWORKER_AUTH_KEY", key);
    }
    Process::launch(name, command, Some(stdout))
}

impl Cluster {
    /// Starts a control plane with default flags (plus `--data-dir` if `shape` says)
    /// running `plugin` in its own child, and `shape.subworkers` subworkers; returns
    /// once every subworker serves `add`.
    pub async fn start(shape: &Shape, plugin: &Path, run: usize) -> anyhow::Result<Cluster> {
        let dir =
            std::env::temp_dir().join(format!("fastworker-bench-{}-{run}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let key = shape
            .keyed
            .then(fastworker_transport::auth::ClusterKey::generate_hex);
        let plugin = plugin.display().to_string();
        let mut args: Vec<String> = [
            "--log-level",
            "WARNING",
            "control-plane",
            "--base-address",
            "tcp://127.0.0.1:0",
            "--discovery-address",
            "tcp://127.0.0.1:0",
            "--subworker-port",
            "0",
            "--gui-port",
            "0",
            "--task-modules",
            &plugin,
        ]
        .map(String::from)
        .to_vec();
        if shape.durable {
            args.extend(["--data-dir".into(), dir.join("data").display().to_string()]);
        }
        let mut cp = spawn(&dir, "control-plane", &args, key.as_deref())?;
        let ready = cp.wait_line("fastworker control plane")?;
        let address = ready
            .split("ready on ")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .context("the ready line names no address")?
            .to_string();
        let mut processes = vec![cp];
        for i in 1..=shape.subworkers {
            let mut args: Vec<String> = [
                "--log-level",
                "WARNING",
                "subworker",
                "--worker-id",
                &format!("sw{i}"),
                "--control-plane-address",
                &address,
                "--task-modules",
                &plugin,
                "--no-watch",
            ]
            .map(String::from)
            .to_vec();
            if let Some(concurrency) = shape.concurrency {
                args.extend(["--concurrency".into(), concurrency.to_string()]);
            }
            processes.push(spawn(&dir, &format!("sw{i}"), &args, key.as_deref())?);
        }
        let transport = TransportConfig::default().with_key(
            key.as_deref()
                .map(fastworker_transport::auth::ClusterKey::parse)
                .transpose()?,
        );
        let cluster = Cluster {
            processes,
            address,
            transport,
            dir,
        };
        let client = cluster.client().await?;
        let deadline = Instant::now() + STARTUP;
        loop {
            let tasks = client.tasks().await?;
            let workers = tasks
                .iter()
                .find(|t| t.spec.name == "add")
                .map_or(0, |t| t.workers.len());
            if workers > shape.subworkers {
                break;
            }
            if Instant::now() > deadline {
                bail!("the subworkers did not register within {STARTUP:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(cluster)
    }

    /// A client of the cluster.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect_with(&self.address, STARTUP, &self.transport).await?)
    }
}

/// `add(i, 7)`.
pub fn add_task(i: i64) -> TaskEnvelope {
    TaskEnvelope::new("add", Codec::Json, Bytes::from(format!("[{i}, 7]")))
}

/// `echo` of a string of `size` bytes.
pub fn echo_task(size: usize) -> TaskEnvelope {
    let text = "x".repeat(size.saturating_sub(4));
    TaskEnvelope::new("echo", Codec::Json, Bytes::from(format!("[\"{text}\"]")))
}
