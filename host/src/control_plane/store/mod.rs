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

/// One accepted task that is not final, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTask {
    /// The envelope as the dispatcher holds it (with its payload).
    pub envelope: TaskEnvelope,
    /// Its record (status, attempts, ...; no value).
    pub record: TaskRecord,
    /// Its place in the queues.
    pub seq: u64,
    /// Its current attempt (1 = the first).
    pub attempt: u32,
    /// Hand-outs to a worker so far.
    pub deliveries: u32,
    /// Unix ms before which it must not run.
    pub not_before_ms: u64,
    /// Times a worker holding it was lost.
    pub lost: u32,
    /// The lease of its latest assignment.
    pub lease: Option<LeaseToken>,
    /// The worker it is assigned to, if any.
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
    pub tasks: Vec<StoredTask>,
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
    pub tasks: Vec<(TaskId, Option<StoredTask>)>,
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

    /// How many rows it writes or deletes.
    pub fn len(&self) -> usize {
        self.tasks.len()
            + self.results.len()
            + self.dead_letters.len()
            + self.periodic.len()
            + self.workers.len()
            + self.names.len()
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

/// The stored form of a task: the envelope and record with the bytes serde skips
/// (payload, value) carried beside them.
#[derive(Serialize, Deserialize)]
struct TaskRow {
    envelope: TaskEnvelope,
    payload: Vec<u8>,
    record: TaskRecord,
    seq: u64,
    attempt: u32,
    deliveries: u32,
    not_before_ms: u64,
    lost: u32,
    lease: Option<LeaseToken>,
    holder: Option<WorkerId>,
    cancel_requested: bool,
    epoch: u64,
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

fn task_row(task: &StoredTask) -> TaskRow {
    TaskRow {
        envelope: task.envelope.clone(),
        payload: task.envelope.payload.to_vec(),
        record: task.record.clone(),
        seq: task.seq,
        attempt: task.attempt,
        deliveries: task.deliveries,
        not_before_ms: task.not_before_ms,
        lost: task.lost,
        lease: task.lease,
        holder: task.holder.clone(),
        cancel_requested: task.cancel_requested,
        epoch: task.epoch,
    }
}

fn from_task_row(row: TaskRow) -> StoredTask {
    let mut envelope = row.envelope;
    envelope.payload = Bytes::from(row.payload);
    StoredTask {
        envelope,
        record: row.record,
        seq: row.seq,
        attempt: row.attempt,
        deliveries: row.deliveries,
        not_before_ms: row.not_before_ms,
        lost: row.lost,
        lease: row.lease,
        holder: row.holder,
        cancel_requested: row.cancel_requested,
        epoch: row.epoch,
    }
}
