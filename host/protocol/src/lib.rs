//! The wire protocol between clients, subworkers and the control plane: data only, no
//! I/O. `docs/PROTOCOL.md` describes the same thing for people writing a client in
//! another language.
//!
//! A message is a ZeroMQ multipart message. Frame 0 is the header: the bytes `F` `W`,
//! one byte naming the version it is written in, then the message: bincode 1 in
//! version 1 (fixed-width little-endian integers, u64 lengths, u32 enum tags), JSON
//! in version 2, MessagePack with field names in version 3, MessagePack with fields
//! by position in version 4 ([`PROTOCOL_VERSION`]).
//! Task payloads and result values are *not* in the header: each travels untouched in
//! a frame of its own after it, in the order the header lists them, so the control
//! plane never decodes or re-encodes task data.
//!
//! - [`ids`]: `TaskId`, `WorkerId`, leases and worker secrets.
//! - [`messages`]: the two message enums, one per direction, and what they carry.
//! - [`frames`]: turning messages into frames and back.
//! - [`task_error`]: the error a task ends with, as it crosses the wire.
//! - [`codec`]: how task arguments and results are encoded (shared with plugins).
//! - [`json`]: the JSON forms people and scripts read (a task's status record, the
//!   callback body, an event).
//! - [`api`]: the JSON of the control plane's HTTP API and its event stream.
//!
//! This crate is deliberately only data: no sockets, no runtime, no plugin ABI, so a
//! client, the host and the plugin SDK can all depend on it.

pub mod api;
pub mod codec;
pub mod frames;
pub mod ids;
pub mod json;
pub mod messages;
pub mod task_error;
pub mod v1;

pub use codec::CodecError;
pub use frames::{decode, decode_versioned, encode, encode_as, Message, ProtocolError};
pub use ids::{LeaseToken, TaskId, WorkerId, WorkerSecret};
pub use messages::*;
pub use task_error::{ErrorKind, TaskError};

/// The newest protocol version this build speaks (version 4: MessagePack headers with
/// fields by position; version 3 has MessagePack with field names, version 2 JSON,
/// version 1 bincode).
pub const PROTOCOL_VERSION: u8 = 4;

/// The oldest protocol version this build speaks (version 1: bincode headers, the
/// first authenticated version). Anything older is refused, naming this one.
pub const MIN_PROTOCOL_VERSION: u8 = 1;

/// The `Hello` feature that carries the newest version its sender speaks, as
/// `protocol-max=N`: a `Hello` is written in its sender's *oldest* version, with that
/// version in `protocol_version`, so a peer of any version can read it.
pub const PROTOCOL_MAX_FEATURE: &str = "protocol-max=";

/// The newest version this process speaks: [`PROTOCOL_VERSION`], unless the
/// environment variable `FASTWORKER_PROTOCOL_MAX` holds a lower one (not below
/// [`MIN_PROTOCOL_VERSION`]). Keeping a new build on the previous version is how a
/// cluster is tested against old peers, or held on the old protocol while it is
/// upgraded machine by machine. Read once per process.
pub fn max_version() -> u8 {
    static MAX: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var("FASTWORKER_PROTOCOL_MAX")
            .ok()
            .and_then(|v| v.trim().parse::<u8>().ok())
            .map_or(PROTOCOL_VERSION, |v| {
                v.clamp(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION)
            })
    })
}

/// The version two peers use: the newest both speak, or `None` when their ranges do
/// not overlap.
pub fn negotiate(ours: (u8, u8), theirs: (u8, u8)) -> Option<u8> {
    let chosen = ours.1.min(theirs.1);
    (chosen >= ours.0.max(theirs.0)).then_some(chosen)
}

/// The message of the `Rejected` answer to anything but `Hello`, `Ping` or `Discover`
/// on a connection that has not said `Hello` (a subworker that sees it registers again).
pub const HELLO_FIRST: &str = "send Hello first";

/// A `Hello` feature: this peer reads `Results` (several final records in one
/// message), so the control plane may group the results it pushes to it. Since
/// version 2.
pub const RESULTS_BATCH_FEATURE: &str = "results-batch";

/// A `Hello` feature: this client needs no `Accepted` for a `Submit` with `wait`: the
/// task's final `Result` answers it (a `Rejected` still comes when it is not
/// accepted), so the client wakes once per task. A control plane that does not know
/// the feature sends `Accepted` as before, and such a client reads it. Any version.
pub const ACCEPTED_BY_RESULT_FEATURE: &str = "accepted-by-result";

/// A `Welcome` feature: this control plane reads `Outcomes` (several outcomes in one
/// message), so a subworker may group the outcomes it reports. Since version 2.
pub const OUTCOMES_BATCH_FEATURE: &str = "outcomes-batch";

/// A `Welcome` feature: this control plane hands out prefetched tasks (`Assigns`) to
/// a subworker that registers with `prefetch`, and reads its `Report`. Since version 2.
pub const PREFETCH_FEATURE: &str = "prefetch";

/// The first two bytes of every header frame.
pub const MAGIC: [u8; 2] = *b"FW";

/// The longest span any timeout, delay or countdown may have: 10 years.
pub const MAX_SPAN_SECS: f64 = 10.0 * 365.0 * 24.0 * 3600.0;

/// Seconds, as they arrive from a client or a plugin, to whole milliseconds: `None` for
/// anything not finite, negative or longer than [`MAX_SPAN_SECS`].
pub fn secs_to_ms(secs: f64) -> Option<u64> {
    (secs.is_finite() && (0.0..=MAX_SPAN_SECS).contains(&secs)).then_some((secs * 1000.0) as u64)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The longest id (a peer id, a worker id, a task name) accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// The most tasks one worker may say it serves.
pub const MAX_TASKS_PER_WORKER: usize = 10_000;

/// `text` made safe to log, keep or print: control characters replaced, and cut to at
/// most `max` bytes (on a character boundary, marked with `…`).
pub fn for_people(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 3);
    for c in text.chars() {
        if out.len() + c.len_utf8() > max {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { '?' } else { c });
    }
    out
}
