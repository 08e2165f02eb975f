//! ZMTP 3 (the ZeroMQ wire protocol, RFC 23), as much as fastworker speaks: the NULL
//! mechanism, ROUTER and DEALER, messages of frames. No I/O here ([`crate::stream`]
//! does it): the greeting and the READY command, a [`Decoder`] that checks every
//! declared size against the limits before it waits for (or reserves room for) the
//! bytes, and the encoder. (The `zeromq` crate, used before, reserved whatever length a
//! peer declared: one frame header declaring 2^62 bytes aborted the process.)
//!
//! Wire format (RFC 23): a 64-byte greeting (`FF`, 8 padding bytes, `7F`, major and
//! minor version, a 20-byte mechanism name, an as-server byte, 31 filler bytes), then
//! frames: one flags byte (`0x01` more, `0x02` long, `0x04` command), a size (one byte,
//! or eight bytes big-endian when long), then the body.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Length of the ZMTP 3 greeting.
pub const GREETING_LEN: usize = 64;

/// The largest command frame accepted (READY and friends are a few dozen bytes).
pub const MAX_COMMAND_BYTES: u64 = 64 * 1024;

/// What a message frame costs against the message limit besides its bytes: the
/// receiver keeps a handle per frame, so a million empty frames are not free.
pub const FRAME_OVERHEAD: u64 = 64;

/// Frames shorter than this are copied out of the read buffer; longer ones are cut
/// from it without a copy. A frame kept (a queued task's payload, say) holds at most a
/// few times its own size of read buffer alive (about 64 KiB for one of 16 KiB): a
/// peer sending a frame per read cannot make the process keep a whole buffer per
/// small frame.
pub const COPY_BELOW: usize = 16 * 1024;

/// The largest message limit a [`Decoder`] takes (larger ones are lowered to it), so
/// that no size arithmetic can overflow.
pub const MAX_LIMIT: u64 = 1 << 40;

const FLAG_MORE: u8 = 0x01;
const FLAG_LONG: u8 = 0x02;
const FLAG_COMMAND: u8 = 0x04;

/// A way the stream broke the rules; the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The first bytes are not a ZMTP 3 greeting.
    #[error("not a ZMTP 3 greeting")]
    BadGreeting,
    /// A security mechanism other than NULL.
    #[error(
        "security mechanism `{0}` is not supported (only NULL; authentication is fastworker's own)"
    )]
    Mechanism(String),
    /// A message frame longer than the limit.
    #[error("a frame of {declared} bytes was declared; a message may have at most {limit} (--max-message-size)")]
    FrameTooLarge {
        /// Bytes declared.
        declared: u64,
        /// The limit.
        limit: u64,
    },
    /// A multipart message longer than the limit.
    #[error("a message of more than {limit} bytes was sent (--max-message-size)")]
    MessageTooLarge {
        /// The limit.
        limit: u64,
    },
    /// A command frame longer than [`MAX_COMMAND_BYTES`].
    #[error(
        "a command of {declared} bytes was declared; commands are at most {MAX_COMMAND_BYTES}"
    )]
    CommandTooLarge {
        /// Bytes declared.
        declared: u64,
    },
    /// The first frame is not a well-formed READY command.
    #[error("malformed READY command: {0}")]
    BadReady(&'static str),
    /// Reserved flag bits set, or a command marked as continued.
    #[error("frame flags {0:#04x} are not allowed")]
    BadFlags(u8),
    /// The peer's socket type does not talk to ours.
    #[error("a {peer} socket cannot talk to a {ours}")]
    SocketType {
        /// Ours.
        ours: &'static str,
        /// What the peer said it is.
        peer: String,
    },
}

/// Checks a greeting (exactly [`GREETING_LEN`] bytes).
pub fn check_greeting(greeting: &[u8]) -> Result<(), Violation> {
    if greeting.len() != GREETING_LEN || greeting[0] != 0xff || greeting[9] != 0x7f {
        return Err(Violation::BadGreeting);
    }
    if greeting[10] < 3 {
        return Err(Violation::BadGreeting);
    }
    let mechanism = &greeting[12..32];
    let name_len = mechanism.iter().position(|b| *b == 0).unwrap_or(20);
    if &mechanism[..name_len] != b"NULL" || mechanism[name_len..].iter().any(|b| *b != 0) {
        return Err(Violation::Mechanism(
            String::from_utf8_lossy(&mechanism[..name_len]).into_owned(),
        ));
    }
    Ok(())
}

/// Our greeting: ZMTP 3.0, the NULL mechanism, not as-server. Version 3.0 (not 3.1), so
/// no peer expects answers to heartbeat commands.
pub fn greeting() -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[11] = 0;
    g[12..16].copy_from_slice(b"NULL");
    g
}

/// A socket type fastworker speaks as: a server is a ROUTER, a connection a DEALER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketType {
    /// Routes replies to the peer that sent the request (a server).
    Router,
    /// Talks to one peer (a connection).
    Dealer,
}

impl SocketType {
    /// Its name in a READY command.
    pub fn name(self) -> &'static str {
        match self {
            SocketType::Router => "ROUTER",
            SocketType::Dealer => "DEALER",
        }
    }

    /// The peer socket types this one talks to (those libzmq pairs it with).
    fn takes(self, peer: &[u8]) -> bool {
        let peers: &[&[u8]] = match self {
            SocketType::Router => &[b"DEALER", b"REQ", b"ROUTER"],
            SocketType::Dealer => &[b"ROUTER", b"REP", b"DEALER"],
        };
        peers.iter().any(|p| peer.eq_ignore_ascii_case(p))
    }
}

/// Our READY command as a whole frame: the socket type, no identity (a server names its
/// peers itself).
pub fn ready_frame(socket_type: SocketType) -> Bytes {
    let name = socket_type.name().as_bytes();
    let mut body = BytesMut::with_capacity(32);
    body.put_u8(5);
    body.put_slice(b"READY");
    body.put_u8(11);
    body.put_slice(b"Socket-Type");
    body.put_u32(name.len() as u32);
    body.put_slice(name);
    let mut frame = BytesMut::with_capacity(body.len() + 2);
    frame.put_u8(FLAG_COMMAND);
    frame.put_u8(body.len() as u8);
    frame.put_slice(&body);
    frame.freeze()
}

/// Checks the body of a peer's first command: a READY whose `Socket-Type` talks to
/// `ours`. Other properties (an identity the peer chose, say) are read past: a server
/// names its peers itself.
pub fn check_ready(body: &[u8], ours: SocketType) -> Result<(), Violation> {
    let name_len = usize::from(*body.first().ok_or(Violation::BadReady("no name"))?);
    if body.get(1..1 + name_len) != Some(b"READY".as_slice()) {
        return Err(Violation::BadReady("the first command is not READY"));
    }
    let mut rest = &body[1 + name_len..];
    let mut socket_type = None;
    while !rest.is_empty() {
        let len = usize::from(rest[0]);
        let name = rest
            .get(1..1 + len)
            .ok_or(Violation::BadReady("truncated property name"))?;
        rest = &rest[1 + len..];
        let raw_len = rest
            .get(..4)
            .ok_or(Violation::BadReady("truncated property length"))?;
        let value_len =
            u32::from_be_bytes([raw_len[0], raw_len[1], raw_len[2], raw_len[3]]) as usize;
        let value = rest
            .get(4..)
            .and_then(|r| r.get(..value_len))
            .ok_or(Violation::BadReady("truncated property value"))?;
        rest = &rest[4 + value_len..];
        if name.eq_ignore_ascii_case(b"Socket-Type") {
            socket_type = Some(value);
        }
    }
    match socket_type {
        None => Err(Violation::BadReady("no Socket-Type")),
        Some(peer) if ours.takes(peer) => Ok(()),
        Some(peer) => Err(Violation::SocketType {
            ours: ours.name(),
            peer: String::from_utf8_lossy(peer).into_owned(),
        }),
    }
}

/// What a ZMTP stream carries after the greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unit {
    /// A message: its frames, in order.
    Message(Vec<Bytes>),
    /// A command's body (READY, or one this side ignores).
    Command(Bytes),
}

/// Cuts complete frames off the front of a read buffer and puts them together into
/// messages. Each frame's declared size is checked against the limits as soon as its
/// header is there, before its body is waited for: nothing is reserved for what a peer
/// only declares (the buffer grows with what arrives). After an error the connection
/// must be closed.
#[derive(Debug, Default)]
pub struct Decoder {
    max_message: u64,
    /// The frames of the message under way.
    frames: Vec<Bytes>,
    /// Its cost so far (bytes plus [`FRAME_OVERHEAD`] per frame).
    cost: u64,
}

impl Decoder {
    /// A decoder refusing messages over `max_message` bytes (at most [`MAX_LIMIT`]).
    pub fn new(max_message: u64) -> Self {
        Decoder {
            max_message: max_message.min(MAX_LIMIT),
            ..Decoder::default()
        }
    }

    /// Changes the message limit (for frames not begun yet).
    pub fn set_limit(&mut self, max_message: u64) {
        self.max_message = max_message.min(MAX_LIMIT);
    }

    /// The next complete message or command at the front of `buf` (taken out of it),
    /// `None` until one is there.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Unit>, Violation> {
        loop {
            let Some(&flags) = buf.first() else {
                return Ok(None);
            };
            if flags & !(FLAG_MORE | FLAG_LONG | FLAG_COMMAND) != 0 {
                return Err(Violation::BadFlags(flags));
            }
            let (size, header) = if flags & FLAG_LONG != 0 {
                let Some(raw) = buf.get(1..9) else {
                    return Ok(None);
                };
                let mut be = [0u8; 8];
                be.copy_from_slice(raw);
                (u64::from_be_bytes(be), 9)
            } else {
                let Some(&size) = buf.get(1) else {
                    return Ok(None);
                };
                (u64::from(size), 2)
            };
            let command = flags & FLAG_COMMAND != 0;
            let cost = if command {
                if flags & FLAG_MORE != 0 {
                    return Err(Violation::BadFlags(flags));
                }
                if size > MAX_COMMAND_BYTES {
                    return Err(Violation::CommandTooLarge { declared: size });
                }
                self.cost
            } else {
                if size > self.max_message {
                    return Err(Violation::FrameTooLarge {
                        declared: size,
                        limit: self.max_message,
                    });
                }
                let cost = self.cost.saturating_add(size + FRAME_OVERHEAD);
                if cost > self.max_message.saturating_add(FRAME_OVERHEAD) {
                    return Err(Violation::MessageTooLarge {
                        limit: self.max_message,
                    });
                }
                cost
            };
            // The size is within the limits: now wait for the body.
            let size = size as usize;
            if buf.len() < header + size {
                return Ok(None);
            }
            buf.advance(header);
            let body = if size < COPY_BELOW {
                let body = Bytes::copy_from_slice(&buf[..size]);
                buf.advance(size);
                body
            } else {
                buf.split_to(size).freeze()
            };
            if command {
                return Ok(Some(Unit::Command(body)));
            }
            self.frames.push(body);
            self.cost = cost;
            if flags & FLAG_MORE == 0 {
                self.cost = 0;
                return Ok(Some(Unit::Message(std::mem::take(&mut self.frames))));
            }
        }
    }
}

/// Appends `frames` to `out` as one ZMTP message (nothing for no frames).
pub fn encode_message(frames: &[Bytes], out: &mut BytesMut) {
    let last = frames.len().saturating_sub(1);
    for (i, frame) in frames.iter().enumerate() {
        let more = if i < last { FLAG_MORE } else { 0 };
        if frame.len() > 255 {
            out.reserve(9 + frame.len());
            out.put_u8(more | FLAG_LONG);
            out.put_u64(frame.len() as u64);
        } else {
            out.reserve(2 + frame.len());
            out.put_u8(more);
            out.put_u8(frame.len() as u8);
        }
        out.put_slice(frame);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn frame(body: &[u8], more: bool) -> Vec<u8> {
        let mut f = Vec::new();
        let flags = if more { FLAG_MORE } else { 0 };
        if body.len() > 255 {
            f.push(flags | FLAG_LONG);
            f.extend_from_slice(&(body.len() as u64).to_be_bytes());
        } else {
            f.push(flags);
            f.push(body.len() as u8);
        }
        f.extend_from_slice(body);
        f
    }

    fn ready_body(props: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut body = vec![5u8];
        body.extend_from_slice(b"READY");
        for (n, v) in props {
            body.push(n.len() as u8);
            body.extend_from_slice(n);
            body.extend_from_slice(&(v.len() as u32).to_be_bytes());
            body.extend_from_slice(v);
        }
        body
    }

    fn decode_all(decoder: &mut Decoder, bytes: &[u8]) -> Result<Vec<Unit>, Violation> {
        let mut buf = BytesMut::from(bytes);
        let mut units = Vec::new();
        while let Some(unit) = decoder.decode(&mut buf)? {
            units.push(unit);
        }
        Ok(units)
    }

    #[test]
    fn the_73_byte_bomb_is_refused_before_its_body() {
        let mut bomb = vec![FLAG_LONG];
        bomb.extend_from_slice(&(1u64 << 62).to_be_bytes());
        let err = decode_all(&mut Decoder::new(80 << 20), &bomb).unwrap_err();
        assert!(matches!(err, Violation::FrameTooLarge { declared, .. } if declared == 1 << 62));
    }

    #[test]
    fn a_limit_near_the_top_of_u64_cannot_overflow() {
        let mut huge = vec![FLAG_LONG];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        for limit in [u64::MAX, u64::MAX - 1, MAX_LIMIT] {
            assert!(matches!(
                decode_all(&mut Decoder::new(limit), &huge),
                Err(Violation::FrameTooLarge { .. })
            ));
        }
        let mut decoder = Decoder::new(1);
        decoder.set_limit(u64::MAX);
        assert!(decode_all(&mut decoder, &huge).is_err());
    }

    #[test]
    fn a_small_frame_keeps_no_hold_on_the_read_buffer_and_a_large_one_is_not_copied() {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        buf.extend_from_slice(&frame(b"tiny", false));
        let mut decoder = Decoder::new(1 << 20);
        let Some(Unit::Message(frames)) = decoder.decode(&mut buf).unwrap() else {
            panic!("a message");
        };
        // Nothing else refers to the buffer: its whole room can be used again.
        assert!(buf.try_reclaim(64 * 1024));
        drop(frames);
        let large = vec![5u8; COPY_BELOW];
        buf.extend_from_slice(&frame(&large, false));
        let start = buf.as_ptr() as usize;
        let Some(Unit::Message(frames)) = decoder.decode(&mut buf).unwrap() else {
            panic!("a message");
        };
        // Cut from the buffer in place: its bytes start 9 bytes (the header) in.
        assert_eq!(frames[0].as_ptr() as usize, start + 9);
        assert_eq!(frames[0], large);
    }

    #[test]
    fn a_good_stream_decodes_the_same_in_any_split() {
        let mut stream = frame(&ready_body(&[(b"Socket-Type", b"DEALER")]), false);
        stream[0] |= FLAG_COMMAND;
        stream.extend(frame(b"header", true));
        stream.extend(frame(&[7u8; 1000], false));
        stream.extend(frame(&[], false));
        let whole = decode_all(&mut Decoder::new(4096), &stream).unwrap();
        assert_eq!(whole.len(), 3);
        assert_eq!(
            whole[1],
            Unit::Message(vec![
                Bytes::from_static(b"header"),
                Bytes::from(vec![7u8; 1000])
            ])
        );
        assert_eq!(whole[2], Unit::Message(vec![Bytes::new()]));
        for split in 0..stream.len() {
            let mut decoder = Decoder::new(4096);
            let mut buf = BytesMut::from(&stream[..split]);
            let mut units = Vec::new();
            while let Some(unit) = decoder.decode(&mut buf).unwrap() {
                units.push(unit);
            }
            buf.extend_from_slice(&stream[split..]);
            while let Some(unit) = decoder.decode(&mut buf).unwrap() {
                units.push(unit);
            }
            assert_eq!(units, whole, "split at {split}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn what_we_encode_decodes_to_the_same_frames() {
        let frames = vec![
            Bytes::from_static(b"a"),
            Bytes::new(),
            Bytes::from(vec![9u8; 300]),
        ];
        let mut out = BytesMut::new();
        encode_message(&frames, &mut out);
        encode_message(&frames[..1], &mut out);
        let units = decode_all(&mut Decoder::new(1 << 20), &out).unwrap();
        assert_eq!(
            units,
            vec![
                Unit::Message(frames.clone()),
                Unit::Message(frames[..1].to_vec())
            ]
        );
    }

    #[test]
    fn message_limit_counts_every_frame_of_a_multipart_message() {
        // Each frame alone fits; together they do not.
        let mut stream = Vec::new();
        for _ in 0..10 {
            stream.extend(frame(&[1u8; 100], true));
        }
        stream.extend(frame(&[1u8; 100], false));
        let err = decode_all(&mut Decoder::new(500), &stream).unwrap_err();
        assert_eq!(err, Violation::MessageTooLarge { limit: 500 });
        // Empty frames cost too.
        let mut empties = Vec::new();
        for _ in 0..100 {
            empties.extend(frame(&[], true));
        }
        assert!(decode_all(&mut Decoder::new(1000), &empties).is_err());
        // The count starts again with each message.
        let mut fine = Vec::new();
        for _ in 0..10 {
            fine.extend(frame(&[1u8; 100], false));
        }
        assert_eq!(decode_all(&mut Decoder::new(500), &fine).unwrap().len(), 10);
    }

    #[test]
    fn greetings_that_are_not_zmtp_3_null_are_refused() {
        assert_eq!(check_greeting(&greeting()), Ok(()));
        let mut old = greeting();
        old[10] = 2;
        assert_eq!(check_greeting(&old), Err(Violation::BadGreeting));
        let mut curve = greeting();
        curve[12..17].copy_from_slice(b"CURVE");
        assert!(matches!(
            check_greeting(&curve),
            Err(Violation::Mechanism(m)) if m == "CURVE"
        ));
        assert_eq!(
            check_greeting(b"GET / HTTP/1.1"),
            Err(Violation::BadGreeting)
        );
    }

    #[test]
    fn ready_names_a_socket_type_that_talks_to_ours() {
        let dealer = ready_body(&[(b"Socket-Type", b"DEALER"), (b"Identity", b"me")]);
        assert_eq!(check_ready(&dealer, SocketType::Router), Ok(()));
        let req = ready_body(&[(b"Socket-Type", b"REQ")]);
        assert_eq!(check_ready(&req, SocketType::Router), Ok(()));
        assert!(matches!(
            check_ready(&req, SocketType::Dealer),
            Err(Violation::SocketType { .. })
        ));
        let pubsub = ready_body(&[(b"Socket-Type", b"PUB")]);
        assert!(check_ready(&pubsub, SocketType::Router).is_err());
        assert!(check_ready(&ready_body(&[]), SocketType::Router).is_err());
        // Ours is what the other side checks.
        let ours = ready_frame(SocketType::Router);
        assert_eq!(check_ready(&ours[2..], SocketType::Dealer), Ok(()));
        let mut truncated = ready_body(&[(b"Socket-Type", b"DEALER")]);
        truncated.pop();
        assert!(check_ready(&truncated, SocketType::Router).is_err());
    }

    #[test]
    fn oversized_commands_and_continued_commands_are_refused() {
        let mut head = vec![FLAG_COMMAND | FLAG_LONG];
        head.extend_from_slice(&(MAX_COMMAND_BYTES + 1).to_be_bytes());
        assert!(matches!(
            decode_all(&mut Decoder::new(1 << 30), &head),
            Err(Violation::CommandTooLarge { .. })
        ));
        assert_eq!(
            decode_all(&mut Decoder::new(1 << 30), &[FLAG_COMMAND | FLAG_MORE, 0]),
            Err(Violation::BadFlags(FLAG_COMMAND | FLAG_MORE))
        );
        assert_eq!(
            decode_all(&mut Decoder::new(1 << 30), &[0x08, 0]),
            Err(Violation::BadFlags(0x08))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any bytes, cut anywhere: never a panic, never a message accepted whose
        /// cost breaks the limit, and the verdict of an independent reading.
        #[test]
        fn arbitrary_bytes_never_panic_or_pass_an_oversized_frame(
            stream in proptest::collection::vec(any::<u8>(), 0..512),
            limit in 0u64..300,
            cut in 0usize..600,
        ) {
            let cut = cut.min(stream.len());
            let mut decoder = Decoder::new(limit);
            let mut buf = BytesMut::from(&stream[..cut]);
            let mut verdict = Ok(());
            for rest in [&stream[cut..], &[][..]] {
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Some(Unit::Message(frames))) => {
                            let cost: u64 =
                                frames.iter().map(|f| f.len() as u64 + FRAME_OVERHEAD).sum();
                            prop_assert!(cost <= limit + FRAME_OVERHEAD);
                        }
                        Ok(Some(Unit::Command(body))) => {
                            prop_assert!(body.len() as u64 <= MAX_COMMAND_BYTES)
                        }
                        Ok(None) => break,
                        Err(e) => {
                            verdict = Err(e);
                            break;
                        }
                    }
                }
                if verdict.is_err() {
                    break;
                }
                buf.extend_from_slice(rest);
            }
            // Recompute the frames independently and check the verdict agrees.
            let mut rest = &stream[..];
            let mut expected_ok = true;
            let mut cost = 0u64;
            while !rest.is_empty() {
                let flags = rest[0];
                if flags & 0xf8 != 0 { expected_ok = false; break; }
                let (size, hdr) = if flags & FLAG_LONG != 0 {
                    if rest.len() < 9 { break; }
                    (u64::from_be_bytes(rest[1..9].try_into().unwrap()), 9)
                } else {
                    if rest.len() < 2 { break; }
                    (u64::from(rest[1]), 2)
                };
                let command = flags & FLAG_COMMAND != 0;
                if command && (flags & FLAG_MORE != 0 || size > MAX_COMMAND_BYTES) {
                    expected_ok = false;
                    break;
                }
                if !command {
                    if size > limit { expected_ok = false; break; }
                    cost += size + FRAME_OVERHEAD;
                    if cost > limit + FRAME_OVERHEAD { expected_ok = false; break; }
                    if flags & FLAG_MORE == 0 { cost = 0; }
                }
                let end = hdr as u64 + size;
                if (rest.len() as u64) < end { break; }
                rest = &rest[end as usize..];
            }
            prop_assert_eq!(verdict.is_ok(), expected_ok, "{:?}", verdict);
        }

        #[test]
        fn check_ready_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = check_ready(&body, SocketType::Router);
        }
    }
}
