//! `fastworker bench`: starts clusters of real processes on loopback (a control plane
//! with default flags, its dashboard on and its own child subworker running, plus N
//! subworkers), measures them, and measures the ZeroMQ floor the transport is built
//! on in the same run, so the ratios compare like with like on this machine now.
//!
//! - [`cluster`]: the processes, and what each costs (`/proc`).
//! - [`floor`]: the bare echo and the three-process relay.
//! - [`simulated`]: 1,000 subworkers simulated in this process.
//! - [`priority`]: what prefetching costs a critical task.

pub mod cluster;
pub mod floor;
pub mod priority;
pub mod simulated;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use fastworker_client::Client;
use fastworker_protocol::TaskEnvelope;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use self::cluster::{add_task, echo_task, usage, Cluster, Shape};
use crate::cli::BenchArgs;

/// Tasks in flight while throughput is measured: batches of this many...
const BATCH: usize = 1_000;
/// ...this many batches at once.
const BATCHES_IN_FLIGHT: usize = 10;
/// How long a batch may take.
const BATCH_WAIT: Duration = Duration::from_secs(120);

/// One measured case.
#[derive(Debug, Clone, Default)]
struct Case {
    name: String,
    /// The median of `throughput_runs`.
    throughput: Option<f64>,
    /// Each throughput measurement (tasks/s), in order.
    throughput_runs: Vec<f64>,
    rtt: Option<[f64; 3]>,
    /// What each process spent per round trip (the client is this one).
    per_rtt: Vec<cluster::PerRoundTrip>,
    cpu_us_per_task: Vec<(String, f64)>,
    rss: Vec<(String, f64, f64)>,
}

/// Subworkers the scale case simulates.
const SIMULATED: usize = 1_000;

/// The plugin the bench runs: `--plugin`, else libmytasks next to this binary, else
/// `./plugins/mytasks.so`.
fn plugin(args: &BenchArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.plugin {
        return Ok(path.clone());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("libmytasks.so")));
    for candidate in beside
        .into_iter()
        .chain([PathBuf::from("plugins/mytasks.so")])
    {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!("no plugin with the add and echo tasks: build it (cargo build --release -p mytasks) or give --plugin FILE")
}

/// Every result checked: `add(i, 7)` is `i + 7`.
fn check_add(records: &[fastworker_protocol::TaskRecord], first: i64) -> anyhow::Result<()> {
    for (offset, record) in records.iter().enumerate() {
        let value: i64 = serde_json::from_slice(&record.value)
            .with_context(|| format!("task {} did not return a number", record.task_id))?;
        if value != first + offset as i64 + 7 {
            bail!(
                "task {} returned {value}, not {}",
                record.task_id,
                first + offset as i64 + 7
            );
        }
    }
    Ok(())
}

/// Tasks per second for `total` tasks made by `make`, submitted in batches with
/// several in flight at all times (a new batch goes as soon as one is answered);
/// `check` looks at every batch's records.
async fn throughput(
    client: &Client,
    total: usize,
    make: impl Fn(usize) -> TaskEnvelope,
    check: impl Fn(&[fastworker_protocol::TaskRecord], usize) -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    use futures::stream::{FuturesUnordered, StreamExt};

    let started = Instant::now();
    let mut next = 0;
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < BATCHES_IN_FLIGHT && next < total {
            let size = BATCH.min(total - next);
            let tasks: Vec<TaskEnvelope> = (next..next + size).map(&make).collect();
            let first = next;
            let batch = client.submit_batch_wait(tasks, BATCH_WAIT);
            in_flight.push(async move { (first, batch.await) });
            next += size;
        }
        let Some((first, records)) = in_flight.next().await else {
            break;
        };
        let records = records?;
        if let Some(failed) = records.iter().find(|r| r.status.as_str() != "success") {
            bail!(
                "task {} ended {}: {:?}",
                failed.task_id,
                failed.status.as_str(),
                failed.error
            );
        }
        check(&records, first)?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// p50, p99 and p99.9 of `n` sequential round trips of `make`'s tasks, in ms.
async fn round_trips(
    client: &Client,
    n: usize,
    make: impl Fn(usize) -> TaskEnvelope,
) -> anyhow::Result<[f64; 3]> {
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
    for i in 0..n {
        let started = Instant::now();
        client.submit(make(i), BATCH_WAIT).await?;
        histogram.record(started.elapsed().as_nanos() as u64)?;
    }
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1e6;
    Ok([ms(0.5), ms(0.99), ms(0.999)])
}

/// Measures `add` on a cluster of `shape`: throughput (with CPU per task and peak
/// memory of each process), and round trips.
async fn add_case(
    name: &str,
    shape: &Shape,
    plugin: &Path,
    args: &BenchArgs,
    run: usize,
    with_rtt: bool,
) -> anyhow::Result<(Case, Cluster)> {
    let cluster = Cluster::start(shape, plugin, run).await?;
    // Idle memory: started and registered, no task run yet.
    let measured = cluster.measured();
    let fresh: Vec<_> = measured.iter().map(|(_, pid)| usage(*pid)).collect();
    let client = cluster.client().await?;
    // Warm up.
    throughput(
        &client,
        2_000,
        |i| add_task(i as i64),
        |r, s| check_add(r, s as i64),
    )
    .await?;
    let idle: Vec<_> = measured.iter().map(|(_, pid)| usage(*pid)).collect();
    let mut runs = Vec::new();
    for _ in 0..args.repeat {
        let rate = throughput(
            &client,
            args.tasks,
            |i| add_task(i as i64),
            |r, s| check_add(r, s as i64),
        )
        .await?;
        runs.push(rate);
    }
    let tasks_run = args.tasks as f64 * f64::from(args.repeat);
    let mut case = Case {
        name: name.to_string(),
        throughput: median(&runs),
        throughput_runs: runs,
        ..Case::default()
    };
    for (((name, pid), before), fresh) in measured.iter().zip(idle).zip(fresh) {
        let after = usage(*pid);
        case.cpu_us_per_task.push((
            name.clone(),
            (after.cpu_secs - before.cpu_secs) * 1e6 / tasks_run,
        ));
        case.rss
            .push((name.clone(), fresh.rss_mib, after.peak_rss_mib));
    }
    if with_rtt {
        let mut processes = vec![("client".to_string(), std::process::id())];
        processes.extend(measured);
        let before = cluster::spent(&processes);
        case.rtt = Some(round_trips(&client, args.round_trips, |i| add_task(i as i64)).await?);
        case.per_rtt =
            cluster::per_round_trip(&before, &cluster::spent(&processes), args.round_trips);
    }
    Ok((case, cluster))
}

/// The floor: an echo (two processes), and a relay in front of it (three).
async fn floor_cases(
    args: &BenchArgs,
    sizes: &[usize],
) -> anyhow::Result<Vec<(String, floor::FloorResult)>> {
    let port = || -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let exe = std::env::current_exe()?;
    let echo_address = format!("tcp://127.0.0.1:{}", port()?);
    let relay_address = format!("tcp://127.0.0.1:{}", port()?);
    let start =
        |role: &str, bind: &str, connect: Option<&str>| -> anyhow::Result<cluster::Process> {
            let mut command = std::process::Command::new(&exe);
            command.args(["bench-floor", role, "--bind", bind]);
            if let Some(connect) = connect {
                command.args(["--connect", connect]);
            }
            cluster::Process::start(role, command)
        };
    let echo_process = start("echo", &echo_address, None)?;
    let relay_process = start("relay", &relay_address, Some(&echo_address))?;
    let client = ("client".to_string(), std::process::id());
    let echo_alone = [client.clone(), ("echo".to_string(), echo_process.pid())];
    let relayed = [
        client,
        ("relay".to_string(), relay_process.pid()),
        ("echo".to_string(), echo_process.pid()),
    ];
    let messages = args.tasks.max(10_000) * 5;
    let mut results = Vec::new();
    let echo = floor::measure(
        &echo_address,
        64,
        args.round_trips,
        messages,
        BATCH,
        &echo_alone,
    )
    .await?;
    results.push(("echo, 64 B".to_string(), echo));
    for size in sizes {
        let n = if *size > 16 << 10 {
            messages / 10
        } else {
            messages
        };
        let relay =
            floor::measure(&relay_address, *size, args.round_trips, n, BATCH, &relayed).await?;
        results.push((format!("relay, {}", bytes_label(*size)), relay));
    }
    Ok(results)
}

fn bytes_label(size: usize) -> String {
    if size >= 1 << 10 {
        format!("{} KiB", size >> 10)
    } else {
        format!("{size} B")
    }
}

/// `fastworker bench`.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The clients run on a worker, as the services do (see `serve` in main.rs): on
    // this thread, each reply would reach them through one more thread.
    let args = args.clone();
    runtime.block_on(runtime.spawn(async move { bench(&args).await }))?
}

async fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    let plugin = plugin(args)?;
    let sizes: &[usize] = if args.quick {
        &[64]
    } else {
        &[64, 4 << 10, 64 << 10]
    };
    let default = Shape {
        subworkers: 1,
        concurrency: None,
        durable: false,
        keyed: false,
    };
    let mut shapes: Vec<(String, Shape, bool)> = vec![(
        "control plane + 1 subworker (default flags)".into(),
        default.clone(),
        true,
    )];
    if !args.quick {
        shapes.push((
            "control plane + 1 subworker --concurrency 64".into(),
            Shape {
                concurrency: Some(64),
                ..default.clone()
            },
            true,
        ));
        for n in [0, 2, 4] {
            shapes.push((
                format!("control plane + {n} subworkers"),
                Shape {
                    subworkers: n,
                    ..default.clone()
                },
                false,
            ));
        }
        shapes.push((
            "control plane + 1 subworker, --data-dir".into(),
            Shape {
                durable: true,
                ..default.clone()
            },
            true,
        ));
        shapes.push((
            "control plane + 1 subworker, cluster key".into(),
            Shape {
                keyed: true,
                ..default.clone()
            },
            true,
        ));
    }
    let steps = 1 + shapes.len() + if args.quick { 0 } else { sizes.len() + 1 };
    let progress = ProgressBar::new(steps as u64);
    progress.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.set_message("the ZeroMQ floor");
    let floors = floor_cases(args, sizes).await?;
    progress.inc(1);
    let mut cases = Vec::new();
    let mut main: Option<Case> = None;
    let mut critical: Option<priority::PriorityResult> = None;
    for (run, (name, shape, with_rtt)) in shapes.iter().enumerate() {
        progress.set_message(name.clone());
        let (case, cluster) = add_case(name, shape, &plugin, args, run, *with_rtt).await?;
        cases.push(case.clone());
        if run == 0 {
            main = Some(case);
            let client = cluster.client().await?;
            progress.set_message("a critical task behind full windows");
            critical = Some(priority::measure(&client, if args.quick { 3 } else { 15 }).await?);
            if !args.quick {
                for size in sizes {
                    progress.set_message(format!("echo of {}", bytes_label(*size)));
                    let total = if *size > 16 << 10 {
                        args.tasks / 10
                    } else {
                        args.tasks
                    };
                    let expected = "x".repeat(size.saturating_sub(4));
                    let rate = throughput(
                        &client,
                        total,
                        |_| echo_task(*size),
                        |records, _| {
                            for record in records {
                                let value: String = serde_json::from_slice(&record.value)?;
                                if value != expected {
                                    bail!("echo of {} returned something else", record.task_id);
                                }
                            }
                            Ok(())
                        },
                    )
                    .await?;
                    let rtt =
                        round_trips(&client, args.round_trips / 4, |_| echo_task(*size)).await?;
                    cases.push(Case {
                        name: format!("echo of {} (default flags)", bytes_label(*size)),
                        throughput: Some(rate),
                        throughput_runs: vec![rate],
                        rtt: Some(rtt),
                        ..Case::default()
                    });
                    progress.inc(1);
                }
            }
        }
        drop(cluster);
        progress.inc(1);
    }
    let scale = if args.quick {
        None
    } else {
        progress.set_message(format!("{SIMULATED} simulated subworkers"));
        let shape = Shape {
            subworkers: 0,
            ..default.clone()
        };
        let cluster = Cluster::start(&shape, &plugin, shapes.len()).await?;
        let pid = cluster.processes[0].pid();
        let result = simulated::measure(
            &cluster.address,
            pid,
            &cluster.transport,
            SIMULATED,
            Duration::from_secs(10),
            args.tasks,
        )
        .await?;
        progress.inc(1);
        Some(result)
    };
    progress.finish_and_clear();
    let main = main.context("no main case")?;
    report(args, &main, &cases, &floors, scale, critical)
}

fn cpu_of(case: &Case, name: &str) -> f64 {
    case.cpu_us_per_task
        .iter()
        .filter(|(n, _)| n.starts_with(name))
        .map(|(_, us)| *us)
        .sum()
}

fn report(
    args: &BenchArgs,
    main: &Case,
    cases: &[Case],
    floors: &[(String, floor::FloorResult)],
    scale: Option<simulated::ScaleResult>,
    critical: Option<priority::PriorityResult>,
) -> anyhow::Result<()> {
    let relay = floors
        .iter()
        .find(|(n, _)| n == "relay, 64 B")
        .map(|(_, r)| r.clone())
        .context("no relay floor")?;
    type Of = fn(&cluster::PerRoundTrip) -> f64;
    let switches: Of = |p| p.switches;
    let cpu_us: Of = |p| p.cpu_us;
    let total = |per: &[cluster::PerRoundTrip], of: Of| per.iter().map(of).sum::<f64>();
    let by_process = |per: &[cluster::PerRoundTrip], of: Of| {
        per.iter()
            .map(|p| (p.name.clone(), json!(of(p))))
            .collect::<serde_json::Map<String, Value>>()
    };
    let rtt_p50 = main.rtt.map_or(0.0, |r| r[0]);
    let throughput = main.throughput.unwrap_or(0.0);
    let cp_idle_rss = main
        .rss
        .iter()
        .find(|(n, ..)| n == "control-plane")
        .map_or(0.0, |(_, idle, _)| *idle);
    if args.json {
        let case_json = |c: &Case| {
            json!({
                "name": c.name,
                "throughput_tasks_per_s": c.throughput,
                "throughput_runs_tasks_per_s": c.throughput_runs,
                "rtt_ms": c.rtt.map(|r| json!({"p50": r[0], "p99": r[1], "p99_9": r[2]})),
                "cpu_us_per_task": c.cpu_us_per_task.iter().map(|(n, us)| (n.clone(), json!(us))).collect::<serde_json::Map<String, Value>>(),
                "rss_mib": c.rss.iter().map(|(n, idle, peak)| (n.clone(), json!({"idle": idle, "peak": peak}))).collect::<serde_json::Map<String, Value>>(),
            })
        };
        let out = json!({
            "throughput_tasks_per_s": throughput,
            "throughput_runs_tasks_per_s": main.throughput_runs,
            "rtt_p50_ms": rtt_p50,
            "rtt_p99_ms": main.rtt.map(|r| r[1]),
            "rtt_p99_9_ms": main.rtt.map(|r| r[2]),
            "floor_rtt_p50_ms": relay.rtt_p50_ms,
            "floor_msgs_per_s": relay.msgs_per_s,
            "rtt_ratio_to_floor": rtt_p50 / relay.rtt_p50_ms,
            "throughput_ratio_to_floor": throughput / relay.msgs_per_s,
            "rtt_context_switches": total(&main.per_rtt, switches),
            "rtt_context_switches_by_process": by_process(&main.per_rtt, switches),
            "floor_rtt_context_switches": total(&relay.per_rtt, switches),
            "floor_rtt_context_switches_by_process": by_process(&relay.per_rtt, switches),
            "rtt_cpu_us": total(&main.per_rtt, cpu_us),
            "rtt_cpu_us_by_process": by_process(&main.per_rtt, cpu_us),
            "floor_rtt_cpu_us": total(&relay.per_rtt, cpu_us),
            "floor_rtt_cpu_us_by_process": by_process(&relay.per_rtt, cpu_us),
            "cp_cpu_us_per_task": cpu_of(main, "control-plane"),
            "sw_cpu_us_per_task": cpu_of(main, "sw"),
            "cp_idle_rss_mib": cp_idle_rss,
            "floors": floors.iter().map(|(n, r)| json!({"name": n, "rtt_p50_ms": r.rtt_p50_ms, "msgs_per_s": r.msgs_per_s})).collect::<Vec<_>>(),
            "cases": cases.iter().map(case_json).collect::<Vec<_>>(),
            "scale": scale.map(|s| json!({
                "simulated_subworkers": s.workers,
                "cp_idle_cpu_percent": s.idle_cpu_percent,
                "cp_cpu_us_per_task": s.cpu_us_per_task,
                "throughput_tasks_per_s": s.tasks_per_s,
            })),
            "critical_extra_wait_ms": critical.map(|c| c.extra_wait_ms()),
            "critical": critical.map(|c| json!({
                "rounds": c.rounds,
                "idle_wait_ms": c.idle_wait_ms,
                "saturated_wait_ms": c.saturated_wait_ms,
                "lower_priority_passed_median": c.passed_median,
                "lower_priority_passed_max": c.passed_max,
            })),
            "machine": machine(),
        });
        crate::commands::emit(format!("{}\n", serde_json::to_string_pretty(&out)?).as_bytes());
        return Ok(());
    }
    let mut text = format!(
        "fastworker bench on {} (throughput: the median of {} runs of {} tasks per cluster case, min–max beside it, one run for each echo case; {} round trips)\n\n",
        machine(),
        args.repeat,
        args.tasks,
        args.round_trips
    );
    text.push_str("| case | tasks/s | round trip p50 / p99 / p99.9 (ms) | CPU µs per task | RSS idle → peak (MiB) |\n|---|---|---|---|---|\n");
    for case in cases {
        let rtt = case.rtt.map_or("".into(), |r| {
            format!("{:.3} / {:.3} / {:.3}", r[0], r[1], r[2])
        });
        let cpu = case
            .cpu_us_per_task
            .iter()
            .map(|(n, us)| format!("{n} {us:.1}"))
            .collect::<Vec<_>>()
            .join(", ");
        let rss = case
            .rss
            .iter()
            .map(|(n, idle, peak)| format!("{n} {idle:.1} → {peak:.1}"))
            .collect::<Vec<_>>()
            .join(", ");
        text.push_str(&format!(
            "| {} | {} | {rtt} | {cpu} | {rss} |\n",
            case.name,
            throughput_cell(case),
        ));
    }
    text.push_str("\n| ZeroMQ floor (same engine, same run) | messages/s | round trip p50 (ms) |\n|---|---|---|\n");
    for (name, result) in floors {
        text.push_str(&format!(
            "| {name} | {:.0} | {:.3} |\n",
            result.msgs_per_s, result.rtt_p50_ms
        ));
    }
    if let Some(c) = critical {
        text.push_str(&format!(
            "\n| a critical task (median of {} rounds) | wait, idle (ms) | wait behind full windows of lower-priority tasks (ms) | extra wait (ms) | lower-priority starts passing it (median / most) |\n|---|---|---|---|---|\n| control plane + 1 subworker (default flags) | {:.3} | {:.3} | {:.3} | {:.0} / {} |\n",
            c.rounds, c.idle_wait_ms, c.saturated_wait_ms, c.extra_wait_ms(), c.passed_median, c.passed_max
        ));
    }
    if let Some(s) = scale {
        text.push_str(&format!(
            "\n| {} simulated subworkers (one process, real connections) | control plane idle CPU | control plane CPU per task | tasks/s |\n|---|---|---|---|\n| registered, serving `add` | {:.1} % of a core | {:.1} µs | {:.0} |\n",
            s.workers, s.idle_cpu_percent, s.cpu_us_per_task, s.tasks_per_s
        ));
    }
    text.push_str(&format!(
        "\nfastworker (control plane + 1 subworker, default flags) against the three-process relay: round trip p50 {:.2}x, throughput {:.2}x\n",
        rtt_p50 / relay.rtt_p50_ms,
        throughput / relay.msgs_per_s
    ));
    let listed = |per: &[cluster::PerRoundTrip], of: Of| {
        per.iter()
            .map(|p| format!("{} {:.1}", p.name, of(p)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (what, of) in [("context switches", switches), ("CPU µs", cpu_us)] {
        text.push_str(&format!(
            "{what} per round trip: fastworker {:.1} ({}), the relay {:.1} ({})\n",
            total(&main.per_rtt, of),
            listed(&main.per_rtt, of),
            total(&relay.per_rtt, of),
            listed(&relay.per_rtt, of)
        ));
    }
    crate::commands::emit(text.as_bytes());
    Ok(())
}

/// "median (min–max)" of a case's throughput runs; the median alone for one run.
fn throughput_cell(case: &Case) -> String {
    let Some(median) = case.throughput else {
        return String::new();
    };
    let lowest = case
        .throughput_runs
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let highest = case.throughput_runs.iter().copied().fold(0.0, f64::max);
    if case.throughput_runs.len() > 1 {
        format!("{median:.0} ({lowest:.0}–{highest:.0})")
    } else {
        format!("{median:.0}")
    }
}

/// The machine, for the report: cores and CPU model.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores, {model}")
}
