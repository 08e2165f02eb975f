//! Memory bounded by bytes, on a real control plane: the result cache keeps at most
//! `--result-cache-max-bytes`, and past `--max-queued` / `--max-queued-bytes`
//! submissions are refused with `queue full` instead of growing without end.

use std::time::Duration;

use bytes::Bytes;
use fastworker_client::{Client, ClientError};
use fastworker_protocol::{Codec, TaskEnvelope};
use serde_json::json;

use crate::{
    procs::{mytasks_dir, runtime, ControlPlane},
    support::client_config,
};

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

#[test]
fn big_results_stay_within_the_result_cache_budget() {
    let _heavy = crate::support::heavy();
    let dir = mytasks_dir();
    let cp = ControlPlane::start(
        &dir,
        &[
            "--task-modules",
            "mytasks",
            "--result-cache-max-bytes",
            "24MiB",
        ],
    );
    let rt = runtime();
    rt.block_on(async {
        let client = Client::connect_with(&cp.base, Duration::from_secs(10), &client_config())
            .await
            .expect("connects");
        let mut ids = Vec::new();
        // Twenty results of 10 MiB each: 200 MiB through a 24 MiB cache.
        for _ in 0..20 {
            let text = "x".repeat(10 << 20);
            let task =
                TaskEnvelope::new("echo", Codec::Json, Bytes::from(json!([text]).to_string()));
            let record = client
                .submit(task, Duration::from_secs(60))
                .await
                .expect("echo runs");
            assert_eq!(record.value.len(), (10 << 20) + 2);
            ids.push(record.task_id);
        }
        let first = client.status(ids[0]).await.expect("answers");
        assert!(first.is_none(), "the oldest results were evicted by bytes");
        let last = client
            .status(ids[19])
            .await
            .expect("answers")
            .expect("kept");
        assert_eq!(last.value.len(), (10 << 20) + 2);
    });
    let rss = rss_mib(cp.proc.pid());
    eprintln!("control plane RSS after 200 MiB of results through a 24 MiB cache: {rss} MiB");
    assert!(
        rss < 170,
        "the control plane holds {rss} MiB after 200 MiB of results with a 24 MiB cache"
    );
}

#[test]
fn past_max_queued_submissions_are_refused_as_queue_full() {
    let dir = mytasks_dir();
    let cp = ControlPlane::start(
        &dir,
        &[
            "--task-modules",
            "mytasks",
            "--concurrency",
            "1",
            "--max-queued",
            "3",
        ],
    );
    let rt = runtime();
    rt.block_on(async {
        let client = Client::connect_with(&cp.base, Duration::from_secs(10), &client_config())
            .await
            .expect("connects");
        let sleep = || TaskEnvelope::new("sleep_ms", Codec::Json, Bytes::from_static(b"[3000]"));
        // The plugin's periodic `heartbeat` may be one of the three held (it fires
        // when the control plane's own subworker registers, and waits behind a sleep
        // on its one slot), so the refusal comes after two or three sleeps.
        let mut accepted = 0;
        let refusal = loop {
            match client.delay(sleep()).await {
                Ok(_) if accepted < 3 => accepted += 1,
                other => break other,
            }
        };
        assert!(accepted >= 2, "only {accepted} accepted before the refusal");
        match refusal {
            Err(ClientError::Rejected(e)) => {
                assert!(e.message.starts_with("queue full"), "{e}");
                assert!(e.message.contains("--max-queued 3"), "{e}");
            }
            other => panic!("expected queue full after {accepted} accepted, got {other:?}"),
        }
    });
}
