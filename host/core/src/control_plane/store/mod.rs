//! What the control plane keeps on disk with `--data-dir`, behind the [`Store`] trait:
//! the accepted tasks with their state (queued, scheduled, retrying, or assigned with
//! worker and lease; cancel requests included), finished results (within the result
//! cache's bounds), dead letters, periodic schedules' next fire times, subworker
//! identities (their secrets), and the task names workers served (so submissions of
//! them wait for a worker after a restart instead of being refused). [`redb_store::RedbStore`] is the implementation; a
//! replicated one can follow without touching the dispatcher.
//!
//! The dispatcher says what changed ([`Changes`]); the server commits it in one
//! transaction (group commit: one fsync for everything that happened meanwhile) before
//! it sends any reply those changes produced. On start the server loads a
//! [`Snapshot`] and hands it to the dispatcher.
//!
//! Leadership: opening a store takes it for this process (a second control plane on the
//! same directory is refused) and raises its epoch, a number that only goes up: every
//! start of a control plane on a data directory has a new, higher epoch.

pub mod redb_store;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::protocol::{LeaseToken, TaskEnvelope, TaskId, TaskRecord, WorkerId, WorkerSecret};

/// The schema this build writes. A data directory with a higher one is refused (it
/// was written by a newer fastworker); lower ones are upgraded when opened.
pub const SCHEMA_VERSION: u64 = 1;

/// The store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (I/O, a full disk, corruption).
    #[error("data directory {dir}: {reason}")]
    Database {
        /// The directory.
        dir: String,
        /// What went wrong.
        reason: String,
    },
    /// Written by another version of fastworker.
    #[error("data directory {dir} has schema version {found}; this fastworker reads schema version {SCHEMA_VERSION} (written by a newer fastworker: upgrade this one, or use another --data-dir)")]
    NewerSchema {
        /// The directory.
        dir: String,
        /// The version found.
        found: u64,
    },
    /// A row did not decode.
    #[error("data directory {dir}: unreadable {what}: {reason}")]
    Corrupt {
        /// The directory.
        dir: String,
        /// Which row.
        what: String,
        /// Why.
        reason: String,
    },
}

/// One accepted task that is not final: what the client submitted (as accepted: a
/// countdown turned into `not_before_ms`), kept as it came, and what the control plane
/// decided for it since (attempt, deliveries, when it may run next, who holds it under
/// which lease). The dispatcher holds these, and the store keeps them as they are; the
/// envelope a worker gets is built from both halves at each hand-out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEntry {
    /// The submission (with its payload).
    pub envelope: TaskEnvelope,
    /// Its record (status, attempts, ...; no value).
    pub record: TaskRecord,
    /// Its place in the queues (and its dead-letter key).
    pub seq: u64,
    /// 1 for the first attempt, 2 for the first retry, ...
    pub attempt: u32,
    /// Hand-outs to a worker so far.
    pub deliveries: u32,
    /// Unix ms before which it must not run (its eta or countdown, then each retry's).
    pub not_before_ms: u64,
    /// Times a worker holding it was lost (retries do not count).
    pub lost: u32,
    /// The lease of its latest assignment: only an outcome (or a reconnecting worker's
    /// claim) with this token counts. Kept after a lost worker's task goes back to the
    /// queue, so that worker can still answer until someone else takes it.
    pub lease: Option<LeaseToken>,
    /// The worker running it.
    pub holder: Option<WorkerId>,
    /// A cancel was asked for while it ran.
    pub cancel_requested: bool,
    /// The epoch of the control plane that gave its lease.
    pub epoch: u64,
}

/// A periodic schedule's place, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodicPlace {
    /// Its next fire time (Unix ms), if any remain.
    pub next_ms: Option<u64>,
    /// Runs so far.
    pub runs: u64,
    /// The task of its latest run (a tick is skipped while it has not finished).
    pub last_task: Option<TaskId>,
}

/// Everything a store holds, as loaded at start.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// This process's epoch (raised when the store was opened).
    pub epoch: u64,
    /// Tasks not final.
    pub tasks: Vec<TaskEntry>,
    /// Final records, oldest completion first.
    pub results: Vec<TaskRecord>,
    /// Dead letters by key (oldest first), with the envelope to replay.
    pub dead_letters: Vec<(u64, TaskRecord, TaskEnvelope)>,
    /// Periodic schedules by task name.
    pub periodic: Vec<(String, PeriodicPlace)>,
    /// Subworker identities.
    pub workers: Vec<(WorkerId, WorkerSecret)>,
    /// Task names some worker served, with when that was last recorded (Unix ms).
    pub names: Vec<(String, u64)>,
}

/// What changed since the last commit: `Some` puts, `None` deletes.
#[derive(Debug, Default)]
pub struct Changes {
    /// Tasks not final.
    pub tasks: Vec<(TaskId, Option<TaskEntry>)>,
    /// Final records.
    pub results: Vec<(TaskId, Option<TaskRecord>)>,
    /// Dead letters.
    pub dead_letters: Vec<(u64, Option<(TaskRecord, TaskEnvelope)>)>,
    /// Periodic schedules.
    pub periodic: Vec<(String, PeriodicPlace)>,
    /// Subworker identities.
    pub workers: Vec<(WorkerId, Option<WorkerSecret>)>,
    /// Task names first served (with the Unix ms they were seen).
    pub names: Vec<(String, u64)>,
}

impl Changes {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.results.is_empty()
            && self.dead_letters.is_empty()
            && self.periodic.is_empty()
            && self.workers.is_empty()
            && self.names.is_empty()
    }
}

/// Durable state for one control plane.
pub trait Store: Send {
    /// Everything stored, for a start.
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Writes `changes` in one transaction, durable (fsynced) when this returns Ok.
    fn commit(&mut self, changes: &Changes) -> Result<(), StoreError>;
    /// The epoch this process holds.
    fn epoch(&self) -> u64;
}

/// The stored form of a task: the entry with the payload serde skips beside it
/// (written from borrows, read into owned values; bincode encodes both alike).
#[derive(Serialize)]
struct TaskRowRef<'a> {
    entry: &'a TaskEntry,
    payload: &'a [u8],
}

#[derive(Deserialize)]
struct TaskRow {
    entry: TaskEntry,
    payload: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct RecordRow {
    record: TaskRecord,
    value: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct DeadLetterRow {
    record: RecordRow,
    envelope: TaskEnvelope,
    payload: Vec<u8>,
}

fn record_row(record: &TaskRecord) -> RecordRow {
    RecordRow {
        record: record.clone(),
        value: record.value.to_vec(),
    }
}

fn from_record_row(row: RecordRow) -> TaskRecord {
    let mut record = row.record;
    record.value = Bytes::from(row.value);
    record
}

fn task_row(task: &TaskEntry) -> TaskRowRef<'_> {
    TaskRowRef {
        entry: task,
        payload: &task.envelope.payload,
    }
}

fn from_task_row(row: TaskRow) -> TaskEntry {
    let mut entry = row.entry;
    entry.envelope.payload = Bytes::from(row.payload);
    entry
}
