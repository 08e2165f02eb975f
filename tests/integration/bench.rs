//! `fastworker bench` end to end, small: it starts its own cluster and ZeroMQ floor as
//! real processes, checks every result, and reports the keys its JSON promises.

use std::process::Command;

use serde_json::Value;

use crate::support::{plugin_artifact, run, TestDir};

/// `fastworker bench --quick --json` of `tasks` tasks and `round_trips` round trips
/// (plus `extra`), on the mytasks plugin.
fn quick_bench(dir: &TestDir, tasks: u32, round_trips: u32, extra: &[&str]) -> Command {
    let mut cmd = dir.fastworker();
    cmd.args(["bench", "--quick", "--json", "--tasks"])
        .arg(tasks.to_string())
        .arg("--round-trips")
        .arg(round_trips.to_string())
        .args(extra)
        .arg("--plugin")
        .arg(plugin_artifact("mytasks"));
    cmd
}

#[test]
fn bench_quick_reports_the_cluster_against_the_floor_as_json() {
    let _heavy = crate::support::heavy();
    let dir = TestDir::new();
    let cmd = quick_bench(&dir, 3000, 300, &["--repeat", "3"]);
    let out = run(cmd);
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_str(out.stdout.trim()).expect("one JSON object");
    for key in [
        "throughput_tasks_per_s",
        "rtt_p50_ms",
        "floor_rtt_p50_ms",
        "floor_msgs_per_s",
        "cp_cpu_us_per_task",
        "sw_cpu_us_per_task",
        "cp_idle_rss_mib",
    ] {
        let value = report[key].as_f64().unwrap_or(-1.0);
        assert!(value > 0.0, "{key}: {report}");
    }
    // The reported throughput is the median of the runs.
    let mut runs: Vec<f64> = report["throughput_runs_tasks_per_s"]
        .as_array()
        .expect("the runs")
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    assert_eq!(runs.len(), 3, "{report}");
    runs.sort_by(f64::total_cmp);
    assert_eq!(report["throughput_tasks_per_s"].as_f64(), Some(runs[1]));
    // The floor is the floor: fastworker's round trip is not below the bare relay's.
    assert!(
        report["rtt_p50_ms"].as_f64() >= report["floor_rtt_p50_ms"].as_f64(),
        "{report}"
    );
    // Context switches per round trip, of each process: a reply wakes its client at
    // least once, in fastworker and in the floor.
    for (key, processes) in [
        (
            "rtt_context_switches_by_process",
            ["client", "control-plane", "sw1"],
        ),
        (
            "floor_rtt_context_switches_by_process",
            ["client", "relay", "echo"],
        ),
    ] {
        for process in processes {
            let per_round_trip = report[key][process].as_f64().unwrap_or(-1.0);
            assert!(per_round_trip >= 0.5, "{key}.{process}: {report}");
        }
    }
    // CPU per round trip, of each process: each reads and writes a message at least,
    // which takes a microsecond of system calls at the least.
    for (key, processes) in [
        ("rtt_cpu_us_by_process", ["client", "control-plane", "sw1"]),
        ("floor_rtt_cpu_us_by_process", ["client", "relay", "echo"]),
    ] {
        for process in processes {
            let per_round_trip = report[key][process].as_f64().unwrap_or(-1.0);
            assert!(per_round_trip >= 1.0, "{key}.{process}: {report}");
        }
    }
    // The control plane's loop runs on a runtime worker, where its sockets are read
    // and written: run on the main thread instead, a round trip cost it 11 context
    // switches (each message crossed between threads twice more); now about 4.
    let control_plane = report["rtt_context_switches_by_process"]["control-plane"]
        .as_f64()
        .unwrap_or(f64::MAX);
    assert!(control_plane < 8.0, "{report}");
    let floors = report["floors"].as_array().expect("floors");
    assert!(floors.iter().any(|f| f["name"] == "echo, 64 B"), "{report}");
    assert!(
        floors.iter().any(|f| f["name"] == "relay, 64 B"),
        "{report}"
    );
}

/// A process, named by its pid and its start time (clock ticks after boot), so a pid
/// reused by another process is not taken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Proc {
    pid: u32,
    started: u64,
}

/// The parent pid and start time of `pid`, if it exists and is not a zombie.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's closing parenthesis: state (field 3), parent (4), ...,
    // start time (22).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

/// The live processes whose parent is `parent`.
pub(crate) fn live_children(parent: u32) -> Vec<Proc> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((ppid, started)) = stat(pid) {
            if ppid == parent {
                found.push(Proc { pid, started });
            }
        }
    }
    found
}

pub(crate) fn alive(process: Proc) -> bool {
    stat(process.pid).is_some_and(|(_, started)| started == process.started)
}

fn command_line(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default()
}

#[cfg(target_os = "linux")]
#[test]
fn a_killed_bench_leaves_no_process_behind() {
    use std::time::Duration;

    use crate::procs::poll_until;

    let _heavy = crate::support::heavy();
    let dir = TestDir::new();
    let mut cmd = quick_bench(&dir, 1000, 100, &[]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut bench = cmd.spawn().expect("bench starts");
    // Its floor's processes come first, then the cluster: wait for the cluster's
    // control plane and its own subworker (a child of the control plane).
    let started = poll_until(Duration::from_secs(120), || {
        let children = live_children(bench.id());
        let cp = children
            .iter()
            .find(|c| command_line(c.pid).contains("control-plane"))?;
        let own = live_children(cp.pid);
        (!own.is_empty()).then(|| children.into_iter().chain(own).collect::<Vec<_>>())
    })
    .unwrap_or_default();
    bench.kill().expect("SIGKILL to the bench");
    bench.wait().expect("the bench is reaped");
    assert!(
        started.len() >= 2,
        "the bench's control plane and its own subworker did not start: {started:?}"
    );
    poll_until(Duration::from_secs(10), || {
        (!started.iter().any(|&p| alive(p))).then_some(())
    });
    let left: Vec<Proc> = started.iter().copied().filter(|&p| alive(p)).collect();
    for p in &left {
        // SAFETY: kill(2) on a pid this test saw as the bench's child or grandchild,
        // checked again by its start time just above; no memory is touched.
        unsafe {
            libc::kill(p.pid as i32, libc::SIGKILL);
        }
    }
    assert!(
        left.is_empty(),
        "still running after the bench was killed: {left:?}"
    );
}
