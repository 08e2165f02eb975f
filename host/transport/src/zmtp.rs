//! Just enough of ZMTP 3 (the ZeroMQ wire protocol, RFC 23) to refuse what could hurt
//! before the `zeromq` crate's decoder sees it: that decoder reserves buffer space for
//! whatever length a peer declares, so one frame header declaring 2^62 bytes aborts the
//! process. No I/O here: [`Inspector`] reads a byte stream as it passes and says when
//! it breaks a limit; [`rewrite_ready`] replaces a peer's chosen routing identity with
//! one we choose.
//!
//! Wire format (RFC 23): a 64-byte greeting (`FF`, 8 padding bytes, `7F`, major and
//! minor version, a 20-byte mechanism name, an as-server byte, 31 filler bytes), then
//! frames: one flags byte (`0x01` more, `0x02` long, `0x04` command), a size (one byte,
//! or eight bytes big-endian when long), then the body.

use bytes::{BufMut, Bytes, BytesMut};

/// Length of the ZMTP 3 greeting.
pub const GREETING_LEN: usize = 64;

/// The largest command frame accepted (READY and friends are a few dozen bytes).
pub const MAX_COMMAND_BYTES: u64 = 64 * 1024;

/// What a message frame costs against the message limit besides its bytes: the
/// receiver keeps a handle per frame, so a million empty frames are not free.
pub const FRAME_OVERHEAD: u64 = 64;

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
    /// Reserved flag bits set.
    #[error("frame flags {0:#04x} with reserved bits set")]
    BadFlags(u8),
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

#[derive(Debug, Clone, Copy)]
enum State {
    /// Inside the greeting; this many bytes of it seen.
    Greeting(usize),
    /// Waiting for a frame's flags byte.
    Flags,
    /// Waiting for the one-byte size.
    ShortSize { flags: u8 },
    /// Reading the eight-byte size; `got` bytes of it so far in `acc`.
    LongSize { flags: u8, got: u8, acc: u64 },
    /// Inside a frame body with this many bytes to go; `ends_message` for the last
    /// frame of a message (commands stand outside messages).
    Body { remaining: u64, ends_message: bool },
}

/// Reads a ZMTP byte stream as it passes, without buffering it, and reports the first
/// limit it breaks. Bytes handed to [`Inspector::scan`] before an error are fine to
/// forward; after an error the connection must be closed.
#[derive(Debug, Clone)]
pub struct Inspector {
    max_message: u64,
    state: State,
    greeting: [u8; GREETING_LEN],
    /// Cost of the multipart message under way.
    message_cost: u64,
}

impl Inspector {
    /// An inspector for a stream that starts with the greeting.
    pub fn new(max_message: u64) -> Self {
        Inspector {
            max_message,
            state: State::Greeting(0),
            greeting: [0; GREETING_LEN],
            message_cost: 0,
        }
    }

    /// An inspector for a stream whose greeting and READY were already checked.
    pub fn after_handshake(max_message: u64) -> Self {
        Inspector {
            state: State::Flags,
            ..Inspector::new(max_message)
        }
    }

    /// Changes the message limit (for frames not yet begun).
    pub fn set_limit(&mut self, max_message: u64) {
        self.max_message = max_message;
    }

    /// Reads `data`, the next bytes of the stream.
    pub fn scan(&mut self, mut data: &[u8]) -> Result<(), Violation> {
        while !data.is_empty() {
            match self.state {
                State::Greeting(seen) => {
                    let take = (GREETING_LEN - seen).min(data.len());
                    self.greeting[seen..seen + take].copy_from_slice(&data[..take]);
                    data = &data[take..];
                    let seen = seen + take;
                    // The signature's first byte tells a non-ZMTP peer at once.
                    if self.greeting[0] != 0xff {
                        return Err(Violation::BadGreeting);
                    }
                    if seen == GREETING_LEN {
                        check_greeting(&self.greeting)?;
                        self.state = State::Flags;
                    } else {
                        self.state = State::Greeting(seen);
                    }
                }
                State::Flags => {
                    let flags = data[0];
                    data = &data[1..];
                    if flags & !(FLAG_MORE | FLAG_LONG | FLAG_COMMAND) != 0 {
                        return Err(Violation::BadFlags(flags));
                    }
                    self.state = if flags & FLAG_LONG != 0 {
                        State::LongSize {
                            flags,
                            got: 0,
                            acc: 0,
                        }
                    } else {
                        State::ShortSize { flags }
                    };
                }
                State::ShortSize { flags } => {
                    let size = u64::from(data[0]);
                    data = &data[1..];
                    self.begin_body(flags, size)?;
                }
                State::LongSize { flags, got, acc } => {
                    let acc = (acc << 8) | u64::from(data[0]);
                    data = &data[1..];
                    if got + 1 == 8 {
                        self.begin_body(flags, acc)?;
                    } else {
                        self.state = State::LongSize {
                            flags,
                            got: got + 1,
                            acc,
                        };
                    }
                }
                State::Body {
                    remaining,
                    ends_message,
                } => {
                    let take = remaining.min(data.len() as u64);
                    data = &data[take as usize..];
                    let remaining = remaining - take;
                    self.state = if remaining == 0 {
                        self.end_frame(ends_message);
                        State::Flags
                    } else {
                        State::Body {
                            remaining,
                            ends_message,
                        }
                    };
                }
            }
        }
        Ok(())
    }

    fn begin_body(&mut self, flags: u8, size: u64) -> Result<(), Violation> {
        let command = flags & FLAG_COMMAND != 0;
        let more = flags & FLAG_MORE != 0;
        if command {
            if size > MAX_COMMAND_BYTES {
                return Err(Violation::CommandTooLarge { declared: size });
            }
        } else {
            if size > self.max_message {
                return Err(Violation::FrameTooLarge {
                    declared: size,
                    limit: self.max_message,
                });
            }
            self.message_cost = self
                .message_cost
                .saturating_add(size.saturating_add(FRAME_OVERHEAD));
            if self.message_cost > self.max_message.saturating_add(FRAME_OVERHEAD) {
                return Err(Violation::MessageTooLarge {
                    limit: self.max_message,
                });
            }
        }
        let ends_message = !command && !more;
        if size == 0 {
            self.end_frame(ends_message);
            self.state = State::Flags;
        } else {
            self.state = State::Body {
                remaining: size,
                ends_message,
            };
        }
        Ok(())
    }

    fn end_frame(&mut self, ends_message: bool) {
        if ends_message {
            self.message_cost = 0;
        }
    }
}

/// How many bytes the first frame (a command) needs in all, given its first bytes:
/// `None` while fewer than its size field are there.
pub fn command_frame_len(head: &[u8]) -> Result<Option<usize>, Violation> {
    let Some(&flags) = head.first() else {
        return Ok(None);
    };
    if flags & FLAG_COMMAND == 0 || flags & FLAG_MORE != 0 {
        return Err(Violation::BadReady("the first frame is not a command"));
    }
    if flags & !(FLAG_LONG | FLAG_COMMAND) != 0 {
        return Err(Violation::BadFlags(flags));
    }
    let (size, header) = if flags & FLAG_LONG != 0 {
        if head.len() < 9 {
            return Ok(None);
        }
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&head[1..9]);
        (u64::from_be_bytes(raw), 9)
    } else {
        if head.len() < 2 {
            return Ok(None);
        }
        (u64::from(head[1]), 2)
    };
    if size > MAX_COMMAND_BYTES {
        return Err(Violation::CommandTooLarge { declared: size });
    }
    Ok(Some(header + size as usize))
}

/// Takes a complete READY command frame (flags, size, body) and returns it with its
/// `Identity` property replaced by `identity`, so the peer's routing identity is ours
/// to choose (a peer can then never take over another peer's identity).
pub fn rewrite_ready(frame: &[u8], identity: &[u8]) -> Result<Bytes, Violation> {
    let header = match frame.first() {
        Some(flags) if flags & FLAG_LONG != 0 => 9,
        Some(_) => 2,
        None => return Err(Violation::BadReady("empty frame")),
    };
    let mut body = frame
        .get(header..)
        .ok_or(Violation::BadReady("truncated"))?;
    let name_len = usize::from(*body.first().ok_or(Violation::BadReady("no name"))?);
    if body.get(1..1 + name_len) != Some(b"READY".as_slice()) {
        return Err(Violation::BadReady("the first command is not READY"));
    }
    body = &body[1 + name_len..];
    let mut out = BytesMut::with_capacity(frame.len() + identity.len() + 16);
    out.put_u8(5);
    out.put_slice(b"READY");
    let mut socket_type = false;
    while !body.is_empty() {
        let len = usize::from(body[0]);
        let name = body
            .get(1..1 + len)
            .ok_or(Violation::BadReady("truncated property name"))?;
        body = &body[1 + len..];
        let raw_len = body
            .get(..4)
            .ok_or(Violation::BadReady("truncated property length"))?;
        let value_len = u32::from_be_bytes([raw_len[0], raw_len[1], raw_len[2], raw_len[3]]);
        let value = body
            .get(4..4 + value_len as usize)
            .ok_or(Violation::BadReady("truncated property value"))?;
        body = &body[4 + value_len as usize..];
        if name.eq_ignore_ascii_case(b"Identity") {
            continue;
        }
        if std::str::from_utf8(name).is_err() {
            return Err(Violation::BadReady("property name is not UTF-8"));
        }
        socket_type |= name.eq_ignore_ascii_case(b"Socket-Type");
        out.put_u8(len as u8);
        out.put_slice(name);
        out.put_u32(value_len);
        out.put_slice(value);
    }
    if !socket_type {
        return Err(Violation::BadReady("no Socket-Type"));
    }
    out.put_u8(8);
    out.put_slice(b"Identity");
    out.put_u32(identity.len() as u32);
    out.put_slice(identity);
    let mut framed = BytesMut::with_capacity(out.len() + 9);
    if out.len() > 255 {
        framed.put_u8(FLAG_COMMAND | FLAG_LONG);
        framed.put_u64(out.len() as u64);
    } else {
        framed.put_u8(FLAG_COMMAND);
        framed.put_u8(out.len() as u8);
    }
    framed.put_slice(&out);
    Ok(framed.freeze())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn greeting() -> Vec<u8> {
        let mut g = vec![0u8; 64];
        g[0] = 0xff;
        g[9] = 0x7f;
        g[10] = 3;
        g[12..16].copy_from_slice(b"NULL");
        g
    }

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

    fn ready(props: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut body = vec![5u8];
        body.extend_from_slice(b"READY");
        for (n, v) in props {
            body.push(n.len() as u8);
            body.extend_from_slice(n);
            body.extend_from_slice(&(v.len() as u32).to_be_bytes());
            body.extend_from_slice(v);
        }
        let mut f = vec![FLAG_COMMAND, body.len() as u8];
        f.extend(body);
        f
    }

    #[test]
    fn the_73_byte_bomb_is_refused_before_its_body() {
        let mut bomb = greeting();
        bomb.push(FLAG_LONG);
        bomb.extend_from_slice(&(1u64 << 62).to_be_bytes());
        let err = Inspector::new(80 << 20).scan(&bomb).unwrap_err();
        assert!(matches!(err, Violation::FrameTooLarge { declared, .. } if declared == 1 << 62));
    }

    #[test]
    fn a_good_stream_passes_in_any_split() {
        let mut stream = greeting();
        stream.extend(ready(&[(b"Socket-Type", b"DEALER")]));
        stream.extend(frame(b"header", true));
        stream.extend(frame(&vec![7u8; 1000], false));
        stream.extend(frame(&[], false));
        for split in 0..stream.len() {
            let mut inspector = Inspector::new(4096);
            inspector.scan(&stream[..split]).unwrap();
            inspector.scan(&stream[split..]).unwrap();
        }
    }

    #[test]
    fn message_limit_counts_every_frame_of_a_multipart_message() {
        let mut stream = greeting();
        for _ in 0..10 {
            stream.extend(frame(&[1u8; 200], true));
        }
        stream.extend(frame(&[1u8; 200], false));
        assert_eq!(
            Inspector::new(1000).scan(&stream),
            Err(Violation::MessageTooLarge { limit: 1000 })
        );
        // The same frames as separate messages are fine.
        let mut stream = greeting();
        for _ in 0..11 {
            stream.extend(frame(&[1u8; 200], false));
        }
        Inspector::new(1000).scan(&stream).unwrap();
    }

    #[test]
    fn greetings_that_are_not_zmtp_3_null_are_refused() {
        let mut http = b"GET / HTTP/1.1\r\n".to_vec();
        http.resize(64, b' ');
        assert_eq!(
            Inspector::new(1).scan(&http[..1]),
            Err(Violation::BadGreeting)
        );
        let mut curve = greeting();
        curve[12..17].copy_from_slice(b"CURVE");
        assert_eq!(
            Inspector::new(1).scan(&curve),
            Err(Violation::Mechanism("CURVE".into()))
        );
        let mut v2 = greeting();
        v2[10] = 2;
        assert_eq!(check_greeting(&v2), Err(Violation::BadGreeting));
    }

    #[test]
    fn ready_gets_our_identity_and_keeps_the_rest() {
        let original = ready(&[(b"Socket-Type", b"DEALER"), (b"Identity", b"victim")]);
        let rewritten = rewrite_ready(&original, b"ours-0001").unwrap();
        assert_eq!(
            command_frame_len(&rewritten).unwrap(),
            Some(rewritten.len())
        );
        let text = String::from_utf8_lossy(&rewritten);
        assert!(text.contains("DEALER") && text.contains("ours-0001"));
        assert!(!text.contains("victim"));
        assert!(rewrite_ready(&ready(&[]), b"x").is_err());
        let mut not_ready = ready(&[(b"Socket-Type", b"DEALER")]);
        not_ready[3] = b'X';
        assert!(rewrite_ready(&not_ready, b"x").is_err());
    }

    #[test]
    fn oversized_commands_are_refused() {
        let mut head = vec![FLAG_COMMAND | FLAG_LONG];
        head.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert!(matches!(
            command_frame_len(&head),
            Err(Violation::CommandTooLarge { .. })
        ));
        let mut stream = greeting();
        stream.extend(head);
        assert!(matches!(
            Inspector::new(1 << 30).scan(&stream),
            Err(Violation::CommandTooLarge { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any bytes after a greeting: never a panic, and never a frame accepted whose
        /// declared size breaks the limit.
        #[test]
        fn arbitrary_bytes_never_panic_or_pass_an_oversized_frame(
            tail in proptest::collection::vec(any::<u8>(), 0..512),
            limit in 0u64..300,
            cut in 0usize..600,
        ) {
            let mut stream = greeting();
            stream.extend(&tail);
            let cut = cut.min(stream.len());
            let mut inspector = Inspector::new(limit);
            let result = inspector
                .scan(&stream[..cut])
                .and_then(|()| inspector.scan(&stream[cut..]));
            // Recompute the frames independently and check the verdict agrees.
            let mut rest = &tail[..];
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
                if command && size > MAX_COMMAND_BYTES { expected_ok = false; break; }
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
            prop_assert_eq!(result.is_ok(), expected_ok, "{:?}", result);
        }

        #[test]
        fn rewrite_ready_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut frame = vec![FLAG_COMMAND, body.len().min(255) as u8];
            frame.extend(&body[..body.len().min(255)]);
            let _ = rewrite_ready(&frame, b"id");
            let _ = command_frame_len(&frame);
        }
    }
}
