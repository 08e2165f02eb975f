//! `fastworker bench` end to end, small: it starts its own cluster and ZeroMQ floor as
//! real processes, checks every result, and reports the keys its JSON promises.

use serde_json::Value;

use crate::support::{plugin_artifact, run, TestDir};

#[test]
fn bench_quick_reports_the_cluster_against_the_floor_as_json() {
    let _heavy = crate::support::heavy();
    let dir = TestDir::new();
    let mut cmd = dir.fastworker();
    cmd.args([
        "bench",
        "--quick",
        "--json",
        "--tasks",
        "3000",
        "--round-trips",
        "300",
        "--repeat",
        "3",
        "--plugin",
    ])
    .arg(plugin_artifact("mytasks"));
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
    let floors = report["floors"].as_array().expect("floors");
    assert!(floors.iter().any(|f| f["name"] == "echo, 64 B"), "{report}");
    assert!(
        floors.iter().any(|f| f["name"] == "relay, 64 B"),
        "{report}"
    );
}

/// Pids of the live processes whose parent is `parent` (zombies count as gone).
fn live_children(parent: u32) -> Vec<u32> {
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
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command's closing parenthesis: state, then the parent's pid.
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) && state != Some("Z") {
            found.push(pid);
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s != "Z"))
        })
        .unwrap_or(false)
}

#[cfg(target_os = "linux")]
#[test]
fn a_killed_bench_leaves_no_process_behind() {
    use std::time::{Duration, Instant};

    let _heavy = crate::support::heavy();
    let dir = TestDir::new();
    let mut cmd = dir.fastworker();
    cmd.args(["bench", "--quick", "--json", "--plugin"])
        .arg(plugin_artifact("mytasks"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut bench = cmd.spawn().expect("bench starts");
    // Its floor's processes start first; then the cluster's.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut children = Vec::new();
    while Instant::now() < deadline && children.len() < 2 {
        std::thread::sleep(Duration::from_millis(50));
        children = live_children(bench.id());
    }
    bench.kill().expect("SIGKILL to the bench");
    bench.wait().expect("the bench is reaped");
    assert!(children.len() >= 2, "the bench started {children:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && children.iter().any(|&pid| alive(pid)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<u32> = children.iter().copied().filter(|&pid| alive(pid)).collect();
    for &pid in &left {
        // SAFETY: kill(2) with a pid this test saw as the bench's child; no memory is
        // touched.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    assert!(
        left.is_empty(),
        "still running after the bench was killed: {left:?}"
    );
}
