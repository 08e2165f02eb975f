//! The guard in front of the `zeromq` crate: every TCP connection fastworker accepts
//! or opens is relayed, byte for byte, through a task that reads it with a
//! [`zmtp::Inspector`] first, so no length a peer declares reaches the crate's decoder
//! (and its allocation) unchecked. The crate itself only ever talks to us, over Unix
//! sockets in a directory only this user can enter.
//!
//! Accepting side ([`listen`]): at most `max_connections` at once; `EMFILE` backs off
//! and warns once per interval instead of spinning; a connection that has not been
//! marked established (by the layer above, once its first message was accepted)
//! within the handshake timeout is closed; the peer's READY gets a routing identity we
//! choose, which names the connection in the [`PeerTable`] (its source address, a way
//! to close it). Connecting side ([`dial`]): the remote's bytes are inspected the same
//! way before our DEALER reads them.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::Notify,
};
use tracing::{debug, warn};

use super::{
    zmtp::{self, Inspector, Violation, GREETING_LEN},
    PeerId, TransportConfig, TransportError,
};

/// Bytes read at a time once a connection is up.
const CHUNK: usize = 16 * 1024;

/// The longest message a connection may send before it is established (the key
/// handshake, or without a key its first message): handshake frames are 36 bytes, so
/// an unauthenticated peer cannot make the process buffer `--max-message-size` each.
pub const MAX_UNESTABLISHED_MESSAGE: u64 = 1024 * 1024;

/// How long accepting pauses after the process ran out of descriptors.
const EMFILE_BACKOFF: Duration = Duration::from_millis(100);

/// One warning per this long for the same kind of trouble from the same source.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);

pub use crate::log_limit::LogLimiter;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

static PRIVATE_DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The process's private directory for the Unix sockets between the relays and the
/// `zeromq` sockets: mode 0700, so no other user can reach the unguarded side.
pub fn private_dir() -> Result<&'static Path, TransportError> {
    let made = PRIVATE_DIR.get_or_init(|| {
        let base = std::env::temp_dir();
        remove_stale_dirs(&base);
        let name = format!(
            "fastworker-rt-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let dir = base.join(name);
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder
            .create(&dir)
            .map(|()| dir.clone())
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))
    });
    made.as_deref()
        .map_err(|reason| TransportError::Closed(reason.clone()))
}

/// Removes the private directory, if this process made one (at exit).
pub fn remove_private_dir() {
    if let Some(Ok(dir)) = PRIVATE_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Directories left by fastworker processes that are gone (killed before cleanup).
fn remove_stale_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("fastworker-rt-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() && Path::new("/proc/self").exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A fresh socket path in the private directory.
pub fn private_socket(prefix: &str) -> Result<PathBuf, TransportError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ok(private_dir()?.join(format!("{prefix}{n}.sock")))
}

struct Slot {
    source: SocketAddr,
    close: Arc<Notify>,
    established: Arc<AtomicBool>,
}

/// The connections of a guarded server, by the routing identity the relay gave them.
#[derive(Default)]
pub struct PeerTable {
    peers: Mutex<HashMap<PeerId, Slot>>,
}

impl PeerTable {
    /// Where `peer` connected from.
    pub fn source(&self, peer: &PeerId) -> Option<SocketAddr> {
        lock(&self.peers).get(peer).map(|s| s.source)
    }

    /// `peer` finished its handshake: the handshake timeout no longer applies.
    pub fn established(&self, peer: &PeerId) {
        if let Some(slot) = lock(&self.peers).get(peer) {
            slot.established.store(true, Ordering::Release);
        }
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
    config: TransportConfig,
    inner: PathBuf,
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

/// Each accepted connection holds three descriptors: the peer's socket, and both ends
/// of the Unix socket to the `zeromq` socket.
const DESCRIPTORS_PER_CONNECTION: u64 = 3;

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
    /// A front for the `zeromq` socket listening on the Unix socket `inner`.
    pub fn new(mut config: TransportConfig, inner: PathBuf) -> Arc<Front> {
        config.max_connections = connection_budget(config.max_connections);
        Arc::new(Front {
            config,
            inner,
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

/// Listens on the TCP `endpoint` for `front`; returns the endpoint actually bound.
pub async fn listen(
    endpoint: &str,
    front: Arc<Front>,
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
    let task = tokio::spawn(accept_loop(listener, front, Arc::new(AtomicUsize::new(0))));
    Ok((endpoint_of(local), task))
}

/// Too many open files, for this process or the whole system.
fn out_of_descriptors(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

async fn accept_loop(listener: TcpListener, front: Arc<Front>, open: Arc<AtomicUsize>) {
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
                tokio::spawn(serve(stream, source, front.clone(), Open(open.clone())));
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
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a relayed connection ended.
#[derive(Debug)]
enum End {
    Closed,
    Violation(Violation),
    Io(io::Error),
    HandshakeTimeout,
    Disconnected,
}

async fn serve(outer: TcpStream, source: SocketAddr, front: Arc<Front>, _open: Open) {
    let _ = outer.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + front.config.handshake_timeout;
    let inner = match UnixStream::connect(&front.inner).await {
        Ok(s) => s,
        Err(err) => {
            warn!("cannot reach this process's own socket: {err}");
            return;
        }
    };
    let identity: PeerId = Bytes::copy_from_slice(&rand::random::<[u8; 16]>());
    let close = Arc::new(Notify::new());
    let established = Arc::new(AtomicBool::new(false));
    let (mut outer_r, outer_w) = outer.into_split();
    let (inner_r, mut inner_w) = inner.into_split();
    let max = front.config.max_message_bytes;

    let up = async {
        let handshake = tokio::time::timeout_at(deadline, read_handshake(&mut outer_r)).await;
        let (greeting, ready, rest) = match handshake {
            Ok(Ok(parts)) => parts,
            Ok(Err(end)) => return end,
            Err(_) => return End::HandshakeTimeout,
        };
        let ready = match zmtp::rewrite_ready(&ready, &identity) {
            Ok(r) => r,
            Err(v) => return End::Violation(v),
        };
        lock(&front.peers.peers).insert(
            identity.clone(),
            Slot {
                source,
                close: close.clone(),
                established: established.clone(),
            },
        );
        let mut inspector = Inspector::after_handshake(max.min(MAX_UNESTABLISHED_MESSAGE));
        if let Err(v) = inspector.scan(&rest) {
            return End::Violation(v);
        }
        let mut first = Vec::with_capacity(greeting.len() + ready.len() + rest.len());
        first.extend_from_slice(&greeting);
        first.extend_from_slice(&ready);
        first.extend_from_slice(&rest);
        if let Err(err) = inner_w.write_all(&first).await {
            return End::Io(err);
        }
        // The full limit applies once the layer above says the connection is
        // established.
        let mut raised = false;
        pump(&mut outer_r, &mut inner_w, |chunk| {
            if !raised && established.load(Ordering::Acquire) {
                inspector.set_limit(max);
                raised = true;
            }
            inspector.scan(chunk)
        })
        .await
    };
    let down = async {
        let (mut r, mut w) = (inner_r, outer_w);
        pump(&mut r, &mut w, |_| Ok(())).await
    };
    let timer = async {
        tokio::time::sleep_until(deadline).await;
        if established.load(Ordering::Acquire) {
            std::future::pending::<()>().await;
        }
    };
    let end = tokio::select! {
        end = up => end,
        end = down => end,
        () = close.notified() => End::Disconnected,
        () = timer => End::HandshakeTimeout,
    };
    lock(&front.peers.peers).remove(&identity);
    match end {
        End::Violation(v) => {
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
        End::Io(err) => debug!(peer = %source, "connection ended: {err}"),
        End::Closed | End::Disconnected => debug!(peer = %source, "connection closed"),
    }
}

/// Reads the greeting and the first command (READY) of an accepted connection; also
/// returns whatever came after them in the same reads.
async fn read_handshake(
    r: &mut (impl AsyncRead + Unpin),
) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>), End> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        if buf.len() >= GREETING_LEN {
            zmtp::check_greeting(&buf[..GREETING_LEN]).map_err(End::Violation)?;
            if let Some(len) =
                zmtp::command_frame_len(&buf[GREETING_LEN..]).map_err(End::Violation)?
            {
                if buf.len() >= GREETING_LEN + len {
                    let rest = buf.split_off(GREETING_LEN + len);
                    let ready = buf.split_off(GREETING_LEN);
                    return Ok((buf, ready, rest));
                }
            }
        } else if buf.first().is_some_and(|b| *b != 0xff) {
            return Err(End::Violation(Violation::BadGreeting));
        }
        let n = r.read(&mut chunk).await.map_err(End::Io)?;
        if n == 0 {
            return Err(End::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Copies `r` to `w` until either ends, passing each chunk to `check` first.
async fn pump(
    r: &mut (impl AsyncRead + Unpin),
    w: &mut (impl AsyncWrite + Unpin),
    mut check: impl FnMut(&[u8]) -> Result<(), Violation>,
) -> End {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => return End::Closed,
            Ok(n) => n,
            Err(err) => return End::Io(err),
        };
        if let Err(v) = check(&buf[..n]) {
            return End::Violation(v);
        }
        if let Err(err) = w.write_all(&buf[..n]).await {
            return End::Io(err);
        }
    }
}

/// Opens a guarded connection to the TCP `endpoint` (retrying until `timeout` while
/// nobody listens there) and returns the private `ipc://` endpoint our DEALER should
/// connect to instead. What the remote sends is inspected before the DEALER reads it;
/// a remote that breaks a limit is disconnected and logged.
pub async fn dial(
    endpoint: &str,
    timeout: Duration,
    max_message_bytes: u64,
) -> Result<String, TransportError> {
    let connect_err = |reason: String| TransportError::Connect {
        endpoint: endpoint.to_string(),
        reason,
    };
    let target = tcp_target(endpoint).map_err(connect_err)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(20);
    let outer = loop {
        let last_err = match tokio::time::timeout_at(deadline, TcpStream::connect(&target)).await {
            Ok(Ok(stream)) => break stream,
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {timeout:?}"),
        };
        if tokio::time::Instant::now() + pause >= deadline {
            return Err(connect_err(last_err));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    };
    let _ = outer.set_nodelay(true);
    let path = private_socket("c")?;
    let listener = UnixListener::bind(&path).map_err(|e| connect_err(e.to_string()))?;
    let remote = endpoint.to_string();
    let ipc = format!("ipc://{}", path.display());
    tokio::spawn(async move {
        let accepted = tokio::time::timeout(timeout, listener.accept()).await;
        let _ = std::fs::remove_file(&path);
        let Ok(Ok((inner, _))) = accepted else {
            return;
        };
        let (mut outer_r, mut outer_w) = outer.into_split();
        let (mut inner_r, mut inner_w) = inner.into_split();
        let mut inspector = Inspector::new(max_message_bytes);
        let end = tokio::select! {
            end = pump(&mut outer_r, &mut inner_w, |chunk| inspector.scan(chunk)) => end,
            end = pump(&mut inner_r, &mut outer_w, |_| Ok(())) => end,
        };
        match end {
            End::Violation(v) => {
                warn!("closed the connection to {remote}: {v}")
            }
            other => debug!("connection to {remote} ended: {other:?}"),
        }
    });
    Ok(ipc)
}
