//! End-to-end numbers for the distributed core: real release `fastworker` processes on
//! free ports of 127.0.0.1, driven by the library client and by the CLI.
//!
//! Run it with:
//!
//! ```text
//! cargo build --release -p mytasks && cargo bench -p fastworker --bench cluster
//! ```
//!
//! `cargo bench` builds the `fastworker` binary in the bench profile (its output goes
//! to `target/release`) but not the plugin: `target/release/libmytasks.so` comes from
//! `cargo build --release -p mytasks`.
//!
//! Two set-ups:
//! - **cp+sw**: a control plane without task modules and one subworker
//!   (`--concurrency 4`): every task crosses both hops;
//! - **cp alone**: a control plane with `--task-modules mytasks --concurrency 2` and no
//!   subworker: it runs every task itself.
//!
//! What it measures, on each set-up:
//! - (a) throughput of 10,000 `add` tasks kept in flight at once, every result checked,
//!   two ways: ten concurrent `Client::submit_batch_wait` calls of 1,000 tasks each,
//!   and 10,000 concurrent `Client::submit` calls; each the median of 3 runs;
//! - (b) the latency of one blocking round trip (`Client::call`, one at a time) over
//!   2,000 calls: p50, p99, max;
//! - (c) on cp+sw only: the wall time of a whole `fastworker submit ... --task-name add
//!   --args 5 3` process, median of 30 runs, through `--discovery-address` (discovery
//!   included) and through `--control-plane-address`.
//!
//! `BENCH_DASHBOARD=1` serves each control plane's dashboard (the default outside
//! benches). `BENCH_DATA_DIR=1` gives each control plane a `--data-dir` (every submission,
//! assignment and result fsynced, group-committed, before its reply goes out).
//! `FASTWORKER_PROTOCOL_MAX=1` runs everything on protocol version 1 (bincode headers)
//! instead of version 2 (JSON headers).

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use fastworker_client::{decode_value, Client};
use fastworker_protocol::{Codec, TaskEnvelope, TaskStatus};

mod support;
use support::{fastworker, free_address, plugin_path, port_of, Proc};

const TASKS: usize = 10_000;
const BATCH: usize = 1_000;
const RUNS: usize = 3;
const ROUND_TRIPS: usize = 2_000;
const CLI_RUNS: usize = 30;
const TIMEOUT: Duration = Duration::from_secs(60);

/// A control plane (and maybe a subworker) and where to reach it.
struct Setup {
    name: String,
    base: String,
    discovery: String,
    _procs: Vec<Proc>,
}

fn start(dir: &Path, with_subworker: bool) -> Setup {
    let base = free_address();
    let discovery = free_address();
    let sub_port = free_address();
    let mut args = vec![
        "control-plane",
        if dashboard() {
            "--gui-port=0"
        } else {
            "--no-gui"
        },
        "--base-address",
        &base,
        "--discovery-address",
        &discovery,
        "--subworker-port",
        port_of(&sub_port),
    ];
    if !with_subworker {
        args.extend(["--task-modules", "mytasks", "--concurrency", "2"]);
    }
    let name = if with_subworker { "cp-sw" } else { "cp-alone" };
    let data_dir = format!("data-{name}");
    if durable() {
        args.extend(["--data-dir", &data_dir]);
    }
    let mut cp = Proc::spawn(dir, name, &args);
    cp.wait_for(false, "ready on");
    let mut procs = vec![];
    if with_subworker {
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
                "mytasks",
                "--concurrency",
                &subworker_concurrency(),
            ],
        );
        sw.wait_for(true, "registered with the control plane");
        cp.wait_for(true, "subworker registered worker=sw1 ");
        procs.push(sw);
    }
    procs.insert(0, cp);
    Setup {
        name: if with_subworker {
            format!(
                "cp+sw (1 subworker, --concurrency {})",
                subworker_concurrency()
            )
        } else {
            "cp alone (--task-modules: its own child subworker, --concurrency 2)".to_string()
        },
        base,
        discovery,
        _procs: procs,
    }
}

fn add_task(x: i64, y: i64) -> TaskEnvelope {
    TaskEnvelope::new("add", Codec::Json, Bytes::from(format!("[{x},{y}]")))
}

fn check(record: &fastworker_protocol::TaskRecord, expected: i64) {
    assert_eq!(record.status, TaskStatus::Success, "{record:?}");
    let got: i64 = decode_value(record).expect("the result decodes");
    assert_eq!(got, expected, "{record:?}");
}

/// 10,000 adds as ten concurrent batches of 1,000 (`submit_batch_wait`); tasks/s.
async fn batches(client: &Client) -> f64 {
    let started = Instant::now();
    let calls = (0..TASKS / BATCH).map(|b| {
        let client = client.clone();
        tokio::spawn(async move {
            let tasks: Vec<TaskEnvelope> = (0..BATCH)
                .map(|k| {
                    let i = (b * BATCH + k) as i64;
                    add_task(i, 3 * i)
                })
                .collect();
            let records = client
                .submit_batch_wait(tasks, TIMEOUT)
                .await
                .expect("the batch is accepted and finishes");
            for (k, record) in records.iter().enumerate() {
                let i = (b * BATCH + k) as i64;
                check(record, 4 * i);
            }
        })
    });
    for joined in futures::future::join_all(calls).await {
        joined.expect("no panic");
    }
    TASKS as f64 / started.elapsed().as_secs_f64()
}

/// 10,000 concurrent `submit` calls; tasks/s.
async fn singles(client: &Client) -> f64 {
    let started = Instant::now();
    let calls = (0..TASKS as i64).map(|i| {
        let client = client.clone();
        tokio::spawn(async move {
            let record = client
                .submit(add_task(i, 5 * i), TIMEOUT)
                .await
                .expect("add succeeds");
            check(&record, 6 * i);
        })
    });
    for joined in futures::future::join_all(calls).await {
        joined.expect("no panic");
    }
    TASKS as f64 / started.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Runs (a) and (b) on `setup`.
fn measure_client(rt: &tokio::runtime::Runtime, setup: &Setup) {
    println!("\n== {}", setup.name);
    let client = support::connect(rt, &setup.base);
    // Warm up: connections, plugin pages, allocator.
    rt.block_on(async {
        for i in 0..200 {
            let sum: i64 = client.call("add", &(i, 1i64)).await.expect("warm-up add");
            assert_eq!(sum, i + 1);
        }
    });

    let mut batch_rates = Vec::new();
    let mut single_rates = Vec::new();
    for _ in 0..RUNS {
        batch_rates.push(rt.block_on(batches(&client)));
        single_rates.push(rt.block_on(singles(&client)));
    }
    println!(
        "(a) 10,000 add, 10 concurrent submit_batch_wait x 1,000: median {:>8.0} tasks/s  (runs: {})",
        median(batch_rates.clone()),
        batch_rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "(a) 10,000 add, 10,000 concurrent submit:               median {:>8.0} tasks/s  (runs: {})",
        median(single_rates.clone()),
        single_rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut latencies: Vec<Duration> = rt.block_on(async {
        let mut all = Vec::with_capacity(ROUND_TRIPS);
        for i in 0..ROUND_TRIPS as i64 {
            let started = Instant::now();
            let sum: i64 = client.call("add", &(i, 7i64)).await.expect("add succeeds");
            all.push(started.elapsed());
            assert_eq!(sum, i + 7);
        }
        all
    });
    latencies.sort();
    let n = latencies.len();
    println!(
        "(b) sequential blocking add round trip ({n}): p50 {}  p99 {}  max {}",
        ms(latencies[n / 2]),
        ms(latencies[n * 99 / 100]),
        ms(latencies[n - 1])
    );
}

/// (c): the whole `fastworker submit` process, median of 30.
fn measure_cli(dir: &Path, setup: &Setup) {
    for (flag, address) in [
        ("--discovery-address", &setup.discovery),
        ("--control-plane-address", &setup.base),
    ] {
        let mut times = Vec::with_capacity(CLI_RUNS);
        for _ in 0..CLI_RUNS {
            let started = Instant::now();
            let out = fastworker(dir)
                .args([
                    "submit",
                    flag,
                    address,
                    "--task-name",
                    "add",
                    "--args",
                    "5",
                    "3",
                ])
                .output()
                .expect("fastworker submit runs");
            times.push(started.elapsed());
            assert!(out.status.success(), "{out:?}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), "8\n");
        }
        times.sort();
        println!(
            "(c) `fastworker submit {flag} ... add 5 3` process: median {}  (min {}, max {}, {CLI_RUNS} runs)",
            ms(times[CLI_RUNS / 2]),
            ms(times[0]),
            ms(times[CLI_RUNS - 1])
        );
    }
}

/// `BENCH_DASHBOARD=1`: the control planes serve their dashboard (on a free port), as
/// they do by default, so its cost (events, timelines, counts) is measured.
fn dashboard() -> bool {
    std::env::var("BENCH_DASHBOARD").as_deref() == Ok("1")
}

/// `BENCH_DATA_DIR=1`: the control planes keep their state on disk.
fn durable() -> bool {
    std::env::var("BENCH_DATA_DIR").as_deref() == Ok("1")
}

/// The subworker's `--concurrency`: 4 unless `BENCH_SUBWORKER_CONCURRENCY` says otherwise.
fn subworker_concurrency() -> String {
    std::env::var("BENCH_SUBWORKER_CONCURRENCY").unwrap_or_else(|_| "4".to_string())
}

fn main() {
    let plugin = plugin_path("mytasks", "cargo build --release -p mytasks");
    let dir = support::dir_with_plugin(&plugin, "mytasks");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!(
        "fastworker cluster benchmark: {} and {}, {} cores{}",
        env!("CARGO_BIN_EXE_fastworker"),
        plugin.display(),
        thread::available_parallelism().map_or(0, |n| n.get()),
        if durable() { ", with --data-dir" } else { "" }
    );

    {
        let setup = start(dir.path(), true);
        measure_client(&rt, &setup);
        measure_cli(dir.path(), &setup);
    } // its processes are killed here
    {
        let setup = start(dir.path(), false);
        measure_client(&rt, &setup);
    }
}
