//! [`TaskStore`]: the tasks the control plane holds (accepted, not final), each a
//! [`TaskEntry`]: the task and its lease. It keeps the totals the submission limits
//! and the unserved-name check read: payload bytes held, and tasks held per name.

use std::collections::HashMap;

use crate::protocol::{LeaseToken, TaskEnvelope, TaskId, TaskRecord, WorkerId};

/// One held task: what the client submitted (as accepted: a countdown turned into
/// `not_before_ms`), kept as it came, and what the control plane decided for it since
/// (attempt, deliveries, when it may run next, who holds it under which lease). The
/// envelope a worker gets is built from both at each hand-out.
#[derive(Debug)]
pub(super) struct TaskEntry {
    /// The submission.
    pub envelope: TaskEnvelope,
    pub record: TaskRecord,
    /// Its place in the queues (and its dead-letter key).
    pub seq: u64,
    /// 1 for the first attempt, 2 for the first retry, ...
    pub attempt: u32,
    /// Hand-outs to a worker so far.
    pub deliveries: u32,
    /// Unix ms before which it must not run (its eta or countdown, then each retry's).
    pub not_before_ms: u64,
    /// The worker running it.
    pub holder: Option<WorkerId>,
    /// When it is due, in the dispatcher's monotonic milliseconds (see `mono_ms`).
    pub due_ms: Option<u64>,
    pub cancel_requested: bool,
    /// Times a worker was lost while holding it (retries do not count).
    pub lost: u32,
    /// The lease of its latest assignment: only an outcome (or a reconnecting
    /// worker's claim) with this token counts. Kept after a lost worker's task goes
    /// back to the queue, so that worker can still answer until someone else takes it.
    pub lease: Option<LeaseToken>,
    /// The epoch of the control plane that gave that lease.
    pub lease_epoch: u64,
}

/// The held tasks, by id.
#[derive(Debug, Default)]
pub(super) struct TaskStore {
    entries: HashMap<TaskId, TaskEntry>,
    /// Payload bytes held.
    bytes: u64,
    /// Tasks held, by name.
    by_name: HashMap<String, usize>,
}

impl TaskStore {
    pub fn get(&self, id: &TaskId) -> Option<&TaskEntry> {
        self.entries.get(id)
    }

    pub fn get_mut(&mut self, id: &TaskId) -> Option<&mut TaskEntry> {
        self.entries.get_mut(id)
    }

    pub fn contains(&self, id: &TaskId) -> bool {
        self.entries.contains_key(id)
    }

    /// Holds `entry` (replacing one under the same id).
    pub fn insert(&mut self, entry: TaskEntry) {
        let id = entry.envelope.id;
        // Replacing keeps the totals right.
        let _ = self.remove(&id);
        self.bytes += entry.envelope.payload.len() as u64;
        // No new String per task while the name is already held.
        match self.by_name.get_mut(&entry.envelope.name) {
            Some(n) => *n += 1,
            None => {
                self.by_name.insert(entry.envelope.name.clone(), 1);
            }
        }
        self.entries.insert(id, entry);
    }

    /// Stops holding task `id`; with it, whether it was the last held task of its name.
    pub fn remove(&mut self, id: &TaskId) -> Option<(TaskEntry, bool)> {
        let entry = self.entries.remove(id)?;
        self.bytes = self
            .bytes
            .saturating_sub(entry.envelope.payload.len() as u64);
        let mut last = false;
        if let Some(n) = self.by_name.get_mut(&entry.envelope.name) {
            *n -= 1;
            if *n == 0 {
                self.by_name.remove(&entry.envelope.name);
                last = true;
            }
        }
        Some((entry, last))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Payload bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Is any task of `name` held?
    pub fn holds_name(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The names of the tasks held.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.by_name.keys()
    }

    pub fn ids(&self) -> Vec<TaskId> {
        self.entries.keys().copied().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&TaskId, &TaskEntry)> {
        self.entries.iter()
    }
}

impl std::ops::Index<&TaskId> for TaskStore {
    type Output = TaskEntry;

    /// The entry of a task known to be held (panics otherwise, like a map's index).
    fn index(&self, id: &TaskId) -> &TaskEntry {
        &self.entries[id]
    }
}
