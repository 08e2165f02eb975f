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
