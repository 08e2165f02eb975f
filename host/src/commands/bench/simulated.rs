//! Many subworkers at once, simulated in this process: each is a real connection
//! through the transport that says `Hello`, registers serving `add`, and answers every
//! `Assign` with the right `Outcome` (so dispatch to them is real). What the bench
//! reads off the control plane: its CPU while they are registered and idle, and its
//! CPU per task while tasks spread over all of them.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use fastworker_protocol::{
    self as protocol, AttemptResult, FromControlPlane, Hello, PeerKind, Registration, TaskOutcome,
    TaskSpec, ToControlPlane, WorkerId,
};
use fastworker_transport::TransportConfig;

/// One simulated subworker: registers, then answers its assignments until the bench
/// ends (the task is aborted then).
async fn worker(address: String, id: String, config: TransportConfig) -> anyhow::Result<()> {
    let mut conn = fastworker_transport::connect(&address, Duration::from_secs(60), &config)
        .await
        .with_context(|| format!("{id} cannot connect"))?;
    let hello = ToControlPlane::Hello(Hello::new(PeerKind::Subworker, id.clone()));
    conn.sender
        .send(protocol::encode_as(protocol::MIN_PROTOCOL_VERSION, &hello)?)
        .await?;
    let mut version = protocol::MIN_PROTOCOL_VERSION;
    loop {
        let frames = conn.receiver.recv().await?;
        match protocol::decode::<FromControlPlane>(&frames)? {
            FromControlPlane::Welcome(welcome) => {
                version = welcome.protocol_version;
                let registration =
                    Registration::new(WorkerId::new(id.clone()), vec![TaskSpec::new("add")], 1);
                conn.sender
                    .send(protocol::encode_as(
                        version,
                        &ToControlPlane::Register(registration),
                    )?)
                    .await?;
            }
            FromControlPlane::Refused { reason } => bail!("{id} refused: {reason}"),
            FromControlPlane::Assign { task, lease, .. } => {
                let (a, b): (i64, i64) =
                    serde_json::from_slice(&task.payload).context("add's arguments")?;
                let mut outcome =
                    TaskOutcome::new(task.id, task.delivery_count, lease, AttemptResult::Success);
                outcome.started_ms = protocol::now_ms();
                outcome.completed_ms = outcome.started_ms;
                outcome.value = Bytes::from((a + b).to_string());
                conn.sender
                    .send(protocol::encode_as(
                        version,
                        &ToControlPlane::Outcome(outcome),
                    )?)
                    .await?;
            }
            _ => {}
        }
    }
}

/// What `n` simulated subworkers cost the control plane.
#[derive(Debug, Clone, Copy)]
pub struct ScaleResult {
    /// Subworkers registered.
    pub workers: usize,
    /// The control plane's CPU while they sat idle, in % of one core.
    pub idle_cpu_percent: f64,
    /// Its CPU per task while tasks went to them, µs.
    pub cpu_us_per_task: f64,
    /// Tasks per second meanwhile.
    pub tasks_per_s: f64,
}

/// Registers `n` simulated subworkers with the control plane at `address` (pid
/// `cp_pid`), measures it idle for `idle`, then while `tasks` `add` tasks run on them.
pub async fn measure(
    address: &str,
    cp_pid: u32,
    config: &TransportConfig,
    n: usize,
    idle: Duration,
    tasks: usize,
) -> anyhow::Result<ScaleResult> {
    let workers: Vec<_> = (0..n)
        .map(|i| {
            tokio::spawn(worker(
                address.to_string(),
                format!("sim{i}"),
                config.clone(),
            ))
        })
        .collect();
    let client =
        fastworker_client::Client::connect_with(address, Duration::from_secs(30), config).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let served = client
            .tasks()
            .await?
            .iter()
            .find(|t| t.spec.name == "add")
            .map_or(0, |t| {
                t.workers
                    .iter()
                    .filter(|w| w.as_str().starts_with("sim"))
                    .count()
            });
        if served >= n {
            break;
        }
        if let Some(failed) = workers.iter().find(|w| w.is_finished()) {
            let _ = failed;
            bail!("a simulated subworker stopped before registering ({served} of {n} registered)");
        }
        if Instant::now() > deadline {
            bail!("only {served} of {n} simulated subworkers registered in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = super::cluster::usage(cp_pid);
    let started = Instant::now();
    tokio::time::sleep(idle).await;
    let idle_cpu_percent = (super::cluster::usage(cp_pid).cpu_secs - before.cpu_secs)
        / started.elapsed().as_secs_f64()
        * 100.0;
    let before = super::cluster::usage(cp_pid);
    let rate = super::throughput(
        &client,
        tasks,
        |i| super::cluster::add_task(i as i64),
        |records, start| super::check_add(records, start as i64),
    )
    .await?;
    let cpu_us_per_task =
        (super::cluster::usage(cp_pid).cpu_secs - before.cpu_secs) * 1e6 / tasks as f64;
    for worker in workers {
        worker.abort();
    }
    Ok(ScaleResult {
        workers: n,
        idle_cpu_percent,
        cpu_us_per_task,
        tasks_per_s: rate,
    })
}
