//! Hot-reload numbers: real release `fastworker` processes on free ports of 127.0.0.1,
//! a subworker watching a plugins directory, and the `versioned` fixture swapped
//! between its two builds.
//!
//! Run it with:
//!
//! ```text
//! cargo build --release --workspace && cargo bench -p fastworker --bench reload
//! ```
//!
//! `cargo bench` builds the `fastworker` binary (into `target/release`) but not the
//! fixture plugins: `target/release/libversioned_v1.so` and `libversioned_v2.so` come
//! from `cargo build --release --workspace`.
//!
//! Set-up: a control plane without task modules and one subworker with `--task-modules
//! plugins --max-reloads 100000` (so it never restarts during the run), serving
//! `plugins/versioned.so`. Each swap writes the new build to `plugins/.versioned.tmp`
//! and renames it onto `plugins/versioned.so` (an atomic replace, as `mv` does).
//!
//! What it measures:
//! - (a) reload latency, 30 swaps alternating v1/v2: from the rename returning to the
//!   first `version` result that answers the new version (polled one call at a time,
//!   as fast as answers come): p50, p90, max. The watcher's 100 ms debounce is part
//!   of it, by design.
//! - (b) memory per reload: the subworker's VmRSS (from `/proc/<pid>/status`) and its
//!   number of mappings (`/proc/<pid>/maps`) before and after 50 reloads, each waited
//!   for until served; per reload. Twice:
//!   - (b1) alternating the two builds, as in (a). The loader names its private copy
//!     after the content hash, so a build seen before reuses its copy and `dlopen`
//!     hands back the handle it already has: little or no growth is expected;
//!   - (b2) 50 distinct files (each build with 8 unique bytes appended after the ELF
//!     image, which the dynamic loader ignores), like 50 real rebuilds: every reload
//!     maps a new copy that is never unmapped (see README, "Loading plugins").

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use fastworker_client::{decode_value, Client};
use fastworker_protocol::{Codec, TaskEnvelope};
use tokio::runtime::Runtime;

mod support;
use support::{free_address, plugin_path, port_of, Proc};

const LATENCY_SWAPS: usize = 30;
const RSS_RELOADS: usize = 50;
const TIMEOUT: Duration = Duration::from_secs(30);
/// How long one swap may take to be served before the benchmark gives up.
const SERVE_LIMIT: Duration = Duration::from_secs(10);

/// The control plane and the watching subworker.
struct Setup {
    plugin: PathBuf,
    client: Client,
    cp: Proc,
    sw: Proc,
}

fn start(rt: &Runtime, dir: &Path, v1: &Path) -> Setup {
    fs::create_dir_all(dir.join("plugins")).expect("plugins dir");
    let plugin = dir.join("plugins/versioned.so");
    fs::copy(v1, &plugin).expect("copy v1 into plugins/");
    let base = free_address();
    let discovery = free_address();
    let sub_port = free_address();
    let mut cp = Proc::spawn(
        dir,
        "control-plane",
        &[
            "control-plane",
            "--no-gui",
            "--base-address",
            &base,
            "--discovery-address",
            &discovery,
            "--subworker-port",
            port_of(&sub_port),
        ],
    );
    cp.wait_for(false, "ready on");
    let status = free_address();
    let mut sw = Proc::spawn(
        dir,
        "sw1",
        &[
            "subworker",
            "--worker-id",
            "sw1",
            "--control-plane-address",
            &base,
            "--base-address",
            &status,
            "--task-modules",
            "plugins",
            "--max-reloads",
            "100000",
        ],
    );
    sw.wait_for(true, "registered with the control plane");
    cp.wait_for(true, "subworker registered worker=sw1 ");
    let client = rt
        .block_on(Client::connect_with(
            &base,
            TIMEOUT,
            &support::client_config(),
        ))
        .expect("the benchmark connects");
    Setup {
        plugin,
        client,
        cp,
        sw,
    }
}

impl Setup {
    async fn version(&self) -> String {
        let task = TaskEnvelope::new("version", Codec::Json, Bytes::from_static(b"[]"));
        let record = self
            .client
            .submit(task, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("`version` failed: {e}\n{}", self.sw.log()));
        decode_value(&record).expect("`version` answers a string")
    }

    /// Writes `bytes` to `plugins/.versioned.tmp` and renames it onto the served file;
    /// returns when the rename has returned.
    fn swap(&self, bytes: &[u8]) -> Instant {
        let temp = self.plugin.with_file_name(".versioned.tmp");
        fs::write(&temp, bytes).expect("write the temp file");
        fs::rename(&temp, &self.plugin).expect("rename onto the plugin");
        Instant::now()
    }

    /// Polls `version` one call at a time until it answers `want`; the time from
    /// `landed` to that answer, and how many calls it took.
    fn until_served(&self, rt: &Runtime, want: &str, landed: Instant) -> (Duration, usize) {
        rt.block_on(async {
            for calls in 1..=1_000_000 {
                if self.version().await == want {
                    return (landed.elapsed(), calls);
                }
                if landed.elapsed() > SERVE_LIMIT {
                    break;
                }
            }
            panic!(
                "{want} was not served within {SERVE_LIMIT:?} of the swap\n{}\n{}",
                self.cp.log(),
                self.sw.log()
            );
        })
    }
}

/// The subworker's resident set, bytes.
fn vm_rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a VmRSS line");
    kb * 1024
}

fn mappings(pid: u32) -> usize {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|m| m.lines().count())
        .unwrap_or(0)
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The two builds' bytes and the version each answers.
struct Builds {
    v1: Vec<u8>,
    v2: Vec<u8>,
}

impl Builds {
    /// The build for swap `i` (odd → v2, even → v1) and its version.
    fn nth(&self, i: usize) -> (&[u8], &'static str) {
        if i % 2 == 1 {
            (&self.v2, "2.0.0")
        } else {
            (&self.v1, "1.0.0")
        }
    }
}

/// (a): 30 swaps, landed → first new answer.
fn latency(rt: &Runtime, setup: &Setup, builds: &Builds) {
    let mut times = Vec::with_capacity(LATENCY_SWAPS);
    let mut calls = Vec::with_capacity(LATENCY_SWAPS);
    for i in 1..=LATENCY_SWAPS {
        let (bytes, want) = builds.nth(i);
        let landed = setup.swap(bytes);
        let (took, n) = setup.until_served(rt, want, landed);
        times.push(took);
        calls.push(n);
    }
    times.sort();
    let n = times.len();
    println!(
        "(a) reload latency, file landed -> first new-version result ({n} swaps, v1/v2 \
         alternating): p50 {}  p90 {}  max {}  (min {}; {}..{} polls per swap)",
        ms(times[n / 2]),
        ms(times[n * 9 / 10]),
        ms(times[n - 1]),
        ms(times[0]),
        calls.iter().min().unwrap(),
        calls.iter().max().unwrap()
    );
}

/// (b): memory before and after 50 reloads, each served before the next.
fn growth(rt: &Runtime, setup: &Setup, builds: &Builds, label: &str, distinct: bool) {
    let pid = setup.sw.pid();
    // Start from v1 being served (the latency run may have ended on either).
    let landed = setup.swap(&builds.v1);
    setup.until_served(rt, "1.0.0", landed);
    thread::sleep(Duration::from_millis(300));
    let (rss_before, maps_before) = (vm_rss(pid), mappings(pid));
    let started = Instant::now();
    for i in 1..=RSS_RELOADS {
        let (bytes, want) = builds.nth(i);
        let landed = if distinct {
            let mut unique = bytes.to_vec();
            unique
                .extend_from_slice(&(started.elapsed().as_nanos() as u64 ^ i as u64).to_le_bytes());
            setup.swap(&unique)
        } else {
            setup.swap(bytes)
        };
        setup.until_served(rt, want, landed);
    }
    thread::sleep(Duration::from_millis(300));
    let (rss_after, maps_after) = (vm_rss(pid), mappings(pid));
    let grown = rss_after as f64 - rss_before as f64;
    println!(
        "(b{label}) VmRSS {:.1} -> {:.1} MiB over {RSS_RELOADS} reloads: {:+.3} MiB per reload; \
         mappings {maps_before} -> {maps_after} ({:+.1} per reload)",
        mib(rss_before as f64),
        mib(rss_after as f64),
        mib(grown / RSS_RELOADS as f64),
        (maps_after as f64 - maps_before as f64) / RSS_RELOADS as f64
    );
}

fn main() {
    let v1_path = plugin_path("versioned_v1", "cargo build --release --workspace");
    let v2_path = plugin_path("versioned_v2", "cargo build --release --workspace");
    let builds = Builds {
        v1: fs::read(&v1_path).expect("read v1"),
        v2: fs::read(&v2_path).expect("read v2"),
    };
    let dir = tempfile::Builder::new()
        .prefix("fastworker-bench-reload-")
        .tempdir()
        .expect("a temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!(
        "fastworker reload benchmark: {}, {} ({} KiB) and {} ({} KiB), {} cores",
        env!("CARGO_BIN_EXE_fastworker"),
        v1_path.display(),
        builds.v1.len() / 1024,
        v2_path.display(),
        builds.v2.len() / 1024,
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    let setup = start(&rt, dir.path(), &v1_path);
    // Warm up: connections, the first calls.
    rt.block_on(async {
        for _ in 0..200 {
            assert_eq!(setup.version().await, "1.0.0");
        }
    });
    latency(&rt, &setup, &builds);
    growth(&rt, &setup, &builds, "1, two builds alternating", false);
    growth(&rt, &setup, &builds, "2, 50 distinct files", true);
    let reloads = setup.sw.log().matches("plugin versioned reloaded").count();
    let restarts = setup.sw.log().matches("restarting in place: ").count();
    println!("subworker: {reloads} reloads logged, {restarts} restarts");
    drop(setup); // kills both processes
}
