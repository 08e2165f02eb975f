//! [`DeadLetters`]: tasks that failed because the workers running them kept getting
//! lost, kept with their envelope so they can be replayed; the oldest are dropped past
//! a bound. Keyed by the task's sequence number (oldest first).

use std::collections::BTreeMap;

use crate::protocol::{TaskEnvelope, TaskId, TaskRecord};

/// The dead letters.
#[derive(Debug)]
pub struct DeadLetters {
    by_key: BTreeMap<u64, (TaskRecord, TaskEnvelope)>,
    max: usize,
}

impl DeadLetters {
    /// At most `max` kept.
    pub fn new(max: usize) -> Self {
        DeadLetters {
            by_key: BTreeMap::new(),
            max: max.max(1),
        }
    }

    /// Keeps `record` (its final failure) and `envelope` (to replay) under `key`;
    /// returns the keys of the oldest ones dropped to stay within the bound.
    pub fn insert(&mut self, key: u64, record: TaskRecord, envelope: TaskEnvelope) -> Vec<u64> {
        self.by_key.insert(key, (record, envelope));
        let mut dropped = Vec::new();
        while self.by_key.len() > self.max {
            match self.by_key.pop_first() {
                Some((oldest, _)) => dropped.push(oldest),
                None => break,
            }
        }
        dropped
    }

    /// The key of task `id`'s dead letter, if it is one.
    pub fn key_of(&self, id: &TaskId) -> Option<u64> {
        self.by_key
            .iter()
            .find(|(_, (r, _))| r.task_id == *id)
            .map(|(k, _)| *k)
    }

    /// The dead letter under `key`.
    pub fn get(&self, key: u64) -> Option<&(TaskRecord, TaskEnvelope)> {
        self.by_key.get(&key)
    }

    /// Takes the dead letter under `key` out.
    pub fn remove(&mut self, key: u64) -> Option<(TaskRecord, TaskEnvelope)> {
        self.by_key.remove(&key)
    }

    /// Their records, oldest first.
    pub fn records(&self) -> Vec<TaskRecord> {
        self.by_key.values().map(|(r, _)| r.clone()).collect()
    }

    /// The highest key, if any.
    pub fn last_key(&self) -> Option<u64> {
        self.by_key.last_key_value().map(|(k, _)| *k)
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// None.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::protocol::{Codec, TaskStatus};

    fn letter(name: &str) -> (TaskRecord, TaskEnvelope) {
        let envelope = TaskEnvelope::new(name, Codec::Json, Bytes::from_static(b"[]"));
        let record = {
            let mut value = TaskRecord::new(envelope.id, name, TaskStatus::Failure, Codec::Json);
            value.error = None;
            value.worker_id = None;
            value.attempts = 1;
            value.delivery_count = 3;
            value.submitted_ms = 0;
            value.started_ms = None;
            value.completed_ms = None;
            value.value = Bytes::new();
            value
        };
        (record, envelope)
    }

    #[test]
    fn bounded_oldest_first_and_found_by_task() {
        let mut d = DeadLetters::new(2);
        let (a, b, c) = (letter("a"), letter("b"), letter("c"));
        assert!(d.insert(5, a.0.clone(), a.1.clone()).is_empty());
        assert!(d.insert(9, b.0.clone(), b.1.clone()).is_empty());
        assert_eq!(d.insert(12, c.0.clone(), c.1.clone()), vec![5]);
        assert_eq!(d.len(), 2);
        assert_eq!(d.key_of(&c.0.task_id), Some(12));
        assert_eq!(d.key_of(&a.0.task_id), None);
        assert_eq!(d.last_key(), Some(12));
        let names: Vec<String> = d.records().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["b", "c"]);
        assert!(d.remove(9).is_some());
        assert!(d.get(9).is_none());
    }
}
