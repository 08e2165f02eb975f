//! The ZeroMQ transport, behind a small interface: a [`Server`] (a ROUTER bound to
//! one or more endpoints) and a [`Connection`] (a DEALER connected to one endpoint).
//! Everything above this module sees frames, never sockets, so the transport could be
//! swapped.
//!
//! Facts about `zeromq` 0.7 this is built around (see docs/PROTOCOL.md):
//! - a DEALER does not reconnect by itself after the ROUTER restarts, so the
//!   connecting side watches for silence and reconnects itself (`subworker`, `client`);
//! - a ROUTER send to a peer that stopped reading blocks, so every send goes through one
//!   writer task and is bounded by [`SEND_TIMEOUT`]: a stuck peer costs at most that
//!   once, its message is dropped with a log line, and further messages to it are
//!   dropped at once for [`STALL_BACKOFF`] so it does not slow everyone else;
//! - a dropped peer is reported by the socket monitor at once ([`ServerEvent::Disconnected`]).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, warn};
use zeromq::{
    DealerRecvHalf, DealerSendHalf, DealerSocket, RouterSocket, Socket, SocketEvent, SocketOptions,
    SocketRecv, SocketSend, ZmqMessage,
};

/// The longest one send may take before the message is dropped.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// How long messages to a peer whose send timed out are dropped without trying.
pub const STALL_BACKOFF: Duration = Duration::from_secs(10);

/// A ROUTER's name for a connected peer (its routing identity).
pub type PeerId = Bytes;

/// A transport failure.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Binding a listening endpoint failed.
    #[error("cannot listen on {endpoint}: {reason}")]
    Bind {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// Connecting failed or timed out.
    #[error("cannot reach {endpoint}: {reason}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The connection is gone.
    #[error("connection closed: {0}")]
    Closed(String),
}

/// What a server hears.
#[derive(Debug)]
pub enum ServerEvent {
    /// A message from `peer`.
    Message {
        /// Who sent it.
        peer: PeerId,
        /// Its frames (without the identity).
        frames: Vec<Bytes>,
    },
    /// `peer`'s connection dropped.
    Disconnected(PeerId),
}

/// Sends messages to a server's peers. Cheap to clone; never blocks the caller.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<(PeerId, Vec<Bytes>)>,
}

impl Outbox {
    /// Queues `frames` for `peer`.
    pub fn send(&self, peer: &PeerId, frames: Vec<Bytes>) {
        // Fails only when the writer task has ended, i.e. at shutdown.
        let _ = self.tx.send((peer.clone(), frames));
    }
}

/// A bound ROUTER socket.
pub struct Server {
    /// Messages and disconnections, in arrival order.
    pub events: mpsc::Receiver<ServerEvent>,
    /// Where to send.
    pub outbox: Outbox,
    /// The endpoints actually bound (port 0 resolved).
    pub endpoints: Vec<String>,
}

/// Binds a ROUTER to every endpoint in `endpoints` and starts its reader and writer tasks.
pub async fn bind(endpoints: &[String]) -> Result<Server, TransportError> {
    let mut socket = RouterSocket::new();
    let mut bound = Vec::new();
    for endpoint in endpoints {
        let resolved = socket
            .bind(endpoint)
            .await
            .map_err(|e| TransportError::Bind {
                endpoint: endpoint.clone(),
                reason: e.to_string(),
            })?;
        bound.push(resolved.to_string());
    }
    let mut monitor = socket.monitor();
    let (mut send_half, mut recv_half) = socket.split();
    let (event_tx, event_rx) = mpsc::channel(4096);

    let reader_tx = event_tx.clone();
    tokio::spawn(async move {
        loop {
            match recv_half.recv().await {
                Ok(message) => {
                    let mut frames = message.into_vec();
                    if frames.is_empty() {
                        continue;
                    }
                    let peer = frames.remove(0);
                    if reader_tx
                        .send(ServerEvent::Message { peer, frames })
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Err(err) => {
                    debug!("server socket closed: {err}");
                    break;
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some(event) = monitor.next().await {
            if let SocketEvent::Disconnected(peer) = event {
                if event_tx
                    .send(ServerEvent::Disconnected(Bytes::from(peer)))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    });
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<(PeerId, Vec<Bytes>)>();
    tokio::spawn(async move {
        // Peers whose last send timed out, and since when: one peer that stopped
        // reading must not cost every other peer SEND_TIMEOUT per message, so messages
        // to it are dropped at once for STALL_BACKOFF before it is tried again.
        let mut stalled: HashMap<PeerId, Instant> = HashMap::new();
        while let Some((peer, frames)) = out_rx.recv().await {
            if let Some(since) = stalled.get(&peer) {
                if since.elapsed() < STALL_BACKOFF {
                    debug!("a peer that stopped reading: message dropped");
                    continue;
                }
                stalled.remove(&peer);
            }
            let mut all = Vec::with_capacity(frames.len() + 1);
            all.push(peer.clone());
            all.extend(frames);
            let Ok(message) = ZmqMessage::try_from(all) else {
                continue;
            };
            match tokio::time::timeout(SEND_TIMEOUT, send_half.send(message)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => debug!("send to a peer failed: {err}"),
                Err(_) => {
                    warn!(
                        "send to a peer timed out after {SEND_TIMEOUT:?}; its messages are dropped for {STALL_BACKOFF:?}"
                    );
                    stalled.insert(peer, Instant::now());
                    if stalled.len() > 1024 {
                        stalled.retain(|_, since| since.elapsed() < STALL_BACKOFF);
                    }
                }
            }
        }
    });
    Ok(Server {
        events: event_rx,
        outbox: Outbox { tx: out_tx },
        endpoints: bound,
    })
}

/// The sending half of a [`Connection`].
pub struct ConnectionSender {
    send: DealerSendHalf,
    endpoint: String,
}

impl ConnectionSender {
    /// Sends `frames`, bounded by [`SEND_TIMEOUT`].
    pub async fn send(&mut self, frames: Vec<Bytes>) -> Result<(), TransportError> {
        let message = ZmqMessage::try_from(frames)
            .map_err(|_| TransportError::Closed("empty message".to_string()))?;
        match tokio::time::timeout(SEND_TIMEOUT, self.send.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(TransportError::Closed(format!("{}: {err}", self.endpoint))),
            Err(_) => Err(TransportError::Closed(format!(
                "{}: send timed out",
                self.endpoint
            ))),
        }
    }
}

/// The receiving half of a [`Connection`].
pub struct ConnectionReceiver {
    recv: DealerRecvHalf,
}

impl ConnectionReceiver {
    /// The next message's frames.
    pub async fn recv(&mut self) -> Result<Vec<Bytes>, TransportError> {
        self.recv
            .recv()
            .await
            .map(ZmqMessage::into_vec)
            .map_err(|e| TransportError::Closed(e.to_string()))
    }
}

/// A DEALER connected to one endpoint.
pub struct Connection {
    /// Sends.
    pub sender: ConnectionSender,
    /// Receives.
    pub receiver: ConnectionReceiver,
}

/// Connects a DEALER to `endpoint`, waiting at most `timeout` for the peer.
pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Connection, TransportError> {
    let mut options = SocketOptions::default();
    options.connect_timeout(timeout);
    let mut socket = DealerSocket::with_options(options);
    let connect_err = |reason: String| TransportError::Connect {
        endpoint: endpoint.to_string(),
        reason,
    };
    match tokio::time::timeout(timeout, socket.connect(endpoint)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => return Err(connect_err(err.to_string())),
        Err(_) => return Err(connect_err(format!("no answer within {timeout:?}"))),
    }
    let (send, recv) = socket.split();
    Ok(Connection {
        sender: ConnectionSender {
            send,
            endpoint: endpoint.to_string(),
        },
        receiver: ConnectionReceiver { recv },
    })
}
