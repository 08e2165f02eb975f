//! The floor fastworker is measured against: the ZeroMQ engine the transport is built
//! on (`fastworker_transport::stream`, ZMTP over TCP), with nothing of fastworker's in
//! the way. Two shapes, each in processes of their own (this binary, `fastworker
//! bench-floor ROLE`), each serving a connection on one task of a single-threaded
//! runtime:
//!
//! - **echo**: a DEALER client and a ROUTER that sends every message back (two
//!   processes: one hop each way, like a client and a control plane);
//! - **relay**: client → relay (ROUTER in front, DEALER behind) → echo (three
//!   processes: two hops each way, like client → control plane → subworker).
//!
//! Each is measured like fastworker: sequential round trips (p50) and messages per
//! second with a window in flight, by the transport's own `Connection` (fastworker's
//! client uses it too).

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use fastworker_transport::{
    self as transport,
    front::tcp_target,
    stream::{handshake, MessageReader, MessageWriter},
    zmtp::SocketType,
    TransportConfig,
};
use tokio::net::{TcpListener, TcpStream};

use super::cluster::{per_round_trip, spent, PerRoundTrip};
use crate::cli::BenchFloorArgs;

/// `fastworker bench-floor echo|relay`: serves until killed.
pub fn serve(args: &BenchFloorArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(tcp_target(&args.bind).map_err(anyhow::Error::msg)?)
            .await
            .context("the floor cannot bind")?;
        loop {
            let (stream, _) = listener.accept().await.context("the floor's listener")?;
            let back = args.connect.clone();
            let role = args.role.clone();
            tokio::spawn(async move {
                let served = match role.as_str() {
                    "echo" => echo(stream).await,
                    _ => match back {
                        Some(back) => relay(stream, &back).await,
                        None => Err(anyhow::anyhow!("a relay needs --connect (its echo)")),
                    },
                };
                if let Err(err) = served {
                    tracing::debug!("a floor connection ended: {err:#}");
                }
            });
        }
    })
}

/// The floor's message limit: the transport's default, as fastworker's.
const LIMIT: u64 = transport::DEFAULT_MAX_MESSAGE_BYTES;

/// Sends every message of one connection back.
async fn echo(stream: TcpStream) -> anyhow::Result<()> {
    let (mut reader, mut writer) = handshake(stream, SocketType::Router, LIMIT).await?;
    loop {
        let message = reader.next().await?;
        writer.send(&message).await?;
    }
}

/// Relays one connection's messages to a connection of its own to `back`, and back:
/// each way reads and writes on its own (a way blocked on a full socket does not stop
/// the other).
async fn relay(stream: TcpStream, back: &str) -> anyhow::Result<()> {
    let (front_in, front_out) = handshake(stream, SocketType::Router, LIMIT).await?;
    let back_stream = transport::front::dial(back, Duration::from_secs(10)).await?;
    let (back_in, back_out) = handshake(back_stream, SocketType::Dealer, LIMIT).await?;
    tokio::try_join!(forward(front_in, back_out), forward(back_in, front_out))?;
    Ok(())
}

async fn forward(mut from: MessageReader, mut to: MessageWriter) -> anyhow::Result<()> {
    loop {
        let message = from.next().await?;
        to.send(&message).await.context("the relay's other side")?;
    }
}

/// What a floor shape did.
#[derive(Debug, Clone)]
pub struct FloorResult {
    /// Sequential round trips, p50, ms.
    pub rtt_p50_ms: f64,
    /// Messages echoed per second with a window in flight.
    pub msgs_per_s: f64,
    /// What each process in `processes` spent per sequential round trip.
    pub per_rtt: Vec<PerRoundTrip>,
}

/// Measures a client against `address`: `round_trips` sequential round trips of a
/// `size`-byte message (with what `processes` spend meanwhile), then
/// `messages` with up to `window` in flight.
pub async fn measure(
    address: &str,
    size: usize,
    round_trips: usize,
    messages: usize,
    window: usize,
    processes: &[(String, u32)],
) -> anyhow::Result<FloorResult> {
    let connection = transport::connect(
        address,
        Duration::from_secs(20),
        &TransportConfig::default(),
    )
    .await
    .context("cannot reach the floor's server")?;
    let (mut client, mut replies) = (connection.sender, connection.receiver);
    let payload = Bytes::from(vec![7u8; size]);
    let message = || vec![payload.clone()];
    // Warm up: the first messages wait for the connection.
    for _ in 0..100 {
        client.send(message()).await?;
        replies.recv().await?;
    }
    let mut rtt = hdrhistogram::Histogram::<u64>::new(3)?;
    let before = spent(processes);
    for _ in 0..round_trips {
        let started = std::time::Instant::now();
        client.send(message()).await?;
        replies.recv().await?;
        rtt.record(started.elapsed().as_nanos() as u64)?;
    }
    let per_rtt = per_round_trip(&before, &spent(processes), round_trips);
    // Sending and receiving at once (a client that stops reading while it sends a
    // window of large messages would block all three processes on full sockets).
    let started = std::time::Instant::now();
    let in_flight = tokio::sync::Semaphore::new(window);
    let sending = async {
        for _ in 0..messages {
            in_flight.acquire().await?.forget();
            client.send(message()).await?;
        }
        anyhow::Ok(())
    };
    let receiving = async {
        for _ in 0..messages {
            replies.recv().await?;
            in_flight.add_permits(1);
        }
        anyhow::Ok(())
    };
    tokio::try_join!(sending, receiving)?;
    let elapsed = started.elapsed().as_secs_f64();
    Ok(FloorResult {
        rtt_p50_ms: rtt.value_at_quantile(0.5) as f64 / 1e6,
        msgs_per_s: messages as f64 / elapsed,
        per_rtt,
    })
}
