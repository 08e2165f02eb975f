//! Messages to ZeroMQ frames and back, in any version this build speaks.
//!
//! Frame 0 is the header: `F` `W`, one byte naming the version the header is written
//! in, then the message. Version 1 writes it as bincode ([`crate::v1`], frozen);
//! version 2 as JSON, which names every field, so a field added later (with a default)
//! is ignored by a peer that does not know it and defaulted by one that does; version
//! 3 as MessagePack with the same names (maps keyed by field name, so it evolves the
//! same way), written and read in less CPU time than JSON: numbers, ids and
//! leases in binary; version 4 as MessagePack with every struct an array of its fields
//! in declaration order, no names: writing takes about half the CPU time of version 3,
//! reading a fifth to a third less, and a header a quarter to a half of its bytes
//! (`cargo bench -p fastworker --bench headers`). A version 4 reader takes a struct's
//! missing trailing fields marked `#[serde(default)]` as their defaults and refuses
//! extra ones, so the version 4 layout is frozen like version 1's: a field added later
//! needs a new version and a frozen copy of its struct for version 4
//! (docs/PROTOCOL.md §0.4). One reader serves versions 3 and 4: either reads a struct
//! written as a map or as an array.
//!
//! Decoding is strict: a header that is short, lacks the magic, names a version this
//! build does not speak, does not decode, has trailing bytes, or is followed by the
//! wrong number of payload frames is an error, never a panic.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};

use super::{
    messages::{FromControlPlane, ToControlPlane},
    v1::V1,
    MAGIC, MIN_PROTOCOL_VERSION,
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
    #[error("protocol version {found} is not supported (this peer speaks versions {MIN_PROTOCOL_VERSION} to {max}; version {MIN_PROTOCOL_VERSION} or later is required)", max = crate::max_version())]
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
    /// The message could not be encoded (in that version).
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The header frame is longer than [`MAX_HEADER_BYTES`].
    #[error("header of {size} bytes is over the limit of {MAX_HEADER_BYTES} bytes")]
    HeaderTooLarge {
        /// Its length.
        size: u64,
    },
}

/// A message of either direction: framed, and written in every supported version.
pub trait Message: Framed + Serialize + DeserializeOwned + V1 {}
impl Message for ToControlPlane {}
impl Message for FromControlPlane {}

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
            ToControlPlane::Outcomes { outcomes } | ToControlPlane::Report { outcomes, .. } => {
                outcomes.iter().map(|o| &o.value).collect()
            }
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
            ToControlPlane::Outcomes { outcomes } | ToControlPlane::Report { outcomes, .. } => {
                outcomes.iter_mut().map(|o| &mut o.value).collect()
            }
            _ => Vec::new(),
        }
    }
}

impl Framed for FromControlPlane {
    fn payloads(&self) -> Vec<&Bytes> {
        match self {
            FromControlPlane::Result(record) => vec![&record.value],
            FromControlPlane::Results { records } => records.iter().map(|r| &r.value).collect(),
            FromControlPlane::StatusReply {
                record: Some(record),
                ..
            } => vec![&record.value],
            FromControlPlane::Assign { task, .. } => vec![&task.payload],
            FromControlPlane::Assigns { assignments, .. } => {
                assignments.iter().map(|a| &a.task.payload).collect()
            }
            _ => Vec::new(),
        }
    }

    fn payloads_mut(&mut self) -> Vec<&mut Bytes> {
        match self {
            FromControlPlane::Result(record) => vec![&mut record.value],
            FromControlPlane::Results { records } => {
                records.iter_mut().map(|r| &mut r.value).collect()
            }
            FromControlPlane::StatusReply {
                record: Some(record),
                ..
            } => vec![&mut record.value],
            FromControlPlane::Assign { task, .. } => vec![&mut task.payload],
            FromControlPlane::Assigns { assignments, .. } => assignments
                .iter_mut()
                .map(|a| &mut a.task.payload)
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Encodes `msg` as frames in the newest version this process speaks
/// ([`crate::max_version`]).
pub fn encode<M: Message>(msg: &M) -> Result<Vec<Bytes>, ProtocolError> {
    encode_as(crate::max_version(), msg)
}

/// What a header's buffer starts with: a lone task's or result's header fits (the
/// example `Assign` of one task is 81 bytes in version 4, 272 in version 3), a
/// batch's grows it.
const HEADER_CAPACITY: usize = 256;

/// Encodes `msg` as frames in protocol `version`: the header, then one frame per
/// payload.
pub fn encode_as<M: Message>(version: u8, msg: &M) -> Result<Vec<Bytes>, ProtocolError> {
    if version > crate::max_version() {
        return Err(ProtocolError::UnsupportedVersion { found: version });
    }
    let mut header = BytesMut::with_capacity(HEADER_CAPACITY);
    header.put_slice(&MAGIC);
    header.put_u8(version);
    let encode_error = |e: &dyn std::fmt::Display| ProtocolError::Encode(e.to_string());
    // Written straight after the prefix: no body of its own to copy over.
    let mut writer = (&mut header).writer();
    match version {
        1 => writer.get_mut().put_slice(&msg.encode_v1()?),
        2 => serde_json::to_writer(&mut writer, msg).map_err(|e| encode_error(&e))?,
        3 => rmp_serde::encode::write_named(&mut writer, msg).map_err(|e| encode_error(&e))?,
        4 => rmp_serde::encode::write(&mut writer, msg).map_err(|e| encode_error(&e))?,
        found => return Err(ProtocolError::UnsupportedVersion { found }),
    }
    let payloads = msg.payloads();
    let mut frames = Vec::with_capacity(1 + payloads.len());
    frames.push(header.freeze());
    frames.extend(payloads.into_iter().cloned());
    Ok(frames)
}

/// Decodes frames (without any routing identity) into a message, in whichever
/// supported version its header names.
pub fn decode<M: Message>(frames: &[Bytes]) -> Result<M, ProtocolError> {
    decode_versioned(frames).map(|(_, msg)| msg)
}

/// Like [`decode`], also returning the version the message was written in.
pub fn decode_versioned<M: Message>(frames: &[Bytes]) -> Result<(u8, M), ProtocolError> {
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
    let version = header[2];
    if version > crate::max_version() {
        return Err(ProtocolError::UnsupportedVersion { found: version });
    }
    let body = &header[3..];
    let mut msg: M = match version {
        1 => M::decode_v1(body)?,
        2 => serde_json::from_slice(body).map_err(|e| ProtocolError::Malformed(e.to_string()))?,
        // One reader for both: a struct is read from a map keyed by field names or
        // from an array of its fields, whichever the header holds.
        3 | 4 => decode_msgpack(body)?,
        found => return Err(ProtocolError::UnsupportedVersion { found }),
    };
    let mut slots = msg.payloads_mut();
    let found = frames.len() - 1;
    if slots.len() != found {
        return Err(ProtocolError::PayloadCount {
            expected: slots.len(),
            found,
        });
    }
    for (slot, frame) in slots.iter_mut().zip(&frames[1..]) {
        **slot = own_payload(frame);
    }
    drop(slots);
    Ok((version, msg))
}

/// Payloads up to this size are copied out of their frame when decoded.
pub const COPIED_PAYLOAD_BYTES: usize = 1024;

/// A payload as a decoded message keeps it. A frame is a slice of the buffer its
/// socket read, shared by every frame of that read: a small payload kept as such a
/// slice would pin the whole buffer (a cached 8-byte result holding tens of KiB), and
/// every clone and drop of it, on whichever thread, would update the one count all
/// those frames share. Small payloads get their own copy; larger ones stay slices,
/// without a copy.
fn own_payload(frame: &Bytes) -> Bytes {
    if frame.len() <= COPIED_PAYLOAD_BYTES {
        Bytes::copy_from_slice(frame)
    } else {
        frame.clone()
    }
}

/// How deep a version 3 or 4 header may nest (as `serde_json`'s limit for version 2).
const MAX_MSGPACK_DEPTH: usize = 128;

/// A version 3 or 4 header: one MessagePack value and nothing after it. Strings are
/// borrowed from the slice, and a declared length longer than the bytes that are
/// there is an error, never a reservation.
fn decode_msgpack<M: DeserializeOwned>(body: &[u8]) -> Result<M, ProtocolError> {
    // From the bytes themselves: strings are borrowed while decoding, not copied out.
    let mut de = rmp_serde::Deserializer::from_read_ref(body);
    de.set_max_depth(MAX_MSGPACK_DEPTH);
    let msg = M::deserialize(&mut de).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    // That decoder does not say how much it read, so the end is found by asking for
    // one more value: only an empty rest fails to give its first marker. The visitor
    // refuses whatever value it is shown, before reading into it, so a rest that
    // starts a value (an array cut before its first element, say, whose element's
    // marker is missing too) fails differently and is refused.
    match serde::Deserializer::deserialize_any(&mut de, NoValue) {
        Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            Ok(msg)
        }
        _ => Err(ProtocolError::Malformed(
            "bytes after the message".to_string(),
        )),
    }
}

/// Refuses every value: what [`decode_msgpack`] asks for after the message.
struct NoValue;

impl serde::de::Visitor<'_> for NoValue {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("nothing after the message")
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use uuid::Uuid;

    use super::*;
    use crate::{
        messages::*,
        task_error::{ErrorKind, TaskError},
        LeaseToken, TaskId, WorkerId, WorkerSecret, PROTOCOL_VERSION,
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
        let mut record = TaskRecord::new(fixed_id(1), "add", TaskStatus::Success, Codec::Json);
        record.worker_id = Some(WorkerId::from("sw1"));
        record.attempts = 1;
        record.delivery_count = 1;
        record.submitted_ms = 1_700_000_000_000;
        record.started_ms = Some(1_700_000_000_001);
        record.completed_ms = Some(1_700_000_000_002);
        record.value = Bytes::from_static(b"8");
        record
    }

    fn queue_filter() -> QueueFilter {
        let mut filter = QueueFilter::all();
        filter.name = Some("add".into());
        filter.priority = Some(Priority::High);
        filter.limit = 100;
        filter
    }

    fn spec() -> TaskSpec {
        let mut spec = TaskSpec::new("add");
        spec.max_retries = 2;
        spec.timeout_secs = Some(5.0);
        spec.periodic = Some(PeriodicSpec::cron("*/5 * * * *"));
        spec.doc = "Adds two integers.".into();
        spec.signature = "add(x: i64, y: i64) -> i64".into();
        spec
    }

    fn hello() -> Hello {
        // As a version-1 build sends it (no `protocol-max=N`).
        let mut hello = Hello::new(PeerKind::Client, "cli");
        hello.features = vec![];
        hello
    }

    fn registration() -> Registration {
        let mut registration = Registration::new(WorkerId::from("sw1"), vec![spec()], 4);
        registration.pid = 42;
        registration.address = Some("tcp://127.0.0.1:6000".into());
        registration.secret = Some(WorkerSecret([9; 32]));
        registration.running = vec![RunningClaim::new(fixed_id(2), LeaseToken([7; 16]))];
        registration
    }

    fn outcome() -> TaskOutcome {
        let mut outcome = TaskOutcome::new(
            fixed_id(1),
            1,
            LeaseToken([7; 16]),
            AttemptResult::Failure(TaskError::new(ErrorKind::Failed, "boom")),
        );
        outcome.started_ms = 1;
        outcome.completed_ms = 2;
        outcome
    }

    fn plugin_event() -> PluginEvent {
        let mut event = PluginEvent::new(
            "reloaded",
            "mytasks",
            "/p/mytasks.so",
            "reloaded 0.1.0 -> 0.2.0",
        );
        event.old_version = Some("0.1.0".into());
        event.new_version = Some("0.2.0".into());
        event
    }

    /// One example of every message a peer sends, named for its snapshot.
    fn to_cp_examples() -> Vec<(&'static str, ToControlPlane)> {
        vec![
            ("hello", ToControlPlane::Hello(hello())),
            (
                "submit",
                ToControlPlane::Submit {
                    request_id: 7,
                    task: envelope(),
                    wait: true,
                },
            ),
            (
                "submit_batch",
                ToControlPlane::SubmitBatch {
                    request_id: 9,
                    tasks: vec![envelope()],
                    wait: false,
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
                "cancel",
                ToControlPlane::Cancel {
                    request_id: 10,
                    task_id: fixed_id(1),
                },
            ),
            ("register", ToControlPlane::Register(registration())),
            (
                "heartbeat",
                ToControlPlane::Heartbeat {
                    running: 1,
                    free_slots: 3,
                },
            ),
            ("outcome_failure", ToControlPlane::Outcome(outcome())),
            (
                "tasks_changed",
                ToControlPlane::TasksChanged {
                    tasks: vec![spec()],
                },
            ),
            ("draining", ToControlPlane::Draining),
            ("unregister", ToControlPlane::Unregister),
            ("ping", ToControlPlane::Ping { nonce: 5 }),
            ("discover", ToControlPlane::Discover),
            ("plugin_event", ToControlPlane::PluginEvent(plugin_event())),
            (
                "dead_letters",
                ToControlPlane::DeadLetters { request_id: 11 },
            ),
            (
                "replay",
                ToControlPlane::Replay {
                    request_id: 12,
                    task_id: fixed_id(1),
                },
            ),
            ("restarting", ToControlPlane::Restarting),
            ("events", ToControlPlane::Events { request_id: 13 }),
            ("tasks", ToControlPlane::Tasks { request_id: 14 }),
            (
                "queued",
                ToControlPlane::Queued {
                    request_id: 15,
                    filter: queue_filter(),
                },
            ),
            (
                "purge",
                ToControlPlane::Purge {
                    request_id: 16,
                    filter: queue_filter(),
                },
            ),
            (
                "outcomes",
                ToControlPlane::Outcomes {
                    outcomes: vec![outcome(), {
                        let mut success = TaskOutcome::new(
                            fixed_id(2),
                            1,
                            LeaseToken([8; 16]),
                            AttemptResult::Success,
                        );
                        success.value = Bytes::from_static(b"8");
                        success
                    }],
                },
            ),
            (
                "report",
                ToControlPlane::Report {
                    started: vec![fixed_id(3), fixed_id(1)],
                    outcomes: vec![outcome()],
                    run_ns: [("add".to_string(), 1_250)].into(),
                    returned: vec![fixed_id(4)],
                },
            ),
        ]
    }

    /// One example of every message the control plane sends.
    fn from_cp_examples() -> Vec<(&'static str, FromControlPlane)> {
        let mut welcome = Welcome::new(1, "cp");
        welcome.features = vec!["batch".into()];
        let mut announcement = Announcement::new("cp", "tcp://127.0.0.1:5555");
        announcement.subworker_address = Some("tcp://127.0.0.1:5560".into());
        announcement.protocol_version = 1;
        vec![
            ("welcome", FromControlPlane::Welcome(welcome)),
            (
                "refused",
                FromControlPlane::Refused {
                    reason: "no".into(),
                },
            ),
            (
                "accepted",
                FromControlPlane::Accepted {
                    request_id: 7,
                    task_ids: vec![fixed_id(1)],
                },
            ),
            (
                "rejected",
                FromControlPlane::Rejected {
                    request_id: 7,
                    error: TaskError::new(ErrorKind::Rejected, "queue full"),
                },
            ),
            ("result", FromControlPlane::Result(record())),
            (
                "status_reply",
                FromControlPlane::StatusReply {
                    request_id: 8,
                    record: Some(record()),
                },
            ),
            (
                "cancel_reply",
                FromControlPlane::CancelReply {
                    request_id: 10,
                    outcome: CancelOutcome::AlreadyFinished(TaskStatus::Success),
                },
            ),
            (
                "assign",
                FromControlPlane::Assign {
                    task: envelope(),
                    lease: LeaseToken([7; 16]),
                    epoch: 3,
                },
            ),
            (
                "cancel_task",
                FromControlPlane::CancelTask {
                    task_id: fixed_id(1),
                },
            ),
            ("heartbeat_ack", FromControlPlane::HeartbeatAck),
            ("pong", FromControlPlane::Pong { nonce: 5 }),
            ("announce", FromControlPlane::Announce(announcement)),
            (
                "dead_letter_list",
                FromControlPlane::DeadLetterList {
                    request_id: 11,
                    records: vec![{
                        let mut r = record();
                        r.value = Bytes::new();
                        r
                    }],
                },
            ),
            (
                "event_list",
                FromControlPlane::EventList {
                    request_id: 13,
                    events: vec![Event::new(1, "worker.registered", "sw1", "sw1 registered")],
                },
            ),
            (
                "registered",
                FromControlPlane::Registered {
                    secret: WorkerSecret([9; 32]),
                },
            ),
            (
                "task_list",
                FromControlPlane::TaskList {
                    request_id: 14,
                    tasks: vec![ServedTask::new(spec(), vec![WorkerId::from("sw1")])],
                },
            ),
            (
                "queued_list",
                FromControlPlane::QueuedList {
                    request_id: 15,
                    tasks: vec![QueuedTask::new(
                        TaskRecord::new(fixed_id(1), "add", TaskStatus::Scheduled, Codec::Json),
                        Priority::High,
                        1_700_000_060_000,
                    )],
                    total: 1,
                },
            ),
            (
                "results",
                FromControlPlane::Results {
                    records: vec![record(), {
                        let mut failed = record();
                        failed.task_id = fixed_id(2);
                        failed.status = TaskStatus::Failure;
                        failed.error = Some(TaskError::new(ErrorKind::Failed, "nope"));
                        failed.value = Bytes::new();
                        failed
                    }],
                },
            ),
            (
                "purged",
                FromControlPlane::Purged {
                    request_id: 16,
                    total: 2,
                    task_ids: vec![fixed_id(1), fixed_id(2)],
                },
            ),
            (
                "assigns",
                FromControlPlane::Assigns {
                    assignments: vec![Assignment::new(envelope(), LeaseToken([7; 16]), false), {
                        let mut second = envelope();
                        second.id = fixed_id(2);
                        second.payload = Bytes::from_static(b"[1,2]");
                        Assignment::new(second, LeaseToken([8; 16]), true)
                    }],
                    epoch: 3,
                },
            ),
        ]
    }

    /// Every variant's name: a new variant does not compile until it is named here,
    /// and the test below fails until it has an example (so a snapshot).
    fn to_cp_name(msg: &ToControlPlane) -> &'static str {
        match msg {
            ToControlPlane::Hello(_) => "hello",
            ToControlPlane::Submit { .. } => "submit",
            ToControlPlane::SubmitBatch { .. } => "submit_batch",
            ToControlPlane::Status { .. } => "status",
            ToControlPlane::Cancel { .. } => "cancel",
            ToControlPlane::Register(_) => "register",
            ToControlPlane::Heartbeat { .. } => "heartbeat",
            ToControlPlane::Outcome(_) => "outcome_failure",
            ToControlPlane::TasksChanged { .. } => "tasks_changed",
            ToControlPlane::Draining => "draining",
            ToControlPlane::Unregister => "unregister",
            ToControlPlane::Ping { .. } => "ping",
            ToControlPlane::Discover => "discover",
            ToControlPlane::PluginEvent(_) => "plugin_event",
            ToControlPlane::DeadLetters { .. } => "dead_letters",
            ToControlPlane::Replay { .. } => "replay",
            ToControlPlane::Restarting => "restarting",
            ToControlPlane::Events { .. } => "events",
            ToControlPlane::Tasks { .. } => "tasks",
            ToControlPlane::Queued { .. } => "queued",
            ToControlPlane::Purge { .. } => "purge",
            ToControlPlane::Outcomes { .. } => "outcomes",
            ToControlPlane::Report { .. } => "report",
        }
    }

    const TO_CP_VARIANTS: usize = 23;

    fn from_cp_name(msg: &FromControlPlane) -> &'static str {
        match msg {
            FromControlPlane::Welcome(_) => "welcome",
            FromControlPlane::Refused { .. } => "refused",
            FromControlPlane::Accepted { .. } => "accepted",
            FromControlPlane::Rejected { .. } => "rejected",
            FromControlPlane::Result(_) => "result",
            FromControlPlane::StatusReply { .. } => "status_reply",
            FromControlPlane::CancelReply { .. } => "cancel_reply",
            FromControlPlane::Assign { .. } => "assign",
            FromControlPlane::CancelTask { .. } => "cancel_task",
            FromControlPlane::HeartbeatAck => "heartbeat_ack",
            FromControlPlane::Pong { .. } => "pong",
            FromControlPlane::Announce(_) => "announce",
            FromControlPlane::DeadLetterList { .. } => "dead_letter_list",
            FromControlPlane::EventList { .. } => "event_list",
            FromControlPlane::Registered { .. } => "registered",
            FromControlPlane::TaskList { .. } => "task_list",
            FromControlPlane::QueuedList { .. } => "queued_list",
            FromControlPlane::Purged { .. } => "purged",
            FromControlPlane::Results { .. } => "results",
            FromControlPlane::Assigns { .. } => "assigns",
        }
    }

    const FROM_CP_VARIANTS: usize = 20;

    #[test]
    fn every_variant_has_an_example() {
        let to: std::collections::BTreeSet<_> = to_cp_examples()
            .iter()
            .map(|(_, m)| to_cp_name(m))
            .collect();
        assert_eq!(
            to.len(),
            TO_CP_VARIANTS,
            "an example per ToControlPlane variant"
        );
        let from: std::collections::BTreeSet<_> = from_cp_examples()
            .iter()
            .map(|(_, m)| from_cp_name(m))
            .collect();
        assert_eq!(
            from.len(),
            FROM_CP_VARIANTS,
            "an example per FromControlPlane variant"
        );
        for (name, msg) in to_cp_examples() {
            assert_eq!(name, to_cp_name(&msg));
        }
        for (name, msg) in from_cp_examples() {
            assert_eq!(name, from_cp_name(&msg));
        }
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
    fn messages_match_their_snapshots_and_round_trip_in_every_version() {
        for version in MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION {
            for (name, msg) in to_cp_examples() {
                if version < since(name) {
                    assert!(
                        encode_as(version, &msg).is_err(),
                        "{name} is not in v{version}"
                    );
                    continue;
                }
                let frames = encode_as(version, &msg).unwrap();
                check_snapshot(&format!("v{version}_{name}"), &frames);
                let (found, back) = decode_versioned::<ToControlPlane>(&frames).unwrap();
                assert_eq!(found, version);
                if version == 1 {
                    // Version 1 has no task docs or signatures.
                    let mut expected = msg.clone();
                    if let ToControlPlane::Register(r) = &mut expected {
                        r.tasks = r.tasks.iter().map(without_v2_fields).collect();
                    }
                    if let ToControlPlane::TasksChanged { tasks } = &mut expected {
                        *tasks = tasks.iter().map(without_v2_fields).collect();
                    }
                    assert_eq!(back, expected, "{name}");
                } else {
                    assert_eq!(back, msg, "{name}");
                }
            }
            for (name, msg) in from_cp_examples() {
                if version < since(name) {
                    assert!(
                        encode_as(version, &msg).is_err(),
                        "{name} is not in v{version}"
                    );
                    continue;
                }
                let frames = encode_as(version, &msg).unwrap();
                check_snapshot(&format!("v{version}_{name}"), &frames);
                assert_eq!(decode::<FromControlPlane>(&frames).unwrap(), msg, "{name}");
            }
        }
    }

    /// The version a message first appeared in.
    fn since(name: &str) -> u8 {
        match name {
            "tasks" | "task_list" | "queued" | "queued_list" | "purge" | "purged" | "results"
            | "outcomes" | "report" | "assigns" => 2,
            _ => 1,
        }
    }

    fn without_v2_fields(spec: &TaskSpec) -> TaskSpec {
        let mut spec = spec.clone();
        spec.doc = String::new();
        spec.signature = String::new();
        spec
    }

    /// Versions 2 and 3 write the same structure (JSON, MessagePack): in either, a
    /// newer peer's field is ignored and an older peer's missing one defaulted.
    #[test]
    fn a_version_2_or_3_peer_ignores_fields_it_does_not_know_and_defaults_missing_ones() {
        let frames = encode_as(
            2,
            &ToControlPlane::TasksChanged {
                tasks: vec![spec()],
            },
        )
        .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&frames[0][3..]).unwrap();
        // A newer peer's field, and an older peer's spec without doc or signature.
        let mut newer = json.clone();
        newer["TasksChanged"]["tasks"][0]["added_later"] = serde_json::json!({"x": [1, 2]});
        let mut older = json;
        let task = older["TasksChanged"]["tasks"][0].as_object_mut().unwrap();
        task.remove("doc");
        task.remove("signature");
        type Write = fn(&serde_json::Value) -> Vec<u8>;
        let writers: [(u8, Write); 2] = [
            (2, |body| serde_json::to_vec(body).unwrap()),
            (3, |body| rmp_serde::to_vec_named(body).unwrap()),
        ];
        for (version, write) in writers {
            for (body, doc) in [(&newer, "Adds two integers."), (&older, "")] {
                let mut header = vec![b'F', b'W', version];
                header.extend(write(body));
                match decode::<ToControlPlane>(&[Bytes::from(header)]).unwrap() {
                    ToControlPlane::TasksChanged { tasks } => {
                        assert_eq!(tasks[0].doc, doc, "version {version}")
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    /// Version 4 writes a struct as the array of its fields, in order: a reader takes
    /// the missing trailing fields of an older writer's struct as their defaults, and
    /// refuses a struct with more fields than it knows (a field added later needs a
    /// new version, as the snapshots of version 4 pin).
    #[test]
    fn a_version_4_struct_is_its_fields_in_order_and_a_missing_trailing_one_is_defaulted() {
        let mut registration = registration();
        registration.prefetch = true;
        let msg = ToControlPlane::Register(registration.clone());
        let frames = encode_as(4, &msg).unwrap();
        let header = &frames[0];
        // `{"Register": [worker_id, tasks, ..., prefetch]}`: the array of 9 fields
        // (fixarray 0x99) ends with `prefetch` (true, 0xc3).
        let fields_at = 3 + 1 + 1 + "Register".len();
        assert_eq!(header[fields_at], 0x99, "{header:02x?}");
        assert_eq!(header.last(), Some(&0xc3));
        assert_eq!(decode::<ToControlPlane>(&frames).unwrap(), msg);
        // A writer from before `prefetch`: 8 fields.
        let mut older = header.to_vec();
        older[fields_at] = 0x98;
        older.pop();
        registration.prefetch = false;
        assert_eq!(
            decode::<ToControlPlane>(&[Bytes::from(older)]).unwrap(),
            ToControlPlane::Register(registration)
        );
        // A writer with a tenth field this build does not know: refused.
        let mut newer = header.to_vec();
        newer[fields_at] = 0x9a;
        newer.push(0x07);
        assert!(matches!(
            decode::<ToControlPlane>(&[Bytes::from(newer)]),
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn a_version_3_header_is_one_value_that_allocates_only_what_it_brings() {
        let frames = encode_as(3, &ToControlPlane::Ping { nonce: 7 }).unwrap();
        let mut longer = frames[0].to_vec();
        longer.push(0xc0);
        assert_eq!(
            decode::<ToControlPlane>(&[Bytes::from(longer)]),
            Err(ProtocolError::Malformed(
                "bytes after the message".to_string()
            ))
        );
        // After it: a whole second message, the start of a string, a lone marker
        // that MessagePack leaves unused, and a string that declares 4 GiB.
        let second = &frames[0][3..];
        for rest in [
            second,
            &second[..2],
            &[0xd9, 0x0a, b'a'][..],
            &[0xc1],
            &[0xdb, 0xff, 0xff, 0xff, 0xff, b'a'],
            // An array or a map that ends before its first or next element.
            &[0x91],
            &[0x81],
            &[0x92, 0x01],
            &[0xdc, 0x00, 0x05],
        ] {
            let mut longer = frames[0].to_vec();
            longer.extend_from_slice(rest);
            assert_eq!(
                decode::<ToControlPlane>(&[Bytes::from(longer)]),
                Err(ProtocolError::Malformed(
                    "bytes after the message".to_string()
                )),
                "{rest:?}"
            );
        }
        // A string, a byte string and an array that each declare 4 GiB, with 3
        // bytes behind them: an error, at once.
        for declared in [
            &[0xdb, 0xff, 0xff, 0xff, 0xff][..],
            &[0xc6, 0xff, 0xff, 0xff, 0xff],
            &[0xdd, 0xff, 0xff, 0xff, 0xff],
        ] {
            let mut header = b"FW\x03\x81\xa4Ping\x81\xa5nonce".to_vec();
            header.extend_from_slice(declared);
            header.extend_from_slice(b"abc");
            assert!(matches!(
                decode::<ToControlPlane>(&[Bytes::from(header)]),
                Err(ProtocolError::Malformed(_))
            ));
        }
        // Nesting deeper than the limit: an error, not a stack overflow.
        let mut deep = b"FW\x03".to_vec();
        deep.extend(std::iter::repeat_n(0x91u8, 100_000));
        assert!(matches!(
            decode::<ToControlPlane>(&[Bytes::from(deep)]),
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn negotiation_picks_the_newest_shared_version_or_none() {
        assert_eq!(crate::negotiate((1, 2), (1, 1)), Some(1));
        assert_eq!(crate::negotiate((1, 2), (1, 3)), Some(2));
        assert_eq!(crate::negotiate((2, 3), (1, 1)), None);
        assert_eq!(crate::negotiate((1, 1), (2, 2)), None);
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
    fn a_small_payload_is_copied_out_of_the_read_buffer_and_a_large_one_is_not() {
        let mut small = envelope();
        small.payload = Bytes::from_static(b"[5,3]");
        let mut large = envelope();
        large.payload = Bytes::from(vec![7u8; COPIED_PAYLOAD_BYTES + 1]);
        let sent = encode(&ToControlPlane::SubmitBatch {
            request_id: 1,
            tasks: vec![small, large],
            wait: false,
        })
        .unwrap();
        // The frames as a socket hands them over: slices of one buffer it read.
        let mut read = bytes::BytesMut::new();
        for frame in &sent {
            read.extend_from_slice(frame);
        }
        let read = read.freeze();
        let buffer = read.as_ptr_range();
        let mut at = 0;
        let frames: Vec<Bytes> = sent
            .iter()
            .map(|f| {
                at += f.len();
                read.slice(at - f.len()..at)
            })
            .collect();
        let ToControlPlane::SubmitBatch { tasks, .. } = decode(&frames).unwrap() else {
            panic!("not a batch");
        };
        assert_eq!(&tasks[0].payload[..], b"[5,3]");
        assert!(!buffer.contains(&tasks[0].payload.as_ptr()), "copied");
        assert_eq!(tasks[1].payload.len(), COPIED_PAYLOAD_BYTES + 1);
        assert!(
            buffer.contains(&tasks[1].payload.as_ptr()),
            "a slice, not a copy"
        );
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
        assert_eq!(
            decode::<ToControlPlane>(&[Bytes::from_static(b"FW\x00")]),
            Err(ProtocolError::UnsupportedVersion { found: 0 })
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
            version in MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION,
            header in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            payloads in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..64), 0..4),
        ) {
            let mut h = if prefixed { vec![b'F', b'W', version] } else { Vec::new() };
            h.extend(header);
            let mut frames = vec![Bytes::from(h)];
            frames.extend(payloads.into_iter().map(Bytes::from));
            let _ = decode::<ToControlPlane>(&frames);
            let _ = decode::<FromControlPlane>(&frames);
        }

        /// Valid messages with bytes changed, cut or appended: never a panic.
        #[test]
        fn mutated_messages_never_panic(
            which in 0usize..1000,
            at in proptest::num::usize::ANY,
            value in proptest::num::u8::ANY,
            cut in proptest::bool::ANY,
        ) {
            let mut all: Vec<Vec<Bytes>> = to_cp_examples().iter().map(|(_, m)| encode(m).unwrap()).collect();
            all.extend(from_cp_examples().iter().map(|(_, m)| encode(m).unwrap()));
            for version in MIN_PROTOCOL_VERSION..PROTOCOL_VERSION {
                all.extend(to_cp_examples().iter().filter_map(|(_, m)| encode_as(version, m).ok()));
                all.extend(from_cp_examples().iter().filter_map(|(_, m)| encode_as(version, m).ok()));
            }
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
