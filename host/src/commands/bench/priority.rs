//! What prefetching costs a critical task: its wait on an idle cluster, and behind
//! lower-priority short tasks that fill every window, with the lower-priority tasks
//! that started after it was sent and before it started. Starts come from the tasks
//! themselves (`stamp` returns its start in Unix ns), on this machine's one clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use fastworker_client::{decode_value, Client};
use fastworker_protocol::{Codec, Priority, TaskEnvelope, TaskId, TaskRecord};

/// Lower-priority tasks that saturate the cluster in each round.
const LOW_TASKS: usize = 2_000;

/// How long a task may take to finish here.
const WAIT: Duration = Duration::from_secs(120);

/// Medians over the rounds.
#[derive(Debug, Clone, Copy)]
pub struct PriorityResult {
    /// Rounds measured.
    pub rounds: usize,
    /// A critical task's wait from submit to start, cluster idle (ms).
    pub idle_wait_ms: f64,
    /// The same behind full windows of lower-priority tasks (ms).
    pub saturated_wait_ms: f64,
    /// Lower-priority tasks that started after the critical one was sent and before it
    /// started: the median, and the most in any round.
    pub passed_median: f64,
    /// See `passed_median`.
    pub passed_max: u64,
}

impl PriorityResult {
    /// What saturation adds to a critical task's wait (ms).
    pub fn extra_wait_ms(&self) -> f64 {
        self.saturated_wait_ms - self.idle_wait_ms
    }
}

fn stamp(priority: Priority) -> TaskEnvelope {
    let mut task = TaskEnvelope::new("stamp", Codec::Json, Bytes::from_static(b"[0]"));
    task.priority = priority;
    task
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The start `stamp` returned, from its final record.
fn start_of(record: &TaskRecord) -> anyhow::Result<u64> {
    if record.status.as_str() != "success" {
        anyhow::bail!(
            "task {} ended {}: {:?}",
            record.task_id,
            record.status.as_str(),
            record.error
        );
    }
    decode_value(record).context("stamp returned something else")
}

async fn start_of_id(client: &Client, id: TaskId) -> anyhow::Result<u64> {
    let record = client
        .result(id, WAIT)
        .await?
        .with_context(|| format!("task {id} was forgotten"))?;
    start_of(&record)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Measures `rounds` rounds on the cluster behind `client`.
pub async fn measure(client: &Client, rounds: usize) -> anyhow::Result<PriorityResult> {
    // Warm up: the workers measure `stamp` and size their windows from it.
    client
        .submit_batch_wait((0..LOW_TASKS).map(|_| stamp(Priority::Low)).collect(), WAIT)
        .await?;
    let (mut idle, mut saturated, mut passed) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let sent = now_ns();
        let record = client.submit(stamp(Priority::Critical), WAIT).await?;
        idle.push(start_of(&record)?.saturating_sub(sent) as f64 / 1e6);

        let low = client
            .submit_batch((0..LOW_TASKS).map(|_| stamp(Priority::Low)).collect())
            .await?;
        let sent = now_ns();
        let critical = client.delay(stamp(Priority::Critical)).await?;
        let critical_start = start_of_id(client, critical).await?;
        saturated.push(critical_start.saturating_sub(sent) as f64 / 1e6);
        let mut count = 0u64;
        for id in low {
            let start = start_of_id(client, id).await?;
            if (sent..critical_start).contains(&start) {
                count += 1;
            }
        }
        passed.push(count);
    }
    let passed_max = passed.iter().copied().max().unwrap_or(0);
    let mut passed: Vec<f64> = passed.into_iter().map(|c| c as f64).collect();
    Ok(PriorityResult {
        rounds,
        idle_wait_ms: median(&mut idle),
        saturated_wait_ms: median(&mut saturated),
        passed_median: median(&mut passed),
        passed_max,
    })
}
