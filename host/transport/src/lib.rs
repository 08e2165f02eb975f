//! # fastworker-transport
//!
//! The transport that clients and the host share, behind a small interface: a
//! [`Server`] (a ZeroMQ ROUTER bound to one or more endpoints) and a [`Connection`] (a
//! ZeroMQ DEALER connected to one endpoint). Everything above this module sees frames,
//! never sockets.
//!
//! The wire is ZMTP 3.0 over TCP with the NULL mechanism, so any ZeroMQ peer (libzmq
//! through pyzmq, say) talks to it; the engine is this crate's own ([`zmtp`] for the
//! format, [`stream`] for a connection): every frame a peer declares is checked against
//! [`TransportConfig::max_message_bytes`] before anything is read or reserved for it.
//! A server reads each connection on a task of its own and writes to each on another
//! (the peer's writer), on the socket itself.
//!
//! - Every send is bounded by [`SEND_TIMEOUT`] of no progress: a peer that reads
//!   nothing for that long is disconnected (its stream is mid-message). It holds up
//!   no other peer meanwhile: each has its own writer.
//! - A server names its peers itself (a routing identity per connection): a peer can
//!   never take over another's.
//! - A dropped peer is reported after its last message ([`ServerEvent::Disconnected`]).
//! - A connection does not reconnect by itself: the connecting side watches for
//!   silence and reconnects (`subworker`, `client`).

pub mod auth;
pub mod front;
pub mod log_limit;
pub mod stream;
pub mod zmtp;

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::{
    net::TcpStream,
    sync::{mpsc, Notify},
};
use tracing::{debug, info, warn};

use crate::{
    front::{lock, Front, Open, MAX_UNESTABLISHED_MESSAGE},
    stream::{MessageReader, MessageWriter, StreamError, TrySend},
    zmtp::SocketType,
};

/// How long a send may make no progress (the peer reads nothing); then the connection
/// is closed.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// The most messages queued for one peer of a server: a peer that reads too slowly
/// for what it asks is disconnected past this, instead of growing the queue without
/// end.
pub const MAX_QUEUED_PER_PEER: usize = 65_536;

/// A server's name for one of its connections (its routing identity): a number no
/// other connection of this process had. Never sent: a peer cannot name another.
/// `Copy`, since every message and every task carries one (cloning the 16 random
/// bytes it used to be was an atomic count shared by the reader and the event loop,
/// about 4 % of the control plane's time under load, `perf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(u64);

impl PeerId {
    /// A name no connection of this process had (nor will have).
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        PeerId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// A fixed name made from `name` (for tests and benches, which have no
    /// connections; never one that [`PeerId::new`] gives).
    pub fn named(name: impl AsRef<[u8]>) -> Self {
        // FNV-1a, with the top bit set: connections count up from 1.
        let hash = name
            .as_ref()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        PeerId(hash | 1 << 63)
    }
}

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer-{:x}", self.0)
    }
}

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

/// What a peer's writer task is asked to do.
enum Outgoing {
    /// Send, sealed when the connection has a session.
    Send(Vec<Bytes>),
    /// Send as is (handshake frames, a refusal), then close the connection if asked.
    Raw(Vec<Bytes>, bool),
    /// The peer's handshake succeeded: seal what it is sent from now on.
    Open(auth::Sealer),
    /// Encode on the writer task (`None`: nothing to send), then send like `Send`.
    Encode(Box<dyn FnOnce() -> Option<Vec<Bytes>> + Send>),
    /// Finish the message the sender began writing itself ([`Outbox::write_now`]).
    Finish,
    /// Answer once everything queued before has been handed to the socket.
    Flushed(tokio::sync::oneshot::Sender<()>),
}

/// A peer's writer queue, and what its senders share with its writer task.
struct Route {
    queue: mpsc::UnboundedSender<Outgoing>,
    link: Arc<Link>,
}

/// What a peer's senders and its writer task share.
struct Link {
    /// Messages queued and not yet written (counted down by the writer task once the
    /// socket took the message, under the wire's lock).
    queued: std::sync::atomic::AtomicUsize,
    wire: tokio::sync::Mutex<Wire>,
}

/// A peer's socket, written by its writer task or, when nothing waits for it, by the
/// sender itself ([`Outbox::write_now`]).
struct Wire {
    writer: MessageWriter,
    /// Seals what the peer is sent, once its handshake succeeded (with a key).
    sealer: Option<auth::Sealer>,
    keyed: bool,
}

impl Wire {
    /// `frames` sealed for the peer; `None` (dropped) when it has a key and no session.
    fn seal(&mut self, mut frames: Vec<Bytes>) -> Option<Vec<Bytes>> {
        if self.keyed {
            let Some(sealer) = self.sealer.as_mut() else {
                debug!("no session with this peer (never authenticated): message dropped");
                return None;
            };
            sealer.seal(&mut frames);
        }
        Some(frames)
    }
}

/// Sends messages to a server's peers, each through its own writer task (so a peer
/// that stops reading holds up no other). Cheap to clone; never blocks the caller.
#[derive(Clone)]
pub struct Outbox {
    /// Each connected peer's writer queue.
    routes: Arc<std::sync::Mutex<HashMap<PeerId, Route>>>,
    front: Arc<Front>,
}

impl Outbox {
    fn new(front: Arc<Front>) -> Self {
        Outbox {
            routes: Arc::default(),
            front,
        }
    }

    fn route(&self, peer: &PeerId, out: Outgoing) {
        use std::sync::atomic::Ordering;
        let sent = match lock(&self.routes).get(peer) {
            Some(route) => {
                let queued = &route.link.queued;
                if queued.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED_PER_PEER {
                    queued.fetch_sub(1, Ordering::AcqRel);
                    self.front.warn_peer(
                        self.front.peers.source(peer),
                        "backlog",
                        &format!(
                            "closed a connection that read too slowly ({MAX_QUEUED_PER_PEER} messages waited for it)"
                        ),
                    );
                    self.front.peers.disconnect(peer);
                    false
                } else {
                    route.queue.send(out).is_ok()
                }
            }
            None => false,
        };
        if !sent {
            debug!("a message to a peer that is gone: dropped");
        }
    }

    /// Sends `frames` to `peer`: at once when nothing waits for it, else queued.
    pub fn send(&self, peer: &PeerId, frames: Vec<Bytes>) {
        if let Err(frames) = self.write_now(peer, move || Some(frames)) {
            if let Some(frames) = frames() {
                self.route(peer, Outgoing::Send(frames));
            }
        }
    }

    /// Writes the message `make` builds to `peer`'s socket from the caller's thread,
    /// when nothing is queued for it and its writer is idle: no hand-off to the
    /// writer task (a task wake-up and a poll per message, on every round trip). What
    /// the socket does not take at once is finished by the writer task. `Err(make)`,
    /// not called, when the message must be queued instead.
    fn write_now<F>(&self, peer: &PeerId, make: F) -> Result<(), F>
    where
        F: FnOnce() -> Option<Vec<Bytes>>,
    {
        use std::sync::atomic::Ordering;
        let link = match lock(&self.routes).get(peer) {
            Some(route) if route.link.queued.load(Ordering::Acquire) == 0 => route.link.clone(),
            _ => return Err(make),
        };
        let Ok(mut wire) = link.wire.try_lock() else {
            return Err(make);
        };
        // Checked again under the lock: the writer counts a message down only once
        // the socket took it, under this lock, so none is half sent or waiting.
        if link.queued.load(Ordering::Acquire) != 0 {
            return Err(make);
        }
        let Some(frames) = make().and_then(|frames| wire.seal(frames)) else {
            return Ok(());
        };
        if frames.is_empty() {
            return Ok(());
        }
        match wire.writer.try_send(&frames) {
            Ok(TrySend::Sent) => {}
            // The writer task finishes it before anything queued after it.
            Ok(TrySend::Pending) => self.route(peer, Outgoing::Finish),
            Err(err) => {
                debug!("a send to a peer failed ({err}): its connection is closed");
                self.front.peers.disconnect(peer);
            }
        }
        Ok(())
    }

    /// Sends `frames` unsealed to a peer that did not authenticate, then closes its
    /// connection.
    pub fn refuse(&self, peer: &PeerId, frames: Vec<Bytes>) {
        self.raw(peer, frames, true);
    }

    /// Queues a message for `peer` that `encode` turns into frames on the peer's
    /// writer task (so the caller neither encodes nor hands the message to a task of
    /// its own first); `None` from `encode` sends nothing. For a caller under load,
    /// which goes on while the writer sends.
    pub fn send_encoded(
        &self,
        peer: &PeerId,
        encode: impl FnOnce() -> Option<Vec<Bytes>> + Send + 'static,
    ) {
        self.route(peer, Outgoing::Encode(Box::new(encode)));
    }

    /// Like [`Outbox::send_encoded`], but when nothing waits for `peer` and its writer
    /// is idle, encodes and writes here and now: no hand-off to the writer task (a
    /// task wake-up and a poll, on the path of every round trip). For a lone message.
    pub fn send_encoded_at_once(
        &self,
        peer: &PeerId,
        encode: impl FnOnce() -> Option<Vec<Bytes>> + Send + 'static,
    ) {
        if let Err(encode) = self.write_now(peer, encode) {
            self.route(peer, Outgoing::Encode(Box::new(encode)));
        }
    }

    /// Waits (at most `limit`) until everything queued before this call, to every
    /// peer, has been handed to its socket.
    pub async fn flush(&self, limit: Duration) {
        let answers: Vec<_> = lock(&self.routes)
            .values()
            .filter_map(|route| {
                let (done, flushed) = tokio::sync::oneshot::channel();
                // Counted like any message: the writer counts every one down.
                route
                    .link
                    .queued
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                route
                    .queue
                    .send(Outgoing::Flushed(done))
                    .ok()
                    .map(|()| flushed)
            })
            .collect();
        let _ = tokio::time::timeout(limit, async {
            for flushed in answers {
                let _ = flushed.await;
            }
        })
        .await;
    }

    fn raw(&self, peer: &PeerId, frames: Vec<Bytes>, close: bool) {
        self.route(peer, Outgoing::Raw(frames, close));
    }

    /// Starts `peer`'s writer task on `writer`; it holds the connection's place
    /// (`open`) until the socket is closed.
    fn attach(&self, peer: PeerId, writer: MessageWriter, open: Open, keyed: bool) {
        let (queue, receiver) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            queued: std::sync::atomic::AtomicUsize::new(0),
            wire: tokio::sync::Mutex::new(Wire {
                writer,
                sealer: None,
                keyed,
            }),
        });
        lock(&self.routes).insert(
            peer,
            Route {
                queue,
                link: link.clone(),
            },
        );
        let writing = Writing {
            peer,
            front: self.front.clone(),
            link,
            _open: open,
        };
        tokio::spawn(write_peer(writing, receiver));
    }

    /// `peer` is gone: its writer sends what is queued (if it can) and ends.
    fn detach(&self, peer: &PeerId) {
        lock(&self.routes).remove(peer);
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
    /// The connections: source addresses, closing one.
    pub front: Arc<Front>,
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
    /// Nothing admitted yet.
    New,
    /// No key: its first message was admitted.
    Plain,
    /// Sent its `ClientHello`; we sent the challenge.
    Challenged(auth::ServerHandshake),
    /// Authenticated: its messages are opened with this.
    Open(auth::Opener),
    /// Refused: whatever else it sends is dropped until it is gone.
    Refused,
}

/// What one connection's reader does with each message, by the peer's handshake state.
struct Gate {
    key: Option<auth::ClusterKey>,
    peer: PeerId,
    auth: PeerAuth,
    /// Where it is answered (and, through `outbox.front`, the connections).
    outbox: Outbox,
}

impl Gate {
    /// Past the handshake (the handshake timeout and the small limit no longer apply).
    fn established(&self) -> bool {
        matches!(self.auth, PeerAuth::Plain | PeerAuth::Open(_))
    }

    /// The message to hand up, if any.
    fn admit(&mut self, mut frames: Vec<Bytes>) -> Option<ServerEvent> {
        let peer = self.peer;
        let Some(key) = &self.key else {
            match self.auth {
                PeerAuth::Plain => {}
                PeerAuth::New => {
                    if let Some(auth::Handshake::ClientHello(_)) = auth::Handshake::decode(&frames)
                    {
                        self.refuse_handshake(
                            "this server has no cluster key: connect without one",
                        );
                        return None;
                    }
                    self.auth = PeerAuth::Plain;
                }
                _ => return None,
            }
            return Some(ServerEvent::Message { peer, frames });
        };
        match &mut self.auth {
            PeerAuth::Open(opener) => match opener.open(&mut frames) {
                Ok(()) => Some(ServerEvent::Message { peer, frames }),
                Err(err) => {
                    let source = self.outbox.front.peers.source(&peer);
                    self.outbox.front.warn_peer(
                        source,
                        "seal",
                        &format!("closed a connection: {err}"),
                    );
                    self.auth = PeerAuth::Refused;
                    self.outbox.front.peers.disconnect(&peer);
                    None
                }
            },
            PeerAuth::Refused | PeerAuth::Plain => None,
            PeerAuth::Challenged(handshake) => {
                let proof = match auth::Handshake::decode(&frames) {
                    Some(auth::Handshake::ClientProof(p)) => p,
                    _ => return self.refuse(frames),
                };
                match handshake.verify(key, &proof) {
                    Some((accept, session)) => {
                        self.outbox.route(&peer, Outgoing::Open(session.sealer));
                        self.outbox.raw(&peer, vec![accept], false);
                        self.auth = PeerAuth::Open(session.opener);
                        None
                    }
                    None => {
                        let source = self.outbox.front.peers.source(&peer);
                        self.outbox.front.warn_peer(
                            source,
                            "refused",
                            "refused a peer that does not know the cluster key",
                        );
                        self.refuse_handshake("wrong cluster key: this server does not know it");
                        None
                    }
                }
            }
            PeerAuth::New => match auth::Handshake::decode(&frames) {
                Some(auth::Handshake::ClientHello(cn)) => {
                    let (handshake, challenge) = auth::ServerHandshake::challenge(cn);
                    self.outbox.raw(&peer, vec![challenge], false);
                    self.auth = PeerAuth::Challenged(handshake);
                    None
                }
                _ => self.refuse(frames),
            },
        }
    }

    /// Answers a handshake with a refusal and closes the connection.
    fn refuse_handshake(&mut self, reason: &str) {
        let refusal = auth::Handshake::Refuse(reason.to_string());
        self.outbox.raw(&self.peer, vec![refusal.encode()], true);
        self.auth = PeerAuth::Refused;
    }

    /// A peer that skipped the handshake: the layer above answers it in its protocol.
    fn refuse(&mut self, frames: Vec<Bytes>) -> Option<ServerEvent> {
        let source = self.outbox.front.peers.source(&self.peer);
        self.outbox
            .front
            .warn_peer(source, "refused", "refused a peer without the cluster key");
        self.auth = PeerAuth::Refused;
        Some(ServerEvent::Unauthenticated {
            peer: self.peer,
            frames,
        })
    }
}

/// Binds a ROUTER to every endpoint in `endpoints` and starts its tasks.
pub async fn bind(
    endpoints: &[String],
    config: &TransportConfig,
) -> Result<Server, TransportError> {
    bind_mapped(endpoints, config, |event| event).await
}

/// What every connection of a server shares.
struct Shared<E, F> {
    events: mpsc::Sender<E>,
    map: F,
    /// The writers, and through `outbox.front` the connections.
    outbox: Outbox,
}

/// Like [`bind`], with each event turned into an `E` by `map` on the connection's task
/// (decoding a message there, say), so the owner gets it without another hand-off
/// between tasks.
pub async fn bind_mapped<E, F>(
    endpoints: &[String],
    config: &TransportConfig,
    map: F,
) -> Result<Server<E>, TransportError>
where
    E: Send + 'static,
    F: Fn(ServerEvent) -> E + Send + Sync + 'static,
{
    let front = Front::new(config.clone());
    let (event_tx, event_rx) = mpsc::channel(4096);
    let outbox = Outbox::new(front.clone());
    let shared = Arc::new(Shared {
        events: event_tx,
        map,
        outbox: outbox.clone(),
    });
    let mut bound = Vec::new();
    let mut accept_loops = Vec::new();
    for endpoint in endpoints {
        let shared = shared.clone();
        let serve: front::OnConnection = Arc::new(move |stream, source, open| {
            tokio::spawn(serve_peer(stream, source, open, shared.clone()));
        });
        let (resolved, task) = front::listen(endpoint, front.clone(), serve).await?;
        bound.push(resolved);
        accept_loops.push(task);
    }
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

/// Why a server's connection ended.
enum End {
    Stream(StreamError),
    HandshakeTimeout,
    Disconnected,
    ServerGone,
}

/// One accepted connection: the handshake, then its messages through the gate to the
/// server's owner, until it closes, breaks a rule, or is closed.
async fn serve_peer<E, F>(
    stream: TcpStream,
    source: SocketAddr,
    open: Open,
    shared: Arc<Shared<E, F>>,
) where
    E: Send + 'static,
    F: Fn(ServerEvent) -> E + Send + Sync + 'static,
{
    let front = &shared.outbox.front;
    let config = &front.config;
    let deadline = tokio::time::Instant::now() + config.handshake_timeout;
    let max = config.max_message_bytes;
    let handshake = stream::handshake(
        stream,
        SocketType::Router,
        max.min(MAX_UNESTABLISHED_MESSAGE),
    );
    let (mut reader, writer) = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(halves)) => halves,
        Ok(Err(err)) => return report_end(front, source, End::Stream(err)),
        Err(_) => return report_end(front, source, End::HandshakeTimeout),
    };
    let peer = PeerId::new();
    let close = Arc::new(Notify::new());
    front.peers.insert(peer, source, close.clone());
    shared
        .outbox
        .attach(peer, writer, open, config.key.is_some());
    // However this task ends (a panic included), the peer leaves the tables.
    let leaving = Leaving {
        peer,
        outbox: shared.outbox.clone(),
    };
    let mut gate = Gate {
        key: config.key.clone(),
        peer,
        auth: PeerAuth::New,
        outbox: shared.outbox.clone(),
    };
    // Once established, the handshake deadline no longer applies (even when the peer is
    // refused later, say for a bad seal: then it is closed for that).
    let mut established = false;
    let end = loop {
        tokio::select! {
            message = reader.next() => match message {
                Ok(frames) => {
                    let event = gate.admit(frames);
                    if !established && gate.established() {
                        established = true;
                        reader.set_limit(max);
                    }
                    if let Some(event) = event {
                        if shared.events.send((shared.map)(event)).await.is_err() {
                            break End::ServerGone;
                        }
                    }
                }
                Err(err) => break End::Stream(err),
            },
            () = close.notified() => break End::Disconnected,
            () = tokio::time::sleep_until(deadline), if !established => break End::HandshakeTimeout,
        }
    };
    drop(leaving);
    let _ = shared
        .events
        .send((shared.map)(ServerEvent::Disconnected(peer)))
        .await;
    report_end(front, source, end);
}

/// Logs why a connection ended (a warning, rate-limited, when the peer misbehaved).
fn report_end(front: &Front, source: SocketAddr, end: End) {
    match end {
        End::Stream(StreamError::Violation(v)) => {
            front.warn_peer(Some(source), "violation", &format!("closed a connection: {v}"))
        }
        End::HandshakeTimeout => front.warn_peer(
            Some(source),
            "handshake",
            &format!(
                "closed a connection that did not finish its handshake within {:?} (--handshake-timeout)",
                front.config.handshake_timeout
            ),
        ),
        End::Stream(err) => debug!(peer = %source, "connection ended: {err}"),
        End::Disconnected | End::ServerGone => debug!(peer = %source, "connection closed"),
    }
}

/// What a peer's writer task holds: when it ends (a panic included), the connection is
/// closed and its place freed.
struct Writing {
    peer: PeerId,
    front: Arc<Front>,
    link: Arc<Link>,
    _open: Open,
}

impl Drop for Writing {
    fn drop(&mut self) {
        self.front.peers.disconnect(&self.peer);
    }
}

/// Takes a connection's peer out of the tables when its reading task ends.
struct Leaving {
    peer: PeerId,
    outbox: Outbox,
}

impl Drop for Leaving {
    fn drop(&mut self) {
        self.outbox.front.peers.remove(&self.peer);
        self.outbox.detach(&self.peer);
    }
}

/// A peer's writer task: sends what is queued for it, sealed when it has a session.
/// A send that fails, or that makes no progress for [`SEND_TIMEOUT`] (the peer reads
/// nothing), closes the connection; what is still queued is dropped.
async fn write_peer(writing: Writing, mut queue: mpsc::UnboundedReceiver<Outgoing>) {
    let Writing {
        ref peer,
        ref front,
        ref link,
        ..
    } = writing;
    while let Some(out) = queue.recv().await {
        let mut wire = link.wire.lock().await;
        let sent = write_one(peer, front, &mut wire, out).await;
        // Under the lock: a sender that finds nothing queued finds the socket idle.
        link.queued
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        drop(wire);
        if let Err(err) = sent {
            if err.kind() == std::io::ErrorKind::TimedOut {
                front.warn_peer(
                    front.peers.source(peer),
                    "stalled",
                    &format!("closed a connection that read nothing for {SEND_TIMEOUT:?}"),
                );
            } else {
                // It reset or closed (its reader task reports it gone).
                debug!("a send to a peer failed ({err}): its connection is closed");
            }
            front.peers.disconnect(peer);
            return;
        }
    }
}

/// Does what `out` asks on the peer's socket: first finishes a message its sender
/// began ([`Outbox::write_now`]).
async fn write_one(
    peer: &PeerId,
    front: &Arc<Front>,
    wire: &mut Wire,
    out: Outgoing,
) -> std::io::Result<()> {
    wire.writer.finish_within(SEND_TIMEOUT).await?;
    let (frames, close, seal) = match out {
        Outgoing::Open(session) => {
            wire.sealer = Some(session);
            return Ok(());
        }
        Outgoing::Flushed(done) => {
            let _ = done.send(());
            return Ok(());
        }
        Outgoing::Finish => return Ok(()),
        Outgoing::Raw(frames, close) => (frames, close, false),
        Outgoing::Send(frames) => (frames, false, true),
        Outgoing::Encode(encode) => match encode() {
            Some(frames) => (frames, false, true),
            None => return Ok(()),
        },
    };
    let frames = if seal {
        match wire.seal(frames) {
            Some(frames) => frames,
            None => return Ok(()),
        }
    } else {
        frames
    };
    if frames.is_empty() {
        return Ok(());
    }
    if close {
        // Let the refusal reach the peer before its connection is closed.
        let front = front.clone();
        let closing = *peer;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            front.peers.disconnect(&closing);
        });
    }
    wire.writer.send_within(&frames, SEND_TIMEOUT).await
}

/// The sending half of a [`Connection`].
pub struct ConnectionSender {
    writer: MessageWriter,
    endpoint: String,
    sealer: Option<auth::Sealer>,
    /// A send failed or timed out half way: the stream is mid-message.
    broken: bool,
}

impl ConnectionSender {
    /// Sends `frames` (sealed, with a key), bounded by [`SEND_TIMEOUT`]. After a failed
    /// send every later one fails too: make a new connection.
    pub async fn send(&mut self, mut frames: Vec<Bytes>) -> Result<(), TransportError> {
        if self.broken {
            return Err(TransportError::Closed(format!(
                "{}: an earlier send failed",
                self.endpoint
            )));
        }
        if frames.is_empty() {
            return Err(TransportError::Closed("empty message".to_string()));
        }
        if let Some(sealer) = &mut self.sealer {
            sealer.seal(&mut frames);
        }
        let failed = match tokio::time::timeout(SEND_TIMEOUT, self.writer.send(&frames)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(err)) => err.to_string(),
            Err(_) => "send timed out".to_string(),
        };
        self.broken = true;
        Err(TransportError::Closed(format!(
            "{}: {failed}",
            self.endpoint
        )))
    }
}

/// The receiving half of a [`Connection`].
pub struct ConnectionReceiver {
    reader: MessageReader,
    endpoint: String,
    opener: Option<auth::Opener>,
}

impl ConnectionReceiver {
    /// The next message's frames (checked and unsealed, with a key). Cancel-safe.
    pub async fn recv(&mut self) -> Result<Vec<Bytes>, TransportError> {
        let mut frames = match self.reader.next().await {
            Ok(frames) => frames,
            Err(StreamError::Violation(v)) => {
                warn!("closed the connection to {}: {v}", self.endpoint);
                return Err(TransportError::Closed(format!("{}: {v}", self.endpoint)));
            }
            Err(err) => return Err(TransportError::Closed(format!("{}: {err}", self.endpoint))),
        };
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

/// Connects a DEALER to `endpoint`, waiting at most `timeout` for the peer; with a key,
/// proves it and checks the server's proof first.
pub async fn connect(
    endpoint: &str,
    timeout: Duration,
    config: &TransportConfig,
) -> Result<Connection, TransportError> {
    let connect_err = |reason: String| TransportError::Connect {
        endpoint: endpoint.to_string(),
        reason,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = front::dial(endpoint, timeout).await?;
    let handshake = stream::handshake(stream, SocketType::Dealer, config.max_message_bytes);
    let (reader, writer) = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(halves)) => halves,
        Ok(Err(err)) => return Err(connect_err(err.to_string())),
        Err(_) => return Err(connect_err(format!("no answer within {timeout:?}"))),
    };
    let mut conn = Connection {
        sender: ConnectionSender {
            writer,
            endpoint: endpoint.to_string(),
            sealer: None,
            broken: false,
        },
        receiver: ConnectionReceiver {
            reader,
            endpoint: endpoint.to_string(),
            opener: None,
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages queued for `peer` and not yet written (none once it is gone).
    fn queued(outbox: &Outbox, peer: &PeerId) -> usize {
        lock(&outbox.routes).get(peer).map_or(0, |route| {
            route.link.queued.load(std::sync::atomic::Ordering::Acquire)
        })
    }

    /// A server and a connection to it that said hello, with the server's name for it.
    async fn served(config: &TransportConfig) -> (Server, Connection, PeerId) {
        let mut server = bind(&["tcp://127.0.0.1:0".to_string()], config)
            .await
            .unwrap();
        let mut conn = connect(&server.endpoints[0], Duration::from_secs(10), config)
            .await
            .unwrap();
        conn.sender
            .send(vec![Bytes::from_static(b"hello")])
            .await
            .unwrap();
        match next_event(&mut server).await {
            ServerEvent::Message { peer, frames } => {
                assert_eq!(frames, vec![Bytes::from_static(b"hello")]);
                (server, conn, peer)
            }
            other => panic!("{other:?}"),
        }
    }

    /// A server's configuration without the cluster key, then with a fresh one.
    fn without_and_with_a_key() -> [TransportConfig; 2] {
        let key = auth::ClusterKey::parse(&auth::ClusterKey::generate_hex()).unwrap();
        [
            TransportConfig::default(),
            TransportConfig::default().with_key(Some(key)),
        ]
    }

    /// What `server` hears next, within a bound.
    async fn next_event(server: &mut Server) -> ServerEvent {
        tokio::time::timeout(Duration::from_secs(10), server.events.recv())
            .await
            .expect("an event within 10 s")
            .expect("the server is up")
    }

    /// A server sends to an idle peer itself and queues behind a message the socket
    /// could not take at once: with and without the cluster key (sealed either way),
    /// the peer reads every message whole and in the order it was sent.
    #[tokio::test]
    async fn messages_sent_at_once_or_queued_behind_a_large_one_arrive_whole_and_in_order() {
        for config in without_and_with_a_key() {
            let (server, mut conn, peer) = served(&config).await;
            let numbered = |i: u32| vec![Bytes::from(i.to_be_bytes().to_vec())];
            // Nothing waits for the peer: written by the caller itself (the writer task
            // cannot have run: nothing was awaited), not queued.
            server.outbox.send(&peer, numbered(0));
            assert_eq!(queued(&server.outbox, &peer), 0);
            assert_eq!(conn.receiver.recv().await.unwrap(), numbered(0));
            // The peer reads nothing while a message far larger than the socket's
            // buffers goes, and many after it, by both ways of sending.
            let large = vec![Bytes::from(vec![7u8; 24 << 20])];
            server.outbox.send(&peer, large.clone());
            for i in 1..=200u32 {
                match i % 3 {
                    0 => server.outbox.send(&peer, numbered(i)),
                    1 => server.outbox.send_encoded(&peer, move || Some(numbered(i))),
                    _ => server
                        .outbox
                        .send_encoded_at_once(&peer, move || Some(numbered(i))),
                }
            }
            let received = tokio::time::timeout(Duration::from_secs(20), conn.receiver.recv())
                .await
                .unwrap()
                .unwrap();
            assert!(received == large, "the large message arrives whole, first");
            for i in 1..=200u32 {
                assert_eq!(conn.receiver.recv().await.unwrap(), numbered(i));
            }
            // Everything written: the next message goes at once again, and arrives.
            server.outbox.flush(Duration::from_secs(5)).await;
            server
                .outbox
                .send_encoded_at_once(&peer, move || Some(numbered(201)));
            assert_eq!(queued(&server.outbox, &peer), 0, "written, not queued");
            assert_eq!(conn.receiver.recv().await.unwrap(), numbered(201));
        }
    }

    /// Two senders on two runtime threads, each sending its own numbered sequence to
    /// one peer by all three ways at once (every 100th message far larger than the
    /// socket takes at once, so the writer task and the senders' own writes
    /// alternate): with the cluster key (whose seals must go out in the order they
    /// were made) and without, every message arrives whole and each sender's in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_senders_at_once_keep_each_ones_order_and_every_message_whole() {
        for config in without_and_with_a_key() {
            let (server, mut conn, peer) = served(&config).await;
            const EACH: u32 = 3_000;
            let message = |sender: u8, i: u32| {
                let size = if i.is_multiple_of(100) { 4 << 20 } else { 8 };
                let mut body = vec![sender; size];
                body[..4].copy_from_slice(&i.to_be_bytes());
                vec![Bytes::from(body)]
            };
            let senders: Vec<_> = (1..=2u8)
                .map(|sender| {
                    let outbox = server.outbox.clone();
                    tokio::spawn(async move {
                        for i in 0..EACH {
                            match i % 3 {
                                0 => outbox.send(&peer, message(sender, i)),
                                1 => outbox.send_encoded(&peer, move || Some(message(sender, i))),
                                _ => outbox
                                    .send_encoded_at_once(&peer, move || Some(message(sender, i))),
                            }
                            if i % 64 == 0 {
                                tokio::task::yield_now().await;
                            }
                        }
                    })
                })
                .collect();
            let mut next = [0u32; 2];
            let reading = async {
                for _ in 0..2 * EACH {
                    let frames = conn.receiver.recv().await.unwrap();
                    let body = &frames[0];
                    let sender = body[body.len() - 1];
                    let i = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    assert!(
                        sender == 1 || sender == 2,
                        "a message cut or mixed: {body:?}"
                    );
                    assert_eq!(body[..], message(sender, i)[0][..], "whole");
                    let expected = &mut next[usize::from(sender - 1)];
                    assert_eq!(i, *expected, "sender {sender}'s messages in order");
                    *expected += 1;
                }
            };
            tokio::time::timeout(Duration::from_secs(60), reading)
                .await
                .expect("every message within 60 s");
            for sender in senders {
                sender.await.unwrap();
            }
            assert_eq!(next, [EACH, EACH]);
        }
    }

    /// A peer gone while messages are written to it: the writes fail, its connection
    /// is closed (the server hears it left), and more messages to it are dropped
    /// quietly, not begun on a stream that is mid-message.
    #[tokio::test]
    async fn writes_to_a_peer_that_is_gone_fail_quietly_and_the_peer_is_reported_gone() {
        let config = TransportConfig::default();
        let (mut server, conn, peer) = served(&config).await;
        drop(conn);
        // Nothing awaited in between: the reader has not seen the peer leave yet, so
        // these go to its socket, and fail there once its kernel has answered with a
        // reset.
        let large = vec![Bytes::from(vec![5u8; 1 << 20])];
        for _ in 0..20 {
            server
                .outbox
                .send_encoded_at_once(&peer, move || Some(vec![Bytes::from(vec![5u8; 1 << 20])]));
            server.outbox.send(&peer, large.clone());
        }
        loop {
            match next_event(&mut server).await {
                ServerEvent::Disconnected(gone) => {
                    assert_eq!(gone, peer);
                    break;
                }
                ServerEvent::Message { .. } | ServerEvent::Unauthenticated { .. } => {}
            }
        }
        server.outbox.send(&peer, large);
        assert_eq!(queued(&server.outbox, &peer), 0, "the peer's route is gone");
    }
}
