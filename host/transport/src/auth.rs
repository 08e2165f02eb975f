//! The cluster key: who may talk to a fastworker process, and proof that nothing was
//! injected or replayed. No I/O here; docs/PROTOCOL.md ("Authentication") describes
//! the same bytes for people writing a client in another language.
//!
//! Handshake, on a new connection, before any other message (each a single frame,
//! `F` `K` [`AUTH_VERSION`] kind body):
//! 1. client → server `ClientHello`: a fresh 32-byte client nonce `cn`;
//! 2. server → client `Challenge`: a fresh 32-byte server nonce `sn`;
//! 3. client → server `ClientProof`: `HMAC-SHA256(K, "fastworker/1 client proof" || cn || sn)`;
//! 4. server → client `Accept`: `HMAC-SHA256(K, "fastworker/1 server proof" || cn || sn)`,
//!    or `Refuse` with a reason.
//!
//! Both sides check the other's proof in constant time; the key never crosses the
//! wire. Then both derive two session keys with HKDF-SHA256 (RFC 5869; salt `cn || sn`,
//! input key `K`, info "fastworker/1 client to server" or "... server to client",
//! 32 bytes each), and every later message gets one more frame, its seal: a sequence
//! number (u64 little-endian, strictly increasing per direction) and
//! `HMAC-SHA256(session key, seq || frame count (u32 LE) || for each frame: its length
//! (u64 LE) || its bytes)`.

use std::path::Path;

use bytes::{BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes in a key, a nonce, a proof and a tag.
pub const KEY_LEN: usize = 32;

/// The version byte of handshake frames.
pub const AUTH_VERSION: u8 = 1;

/// Bytes in a seal frame: sequence number and tag.
pub const SEAL_LEN: usize = 8 + KEY_LEN;

const CLIENT_PROOF: &[u8] = b"fastworker/1 client proof";
const SERVER_PROOF: &[u8] = b"fastworker/1 server proof";
const CLIENT_TO_SERVER: &[u8] = b"fastworker/1 client to server";
const SERVER_TO_CLIENT: &[u8] = b"fastworker/1 server to client";

/// Why a key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read the cluster key file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The text is not one or two keys of 64 hex digits.
    #[error("{0}")]
    Format(String),
}

/// The cluster key: one, or two during a rotation (the first is the one this process
/// proves with; either is accepted from others).
#[derive(Clone)]
pub struct ClusterKey {
    keys: Vec<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey({} key(s), not shown)", self.keys.len())
    }
}

impl ClusterKey {
    /// Reads keys from text: 64 hex digits each, one per line or separated by commas;
    /// blank lines and `#` comments are ignored. One or two keys.
    pub fn parse(text: &str) -> Result<ClusterKey, KeyError> {
        let mut keys = Vec::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            for word in line.split(',').map(str::trim).filter(|w| !w.is_empty()) {
                let mut key = [0u8; KEY_LEN];
                hex::decode_to_slice(word, &mut key).map_err(|_| {
                    KeyError::Format(format!(
                        "a cluster key is 64 hex digits (32 bytes); found {} characters that are not one (make one with `fastworker keygen FILE`)",
                        word.len()
                    ))
                })?;
                keys.push(key);
            }
        }
        match keys.len() {
            0 => Err(KeyError::Format(
                "no cluster key found (make one with `fastworker keygen FILE`)".into(),
            )),
            1 | 2 => Ok(ClusterKey { keys }),
            n => Err(KeyError::Format(format!(
                "{n} cluster keys given; at most two (the current one and, during a rotation, the next)"
            ))),
        }
    }

    /// Reads keys from a file (see [`ClusterKey::parse`]); warns when others may read it.
    pub fn load(path: &Path) -> Result<ClusterKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        "the cluster key file {} can be read by other users (chmod 600 it)",
                        path.display()
                    );
                }
            }
        }
        ClusterKey::parse(&text).map_err(|e| match e {
            KeyError::Format(reason) => KeyError::Format(format!("{}: {reason}", path.display())),
            other => other,
        })
    }

    /// Whether `token` (64 hex digits, as in a key file) is one of these keys: how
    /// the control plane's HTTP API checks a bearer token when the cluster has a key.
    /// Compared in constant time.
    pub fn accepts_hex(&self, token: &str) -> bool {
        let mut candidate = [0u8; KEY_LEN];
        if hex::decode_to_slice(token.trim(), &mut candidate).is_err() {
            return false;
        }
        self.keys.iter().fold(false, |found, key| {
            let diff = key
                .iter()
                .zip(candidate.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            found | (diff == 0)
        })
    }

    /// A new random key, as the text of a key file.
    pub fn generate() -> String {
        format!(
            "# fastworker cluster key: give this file to every process of the cluster (--auth-key-file)\n{}\n",
            ClusterKey::generate_hex()
        )
    }

    /// A new random key as 64 hex digits (the form `FASTWORKER_AUTH_KEY` takes).
    pub fn generate_hex() -> String {
        hex::encode(rand::random::<[u8; KEY_LEN]>())
    }

    fn primary(&self) -> &[u8; KEY_LEN] {
        &self.keys[0]
    }
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: this never fails.
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length")
}

fn proof(key: &[u8; KEY_LEN], label: &[u8], cn: &[u8; KEY_LEN], sn: &[u8; KEY_LEN]) -> HmacSha256 {
    let mut m = mac(key);
    m.update(label);
    m.update(cn);
    m.update(sn);
    m
}

fn fixed(m: HmacSha256) -> [u8; KEY_LEN] {
    m.finalize().into_bytes().into()
}

/// A handshake frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// The client's nonce.
    ClientHello([u8; KEY_LEN]),
    /// The server's nonce.
    Challenge([u8; KEY_LEN]),
    /// The client's proof.
    ClientProof([u8; KEY_LEN]),
    /// The server's proof: the connection is open.
    Accept([u8; KEY_LEN]),
    /// The server refuses, saying why.
    Refuse(String),
}

impl Handshake {
    /// Its frame.
    pub fn encode(&self) -> Bytes {
        let (kind, body): (u8, &[u8]) = match self {
            Handshake::ClientHello(b) => (1, b),
            Handshake::Challenge(b) => (2, b),
            Handshake::ClientProof(b) => (3, b),
            Handshake::Accept(b) => (4, b),
            Handshake::Refuse(reason) => (5, reason.as_bytes()),
        };
        let mut out = BytesMut::with_capacity(4 + body.len());
        out.put_slice(b"FK");
        out.put_u8(AUTH_VERSION);
        out.put_u8(kind);
        out.put_slice(body);
        out.freeze()
    }

    /// Reads a message that is one handshake frame; `None` for anything else.
    pub fn decode(frames: &[Bytes]) -> Option<Handshake> {
        let [frame] = frames else {
            return None;
        };
        if frame.len() < 4 || &frame[..3] != b"FK\x01" {
            return None;
        }
        let body = &frame[4..];
        let fixed = || <[u8; KEY_LEN]>::try_from(body).ok();
        match frame[3] {
            1 => fixed().map(Handshake::ClientHello),
            2 => fixed().map(Handshake::Challenge),
            3 => fixed().map(Handshake::ClientProof),
            4 => fixed().map(Handshake::Accept),
            5 if body.len() <= 4096 => Some(Handshake::Refuse(fastworker_protocol::for_people(
                &String::from_utf8_lossy(body),
                1024,
            ))),
            _ => None,
        }
    }
}

/// The client's side of a handshake.
pub struct ClientHandshake {
    key: ClusterKey,
    cn: [u8; KEY_LEN],
}

impl ClientHandshake {
    /// Starts one: the `ClientHello` frame to send.
    pub fn start(key: &ClusterKey) -> (ClientHandshake, Bytes) {
        let cn: [u8; KEY_LEN] = rand::random();
        let hello = Handshake::ClientHello(cn).encode();
        (
            ClientHandshake {
                key: key.clone(),
                cn,
            },
            hello,
        )
    }

    /// The server's nonce arrived: the proof to send.
    pub fn prove(&self, sn: &[u8; KEY_LEN]) -> Bytes {
        Handshake::ClientProof(fixed(proof(self.key.primary(), CLIENT_PROOF, &self.cn, sn)))
            .encode()
    }

    /// The server's proof arrived: the session, if it knows one of our keys.
    pub fn finish(&self, sn: &[u8; KEY_LEN], server_proof: &[u8; KEY_LEN]) -> Option<Session> {
        self.key.keys.iter().find_map(|key| {
            proof(key, SERVER_PROOF, &self.cn, sn)
                .verify_slice(server_proof)
                .ok()
                .map(|()| Session::derive(key, &self.cn, sn, Side::Client))
        })
    }
}

/// The server's side of a handshake, once it sent its challenge.
pub struct ServerHandshake {
    cn: [u8; KEY_LEN],
    sn: [u8; KEY_LEN],
}

impl ServerHandshake {
    /// Answers a `ClientHello`: the `Challenge` frame to send.
    pub fn challenge(cn: [u8; KEY_LEN]) -> (ServerHandshake, Bytes) {
        let sn: [u8; KEY_LEN] = rand::random();
        (
            ServerHandshake { cn, sn },
            Handshake::Challenge(sn).encode(),
        )
    }

    /// Checks the client's proof against every key: the `Accept` frame and the session,
    /// or `None` when the client does not know any of them.
    pub fn verify(
        &self,
        key: &ClusterKey,
        client_proof: &[u8; KEY_LEN],
    ) -> Option<(Bytes, Session)> {
        key.keys.iter().find_map(|k| {
            proof(k, CLIENT_PROOF, &self.cn, &self.sn)
                .verify_slice(client_proof)
                .ok()
                .map(|()| {
                    let accept =
                        Handshake::Accept(fixed(proof(k, SERVER_PROOF, &self.cn, &self.sn)))
                            .encode();
                    (accept, Session::derive(k, &self.cn, &self.sn, Side::Server))
                })
        })
    }
}

#[derive(Clone, Copy)]
enum Side {
    Client,
    Server,
}

/// Both directions of an open connection.
pub struct Session {
    /// Seals what this side sends.
    pub sealer: Sealer,
    /// Opens what this side receives.
    pub opener: Opener,
}

impl Session {
    fn derive(key: &[u8; KEY_LEN], cn: &[u8; KEY_LEN], sn: &[u8; KEY_LEN], side: Side) -> Session {
        let mut salt = [0u8; 2 * KEY_LEN];
        salt[..KEY_LEN].copy_from_slice(cn);
        salt[KEY_LEN..].copy_from_slice(sn);
        let hk = hkdf::Hkdf::<Sha256>::new(Some(&salt), key);
        let expand = |info: &[u8]| {
            let mut out = [0u8; KEY_LEN];
            // 32 bytes is far below HKDF-SHA256's limit of 8160: this never fails.
            hk.expand(info, &mut out)
                .expect("32 bytes is a valid HKDF-SHA256 output length");
            out
        };
        let c2s = expand(CLIENT_TO_SERVER);
        let s2c = expand(SERVER_TO_CLIENT);
        let (send, recv) = match side {
            Side::Client => (c2s, s2c),
            Side::Server => (s2c, c2s),
        };
        Session {
            sealer: Sealer {
                mac: mac(&send),
                next_seq: 1,
            },
            opener: Opener {
                mac: mac(&recv),
                last_seq: 0,
            },
        }
    }
}

fn tag(base: &HmacSha256, seq: u64, frames: &[Bytes]) -> HmacSha256 {
    let mut m = base.clone();
    m.update(&seq.to_le_bytes());
    m.update(&(frames.len() as u32).to_le_bytes());
    for frame in frames {
        m.update(&(frame.len() as u64).to_le_bytes());
        m.update(frame);
    }
    m
}

/// Seals outgoing messages.
pub struct Sealer {
    mac: HmacSha256,
    next_seq: u64,
}

impl Sealer {
    /// Appends the seal frame to `frames`.
    pub fn seal(&mut self, frames: &mut Vec<Bytes>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let t = fixed(tag(&self.mac, seq, frames));
        let mut seal = BytesMut::with_capacity(SEAL_LEN);
        seal.put_u64_le(seq);
        seal.put_slice(&t);
        frames.push(seal.freeze());
    }
}

/// Why a received message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// No seal frame.
    #[error("a message without a valid seal")]
    Missing,
    /// The tag does not match.
    #[error("a message whose seal does not match (tampered with, or not from the key holder)")]
    BadTag,
    /// A sequence number seen before (or older).
    #[error("a replayed message (sequence {seq}, last {last})")]
    Replay {
        /// Its number.
        seq: u64,
        /// The last accepted.
        last: u64,
    },
}

/// Checks incoming messages.
pub struct Opener {
    mac: HmacSha256,
    last_seq: u64,
}

impl Opener {
    /// Checks and removes the seal frame of `frames`.
    pub fn open(&mut self, frames: &mut Vec<Bytes>) -> Result<(), SealError> {
        let seal = match frames.last() {
            Some(s) if s.len() == SEAL_LEN && frames.len() >= 2 => frames.pop().unwrap_or_default(),
            _ => return Err(SealError::Missing),
        };
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&seal[..8]);
        let seq = u64::from_le_bytes(raw);
        tag(&self.mac, seq, frames)
            .verify_slice(&seal[8..])
            .map_err(|_| SealError::BadTag)?;
        if seq <= self.last_seq {
            return Err(SealError::Replay {
                seq,
                last: self.last_seq,
            });
        }
        self.last_seq = seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> ClusterKey {
        ClusterKey::parse(text).unwrap()
    }

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn handshake(client: &ClusterKey, server: &ClusterKey) -> Option<(Session, Session)> {
        let (c, hello) = ClientHandshake::start(client);
        let Some(Handshake::ClientHello(cn)) = Handshake::decode(&[hello]) else {
            panic!("hello decodes");
        };
        let (s, challenge) = ServerHandshake::challenge(cn);
        let Some(Handshake::Challenge(sn)) = Handshake::decode(&[challenge]) else {
            panic!("challenge decodes");
        };
        let Some(Handshake::ClientProof(p)) = Handshake::decode(&[c.prove(&sn)]) else {
            panic!("proof decodes");
        };
        let (accept, server_session) = s.verify(server, &p)?;
        let Some(Handshake::Accept(sp)) = Handshake::decode(&[accept]) else {
            panic!("accept decodes");
        };
        let client_session = c.finish(&sn, &sp)?;
        Some((client_session, server_session))
    }

    #[test]
    fn same_key_opens_a_session_that_seals_both_ways() {
        let (mut c, mut s) = handshake(&key(K1), &key(K1)).expect("same key");
        let mut msg = vec![
            Bytes::from_static(b"FW\x01hello"),
            Bytes::from_static(b"[5,3]"),
        ];
        let original = msg.clone();
        c.sealer.seal(&mut msg);
        assert_eq!(msg.len(), 3);
        s.opener.open(&mut msg).unwrap();
        assert_eq!(msg, original);
        let mut back = vec![Bytes::from_static(b"8")];
        s.sealer.seal(&mut back);
        c.opener.open(&mut back).unwrap();
    }

    #[test]
    fn a_wrong_key_is_refused_and_rotation_accepts_either() {
        assert!(handshake(&key(K2), &key(K1)).is_none());
        let both = key(&format!("{K1}\n{K2}\n"));
        assert!(handshake(&key(K2), &both).is_some());
        assert!(handshake(&key(K1), &both).is_some());
        // A client in rotation proves with its first key.
        assert!(handshake(&key(&format!("{K2},{K1}")), &key(K2)).is_some());
    }

    #[test]
    fn tampering_replay_and_reflection_are_caught() {
        let (mut c, mut s) = handshake(&key(K1), &key(K1)).unwrap();
        let mut msg = vec![Bytes::from_static(b"submit")];
        c.sealer.seal(&mut msg);
        let replay = msg.clone();
        let mut tampered = msg.clone();
        tampered[0] = Bytes::from_static(b"cancel");
        assert_eq!(s.opener.open(&mut tampered), Err(SealError::BadTag));
        s.opener.open(&mut msg).unwrap();
        let mut again = replay.clone();
        assert!(matches!(
            s.opener.open(&mut again),
            Err(SealError::Replay { .. })
        ));
        // A message the client sealed does not open as one from the server.
        let mut reflected = replay;
        assert_eq!(c.opener.open(&mut reflected), Err(SealError::BadTag));
        // Frames moved between frame boundaries do not verify.
        let mut two = vec![Bytes::from_static(b"ab"), Bytes::from_static(b"c")];
        c.sealer.seal(&mut two);
        let seal = two.pop().unwrap();
        let mut merged = vec![Bytes::from_static(b"a"), Bytes::from_static(b"bc"), seal];
        assert_eq!(s.opener.open(&mut merged), Err(SealError::BadTag));
        assert_eq!(
            s.opener.open(&mut vec![Bytes::new()]),
            Err(SealError::Missing)
        );
    }

    #[test]
    fn key_text_forms() {
        assert!(ClusterKey::parse("# only a comment\n").is_err());
        assert!(ClusterKey::parse("abc").is_err());
        assert!(ClusterKey::parse(&format!("{K1},{K2},{K1}")).is_err());
        let generated = ClusterKey::generate();
        assert!(ClusterKey::parse(&generated).is_ok());
        assert_ne!(generated, ClusterKey::generate());
        assert!(!format!("{:?}", key(K1)).contains("0001"));
    }

    #[test]
    fn handshake_frames_decode_strictly() {
        assert_eq!(
            Handshake::decode(&[Bytes::from_static(b"FK\x01\x01short")]),
            None
        );
        assert_eq!(
            Handshake::decode(&[Bytes::from_static(b"FW\x01\x01")]),
            None
        );
        assert_eq!(
            Handshake::decode(&[Handshake::Refuse("no".into()).encode()]),
            Some(Handshake::Refuse("no".into()))
        );
    }
}
