//! # fastworker-transport
//!
//! The ZeroMQ transport that clients and the host share, behind a small interface: a [`Server`] (a ROUTER bound to
//! one or more endpoints) and a [`Connection`] (a DEALER connected to one endpoint).
//! Everything above this module sees frames, never sockets, so the transport could be
//! swapped.
//!
//! No byte from the network reaches the `zeromq` crate unchecked: every TCP
//! connection goes through the guard in [`relay`], which reads the ZMTP framing
//! ([`zmtp`]) and disconnects a peer that declares a frame or message over
//! [`TransportConfig::max_message_bytes`] before anything is allocated for it. The
//! crate's own sockets listen and connect only on Unix sockets in a private directory.
//!
//! Facts about `zeromq` 0.7 this is built around (see docs/PROTOCOL.md):
//! - a DEALER does not reconnect by itself after the ROUTER restarts, so the
//!   connecting side watches for silence and reconnects itself (`subworker`, `client`);
//! - a ROUTER send to a peer that stopped reading blocks, so every send goes through one
//!   writer task and is bounded by [`SEND_TIMEOUT`]: a stuck peer costs at most that
//!   once, its message is dropped with a log line, and further messages to it are
//!   dropped at once for [`STALL_BACKOFF`] so it does not slow everyone else;
//! - a dropped peer is reported by the socket monitor at once ([`ServerEvent::Disconnected`]).

pub mod auth;
pub mod log_limit;
pub mod relay;
pub mod zmtp;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
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

/// The default for [`TransportConfig::max_message_bytes`]: 80 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 80 * 1024 * 1024;

/// The default for [`TransportConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// The default for [`TransportConfig::handshake_timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the transport enforces. Build it from [`TransportConfig::default`] and the
/// `with_*` methods (fields may be added).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TransportConfig {
    /// The longest message (all frames together) a peer may send; a peer that declares
    /// more is disconnected.
    pub max_message_bytes: u64,
    /// Connections a server accepts at once; more are closed at once.
    pub max_connections: usize,
    /// A server closes a connection that has not finished its handshake by then.
    pub handshake_timeout: Duration,
    /// The cluster key: with one, every connection must prove it knows the key and
    /// every message is sealed.
    pub key: Option<auth::ClusterKey>,
}

impl TransportConfig {
    /// The same, with this cluster key (or none).
    pub fn with_key(mut self, key: Option<auth::ClusterKey>) -> Self {
        self.key = key;
        self
    }

    /// The same, with this limit on a message's size.
    pub fn with_max_message_bytes(mut self, max_message_bytes: u64) -> Self {
        self.max_message_bytes = max_message_bytes;
        self
    }
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            key: None,
        }
    }
}

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
    /// The other side refused us, or could not prove it knows the cluster key.
    #[error("{0}")]
    Refused(String),
}

/// What a server hears.
#[derive(Debug)]
pub enum ServerEvent {
    /// A message from `peer` (authenticated and unsealed, when there is a key).
    Message {
        /// Who sent it.
        peer: PeerId,
        /// Its frames (without the identity).
        frames: Vec<Bytes>,
    },
    /// `peer` sent a message without the cluster key's handshake: answer it with
    /// [`Outbox::refuse`], in words it understands.
    Unauthenticated {
        /// Who.
        peer: PeerId,
        /// What it sent.
        frames: Vec<Bytes>,
    },
    /// `peer`'s connection dropped.
    Disconnected(PeerId),
}

/// What the writer task is asked to do.
enum Outgoing {
    /// Send, sealed when the connection has a session.
    Send(PeerId, Vec<Bytes>),
    /// Send as is (handshake frames, a refusal), then close the connection if asked.
    Raw(PeerId, Vec<Bytes>, bool),
    /// The peer's handshake succeeded: seal what it is sent from now on.
    Open(PeerId, auth::Sealer),
    /// The peer is gone.
    Forget(PeerId),
    /// Encode on the writer task (`None`: nothing to send), then send like `Send`.
    Encode(PeerId, Box<dyn FnOnce() -> Option<Vec<Bytes>> + Send>),
    /// Answer once everything queued before has been handed to the socket.
    Flushed(tokio::sync::oneshot::Sender<()>),
}

/// Sends messages to a server's peers. Cheap to clone; never blocks the caller.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Outgoing>,
}

impl Outbox {
    /// Queues `frames` for `peer`.
    pub fn send(&self, peer: &PeerId, frames: Vec<Bytes>) {
        // Fails only when the writer task has ended, i.e. at shutdown.
        let _ = self.tx.send(Outgoing::Send(peer.clone(), frames));
    }

    /// Sends `frames` unsealed to a peer that did not authenticate, then closes its
    /// connection.
    pub fn refuse(&self, peer: &PeerId, frames: Vec<Bytes>) {
        self.raw(peer, frames, true);
    }

    /// Queues a message for `peer` that `encode` turns into frames on the writer
    /// task (so the caller neither encodes nor hands the message to a task of its own
    /// first); `None` from `encode` sends nothing.
    pub fn send_encoded(
        &self,
        peer: &PeerId,
        encode: impl FnOnce() -> Option<Vec<Bytes>> + Send + 'static,
    ) {
        let _ = self
            .tx
            .send(Outgoing::Encode(peer.clone(), Box::new(encode)));
    }

    /// Waits (at most `limit`) until everything queued before this call has been
    /// handed to the socket.
    pub async fn flush(&self, limit: Duration) {
        let (done, flushed) = tokio::sync::oneshot::channel();
        if self.tx.send(Outgoing::Flushed(done)).is_ok() {
            let _ = tokio::time::timeout(limit, flushed).await;
        }
    }

    fn raw(&self, peer: &PeerId, frames: Vec<Bytes>, close: bool) {
        let _ = self.tx.send(Outgoing::Raw(peer.clone(), frames, close));
    }
}

/// A bound ROUTER socket whose events reach its owner as `E` ([`ServerEvent`]s, or
/// what [`bind_mapped`]'s mapping made of them).
pub struct Server<E = ServerEvent> {
    /// Messages and disconnections, in arrival order.
    pub events: mpsc::Receiver<E>,
    /// Where to send.
    pub outbox: Outbox,
    /// The endpoints actually bound (port 0 resolved).
    pub endpoints: Vec<String>,
    /// The guard's view of the connections: source addresses, closing one.
    pub front: Arc<relay::Front>,
    accept_loops: Vec<tokio::task::JoinHandle<()>>,
}

impl<E> Drop for Server<E> {
    fn drop(&mut self) {
        for task in &self.accept_loops {
            task.abort();
        }
    }
}

/// Where a server's peer is in the cluster-key handshake.
enum PeerAuth {
    /// No key: its first message was admitted (and the guard told it is established).
    Plain,
    /// Sent its `ClientHello`; we sent the challenge.
    Challenged(auth::ServerHandshake),
    /// Authenticated: its messages are opened with this.
    Open(auth::Opener),
    /// Refused: whatever else it sends is dropped until it is gone.
    Refused,
}

/// What the reader does with one message, by the peer's handshake state.
struct Gate {
    key: Option<auth::ClusterKey>,
    peers: HashMap<PeerId, PeerAuth>,
    outbox: Outbox,
    front: Arc<relay::Front>,
}

impl Gate {
    /// The peer named `identity`: the gate's own handle for one it knows, shared by
    /// every message from it (a clone is a count, not an allocation and a copy).
    fn peer(&self, identity: &[u8]) -> PeerId {
        match self.peers.get_key_value(identity) {
            Some((peer, _)) => peer.clone(),
            None => Bytes::copy_from_slice(identity),
        }
    }

    /// The message to hand up, if any.
    fn admit(&mut self, peer: PeerId, mut frames: Vec<Bytes>) -> Option<ServerEvent> {
        let Some(key) = &self.key else {
            match self.peers.get(&peer) {
                Some(PeerAuth::Plain) => {}
                Some(_) => return None,
                None => {
                    if let Some(auth::Handshake::ClientHello(_)) = auth::Handshake::decode(&frames)
                    {
                        self.refuse_handshake(
                            peer,
                            "this server has no cluster key: connect without one",
                        );
                        return None;
                    }
                    // Told once, not on every message.
                    self.front.peers.established(&peer);
                    self.peers.insert(peer.clone(), PeerAuth::Plain);
                }
            }
            return Some(ServerEvent::Message { peer, frames });
        };
        match self.peers.get_mut(&peer) {
            Some(PeerAuth::Open(opener)) => match opener.open(&mut frames) {
                Ok(()) => Some(ServerEvent::Message { peer, frames }),
                Err(err) => {
                    let source = self.front.peers.source(&peer);
                    self.front
                        .warn_peer(source, "seal", &format!("closed a connection: {err}"));
                    self.peers.insert(peer.clone(), PeerAuth::Refused);
                    self.front.peers.disconnect(&peer);
                    None
                }
            },
            Some(PeerAuth::Refused | PeerAuth::Plain) => None,
            Some(PeerAuth::Challenged(handshake)) => {
                let proof = match auth::Handshake::decode(&frames) {
                    Some(auth::Handshake::ClientProof(p)) => p,
                    _ => return self.refuse(peer, frames),
                };
                match handshake.verify(key, &proof) {
                    Some((accept, session)) => {
                        let _ = self
                            .outbox
                            .tx
                            .send(Outgoing::Open(peer.clone(), session.sealer));
                        self.outbox.raw(&peer, vec![accept], false);
                        self.peers
                            .insert(peer.clone(), PeerAuth::Open(session.opener));
                        self.front.peers.established(&peer);
                        None
                    }
                    None => {
                        let source = self.front.peers.source(&peer);
                        self.front.warn_peer(
                            source,
                            "refused",
                            "refused a peer that does not know the cluster key",
                        );
                        self.refuse_handshake(
                            peer,
                            "wrong cluster key: this server does not know it",
                        );
                        None
                    }
                }
            }
            None => match auth::Handshake::decode(&frames) {
                Some(auth::Handshake::ClientHello(cn)) => {
                    let (handshake, challenge) = auth::ServerHandshake::challenge(cn);
                    self.outbox.raw(&peer, vec![challenge], false);
                    self.peers.insert(peer, PeerAuth::Challenged(handshake));
                    None
                }
                _ => self.refuse(peer, frames),
            },
        }
    }

    /// Answers a handshake with a refusal and closes the connection.
    fn refuse_handshake(&mut self, peer: PeerId, reason: &str) {
        let refusal = auth::Handshake::Refuse(reason.to_string());
        self.outbox.raw(&peer, vec![refusal.encode()], true);
        self.peers.insert(peer, PeerAuth::Refused);
    }

    /// A peer that skipped the handshake: the layer above answers it in its protocol.
    fn refuse(&mut self, peer: PeerId, frames: Vec<Bytes>) -> Option<ServerEvent> {
        let source = self.front.peers.source(&peer);
        self.front
            .warn_peer(source, "refused", "refused a peer without the cluster key");
        self.peers.insert(peer.clone(), PeerAuth::Refused);
        Some(ServerEvent::Unauthenticated { peer, frames })
    }

    fn forget(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
        let _ = self.outbox.tx.send(Outgoing::Forget(peer.clone()));
    }
}

/// Binds a ROUTER to every endpoint in `endpoints` (each behind the guard) and starts
/// its reader and writer tasks.
pub async fn bind(
    endpoints: &[String],
    config: &TransportConfig,
) -> Result<Server, TransportError> {
    bind_mapped(endpoints, config, |event| event).await
}

/// Like [`bind`], with each event turned into an `E` by `map` on the reader task
/// (decoding a message there, say), so the owner gets it without another hand-off
/// between tasks.
pub async fn bind_mapped<E, F>(
    endpoints: &[String],
    config: &TransportConfig,
    mut map: F,
) -> Result<Server<E>, TransportError>
where
    E: Send + 'static,
    F: FnMut(ServerEvent) -> E + Send + 'static,
{
    let inner = relay::private_socket("s")?;
    let mut socket = RouterSocket::new();
    socket
        .bind(&format!("ipc://{}", inner.display()))
        .await
        .map_err(|e| TransportError::Bind {
            endpoint: inner.display().to_string(),
            reason: e.to_string(),
        })?;
    let front = relay::Front::new(config.clone(), inner);
    let mut bound = Vec::new();
    let mut accept_loops = Vec::new();
    for endpoint in endpoints {
        let (resolved, task) = relay::listen(endpoint, front.clone()).await?;
        bound.push(resolved);
        accept_loops.push(task);
    }
    let mut monitor = socket.monitor();
    let (mut send_half, mut recv_half) = socket.split();
    let (event_tx, event_rx) = mpsc::channel(4096);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Outgoing>();
    let outbox = Outbox { tx: out_tx };

    // One task reads both the socket and its monitor, so a peer's messages and its
    // disconnection reach the handshake gate (and the layer above) in order.
    let mut gate = Gate {
        key: config.key.clone(),
        peers: HashMap::new(),
        outbox: outbox.clone(),
        front: front.clone(),
    };
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                message = recv_half.recv() => match message {
                    Ok(message) => {
                        let mut frames = message.into_vec();
                        if frames.is_empty() {
                            continue;
                        }
                        // The identity is a slice of the buffer the socket read, as
                        // every frame is: it is not kept (it would pin that buffer for
                        // as long as a waiter or a worker entry keeps the peer), but
                        // looked up among the peers the gate knows.
                        let identity = frames.remove(0);
                        let peer = gate.peer(&identity);
                        match gate.admit(peer, frames) {
                            Some(event) => event,
                            None => continue,
                        }
                    }
                    Err(err) => {
                        debug!("server socket closed: {err}");
                        break;
                    }
                },
                event = monitor.next() => match event {
                    Some(SocketEvent::Disconnected(peer)) => {
                        let peer = Bytes::from(peer);
                        gate.forget(&peer);
                        ServerEvent::Disconnected(peer)
                    }
                    Some(_) => continue,
                    None => break,
                },
            };
            if event_tx.send(map(event)).await.is_err() {
                break;
            }
        }
    });
    let writer_front = front.clone();
    let keyed = config.key.is_some();
    tokio::spawn(async move {
        // Peers whose last send timed out, and since when: one peer that stopped
        // reading must not cost every other peer SEND_TIMEOUT per message, so messages
        // to it are dropped at once for STALL_BACKOFF before it is tried again.
        let mut stalled: HashMap<PeerId, Instant> = HashMap::new();
        let mut sealers: HashMap<PeerId, auth::Sealer> = HashMap::new();
        while let Some(out) = out_rx.recv().await {
            let (peer, mut frames, close, seal) = match out {
                Outgoing::Open(peer, sealer) => {
                    sealers.insert(peer, sealer);
                    continue;
                }
                Outgoing::Forget(peer) => {
                    sealers.remove(&peer);
                    stalled.remove(&peer);
                    continue;
                }
                Outgoing::Flushed(done) => {
                    let _ = done.send(());
                    continue;
                }
                Outgoing::Raw(peer, frames, close) => (peer, frames, close, false),
                Outgoing::Send(peer, frames) => (peer, frames, false, true),
                Outgoing::Encode(peer, encode) => match encode() {
                    Some(frames) => (peer, frames, false, true),
                    None => continue,
                },
            };
            if seal && keyed {
                let Some(sealer) = sealers.get_mut(&peer) else {
                    debug!(
                        "no session with this peer (gone, or never authenticated): message dropped"
                    );
                    continue;
                };
                sealer.seal(&mut frames);
            }
            if close {
                // Let the refusal reach the peer before its connection is closed.
                let front = writer_front.clone();
                let closing = peer.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    front.peers.disconnect(&closing);
                });
            }
            if let Some(since) = stalled.get(&peer) {
                if since.elapsed() < STALL_BACKOFF {
                    debug!("a peer that stopped reading: message dropped");
                    continue;
                }
                stalled.remove(&peer);
            }
            let mut all = Vec::with_capacity(frames.len() + 1);
            all.push(peer.clone());
            all.append(&mut frames);
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
    if config.key.is_some() {
        info!("cluster key set: peers must prove they know it, and every message is sealed");
    }
    Ok(Server {
        events: event_rx,
        outbox,
        endpoints: bound,
        front,
        accept_loops,
    })
}

/// The sending half of a [`Connection`].
pub struct ConnectionSender {
    send: DealerSendHalf,
    endpoint: String,
    sealer: Option<auth::Sealer>,
}

impl ConnectionSender {
    /// Sends `frames` (sealed, with a key), bounded by [`SEND_TIMEOUT`].
    pub async fn send(&mut self, mut frames: Vec<Bytes>) -> Result<(), TransportError> {
        if let Some(sealer) = &mut self.sealer {
            sealer.seal(&mut frames);
        }
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
    opener: Option<auth::Opener>,
}

impl ConnectionReceiver {
    /// The next message's frames (checked and unsealed, with a key).
    pub async fn recv(&mut self) -> Result<Vec<Bytes>, TransportError> {
        let mut frames = self
            .recv
            .recv()
            .await
            .map(ZmqMessage::into_vec)
            .map_err(|e| TransportError::Closed(e.to_string()))?;
        if let Some(opener) = &mut self.opener {
            opener
                .open(&mut frames)
                .map_err(|e| TransportError::Closed(format!("the server sent {e}")))?;
        }
        Ok(frames)
    }
}

/// A DEALER connected to one endpoint.
pub struct Connection {
    /// Sends.
    pub sender: ConnectionSender,
    /// Receives.
    pub receiver: ConnectionReceiver,
}

/// Connects a DEALER to `endpoint` (through the guard), waiting at most `timeout` for
/// the peer; with a key, proves it and checks the server's proof first.
pub async fn connect(
    endpoint: &str,
    timeout: Duration,
    config: &TransportConfig,
) -> Result<Connection, TransportError> {
    let mut options = SocketOptions::default();
    options.connect_timeout(timeout);
    let mut socket = DealerSocket::with_options(options);
    let connect_err = |reason: String| TransportError::Connect {
        endpoint: endpoint.to_string(),
        reason,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let private = relay::dial(endpoint, timeout, config.max_message_bytes).await?;
    match tokio::time::timeout_at(deadline, socket.connect(&private)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => return Err(connect_err(err.to_string())),
        Err(_) => return Err(connect_err(format!("no answer within {timeout:?}"))),
    }
    let (send, recv) = socket.split();
    let mut conn = Connection {
        sender: ConnectionSender {
            send,
            endpoint: endpoint.to_string(),
            sealer: None,
        },
        receiver: ConnectionReceiver { recv, opener: None },
    };
    if let Some(key) = &config.key {
        let session = tokio::time::timeout_at(deadline, authenticate(&mut conn, key))
            .await
            .map_err(|_| {
                connect_err(format!(
                    "no answer to the cluster-key handshake within {timeout:?}"
                ))
            })??;
        conn.sender.sealer = Some(session.sealer);
        conn.receiver.opener = Some(session.opener);
    }
    Ok(conn)
}

/// The client's side of the cluster-key handshake.
async fn authenticate(
    conn: &mut Connection,
    key: &auth::ClusterKey,
) -> Result<auth::Session, TransportError> {
    let endpoint = conn.sender.endpoint.clone();
    let (handshake, hello) = auth::ClientHandshake::start(key);
    conn.sender.send(vec![hello]).await?;
    let refused = |reason: String| {
        TransportError::Refused(format!("{endpoint} refused the connection: {reason}"))
    };
    let unexpected = |what: &str| {
        TransportError::Refused(format!(
            "{endpoint} did not take part in the cluster-key handshake ({what}); is it a fastworker process with a cluster key?"
        ))
    };
    let sn = match auth::Handshake::decode(&conn.receiver.recv().await?) {
        Some(auth::Handshake::Challenge(sn)) => sn,
        Some(auth::Handshake::Refuse(reason)) => return Err(refused(reason)),
        _ => return Err(unexpected("no challenge")),
    };
    conn.sender.send(vec![handshake.prove(&sn)]).await?;
    match auth::Handshake::decode(&conn.receiver.recv().await?) {
        Some(auth::Handshake::Accept(proof)) => handshake.finish(&sn, &proof).ok_or_else(|| {
            TransportError::Refused(format!(
                "{endpoint} could not prove it knows the cluster key: not connecting to it"
            ))
        }),
        Some(auth::Handshake::Refuse(reason)) => Err(refused(reason)),
        _ => Err(unexpected("no answer to the proof")),
    }
}
