//! The dispatcher's side of `--data-dir`: what changed since the last commit
//! ([`Dispatcher::take_changes`]), the snapshot a start resumes from
//! ([`Dispatcher::restore`]), and what a failed commit undoes
//! ([`Dispatcher::commit_failed`]).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    time::Duration,
};

use tracing::warn;

use super::{Dispatcher, Now};
use crate::{
    control_plane::store::{Changes, Snapshot},
    protocol::{TaskEnvelope, TaskId, TaskRecord, TaskStatus, WorkerId, WorkerSecret},
};

/// What changed since the last commit (with `durable` only).
#[derive(Debug, Default)]
pub(super) struct Changed {
    /// Tasks put, or (when no longer held) finished: their row goes, their result
    /// comes.
    pub tasks: crate::control_plane::TaskSet,
    /// Dead letters added or removed.
    pub dead_letters: BTreeSet<u64>,
    /// Periodic schedules that fired.
    pub periodic: HashSet<String>,
    /// Worker identities registered (`Some`) or forgotten.
    pub workers: HashMap<WorkerId, Option<WorkerSecret>>,
    /// Results dropped from the cache whose rows a failed commit did not delete.
    pub dropped_results: Vec<TaskId>,
    /// Tasks accepted (new) since the last commit.
    pub accepted: Vec<TaskId>,
    /// Dead letters replayed since the last commit (so a failed commit can put them
    /// back).
    pub replayed: Vec<Replayed>,
    /// Task names served for the first time.
    pub names: Vec<String>,
}

/// A dead letter taken out to be replayed: its key, final record and envelope.
pub(super) type Replayed = (TaskId, u64, TaskRecord, TaskEnvelope);

/// What a commit would make durable for the first time: the tasks it accepts, and the
/// dead letters replayed into them. If it fails, those are undone.
#[derive(Debug, Default)]
pub struct Unsaved {
    accepted: Vec<TaskId>,
    replayed: Vec<Replayed>,
}

impl Unsaved {
    /// The tasks it accepts.
    pub fn tasks(&self) -> &[TaskId] {
        &self.accepted
    }
}

/// The most task names a data directory remembers as served.
pub const MAX_SERVED_NAMES: usize = 10_000;

/// What a start resumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Tasks not final.
    pub tasks: usize,
    /// Of those, assigned to a worker when the store was written.
    pub assigned: usize,
    /// Finished results.
    pub results: usize,
    /// Dead letters.
    pub dead_letters: usize,
    /// Worker identities.
    pub workers: usize,
}

impl Dispatcher {
    pub(super) fn task_changed(&mut self, id: TaskId) {
        if self.config.durable {
            self.changed.tasks.insert(id);
        }
    }

    pub(super) fn dead_letter_changed(&mut self, key: u64) {
        if self.config.durable {
            self.changed.dead_letters.insert(key);
        }
    }

    /// Worker `id` serves `names`: the new ones are recorded, so that after a restart
    /// their submissions wait for a worker instead of being refused (at most
    /// [`MAX_SERVED_NAMES`] are kept).
    pub(super) fn names_served<'a>(&mut self, names: impl Iterator<Item = &'a str>) {
        if !self.config.durable {
            return;
        }
        for name in names {
            if self.served_names.len() >= MAX_SERVED_NAMES {
                break;
            }
            if !self.served_names.contains(name) {
                self.served_names.insert(name.to_string());
                self.changed.names.push(name.to_string());
            }
        }
    }

    pub(super) fn worker_changed(&mut self, id: &WorkerId, secret: Option<WorkerSecret>) {
        if self.config.durable {
            self.changed.workers.insert(id.clone(), secret);
        }
    }

    /// Whether anything changed since the last [`Self::take_changes`].
    pub fn has_changes(&self) -> bool {
        let c = &self.changed;
        self.cache.has_dropped()
            || !(c.tasks.is_empty()
                && c.dropped_results.is_empty()
                && c.names.is_empty()
                && c.dead_letters.is_empty()
                && c.periodic.is_empty()
                && c.workers.is_empty())
    }

    /// What changed since the last call, as rows for the store (empty unless durable),
    /// and which tasks among them are newly accepted.
    pub fn take_changes(&mut self) -> (Changes, Unsaved) {
        let mut changes = Changes::default();
        if !self.config.durable {
            return (changes, Unsaved::default());
        }
        let changed = std::mem::take(&mut self.changed);
        let unsaved = Unsaved {
            accepted: changed.accepted,
            replayed: changed.replayed,
        };
        for id in changed.tasks {
            match self.tasks.get(&id) {
                Some(entry) => changes.tasks.push((id, Some(entry.clone()))),
                None => {
                    changes.tasks.push((id, None));
                    if let Some(record) = self.cache.peek(&id) {
                        changes.results.push((id, Some(record.clone())));
                    }
                }
            }
        }
        let mut dropped = changed.dropped_results;
        dropped.extend(self.cache.take_dropped());
        for id in dropped {
            if self.cache.peek(&id).is_none() {
                changes.results.push((id, None));
            }
        }
        for key in changed.dead_letters {
            let letter = self.dead_letters.get(key).cloned();
            changes.dead_letters.push((key, letter));
        }
        for name in changed.periodic {
            if let Some(place) = self.periodic.place(&name) {
                changes.periodic.push((name, place));
            }
        }
        changes.workers = changed.workers.into_iter().collect();
        changes.names = changed
            .names
            .into_iter()
            .map(|n| (n, self.now.unix_ms))
            .collect();
        (changes, unsaved)
    }

    /// Resumes from what the store held: tasks back in their queues at their old
    /// places (or on their schedules), tasks that were assigned held for their worker
    /// (parked until it registers again with its secret and claims them by lease, or
    /// until the inactivity limit sends them back to the queue), results in the
    /// cache, dead letters, periodic places and worker identities.
    pub fn restore(&mut self, snapshot: Snapshot, now: Now) -> Restored {
        self.now = now;
        self.epoch = snapshot.epoch;
        let mut restored = Restored {
            results: snapshot.results.len(),
            dead_letters: snapshot.dead_letters.len(),
            workers: snapshot.workers.len(),
            ..Restored::default()
        };
        let secrets: HashMap<WorkerId, WorkerSecret> = snapshot.workers.into_iter().collect();
        // Only workers that held tasks are parked for their return; an idle worker's
        // identity is simply forgotten (it registers as new).
        let mut held: HashMap<WorkerId, crate::control_plane::TaskSet> = HashMap::new();
        for (key, record, envelope) in snapshot.dead_letters {
            for dropped in self.dead_letters.insert(key, record, envelope) {
                // Past the bound: its row goes with the first commit.
                self.dead_letter_changed(dropped);
            }
        }
        // Dead letters are keyed by their task's sequence number: new tasks must not
        // reuse one.
        if let Some(last) = self.dead_letters.last_key() {
            self.next_seq = self.next_seq.max(last.saturating_add(1));
        }
        for record in snapshot.results {
            // Its time-to-live counts from when it finished, not from this start.
            let age = Duration::from_millis(
                now.unix_ms
                    .saturating_sub(record.completed_ms.unwrap_or(now.unix_ms)),
            );
            let stored_at = now.at.checked_sub(age).unwrap_or(now.at);
            self.cache.insert(record, stored_at);
        }
        self.periodic.restore(snapshot.periodic);
        for (name, _) in snapshot.names {
            self.served_names.insert(name.clone());
            self.served_before.insert(name);
        }
        let mut tasks = snapshot.tasks;
        tasks.sort_by_key(|t| t.seq);
        for mut entry in tasks {
            let id = entry.envelope.id;
            self.next_seq = self.next_seq.max(entry.seq.saturating_add(1));
            match &entry.holder {
                Some(worker) => {
                    restored.assigned += 1;
                    held.entry(worker.clone()).or_default().insert(id);
                }
                None => match entry.record.status {
                    TaskStatus::Scheduled | TaskStatus::Retrying => {
                        let hold_ms = entry.not_before_ms.saturating_sub(now.unix_ms);
                        let due = self.mono_ms(now).saturating_add(hold_ms);
                        self.scheduled.insert(due, entry.seq, id);
                    }
                    _ => {
                        entry.record.status = TaskStatus::Queued;
                        self.queues.push(
                            entry.envelope.priority,
                            &entry.envelope.name,
                            entry.seq,
                            id,
                        );
                    }
                },
            }
            self.tasks.insert(entry, None);
            restored.tasks += 1;
        }
        for (worker, ids) in held {
            let secret = secrets.get(&worker).copied().unwrap_or_else(|| {
                warn!(%worker, "no stored identity for a worker holding tasks: they go back to the queue after the inactivity limit");
                WorkerSecret::new()
            });
            self.workers.restore_parked(worker, secret, ids, now.at);
        }
        // Rows that were evicted while loading are deleted with the first commit.
        restored
    }

    /// A commit failed. The tasks it would have accepted (`unsaved`) were never
    /// durable: they are dropped, and their submitters told so; everything else it
    /// carried is written again with the next commit, and submissions are refused
    /// (with `error`) until a commit succeeds.
    pub fn commit_failed(&mut self, changes: &Changes, unsaved: &Unsaved, error: String) {
        for id in &unsaved.accepted {
            self.forget(*id);
        }
        self.put_back(&unsaved.replayed);
        let unsaved: HashSet<&TaskId> = unsaved.accepted.iter().collect();
        for (id, _) in &changes.tasks {
            if !unsaved.contains(id) {
                self.changed.tasks.insert(*id);
            }
        }
        for (id, record) in &changes.results {
            match record {
                Some(_) => {
                    self.changed.tasks.insert(*id);
                }
                // A row that was to go (evicted from the cache) goes next time.
                None => self.changed.dropped_results.push(*id),
            }
        }
        self.changed
            .dead_letters
            .extend(changes.dead_letters.iter().map(|(k, _)| *k));
        self.changed
            .periodic
            .extend(changes.periodic.iter().map(|(n, _)| n.clone()));
        for (id, secret) in &changes.workers {
            self.changed.workers.entry(id.clone()).or_insert(*secret);
        }
        self.changed
            .names
            .extend(changes.names.iter().map(|(n, _)| n.clone()));
        self.store_error = Some(error);
    }

    /// While the store cannot be written: drops the tasks accepted since the last
    /// commit (they are not on disk and will not be soon) and returns their ids, so
    /// their submitters are told.
    pub fn drop_unsaved_accepted(&mut self) -> Vec<TaskId> {
        let unsaved = std::mem::take(&mut self.changed.accepted);
        for id in &unsaved {
            self.forget(*id);
        }
        let replayed = std::mem::take(&mut self.changed.replayed);
        self.put_back(&replayed);
        unsaved
    }

    /// Dead letters whose replay was not saved are dead letters again (with their
    /// result), as if never replayed.
    fn put_back(&mut self, replayed: &[Replayed]) {
        for (id, key, record, envelope) in replayed {
            if self.tasks.contains(id) {
                continue;
            }
            self.dead_letters
                .insert(*key, record.clone(), envelope.clone());
            self.dead_letter_changed(*key);
            self.cache.insert(record.clone(), self.now.at);
        }
    }

    /// Why the store cannot be written, while it cannot.
    pub fn store_error(&self) -> Option<&str> {
        self.store_error.as_deref()
    }

    /// A commit succeeded: submissions are accepted again.
    pub fn commit_succeeded(&mut self) {
        self.store_error = None;
    }

    /// Drops a task as if it had never been accepted.
    fn forget(&mut self, id: TaskId) {
        if !self.tasks.contains(&id) {
            // Finished (cancelled, say) before its acceptance failed to be written:
            // its result goes too, so the id is free again.
            self.cache.remove(&id);
            return;
        }
        self.withdraw(id);
        // Its waiters are forgotten with it: its submitter is told it was refused (the
        // commit's answer); anyone else waiting for it hears nothing more.
        let Some(super::task_store::Released {
            entry,
            last_of_name,
            ..
        }) = self.tasks.remove(&id)
        else {
            return;
        };
        if last_of_name {
            self.unserved.remove(&entry.envelope.name);
        }
        if let Some(worker) = &entry.holder {
            self.workers.release(worker, &id, false);
        }
        self.changed.tasks.remove(&id);
    }
}
