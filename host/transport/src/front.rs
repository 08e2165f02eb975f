//! The accepting side of a server: TCP listeners with their limits (at most
//! `max_connections` at once; `EMFILE` backs off and warns once per interval instead of
//! spinning), the table of connected peers by the routing identity the server gave
//! them (where each connected from, a way to close it), the rate-limited warnings
//! about peers, and dialing out (retrying until a timeout while nobody listens).

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::Notify,
};
use tracing::{debug, warn};

use super::{PeerId, TransportConfig, TransportError};

/// The longest message a connection may send before it is established (the key
/// handshake, or without a key its first message): handshake frames are 36 bytes, so
/// an unauthenticated peer cannot make the process buffer `--max-message-size` each.
pub const MAX_UNESTABLISHED_MESSAGE: u64 = 1024 * 1024;

/// How long accepting pauses after the process ran out of descriptors.
const EMFILE_BACKOFF: Duration = Duration::from_millis(100);

/// One warning per this long for the same kind of trouble from the same source.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);

pub use crate::log_limit::LogLimiter;

/// Locks `m`, also after a panic elsewhere held it (what it guards stays consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Slot {
    source: SocketAddr,
    close: Arc<Notify>,
}

/// The connections of a server, by the routing identity it gave them.
#[derive(Default)]
pub struct PeerTable {
    peers: Mutex<HashMap<PeerId, Slot>>,
}

impl PeerTable {
    /// Where `peer` connected from.
    pub fn source(&self, peer: &PeerId) -> Option<SocketAddr> {
        lock(&self.peers).get(peer).map(|s| s.source)
    }

    /// Adds `peer`, connected from `source`; its connection ends when `close` is
    /// notified.
    pub fn insert(&self, peer: PeerId, source: SocketAddr, close: Arc<Notify>) {
        lock(&self.peers).insert(peer, Slot { source, close });
    }

    /// Removes `peer` (its connection ended).
    pub fn remove(&self, peer: &PeerId) {
        lock(&self.peers).remove(peer);
    }

    /// Closes `peer`'s connection.
    pub fn disconnect(&self, peer: &PeerId) {
        if let Some(slot) = lock(&self.peers).get(peer) {
            slot.close.notify_one();
        }
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        lock(&self.peers).len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the accept loops share.
pub struct Front {
    /// The limits.
    pub config: TransportConfig,
    /// The connections.
    pub peers: PeerTable,
    /// Rate limits for warnings about peers.
    pub log: LogLimiter,
    /// Connections refused or closed for what they did (full, no key, a bad
    /// handshake or seal, a protocol violation), since the start.
    rejected: AtomicU64,
}

/// Descriptors kept free for everything else (plugins, files, outgoing connections).
const DESCRIPTOR_RESERVE: u64 = 256;

/// Each accepted connection holds one descriptor: the peer's socket.
const DESCRIPTORS_PER_CONNECTION: u64 = 1;

/// Raises this process's soft descriptor limit to its hard limit (once) and returns it.
pub fn descriptor_limit() -> u64 {
    static LIMIT: OnceLock<u64> = OnceLock::new();
    *LIMIT.get_or_init(|| match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(err) => {
            warn!("cannot raise the descriptor limit: {err}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    })
}

/// `requested` connections, or fewer when the descriptor limit cannot hold them.
pub fn connection_budget(requested: usize) -> usize {
    let limit = descriptor_limit();
    let fits = (limit.saturating_sub(DESCRIPTOR_RESERVE) / DESCRIPTORS_PER_CONNECTION).max(1);
    if (requested as u64) > fits {
        warn!(
            "--max-connections {requested} lowered to {fits}: the descriptor limit is {limit} (each connection holds {DESCRIPTORS_PER_CONNECTION})"
        );
        fits as usize
    } else {
        requested
    }
}

impl Front {
    /// A front enforcing `config`.
    pub fn new(mut config: TransportConfig) -> Arc<Front> {
        config.max_connections = connection_budget(config.max_connections);
        Arc::new(Front {
            config,
            peers: PeerTable::default(),
            log: LogLimiter::new(LOG_INTERVAL),
            rejected: AtomicU64::new(0),
        })
    }

    /// Connections refused or closed for misbehaving since the start.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Counts a rejected connection from `source`, and warns about it at most once per
    /// interval for `what`.
    pub fn warn_peer(&self, source: Option<SocketAddr>, what: &str, message: &str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        let ip = source.map_or_else(|| "unknown".to_string(), |s| s.ip().to_string());
        if let Some(quiet) = self.log.allow(&format!("{what}/{ip}")) {
            if quiet > 0 {
                warn!(peer = %ip, "{message} ({quiet} more like it in the last minute)");
            } else {
                warn!(peer = %ip, "{message}");
            }
        }
    }
}

/// `tcp://host:port` to `host:port` (the only transport fastworker speaks on the wire).
pub fn tcp_target(endpoint: &str) -> Result<String, String> {
    let rest = endpoint
        .strip_prefix("tcp://")
        .ok_or_else(|| format!("`{endpoint}` is not a tcp:// address"))?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("`{endpoint}` has no port"))?;
    let host = match host {
        "*" => "0.0.0.0",
        h => h,
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("`{endpoint}` has no valid port"));
    }
    Ok(format!("{host}:{port}"))
}

fn endpoint_of(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V6(ip) => format!("tcp://[{ip}]:{}", addr.port()),
        IpAddr::V4(ip) => format!("tcp://{ip}:{}", addr.port()),
    }
}

/// What a server does with an accepted connection (it holds `Open` while it lasts).
pub type OnConnection = Arc<dyn Fn(TcpStream, SocketAddr, Open) + Send + Sync>;

/// Listens on the TCP `endpoint` for `front`, handing each connection it accepts to
/// `serve`; returns the endpoint actually bound.
pub async fn listen(
    endpoint: &str,
    front: Arc<Front>,
    serve: OnConnection,
) -> Result<(String, tokio::task::JoinHandle<()>), TransportError> {
    let bind_err = |reason: String| TransportError::Bind {
        endpoint: endpoint.to_string(),
        reason,
    };
    let target = tcp_target(endpoint).map_err(bind_err)?;
    let listener = TcpListener::bind(&target)
        .await
        .map_err(|e| bind_err(e.to_string()))?;
    let local = listener.local_addr().map_err(|e| bind_err(e.to_string()))?;
    // Each endpoint counts its own connections: a flood of the base address leaves
    // the subworker port (and discovery) their own --max-connections.
    let task = tokio::spawn(accept_loop(
        listener,
        front,
        Arc::new(AtomicUsize::new(0)),
        serve,
    ));
    Ok((endpoint_of(local), task))
}

/// Too many open files, for this process or the whole system.
fn out_of_descriptors(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

async fn accept_loop(
    listener: TcpListener,
    front: Arc<Front>,
    open: Arc<AtomicUsize>,
    serve: OnConnection,
) {
    loop {
        match listener.accept().await {
            Ok((stream, source)) => {
                if open.load(Ordering::Acquire) >= front.config.max_connections {
                    front.warn_peer(
                        Some(source),
                        "full",
                        &format!(
                            "refusing a connection: {} are open (--max-connections)",
                            front.config.max_connections
                        ),
                    );
                    drop(stream);
                    continue;
                }
                open.fetch_add(1, Ordering::AcqRel);
                serve(stream, source, Open(open.clone()));
            }
            Err(err) if out_of_descriptors(&err) => {
                if let Some(quiet) = front.log.allow("emfile") {
                    warn!(
                        "out of file descriptors: not accepting for {EMFILE_BACKOFF:?} at a time ({quiet} more since the last warning); raise the limit or lower --max-connections"
                    );
                }
                tokio::time::sleep(EMFILE_BACKOFF).await;
            }
            Err(err) => {
                debug!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Decrements its endpoint's open-connection count when a connection's task ends.
pub struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Connects to the TCP `endpoint`, retrying (with a growing pause) until `timeout`
/// while nobody listens there.
pub async fn dial(endpoint: &str, timeout: Duration) -> Result<TcpStream, TransportError> {
    let connect_err = |reason: String| TransportError::Connect {
        endpoint: endpoint.to_string(),
        reason,
    };
    let target = tcp_target(endpoint).map_err(connect_err)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(20);
    loop {
        let last_err = match tokio::time::timeout_at(deadline, TcpStream::connect(&target)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {timeout:?}"),
        };
        if tokio::time::Instant::now() + pause >= deadline {
            return Err(connect_err(last_err));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}
