//! [`RedbStore`]: the [`Store`] in one `redb` file, `DIR/fastworker.redb`.
//!
//! redb because it is an embedded, pure-Rust, ACID key-value store with a stable file
//! format: each commit is one transaction made durable with fsync before it returns
//! (what group commit needs), a crash at any point leaves the last committed state,
//! and it takes a lock on the file so two processes cannot open it at once.
//!
//! Tables: `meta` (`schema`, `epoch`), `tasks` and `results` (by the 16 bytes of the
//! task id), `dead_letters` (by key), `periodic` (by task name), `workers` (by worker
//! id). Rows are bincode.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};

use super::{
    from_record_row, from_task_row, record_row, task_row, Changes, DeadLetterRow, PeriodicPlace,
    RecordRow, Snapshot, Store, StoreError, TaskRow, SCHEMA_VERSION,
};
use crate::protocol::{WorkerId, WorkerSecret};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const TASKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tasks");
const RESULTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("results");
const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
const PERIODIC: TableDefinition<&str, &[u8]> = TableDefinition::new("periodic");
const WORKERS: TableDefinition<&str, &[u8]> = TableDefinition::new("workers");
const NAMES: TableDefinition<&str, u64> = TableDefinition::new("task_names");

/// The file in the data directory.
pub const FILE_NAME: &str = "fastworker.redb";

/// A data directory opened by this process.
pub struct RedbStore {
    db: Database,
    dir: PathBuf,
    epoch: u64,
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`, checks its schema and takes the next
    /// epoch. A damaged file is an error, not a panic (redb panics on some damage).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        quietly_catching(dir, "database", || Self::open_unguarded(dir))
    }

    fn open_unguarded(dir: &Path) -> Result<Self, StoreError> {
        let shown = dir.display().to_string();
        let fail = |reason: String| StoreError::Database {
            dir: shown.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create it: {e}")))?;
        let db = Database::create(dir.join(FILE_NAME)).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                fail("another control plane is using it".to_string())
            }
            other => fail(other.to_string()),
        })?;
        let txn = db.begin_write().map_err(|e| fail(e.to_string()))?;
        let epoch = {
            let mut meta = txn.open_table(META).map_err(|e| fail(e.to_string()))?;
            let schema = meta
                .get("schema")
                .map_err(|e| fail(e.to_string()))?
                .map(|v| v.value());
            match schema {
                Some(found) if found > SCHEMA_VERSION => {
                    return Err(StoreError::NewerSchema { dir: shown, found });
                }
                // Version 1 is the first: nothing older to upgrade yet.
                _ => {
                    meta.insert("schema", SCHEMA_VERSION)
                        .map_err(|e| fail(e.to_string()))?;
                }
            }
            let epoch = meta
                .get("epoch")
                .map_err(|e| fail(e.to_string()))?
                .map_or(0, |v| v.value())
                + 1;
            meta.insert("epoch", epoch)
                .map_err(|e| fail(e.to_string()))?;
            // Every table exists from the first start on, so reads never miss one.
            txn.open_table(TASKS).map_err(|e| fail(e.to_string()))?;
            txn.open_table(RESULTS).map_err(|e| fail(e.to_string()))?;
            txn.open_table(DEAD_LETTERS)
                .map_err(|e| fail(e.to_string()))?;
            txn.open_table(PERIODIC).map_err(|e| fail(e.to_string()))?;
            txn.open_table(WORKERS).map_err(|e| fail(e.to_string()))?;
            txn.open_table(NAMES).map_err(|e| fail(e.to_string()))?;
            epoch
        };
        txn.commit().map_err(|e| fail(e.to_string()))?;
        Ok(RedbStore {
            db,
            dir: dir.to_path_buf(),
            epoch,
        })
    }

    fn fail(&self, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Database {
            dir: self.dir.display().to_string(),
            reason: reason.to_string(),
        }
    }

    fn decode<T: DeserializeOwned>(&self, what: &str, bytes: &[u8]) -> Result<T, StoreError> {
        bincode::deserialize(bytes).map_err(|e| StoreError::Corrupt {
            dir: self.dir.display().to_string(),
            what: what.to_string(),
            reason: e.to_string(),
        })
    }

    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, StoreError> {
        bincode::serialize(value).map_err(|e| self.fail(format!("cannot encode a row: {e}")))
    }
}

/// Runs `f`, turning a panic inside it (redb panics on some damaged files) into an
/// error naming `what`, without the panic message and backtrace on stderr. For
/// start-up only: the panic hook is process-wide.
fn quietly_catching<T>(
    dir: &Path,
    what: &str,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    result.unwrap_or_else(|payload| Err(damaged(dir, what, payload.as_ref())))
}

/// The error for a panic (with `payload`) while reading `what`.
fn damaged(dir: &Path, what: &str, payload: &(dyn std::any::Any + Send)) -> StoreError {
    let reason = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown damage".to_string());
    StoreError::Corrupt {
        dir: dir.display().to_string(),
        what: what.to_string(),
        reason: format!("the file is damaged ({reason}); restore it from a backup or move it away to start empty"),
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        quietly_catching(&self.dir, "database", || self.load_unguarded())
    }

    fn commit(&mut self, changes: &Changes) -> Result<(), StoreError> {
        // Not quietly: this runs while the control plane serves; a panic's message
        // stays in the log, and the commit counts as failed.
        let dir = self.dir.clone();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.commit_unguarded(changes)
        }))
        .unwrap_or_else(|payload| Err(damaged(&dir, "database", payload.as_ref())))
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl RedbStore {
    fn load_unguarded(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let mut snapshot = Snapshot {
            epoch: self.epoch,
            ..Snapshot::default()
        };
        let tasks = txn.open_table(TASKS).map_err(|e| self.fail(e))?;
        for row in tasks.iter().map_err(|e| self.fail(e))? {
            let (_, value) = row.map_err(|e| self.fail(e))?;
            let row: TaskRow = self.decode("task", value.value())?;
            snapshot.tasks.push(from_task_row(row));
        }
        let results = txn.open_table(RESULTS).map_err(|e| self.fail(e))?;
        for row in results.iter().map_err(|e| self.fail(e))? {
            let (_, value) = row.map_err(|e| self.fail(e))?;
            let row: RecordRow = self.decode("result", value.value())?;
            snapshot.results.push(from_record_row(row));
        }
        snapshot.results.sort_by_key(|r| r.completed_ms);
        let dead = txn.open_table(DEAD_LETTERS).map_err(|e| self.fail(e))?;
        for row in dead.iter().map_err(|e| self.fail(e))? {
            let (key, value) = row.map_err(|e| self.fail(e))?;
            let row: DeadLetterRow = self.decode("dead letter", value.value())?;
            let mut envelope = row.envelope;
            envelope.payload = bytes::Bytes::from(row.payload);
            snapshot
                .dead_letters
                .push((key.value(), from_record_row(row.record), envelope));
        }
        let periodic = txn.open_table(PERIODIC).map_err(|e| self.fail(e))?;
        for row in periodic.iter().map_err(|e| self.fail(e))? {
            let (name, value) = row.map_err(|e| self.fail(e))?;
            let place: PeriodicPlace = self.decode("periodic schedule", value.value())?;
            snapshot.periodic.push((name.value().to_string(), place));
        }
        let workers = txn.open_table(WORKERS).map_err(|e| self.fail(e))?;
        for row in workers.iter().map_err(|e| self.fail(e))? {
            let (id, value) = row.map_err(|e| self.fail(e))?;
            let secret: WorkerSecret = self.decode("worker", value.value())?;
            snapshot.workers.push((WorkerId::new(id.value()), secret));
        }
        let names = txn.open_table(NAMES).map_err(|e| self.fail(e))?;
        for row in names.iter().map_err(|e| self.fail(e))? {
            let (name, seen) = row.map_err(|e| self.fail(e))?;
            snapshot
                .names
                .push((name.value().to_string(), seen.value()));
        }
        Ok(snapshot)
    }

    fn commit_unguarded(&mut self, changes: &Changes) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut tasks = txn.open_table(TASKS).map_err(|e| self.fail(e))?;
            for (id, task) in &changes.tasks {
                let key = id.0.as_bytes().as_slice();
                match task {
                    Some(task) => {
                        let row = self.encode(&task_row(task))?;
                        tasks
                            .insert(key, row.as_slice())
                            .map_err(|e| self.fail(e))?;
                    }
                    None => {
                        tasks.remove(key).map_err(|e| self.fail(e))?;
                    }
                }
            }
            let mut results = txn.open_table(RESULTS).map_err(|e| self.fail(e))?;
            for (id, record) in &changes.results {
                let key = id.0.as_bytes().as_slice();
                match record {
                    Some(record) => {
                        let row = self.encode(&record_row(record))?;
                        results
                            .insert(key, row.as_slice())
                            .map_err(|e| self.fail(e))?;
                    }
                    None => {
                        results.remove(key).map_err(|e| self.fail(e))?;
                    }
                }
            }
            let mut dead = txn.open_table(DEAD_LETTERS).map_err(|e| self.fail(e))?;
            for (key, letter) in &changes.dead_letters {
                match letter {
                    Some((record, envelope)) => {
                        let row = self.encode(&DeadLetterRow {
                            record: record_row(record),
                            envelope: envelope.clone(),
                            payload: envelope.payload.to_vec(),
                        })?;
                        dead.insert(*key, row.as_slice())
                            .map_err(|e| self.fail(e))?;
                    }
                    None => {
                        dead.remove(*key).map_err(|e| self.fail(e))?;
                    }
                }
            }
            let mut periodic = txn.open_table(PERIODIC).map_err(|e| self.fail(e))?;
            for (name, place) in &changes.periodic {
                let row = self.encode(place)?;
                periodic
                    .insert(name.as_str(), row.as_slice())
                    .map_err(|e| self.fail(e))?;
            }
            let mut workers = txn.open_table(WORKERS).map_err(|e| self.fail(e))?;
            for (id, secret) in &changes.workers {
                match secret {
                    Some(secret) => {
                        let row = self.encode(secret)?;
                        workers
                            .insert(id.as_str(), row.as_slice())
                            .map_err(|e| self.fail(e))?;
                    }
                    None => {
                        workers.remove(id.as_str()).map_err(|e| self.fail(e))?;
                    }
                }
            }
            let mut names = txn.open_table(NAMES).map_err(|e| self.fail(e))?;
            for (name, seen) in &changes.names {
                names
                    .insert(name.as_str(), *seen)
                    .map_err(|e| self.fail(e))?;
            }
        }
        txn.commit().map_err(|e| self.fail(e))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::control_plane::store::TaskEntry;
    use crate::protocol::{
        Codec, LeaseToken, TaskEnvelope, TaskId, TaskRecord, TaskStatus, WorkerSecret,
    };

    fn stored(name: &str) -> TaskEntry {
        let envelope = TaskEnvelope::new(name, Codec::Json, Bytes::from_static(b"[1,2]"));
        TaskEntry {
            record: {
                let mut value =
                    TaskRecord::new(envelope.id, name, TaskStatus::Running, Codec::Json);
                value.error = None;
                value.worker_id = Some(WorkerId::new("w"));
                value.attempts = 1;
                value.delivery_count = 1;
                value.submitted_ms = 1;
                value.started_ms = Some(2);
                value.completed_ms = None;
                value.value = Bytes::new();
                value
            },
            envelope,
            seq: 7,
            attempt: 1,
            deliveries: 1,
            not_before_ms: 0,
            lost: 1,
            lease: Some(LeaseToken::new()),
            holder: Some(WorkerId::new("w")),
            cancel_requested: true,
            epoch: 2,
        }
    }

    #[test]
    fn what_is_committed_is_loaded_again_with_a_higher_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let task = stored("add");
        let mut result = stored("echo").record;
        result.status = TaskStatus::Success;
        result.value = Bytes::from_static(b"\"hi\"");
        let secret = WorkerSecret::new();
        let first_epoch;
        {
            let mut store = RedbStore::open(dir.path()).expect("open");
            first_epoch = store.epoch();
            let changes = Changes {
                tasks: vec![(task.envelope.id, Some(task.clone()))],
                results: vec![(result.task_id, Some(result.clone()))],
                dead_letters: vec![(3, Some((result.clone(), task.envelope.clone())))],
                periodic: vec![(
                    "heartbeat".into(),
                    PeriodicPlace {
                        next_ms: Some(99),
                        runs: 4,
                        last_task: Some(TaskId::new()),
                    },
                )],
                workers: vec![(WorkerId::new("w"), Some(secret))],
                names: vec![("add".into(), 5)],
            };
            store.commit(&changes).expect("commit");
            assert!(
                RedbStore::open(dir.path()).is_err(),
                "a second process may not open it"
            );
        }
        let store = RedbStore::open(dir.path()).expect("reopen");
        assert!(store.epoch() > first_epoch);
        let snapshot = store.load().expect("load");
        assert_eq!(snapshot.tasks, vec![task.clone()]);
        assert_eq!(snapshot.tasks[0].envelope.payload, task.envelope.payload);
        assert_eq!(snapshot.results, vec![result.clone()]);
        assert_eq!(snapshot.results[0].value, result.value);
        assert_eq!(snapshot.dead_letters[0].0, 3);
        assert_eq!(snapshot.dead_letters[0].2.payload, task.envelope.payload);
        assert_eq!(snapshot.periodic[0].1.runs, 4);
        assert_eq!(snapshot.workers, vec![(WorkerId::new("w"), secret)]);
        assert_eq!(snapshot.names, vec![("add".to_string(), 5)]);

        // Deletes.
        let mut store = store;
        store
            .commit(&Changes {
                tasks: vec![(task.envelope.id, None)],
                results: vec![(result.task_id, None), (TaskId::new(), None)],
                workers: vec![(WorkerId::new("w"), None)],
                ..Changes::default()
            })
            .expect("commit");
        let snapshot = store.load().expect("load");
        assert!(snapshot.tasks.is_empty() && snapshot.results.is_empty());
        assert!(snapshot.workers.is_empty());
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = RedbStore::open(dir.path()).expect("open");
            let tasks: Vec<_> = (0..50)
                .map(|_| {
                    let t = stored("add");
                    (t.envelope.id, Some(t))
                })
                .collect();
            store
                .commit(&Changes {
                    tasks,
                    ..Changes::default()
                })
                .expect("commit");
        }
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).expect("read");
        assert!(bytes.len() > 4112, "{} bytes", bytes.len());
        bytes[4096..4112].fill(b'X');
        std::fs::write(&path, bytes).expect("write");
        let result = RedbStore::open(dir.path()).and_then(|s| s.load());
        let err = result.expect_err("a damaged file is refused");
        assert!(err.to_string().contains("data directory"), "{err}");
    }

    #[test]
    fn a_newer_schema_is_refused_naming_both_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = Database::create(dir.path().join(FILE_NAME)).expect("create");
            let txn = db.begin_write().expect("txn");
            txn.open_table(META)
                .expect("meta")
                .insert("schema", SCHEMA_VERSION + 1)
                .expect("insert");
            txn.commit().expect("commit");
        }
        let err = RedbStore::open(dir.path()).err().expect("refused");
        let text = err.to_string();
        assert!(
            text.contains(&format!("schema version {}", SCHEMA_VERSION + 1))
                && text.contains(&format!("reads schema version {SCHEMA_VERSION}")),
            "{text}"
        );
    }
}
