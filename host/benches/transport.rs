//! What fastworker's transport and the cluster key cost at the transport level: one
//! echo server and one client in this process, over TCP on 127.0.0.1, three ways:
//! - **raw**: the `zeromq` crate's ROUTER and DEALER alone (another ZeroMQ engine, which
//!   fastworker used before its own: a peer could crash it);
//! - **guarded**: fastworker's transport (its own ZMTP engine, every declared size
//!   checked), no key;
//! - **guarded + key**: the same with the cluster-key handshake and a seal (HMAC-SHA256
//!   and a sequence number) on every message.
//!
//! Each: the p50 and p99 of 5,000 sequential round trips of a 64-byte message, and the
//! rate of 100,000 messages echoed with up to 1,000 in flight (median of 3 runs).
//!
//! ```text
//! cargo bench -p fastworker --bench transport
//! ```

use std::time::{Duration, Instant};

use bytes::Bytes;
use fastworker_transport::{self as transport, auth::ClusterKey, ServerEvent, TransportConfig};
use zeromq::{DealerSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

const ROUND_TRIPS: usize = 5_000;
const MESSAGES: usize = 100_000;
const WINDOW: usize = 1_000;
const RUNS: usize = 3;

/// A client that can send one message and receive one.
trait Echo {
    async fn send(&mut self, frames: Vec<Bytes>);
    async fn recv(&mut self);
}

struct Raw(DealerSocket);

impl Echo for Raw {
    async fn send(&mut self, frames: Vec<Bytes>) {
        let msg = ZmqMessage::try_from(frames).expect("frames");
        self.0.send(msg).await.expect("send");
    }
    async fn recv(&mut self) {
        self.0.recv().await.expect("recv");
    }
}

struct Guarded(transport::Connection);

impl Echo for Guarded {
    async fn send(&mut self, frames: Vec<Bytes>) {
        self.0.sender.send(frames).await.expect("send");
    }
    async fn recv(&mut self) {
        self.0.receiver.recv().await.expect("recv");
    }
}

fn message() -> Vec<Bytes> {
    vec![Bytes::from_static(&[7u8; 64])]
}

async fn measure(name: &str, client: &mut impl Echo) {
    for _ in 0..500 {
        client.send(message()).await;
        client.recv().await;
    }
    let mut times = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let t = Instant::now();
        client.send(message()).await;
        client.recv().await;
        times.push(t.elapsed());
    }
    times.sort();
    let p = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    let mut rates = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let (mut sent, mut received) = (0, 0);
        while received < MESSAGES {
            while sent < MESSAGES && sent - received < WINDOW {
                client.send(message()).await;
                sent += 1;
            }
            client.recv().await;
            received += 1;
        }
        rates.push(MESSAGES as f64 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "{name:<16} round trip p50 {:>7.1} us  p99 {:>7.1} us   pipelined {:>8.0} msg/s (runs: {})",
        p(0.5).as_secs_f64() * 1e6,
        p(0.99).as_secs_f64() * 1e6,
        rates[RUNS / 2],
        rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

async fn raw() {
    let mut router = RouterSocket::new();
    let endpoint = router
        .bind("tcp://127.0.0.1:0")
        .await
        .expect("bind")
        .to_string();
    tokio::spawn(async move {
        while let Ok(msg) = router.recv().await {
            if router.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut dealer = DealerSocket::new();
    dealer.connect(&endpoint).await.expect("connect");
    measure("raw zeromq", &mut Raw(dealer)).await;
}

async fn guarded(name: &str, config: TransportConfig) {
    let mut server = transport::bind(&["tcp://127.0.0.1:0".to_string()], &config)
        .await
        .expect("bind");
    let endpoint = server.endpoints[0].clone();
    let outbox = server.outbox.clone();
    tokio::spawn(async move {
        while let Some(event) = server.events.recv().await {
            if let ServerEvent::Message { peer, frames } = event {
                outbox.send(&peer, frames);
            }
        }
    });
    let conn = transport::connect(&endpoint, Duration::from_secs(5), &config)
        .await
        .expect("connect");
    measure(name, &mut Guarded(conn)).await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("fastworker transport benchmark: echo over 127.0.0.1, 64-byte messages, 2 cores");
    rt.block_on(async {
        raw().await;
        guarded("guarded", TransportConfig::default()).await;
        let key = ClusterKey::parse(&ClusterKey::generate()).expect("key");
        guarded(
            "guarded + key",
            TransportConfig::default().with_key(Some(key)),
        )
        .await;
    });
}
