//! One ZMTP connection over TCP, read and written where it is used: the handshake, then
//! a [`MessageReader`] and a [`MessageWriter`] on the stream's two halves. No task and
//! no buffer between the socket and its user: a message read is decoded from the
//! bytes the socket gave, and a message sent is one write.

use std::{io, time::Duration};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
};

use crate::zmtp::{self, Decoder, SocketType, Unit, Violation, GREETING_LEN};

/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;

/// Why a connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The peer closed it.
    #[error("closed by the peer")]
    Closed,
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer broke the protocol or a limit.
    #[error("{0}")]
    Violation(#[from] Violation),
}

/// Reads messages from a connection's read half.
pub struct MessageReader {
    read: OwnedReadHalf,
    buf: BytesMut,
    decoder: Decoder,
}

impl MessageReader {
    /// Changes the message limit (for messages not begun yet).
    pub fn set_limit(&mut self, max_message: u64) {
        self.decoder.set_limit(max_message);
    }

    /// The next message's frames. Cancel-safe: bytes already read stay for the next
    /// call. Commands after the handshake are read past.
    pub async fn next(&mut self) -> Result<Vec<Bytes>, StreamError> {
        loop {
            if let Some(unit) = self.decoder.decode(&mut self.buf)? {
                match unit {
                    Unit::Message(frames) => return Ok(frames),
                    Unit::Command(_) => continue,
                }
            }
            self.fill().await?;
        }
    }

    /// Reads more bytes into the buffer.
    async fn fill(&mut self) -> Result<(), StreamError> {
        // After a large message the buffer is not kept large: what is left of it moves
        // to a fresh one (a large frame cut from it keeps only its own allocation).
        if self.buf.capacity() > 4 * READ_CHUNK && self.buf.len() < READ_CHUNK {
            self.buf = BytesMut::from(&self.buf[..]);
        }
        self.buf.reserve(READ_CHUNK);
        match self.read.read_buf(&mut self.buf).await? {
            0 => Err(StreamError::Closed),
            _ => Ok(()),
        }
    }
}

/// Writes messages to a connection's write half.
pub struct MessageWriter {
    write: OwnedWriteHalf,
    buf: BytesMut,
    /// How much of `buf` the socket has taken: a message is pending while it is short
    /// of `buf.len()`.
    written: usize,
    /// A send failed or gave up: the stream may be mid-message, so nothing more goes
    /// on it (the connection is to be closed).
    broken: bool,
}

/// What [`MessageWriter::try_send`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrySend {
    /// The socket took the whole message.
    Sent,
    /// The socket took part of it, or nothing: the rest is pending, for
    /// [`MessageWriter::finish_within`].
    Pending,
}

impl MessageWriter {
    /// Sends one message. Not cancel-safe: a send dropped half way leaves the stream
    /// mid-frame, so the connection must be closed after one.
    pub async fn send(&mut self, frames: &[Bytes]) -> io::Result<()> {
        self.send_within(frames, Duration::MAX).await
    }

    /// Sends one message, failing with [`io::ErrorKind::TimedOut`] when the socket
    /// takes nothing for `stall` (a large message to a slow reader takes as long as
    /// it needs while it moves). After an error every later send fails: close the
    /// connection.
    pub async fn send_within(&mut self, frames: &[Bytes], stall: Duration) -> io::Result<()> {
        self.begin(frames)?;
        self.finish_within(stall).await
    }

    /// Hands one message to the socket without waiting: what the socket takes now
    /// (the whole message, on an idle connection), the rest pending for
    /// [`MessageWriter::finish_within`], which must be called before the next message.
    /// No task and no wake-up between the caller and the socket. After an error every
    /// later send fails: close the connection.
    pub fn try_send(&mut self, frames: &[Bytes]) -> io::Result<TrySend> {
        self.begin(frames)?;
        let result = loop {
            if !self.is_pending() {
                break Ok(TrySend::Sent);
            }
            match self.write.try_write(&self.buf[self.written..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(TrySend::Pending),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => break Err(err),
            }
        };
        self.done(&result);
        result
    }

    /// Whether part of a message begun by [`MessageWriter::try_send`] waits to be
    /// written.
    pub fn is_pending(&self) -> bool {
        self.written < self.buf.len()
    }

    /// Writes what is pending of the current message (nothing, when none is), failing
    /// with [`io::ErrorKind::TimedOut`] when the socket takes nothing for `stall`.
    pub async fn finish_within(&mut self, stall: Duration) -> io::Result<()> {
        let result = loop {
            if !self.is_pending() {
                break Ok(());
            }
            match tokio::time::timeout(stall, self.write.write(&self.buf[self.written..])).await {
                Ok(Ok(0)) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => self.written += n,
                Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(err)) => break Err(err),
                Err(_) => {
                    break Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the peer took nothing for {stall:?}"),
                    ))
                }
            }
        };
        self.done(&result);
        result
    }

    /// Encodes the next message into the buffer (nothing of it written yet); refused
    /// after a failed send.
    fn begin(&mut self, frames: &[Bytes]) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "an earlier send on this connection failed",
            ));
        }
        debug_assert!(
            !self.is_pending(),
            "a message begun before the last one ended"
        );
        self.buf.clear();
        self.written = 0;
        zmtp::encode_message(frames, &mut self.buf);
        Ok(())
    }

    /// The current message is over, sent or failed (`result`): nothing of it is
    /// pending, and a large message's buffer is not kept for the small ones after it.
    fn done<T>(&mut self, result: &io::Result<T>) {
        self.broken |= result.is_err();
        self.buf.clear();
        self.written = 0;
        if self.buf.capacity() > 4 * READ_CHUNK {
            self.buf = BytesMut::new();
        }
    }
}

/// Greets the peer on `stream` as `ours` and checks its greeting and READY: then the
/// connection carries messages, read with at most `max_message` bytes each (until
/// [`MessageReader::set_limit`]).
pub async fn handshake(
    stream: TcpStream,
    ours: SocketType,
    max_message: u64,
) -> Result<(MessageReader, MessageWriter), StreamError> {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut hello = BytesMut::with_capacity(GREETING_LEN + 32);
    hello.extend_from_slice(&zmtp::greeting());
    hello.extend_from_slice(&zmtp::ready_frame(ours));
    write.write_all(&hello).await?;
    let mut reader = MessageReader {
        read,
        buf: BytesMut::with_capacity(READ_CHUNK),
        decoder: Decoder::new(max_message),
    };
    while reader.buf.len() < GREETING_LEN {
        // The signature's first byte tells a peer that does not speak ZMTP at once.
        if reader.buf.first().is_some_and(|b| *b != 0xff) {
            return Err(Violation::BadGreeting.into());
        }
        reader.fill().await?;
    }
    zmtp::check_greeting(&reader.buf.split_to(GREETING_LEN))?;
    loop {
        match reader.decoder.decode(&mut reader.buf)? {
            Some(Unit::Command(body)) => {
                zmtp::check_ready(&body, ours)?;
                break;
            }
            Some(Unit::Message(_)) => {
                return Err(Violation::BadReady("the first frame is not a command").into())
            }
            None => reader.fill().await?,
        }
    }
    Ok((
        reader,
        MessageWriter {
            write,
            buf: BytesMut::new(),
            written: 0,
            broken: false,
        },
    ))
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    /// A DEALER's and a ROUTER's handshakes with each other, on a fresh connection.
    async fn handshaken(
        limit: u64,
    ) -> (
        Result<(MessageReader, MessageWriter), StreamError>,
        Result<(MessageReader, MessageWriter), StreamError>,
    ) {
        let (client, server) = pair().await;
        tokio::join!(
            handshake(client, SocketType::Dealer, limit),
            handshake(server, SocketType::Router, limit)
        )
    }

    #[tokio::test]
    async fn a_router_and_a_dealer_exchange_messages_both_ways() {
        let (dealer, router) = handshaken(1 << 20).await;
        let (mut dealer_in, mut dealer_out) = dealer.unwrap();
        let (mut router_in, mut router_out) = router.unwrap();
        let message = vec![Bytes::from_static(b"head"), Bytes::from(vec![3u8; 70_000])];
        dealer_out.send(&message).await.unwrap();
        assert_eq!(router_in.next().await.unwrap(), message);
        router_out.send(&message[..1]).await.unwrap();
        assert_eq!(dealer_in.next().await.unwrap(), message[..1].to_vec());
    }

    #[tokio::test]
    async fn try_send_hands_a_message_to_an_idle_socket_and_leaves_what_does_not_fit_pending() {
        let (dealer, router) = handshaken(256 << 20).await;
        let (mut dealer_in, _dealer_out) = dealer.unwrap();
        let (_router_in, mut router_out) = router.unwrap();
        // The handshake's write left the socket known writable: a small message goes
        // whole, at once.
        let small = vec![Bytes::from_static(b"small")];
        assert_eq!(router_out.try_send(&small).unwrap(), TrySend::Sent);
        assert!(!router_out.is_pending());
        assert_eq!(dealer_in.next().await.unwrap(), small);
        // Far more than loopback's socket buffers hold (a few MiB, even tuned up) while
        // nobody reads: part of it waits.
        let large = vec![Bytes::from(vec![9u8; 96 << 20])];
        assert_eq!(router_out.try_send(&large).unwrap(), TrySend::Pending);
        assert!(router_out.is_pending());
        let reading = tokio::spawn(async move {
            let first = dealer_in.next().await.unwrap();
            let second = dealer_in.next().await.unwrap();
            (first, second)
        });
        router_out
            .finish_within(Duration::from_secs(10))
            .await
            .unwrap();
        assert!(!router_out.is_pending());
        router_out.send(&small).await.unwrap();
        let (first, second) = tokio::time::timeout(Duration::from_secs(10), reading)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first, large, "the message finished later arrives whole");
        assert_eq!(second, small, "and before what was sent after it");
    }

    #[tokio::test]
    async fn a_failed_try_send_leaves_nothing_pending_and_the_next_one_fails_cleanly() {
        let (dealer, router) = handshaken(1 << 20).await;
        drop(dealer.unwrap());
        let (_router_in, mut router_out) = router.unwrap();
        // The peer closed: its kernel answers what arrives with a reset, and a write
        // after that fails.
        let message = vec![Bytes::from(vec![1u8; 64 << 10])];
        let mut failed = false;
        for _ in 0..200 {
            let sent = match router_out.try_send(&message) {
                Ok(TrySend::Pending) => router_out
                    .finish_within(Duration::from_secs(2))
                    .await
                    .map(|()| TrySend::Sent),
                other => other,
            };
            if sent.is_err() {
                failed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(failed, "a write to a closed peer failed within 200 tries");
        assert!(
            !router_out.is_pending(),
            "nothing of the failed message waits"
        );
        // A caller that tries again (before it learns the connection is closing)
        // begins a new message: no half-written one is in the way.
        assert!(router_out.try_send(&message).is_err());
        assert!(!router_out.is_pending());
    }

    /// Our greeting and READY as a DEALER, for a peer written by hand.
    fn dealer_hello() -> Vec<u8> {
        let mut bytes = zmtp::greeting().to_vec();
        bytes.extend_from_slice(&zmtp::ready_frame(SocketType::Dealer));
        bytes
    }

    #[tokio::test]
    async fn a_handshake_and_a_message_arriving_a_byte_at_a_time_are_read() {
        let (client, server) = pair().await;
        let peer = tokio::spawn(async move {
            let mut client = client;
            let mut bytes = dealer_hello();
            bytes.extend_from_slice(&[0x01, 2, b'h', b'i', 0x00, 1, b'!']);
            for byte in bytes {
                client.write_all(&[byte]).await.unwrap();
                client.flush().await.unwrap();
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            client
        });
        let (mut reader, _writer) = handshake(server, SocketType::Router, 1 << 20)
            .await
            .unwrap();
        let message = reader.next().await.unwrap();
        assert_eq!(
            message,
            vec![Bytes::from_static(b"hi"), Bytes::from_static(b"!")]
        );
        drop(peer.await.unwrap());
    }

    #[tokio::test]
    async fn a_read_dropped_half_way_loses_nothing() {
        let (client, server) = pair().await;
        let (dealer, router) = tokio::join!(
            async {
                let mut client = client;
                client.write_all(&dealer_hello()).await.unwrap();
                client
            },
            handshake(server, SocketType::Router, 1 << 20)
        );
        let mut client = dealer;
        let (mut reader, _writer) = router.unwrap();
        // Half a message, then the read is given up (as a `select!` does).
        client.write_all(&[0x01, 3, b'a', b'b']).await.unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(100), reader.next()).await;
        assert!(gave_up.is_err());
        client.write_all(&[b'c', 0x00, 1, b'd']).await.unwrap();
        let message = reader.next().await.unwrap();
        assert_eq!(
            message,
            vec![Bytes::from_static(b"abc"), Bytes::from_static(b"d")]
        );
    }

    #[tokio::test]
    async fn one_wrong_first_byte_is_enough_and_the_first_frame_must_be_a_command() {
        let (client, server) = pair().await;
        let mut client = client;
        // One byte, and the connection stays open: refused without waiting for more.
        client.write_all(&[0x00]).await.unwrap();
        let refused = tokio::time::timeout(
            Duration::from_secs(5),
            handshake(server, SocketType::Router, 1 << 20),
        )
        .await
        .expect("refused at once");
        assert!(matches!(
            refused,
            Err(StreamError::Violation(Violation::BadGreeting))
        ));
        let (client, server) = pair().await;
        let mut client = client;
        let mut bytes = zmtp::greeting().to_vec();
        bytes.extend_from_slice(&[0x00, 2, b'h', b'i']);
        client.write_all(&bytes).await.unwrap();
        assert!(matches!(
            handshake(server, SocketType::Router, 1 << 20).await,
            Err(StreamError::Violation(Violation::BadReady(_)))
        ));
    }

    #[tokio::test]
    async fn two_dealers_do_not_talk_to_a_pub_and_http_is_not_zmtp() {
        let (client, server) = pair().await;
        let (dealer, ()) = tokio::join!(handshake(client, SocketType::Dealer, 1 << 20), async {
            // A PUB's greeting and READY, written by hand.
            let (_read, mut write) = server.into_split();
            let mut bytes = zmtp::greeting().to_vec();
            let body = b"\x05READY\x0bSocket-Type\x00\x00\x00\x03PUB";
            bytes.push(0x04);
            bytes.push(body.len() as u8);
            bytes.extend_from_slice(body);
            write.write_all(&bytes).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        assert!(matches!(
            dealer,
            Err(StreamError::Violation(Violation::SocketType { .. }))
        ));
        let (client, server) = pair().await;
        let (router, _) = tokio::join!(handshake(server, SocketType::Router, 1 << 20), async {
            let mut client = client;
            client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            client
        });
        assert!(matches!(
            router,
            Err(StreamError::Violation(Violation::BadGreeting))
        ));
    }
}
