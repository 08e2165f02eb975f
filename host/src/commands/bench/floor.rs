//! The floor fastworker is measured against: the `zeromq` crate the transport is
//! built on, with nothing of fastworker's in the way. Two shapes, each in processes of
//! their own (this binary, `fastworker bench-floor ROLE`):
//!
//! - **echo**: a DEALER client and a ROUTER that sends every message back (two
//!   processes: one hop each way, like a client and a control plane);
//! - **relay**: client → relay (ROUTER in front, DEALER behind) → echo (three
//!   processes: two hops each way, like client → control plane → subworker).
//!
//! Each is measured like fastworker: sequential round trips (p50) and messages per
//! second with a window in flight.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use zeromq::{DealerSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use super::cluster::{context_switches, switches_per_round_trip};
use crate::cli::BenchFloorArgs;

/// The context switches of each named process so far.
pub fn switch_counts(processes: &[(String, u32)]) -> Vec<(String, u64)> {
    processes
        .iter()
        .map(|(name, pid)| (name.clone(), context_switches(*pid)))
        .collect()
}

/// `fastworker bench-floor echo|relay`: serves until killed.
pub fn serve(args: &BenchFloorArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match args.role.as_str() {
            "echo" => echo(&args.bind).await,
            _ => {
                let back = args
                    .connect
                    .as_deref()
                    .context("a relay needs --connect (its echo)")?;
                relay(&args.bind, back).await
            }
        }
    })
}

async fn echo(bind: &str) -> anyhow::Result<()> {
    let mut socket = RouterSocket::new();
    socket.bind(bind).await.context("the echo cannot bind")?;
    loop {
        let message = socket.recv().await.context("the echo's socket")?;
        socket.send(message).await.context("the echo's socket")?;
    }
}

async fn relay(front: &str, back: &str) -> anyhow::Result<()> {
    let mut front_socket = RouterSocket::new();
    front_socket
        .bind(front)
        .await
        .context("the relay cannot bind")?;
    let mut back_socket = DealerSocket::new();
    back_socket
        .connect(back)
        .await
        .context("the relay cannot connect")?;
    loop {
        tokio::select! {
            message = front_socket.recv() => {
                back_socket.send(message.context("the relay's front")?).await.context("the relay's back")?;
            }
            message = back_socket.recv() => {
                front_socket.send(message.context("the relay's back")?).await.context("the relay's front")?;
            }
        }
    }
}

/// What a floor shape did.
#[derive(Debug, Clone)]
pub struct FloorResult {
    /// Sequential round trips, p50, ms.
    pub rtt_p50_ms: f64,
    /// Messages echoed per second with a window in flight.
    pub msgs_per_s: f64,
    /// Context switches per sequential round trip, of each process in `processes`.
    pub switches_per_rtt: Vec<(String, f64)>,
}

/// Measures a client against `address`: `round_trips` sequential round trips of a
/// `size`-byte message (counting the context switches of `processes` meanwhile), then
/// `messages` with up to `window` in flight.
pub async fn measure(
    address: &str,
    size: usize,
    round_trips: usize,
    messages: usize,
    window: usize,
    processes: &[(String, u32)],
) -> anyhow::Result<FloorResult> {
    let mut client = DealerSocket::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.connect(address).await {
            Ok(()) => break,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(err) => return Err(err).context("cannot reach the floor's server"),
        }
    }
    let payload = Bytes::from(vec![7u8; size]);
    let message = || ZmqMessage::from(payload.clone());
    // Warm up: the first messages wait for the connection.
    for _ in 0..100 {
        client.send(message()).await?;
        client.recv().await?;
    }
    let mut rtt = hdrhistogram::Histogram::<u64>::new(3)?;
    let switches_before = switch_counts(processes);
    for _ in 0..round_trips {
        let started = Instant::now();
        client.send(message()).await?;
        client.recv().await?;
        rtt.record(started.elapsed().as_nanos() as u64)?;
    }
    let switches_per_rtt =
        switches_per_round_trip(&switches_before, &switch_counts(processes), round_trips);
    let started = Instant::now();
    let (mut sent, mut received) = (0, 0);
    while received < messages {
        while sent < messages && sent - received < window {
            client.send(message()).await?;
            sent += 1;
        }
        client.recv().await?;
        received += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(FloorResult {
        rtt_p50_ms: rtt.value_at_quantile(0.5) as f64 / 1e6,
        msgs_per_s: messages as f64 / elapsed,
        switches_per_rtt,
    })
}
