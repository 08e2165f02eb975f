//! How long a control plane with `--data-dir` takes to come back with 100,000 tasks
//! queued: real release processes on free ports of 127.0.0.1.
//!
//! ```text
//! cargo build --release -p mytasks && cargo bench -p fastworker --bench restart
//! ```
//!
//! A control plane (`--data-dir`, `--task-modules mytasks --concurrency 1`) accepts
//! 100,000 `sleep_ms [600000]` tasks in batches of 1,000 (one runs, the rest wait),
//! is killed with SIGKILL, and is started again on the same directory. Printed: the
//! submission rate, the size of the data directory, the time from the second start
//! to its "ready" line (which waits for its own subworker), the load-and-restore time
//! the control plane logs, and a check that every task is still known.

use std::{fs, time::Instant};

use bytes::Bytes;
use fastworker_protocol::{Codec, TaskEnvelope, TaskId, TaskStatus};

mod support;
use support::{free_address, plugin_path, port_of, Proc};

const TASKS: usize = 100_000;
const BATCH: usize = 1_000;

fn main() {
    let plugin = plugin_path("mytasks", "cargo build --release -p mytasks");
    let dir = support::dir_with_plugin(&plugin, "mytasks");
    let base = free_address();
    let discovery = free_address();
    let sub = free_address();
    let args = [
        "control-plane",
        "--no-gui",
        "--base-address",
        &base,
        "--discovery-address",
        &discovery,
        "--subworker-port",
        port_of(&sub),
        "--data-dir",
        "data",
        "--task-modules",
        "mytasks",
        "--concurrency",
        "1",
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");

    let mut cp = Proc::spawn(dir.path(), "cp-1", &args);
    cp.wait_for(false, "ready on");
    let client = support::connect(&rt, &base);
    let mut ids: Vec<TaskId> = Vec::with_capacity(TASKS);
    let started = Instant::now();
    for _ in 0..TASKS / BATCH {
        let tasks: Vec<TaskEnvelope> = (0..BATCH)
            .map(|_| TaskEnvelope::new("sleep_ms", Codec::Json, Bytes::from_static(b"[600000]")))
            .collect();
        ids.extend(rt.block_on(client.submit_batch(tasks)).expect("accepted"));
    }
    let took = started.elapsed();
    println!(
        "accepted {TASKS} tasks in batches of {BATCH} in {took:.2?} ({:.0} tasks/s, each batch fsynced before its Accepted)",
        TASKS as f64 / took.as_secs_f64()
    );
    drop(client);
    drop(cp); // SIGKILL
    let size: u64 = fs::read_dir(dir.path().join("data"))
        .expect("the data directory")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!("data directory: {:.1} MiB", size as f64 / (1 << 20) as f64);

    let started = Instant::now();
    let mut cp = Proc::spawn(dir.path(), "cp-2", &args);
    cp.wait_for(false, "ready on");
    let ready = started.elapsed();
    let log = cp.log();
    let resumed = log
        .lines()
        .find(|l| l.contains("resumed"))
        .unwrap_or("(no 'resumed' line)")
        .to_string();
    println!("restart to ready (SIGKILL, then a new process on the same directory): {ready:.2?}");
    println!(
        "its log: {}",
        resumed.split("INFO ").nth(1).unwrap_or(&resumed)
    );

    let client = support::connect(&rt, &base);
    let mut known = 0;
    let mut queued = 0;
    rt.block_on(async {
        for id in ids.iter().step_by(100) {
            if let Some(record) = client.status(*id).await.expect("status") {
                known += 1;
                if record.status == TaskStatus::Queued {
                    queued += 1;
                }
            }
        }
    });
    println!(
        "after the restart: {known} of {} sampled tasks known, {queued} queued",
        TASKS / 100
    );
    assert_eq!(known, TASKS / 100, "tasks were lost across the restart");
}
