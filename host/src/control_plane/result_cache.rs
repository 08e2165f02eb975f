//! [`ResultCache`]: final task records, least-recently-read evicted first, each kept
//! at most `ttl` after it was stored. A read refreshes recency; an expired record reads
//! as absent and is swept periodically. Built on the `lru` crate (exact LRU order,
//! O(1) operations) with the TTL check on top.

use std::{
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use lru::LruCache;

use crate::protocol::{TaskId, TaskRecord};

/// The cache.
pub struct ResultCache {
    entries: LruCache<TaskId, (Instant, TaskRecord)>,
    ttl: Duration,
}

impl ResultCache {
    /// A cache of at most `capacity` records (at least 1), each living `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        let capacity = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        ResultCache {
            entries: LruCache::new(capacity),
            ttl,
        }
    }

    /// Stores a final record, evicting the least recently read one when full.
    pub fn insert(&mut self, record: TaskRecord, now: Instant) {
        self.entries.put(record.task_id, (now, record));
    }

    /// The record of `id`, if stored and not expired; refreshes its recency.
    pub fn get(&mut self, id: &TaskId, now: Instant) -> Option<&TaskRecord> {
        let expired = match self.entries.peek(id) {
            None => return None,
            Some((stored, _)) => now.duration_since(*stored) >= self.ttl,
        };
        if expired {
            self.entries.pop(id);
            return None;
        }
        self.entries.get(id).map(|(_, r)| r)
    }

    /// The record of `id` without touching recency (expired or not).
    pub fn peek(&self, id: &TaskId) -> Option<&TaskRecord> {
        self.entries.peek(id).map(|(_, r)| r)
    }

    /// Drops the record of `id`.
    pub fn remove(&mut self, id: &TaskId) -> Option<TaskRecord> {
        self.entries.pop(id).map(|(_, r)| r)
    }

    /// True when `id` is stored and not expired, without touching recency.
    pub fn contains(&self, id: &TaskId, now: Instant) -> bool {
        self.entries
            .peek(id)
            .is_some_and(|(stored, _)| now.duration_since(*stored) < self.ttl)
    }

    /// Drops every expired record; returns how many.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let expired: Vec<TaskId> = self
            .entries
            .iter()
            .filter(|(_, (stored, _))| now.duration_since(*stored) >= self.ttl)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.entries.pop(id);
        }
        expired.len()
    }

    /// Records stored (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.entries.cap().get()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::protocol::{Codec, TaskStatus};

    fn record(n: u8) -> TaskRecord {
        TaskRecord {
            task_id: TaskId(uuid::Uuid::from_bytes([n; 16])),
            name: "add".into(),
            status: TaskStatus::Success,
            codec: Codec::Json,
            error: None,
            worker_id: None,
            attempts: 1,
            delivery_count: 1,
            submitted_ms: 0,
            started_ms: None,
            completed_ms: None,
            value: Bytes::new(),
        }
    }

    #[test]
    fn least_recently_read_is_evicted_first() {
        let now = Instant::now();
        let mut cache = ResultCache::new(2, Duration::from_secs(60));
        cache.insert(record(1), now);
        cache.insert(record(2), now);
        assert!(cache.get(&record(1).task_id, now).is_some()); // 1 is now the freshest
        cache.insert(record(3), now);
        assert!(cache.get(&record(2).task_id, now).is_none());
        assert!(cache.get(&record(1).task_id, now).is_some());
        assert!(cache.get(&record(3).task_id, now).is_some());
    }

    #[test]
    fn expired_records_read_as_absent_and_are_swept() {
        let now = Instant::now();
        let mut cache = ResultCache::new(10, Duration::from_secs(5));
        cache.insert(record(1), now);
        cache.insert(record(2), now + Duration::from_secs(3));
        let later = now + Duration::from_secs(6);
        assert!(cache.get(&record(1).task_id, later).is_none());
        assert_eq!(cache.sweep(later + Duration::from_secs(3)), 1);
        assert!(cache.is_empty());
    }
}
