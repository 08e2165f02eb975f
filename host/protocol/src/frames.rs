//! Messages to ZeroMQ frames and back.
//!
//! Decoding is strict: a header that is short, lacks the magic, names another protocol
//! version, does not decode, has trailing bytes, or is followed by the wrong number of
//! payload frames is an error, never a panic.

use bincode::Options;
use bytes::{BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};

use super::{
    messages::{FromControlPlane, ToControlPlane},
    MAGIC, PROTOCOL_VERSION,
};

/// The largest header accepted.
pub const MAX_HEADER_BYTES: u64 = 16 * 1024 * 1024;

/// A message that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// No frames at all.
    #[error("empty message")]
    Empty,
    /// The header does not start with `FW`.
    #[error("not a fastworker message (bad magic)")]
    BadMagic,
    /// The header names a protocol version this build does not speak.
    #[error("protocol version {found} is not supported (this peer speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The version in the header.
        found: u8,
    },
    /// The header did not decode.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The number of payload frames does not match the header.
    #[error("message has {found} payload frames, its header lists {expected}")]
    PayloadCount {
        /// Frames the header calls for.
        expected: usize,
        /// Frames present.
        found: usize,
    },
    /// The message could not be encoded (should not happen).
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The header frame is longer than [`MAX_HEADER_BYTES`].
    #[error("header of {size} bytes is over the limit of {MAX_HEADER_BYTES} bytes")]
    HeaderTooLarge {
        /// Its length.
        size: u64,
    },
}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(MAX_HEADER_BYTES)
}

/// A message whose payloads travel in frames of their own.
pub trait Framed {
    /// The payload fields, in frame order.
    fn payloads(&self) -> Vec<&Bytes>;
    /// The same, to fill in after decoding the header.
    fn payloads_mut(&mut self) -> Vec<&mut Bytes>;
}

impl Framed for ToControlPlane {
    fn payloads(&self) -> Vec<&Bytes> {
        match self {
            ToControlPlane::Submit { task, .. } => vec![&task.payload],
            ToControlPlane::SubmitBatch { tasks, .. } => tasks.iter().map(|t| &t.payload).collect(),
            ToControlPlane::Outcome(outcome) => vec![&outcome.value],
            _ => Vec::new(),
        }
    }

    fn payloads_mut(&mut self) -> Vec<&mut Bytes> {
        match self {
            ToControlPlane::Submit { task, .. } => vec![&mut task.payload],
            ToControlPlane::SubmitBatch { tasks, .. } => {
                tasks.iter_mut().map(|t| &mut t.payload).collect()
            }
            ToControlPlane::Outcome(outcome) => vec![&mut outcome.value],
            _ => Vec::new(),
        }
    }
}

impl Framed for FromControlPlane {
    fn payloads(&self) -> Vec<&Bytes> {
        match self {
            FromControlPlane::Result(record) => vec![&record.value],
            FromControlPlane::StatusReply {
                record: Some(record),
                ..
            } => vec![&record.value],
            FromControlPlane::Assign { task, .. } => vec![&task.payload],
            _ => Vec::new(),
        }
    }

    fn payloads_mut(&mut self) -> Vec<&mut Bytes> {
        match self {
            FromControlPlane::Result(record) => vec![&mut record.value],
            FromControlPlane::StatusReply {
                record: Some(record),
                ..
            } => vec![&mut record.value],
            FromControlPlane::Assign { task, .. } => vec![&mut task.payload],
            _ => Vec::new(),
        }
    }
}

/// Encodes `msg` as frames: the header, then one frame per payload.
pub fn encode<M: Serialize + Framed>(msg: &M) -> Result<Vec<Bytes>, ProtocolError> {
    let body = options()
        .serialize(msg)
        .map_err(|e| ProtocolError::Encode(e.to_string()))?;
    let mut header = BytesMut::with_capacity(3 + body.len());
    header.put_slice(&MAGIC);
    header.put_u8(PROTOCOL_VERSION);
    header.put_slice(&body);
    let payloads = msg.payloads();
    let mut frames = Vec::with_capacity(1 + payloads.len());
    frames.push(header.freeze());
    frames.extend(payloads.into_iter().cloned());
    Ok(frames)
}

/// Decodes frames (without any routing identity) into a message.
pub fn decode<M: DeserializeOwned + Framed>(frames: &[Bytes]) -> Result<M, ProtocolError> {
    let header = frames.first().ok_or(ProtocolError::Empty)?;
    // bincode's slice reader ignores `with_limit`, so the limit is checked here.
    if header.len() as u64 > MAX_HEADER_BYTES {
        return Err(ProtocolError::HeaderTooLarge {
            size: header.len() as u64,
        });
    }
    if header.len() < 3 || header[..2] != MAGIC {
        return Err(ProtocolError::BadMagic);
    }
    if header[2] != PROTOCOL_VERSION {
        return Err(ProtocolError::UnsupportedVersion { found: header[2] });
    }
    let mut msg: M = options()
        .deserialize(&header[3..])
        .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    let mut slots = msg.payloads_mut();
    let found = frames.len() - 1;
    if slots.len() != found {
        return Err(ProtocolError::PayloadCount {
            expected: slots.len(),
            found,
        });
    }
    for (slot, frame) in slots.iter_mut().zip(&frames[1..]) {
        **slot = frame.clone();
    }
    drop(slots);
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use uuid::Uuid;

    use super::*;
    use crate::{
        messages::*,
        task_error::{ErrorKind, TaskError},
        LeaseToken, TaskId, WorkerId, WorkerSecret,
    };

    fn fixed_id(n: u8) -> TaskId {
        TaskId(Uuid::from_bytes([n; 16]))
    }

    fn envelope() -> TaskEnvelope {
        let mut task = TaskEnvelope::new("add", Codec::Json, Bytes::from_static(b"[5,3]"));
        task.id = fixed_id(1);
        task
    }

    fn record() -> TaskRecord {
        TaskRecord {
            task_id: fixed_id(1),
            name: "add".into(),
            status: TaskStatus::Success,
            codec: Codec::Json,
            error: None,
            worker_id: Some(WorkerId::from("sw1")),
            attempts: 1,
            delivery_count: 1,
            submitted_ms: 1_700_000_000_000,
            started_ms: Some(1_700_000_000_001),
            completed_ms: Some(1_700_000_000_002),
            value: Bytes::from_static(b"8"),
        }
    }

    fn to_cp_examples() -> Vec<(&'static str, ToControlPlane)> {
        vec![
            (
                "hello",
                ToControlPlane::Hello(Hello {
                    protocol_version: PROTOCOL_VERSION,
                    peer_kind: PeerKind::Client,
                    peer_id: "cli".into(),
                    features: vec![],
                }),
            ),
            (
                "submit",
                ToControlPlane::Submit {
                    request_id: 7,
                    task: envelope(),
                    wait: true,
                },
            ),
            (
                "status",
                ToControlPlane::Status {
                    request_id: 8,
                    task_id: fixed_id(1),
                    wait: false,
                },
            ),
            (
                "outcome_failure",
                ToControlPlane::Outcome(TaskOutcome {
                    task_id: fixed_id(1),
                    delivery_count: 1,
                    lease: LeaseToken([7; 16]),
                    result: AttemptResult::Failure(TaskError::new(ErrorKind::Failed, "boom")),
                    started_ms: 1,
                    completed_ms: 2,
                    value: Bytes::new(),
                }),
            ),
        ]
    }

    fn from_cp_examples() -> Vec<(&'static str, FromControlPlane)> {
        vec![
            (
                "accepted",
                FromControlPlane::Accepted {
                    request_id: 7,
                    task_ids: vec![fixed_id(1)],
                },
            ),
            ("result", FromControlPlane::Result(record())),
            (
                "assign",
                FromControlPlane::Assign {
                    task: envelope(),
                    lease: LeaseToken([7; 16]),
                    epoch: 3,
                },
            ),
            (
                "registered",
                FromControlPlane::Registered {
                    secret: WorkerSecret([9; 32]),
                },
            ),
        ]
    }

    fn hex(frames: &[Bytes]) -> String {
        frames
            .iter()
            .map(|f| f.iter().map(|b| format!("{b:02x}")).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    }

    fn check_snapshot(name: &str, frames: &[Bytes]) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/snapshots")
            .join(format!("{name}.hex"));
        let actual = hex(frames);
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &actual).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "missing snapshot {}; run with UPDATE_SNAPSHOTS=1",
                path.display()
            )
        });
        assert_eq!(actual, expected, "wire format of `{name}` changed");
    }

    #[test]
    fn messages_match_their_snapshots_and_round_trip() {
        for (name, msg) in to_cp_examples() {
            let frames = encode(&msg).unwrap();
            check_snapshot(name, &frames);
            assert_eq!(decode::<ToControlPlane>(&frames).unwrap(), msg);
        }
        for (name, msg) in from_cp_examples() {
            let frames = encode(&msg).unwrap();
            check_snapshot(name, &frames);
            assert_eq!(decode::<FromControlPlane>(&frames).unwrap(), msg);
        }
    }

    #[test]
    fn payload_travels_in_its_own_frame_untouched() {
        let frames = encode(&ToControlPlane::Submit {
            request_id: 1,
            task: envelope(),
            wait: false,
        })
        .unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(&frames[1][..], b"[5,3]");
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert_eq!(decode::<ToControlPlane>(&[]), Err(ProtocolError::Empty));
        assert_eq!(
            decode::<ToControlPlane>(&[Bytes::from_static(b"XX\x01")]),
            Err(ProtocolError::BadMagic)
        );
        assert_eq!(
            decode::<ToControlPlane>(&[Bytes::from_static(b"FW\x09")]),
            Err(ProtocolError::UnsupportedVersion { found: 9 })
        );
        let mut frames = encode(&ToControlPlane::Submit {
            request_id: 1,
            task: envelope(),
            wait: false,
        })
        .unwrap();
        // Truncated header.
        let short = frames[0].slice(..frames[0].len() - 3);
        assert!(matches!(
            decode::<ToControlPlane>(&[short, frames[1].clone()]),
            Err(ProtocolError::Malformed(_))
        ));
        // Missing payload frame.
        frames.pop();
        assert_eq!(
            decode::<ToControlPlane>(&frames),
            Err(ProtocolError::PayloadCount {
                expected: 1,
                found: 0
            })
        );
        // A header over the limit is refused before it is decoded.
        let mut big = b"FW\x01".to_vec();
        big.resize(MAX_HEADER_BYTES as usize + 1, 0);
        assert_eq!(
            decode::<ToControlPlane>(&[Bytes::from(big)]),
            Err(ProtocolError::HeaderTooLarge {
                size: MAX_HEADER_BYTES + 1
            })
        );
        // Garbage of every length up to 64 bytes after a valid prefix never panics.
        for len in 0..64u8 {
            let mut raw = b"FW\x01".to_vec();
            raw.extend((0..len).map(|i| i.wrapping_mul(37).wrapping_add(len)));
            let _ = decode::<ToControlPlane>(&[Bytes::from(raw)]);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// Arbitrary frames, with or without a valid prefix: an error or a message,
        /// never a panic (and never an allocation the input does not pay for).
        #[test]
        fn arbitrary_frames_never_panic(
            prefixed in proptest::bool::ANY,
            header in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            payloads in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..64), 0..4),
        ) {
            let mut h = if prefixed { b"FW\x01".to_vec() } else { Vec::new() };
            h.extend(header);
            let mut frames = vec![Bytes::from(h)];
            frames.extend(payloads.into_iter().map(Bytes::from));
            let _ = decode::<ToControlPlane>(&frames);
            let _ = decode::<FromControlPlane>(&frames);
        }

        /// Valid messages with bytes changed, cut or appended: never a panic.
        #[test]
        fn mutated_messages_never_panic(
            which in 0usize..7,
            at in proptest::num::usize::ANY,
            value in proptest::num::u8::ANY,
            cut in proptest::bool::ANY,
        ) {
            let mut all: Vec<Vec<Bytes>> = to_cp_examples().iter().map(|(_, m)| encode(m).unwrap()).collect();
            all.extend(from_cp_examples().iter().map(|(_, m)| encode(m).unwrap()));
            let mut frames = all[which % all.len()].clone();
            let mut header = frames[0].to_vec();
            let at = at % header.len();
            if cut { header.truncate(at); } else { header[at] = value; }
            frames[0] = Bytes::from(header);
            let _ = decode::<ToControlPlane>(&frames);
            let _ = decode::<FromControlPlane>(&frames);
        }

        /// The payload codecs on arbitrary bytes: an error or a value, never a panic.
        #[test]
        fn payload_codecs_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            use crate::codec;
            for c in [Codec::Json, Codec::Bincode] {
                let _ = codec::decode::<(i64, i64)>(c, &bytes);
                let _ = codec::decode::<String>(c, &bytes);
                let _ = codec::decode::<Vec<serde_json::Value>>(c, &bytes);
                let _ = codec::decode::<(String, Vec<u8>, Option<f64>, Vec<Vec<u32>>)>(c, &bytes);
                let _ = codec::decode_no_args(c, &bytes);
            }
        }
    }
}
