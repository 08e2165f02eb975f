//! [`LimitedListener`]: the dashboard's TCP listener, holding at most
//! [`MAX_CONNECTIONS`] connections at once. Past that, new connections wait in the
//! kernel's backlog until one closes, so a flood of HTTP connections never takes the
//! descriptors the control plane's sockets and plugins need.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};

/// The most HTTP connections (event streams included) open at once.
pub const MAX_CONNECTIONS: usize = 256;

/// A listener that accepts only while fewer than [`MAX_CONNECTIONS`] are open.
pub struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

impl LimitedListener {
    /// Wraps `inner`.
    pub fn new(inner: TcpListener) -> Self {
        LimitedListener {
            inner,
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        }
    }
}

/// How long a new connection has to send its first bytes before it is closed.
pub const FIRST_BYTES_WITHIN: Duration = Duration::from_secs(10);

/// How long a connection may go without a byte either way (an idle keep-alive, a
/// request sent halfway) before it is closed. An event stream writes a comment every
/// 15 s, so it stays.
pub const IDLE_WITHIN: Duration = Duration::from_secs(30);

/// An accepted connection; its slot frees when it is dropped. One that sends nothing
/// within [`FIRST_BYTES_WITHIN`], or then moves no byte for [`IDLE_WITHIN`], is closed.
pub struct Limited {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// When the connection is closed unless a byte moves before.
    quiet_until: Pin<Box<tokio::time::Sleep>>,
}

impl Limited {
    fn moved(&mut self) {
        self.quiet_until
            .as_mut()
            .reset(tokio::time::Instant::now() + IDLE_WITHIN);
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = Limited;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            // The semaphore is never closed, so this waits for a free slot.
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                continue;
            };
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (
                        Limited {
                            stream,
                            _permit: permit,
                            quiet_until: Box::pin(tokio::time::sleep(FIRST_BYTES_WITHIN)),
                        },
                        addr,
                    );
                }
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::debug!("the dashboard cannot accept a connection: {err}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                if this.quiet_until.as_mut().poll(cx).is_ready() {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the connection was quiet too long",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
