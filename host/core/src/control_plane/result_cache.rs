//! [`ResultCache`]: final task records, least-recently-read evicted first, bounded by
//! count and by bytes (a record's value, name and error plus a fixed overhead), each
//! kept at most `ttl` after it was stored. A read refreshes recency; an expired record reads
//! as absent and is swept periodically. Built on the `lru` crate (exact LRU order,
//! O(1) operations) with the TTL check on top.

use std::{
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use lru::LruCache;

use crate::protocol::{TaskId, TaskRecord};

/// What a record costs besides its value, name and error: the map entry, the record
/// struct, ids and timestamps.
pub const RECORD_OVERHEAD: u64 = 256;

/// What keeping `record` costs, in bytes.
pub fn cost(record: &TaskRecord) -> u64 {
    RECORD_OVERHEAD
        + record.value.len() as u64
        + record.name.len() as u64
        + record.error.as_ref().map_or(0, |e| e.message.len() as u64)
}

/// The cache.
pub struct ResultCache {
    entries: LruCache<TaskId, (Instant, TaskRecord)>,
    ttl: Duration,
    max_bytes: u64,
    bytes: u64,
    /// Ids of records dropped (evicted, expired, removed), while someone tracks them.
    dropped: Option<Vec<TaskId>>,
    /// What lookups found and what was dropped, since the start.
    stats: CacheStats,
}

/// The cache's counters since the start (for `/metrics` and `/api/cache`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups ([`ResultCache::get`]) that found a live record.
    pub hits: u64,
    /// Lookups that found none (or an expired one).
    pub misses: u64,
    /// Records dropped for room or because they expired.
    pub evictions: u64,
}

impl ResultCache {
    /// A cache of at most `capacity` records (at least 1) and `max_bytes` bytes, each
    /// living `ttl`.
    pub fn new(capacity: usize, max_bytes: u64, ttl: Duration) -> Self {
        let capacity = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        ResultCache {
            entries: LruCache::new(capacity),
            ttl,
            max_bytes,
            bytes: 0,
            dropped: None,
            stats: CacheStats::default(),
        }
    }

    /// From now on, remembers the id of every record dropped, for [`Self::take_dropped`]
    /// (the store deletes them too).
    pub fn track_evictions(&mut self) {
        self.dropped.get_or_insert_with(Vec::new);
    }

    /// The ids of records dropped since the last call (tracking on). An id may since
    /// have been stored again.
    pub fn take_dropped(&mut self) -> Vec<TaskId> {
        self.dropped
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Whether records were dropped since the last [`Self::take_dropped`].
    pub fn has_dropped(&self) -> bool {
        self.dropped.as_ref().is_some_and(|d| !d.is_empty())
    }

    fn note_dropped(&mut self, id: TaskId) {
        if let Some(dropped) = &mut self.dropped {
            dropped.push(id);
        }
    }

    /// Stores a final record, evicting the least recently read ones while it would not
    /// fit. A record larger than the whole byte budget is not kept: false.
    /// A record stored again under its id replaces the old one. While the bytes leave
    /// room, the map is looked up once, by the insertion itself, which gives back the
    /// record it replaces, if any: a fresh id is the usual case, and each lookup at a
    /// random place of a large map costs a cache miss.
    pub fn insert(&mut self, record: TaskRecord, now: Instant) -> bool {
        let size = cost(&record);
        let id = record.task_id;
        if size > self.max_bytes {
            // Nothing is stored under the id any more: an old record goes, and the
            // store forgets it too, or it would come back after a restart.
            self.remove(&id);
            return false;
        }
        if self.bytes + size > self.max_bytes {
            // The old record's bytes count toward the room, so it goes first (replaced,
            // not dropped).
            if let Some((_, old)) = self.entries.pop(&id) {
                self.bytes -= cost(&old);
            }
        }
        while self.bytes + size > self.max_bytes {
            match self.entries.pop_lru() {
                Some((old_id, (_, old))) => {
                    self.bytes -= cost(&old);
                    self.stats.evictions += 1;
                    self.note_dropped(old_id);
                }
                None => break,
            }
        }
        if let Some((old_id, (_, old))) = self.entries.push(id, (now, record)) {
            // The record it replaced, or the least recently read one, evicted for the
            // count.
            self.bytes -= cost(&old);
            if old_id != id {
                self.stats.evictions += 1;
                self.note_dropped(old_id);
            }
        }
        self.bytes += size;
        true
    }

    /// Bytes the stored records cost.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The record of `id`, if stored and not expired; refreshes its recency.
    pub fn get(&mut self, id: &TaskId, now: Instant) -> Option<&TaskRecord> {
        let expired = match self.entries.peek(id) {
            None => {
                self.stats.misses += 1;
                return None;
            }
            Some((stored, _)) => now.duration_since(*stored) >= self.ttl,
        };
        if expired {
            self.stats.misses += 1;
            self.stats.evictions += 1;
            self.remove(id);
            return None;
        }
        self.stats.hits += 1;
        self.entries.get(id).map(|(_, r)| r)
    }

    /// The record of `id` without touching recency (expired or not).
    pub fn peek(&self, id: &TaskId) -> Option<&TaskRecord> {
        self.entries.peek(id).map(|(_, r)| r)
    }

    /// Drops the record of `id`.
    pub fn remove(&mut self, id: &TaskId) -> Option<TaskRecord> {
        let (_, record) = self.entries.pop(id)?;
        self.bytes -= cost(&record);
        self.note_dropped(*id);
        Some(record)
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
            self.remove(id);
        }
        self.stats.evictions += expired.len() as u64;
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

    /// The records kept, most recently read first (expired ones included until swept).
    pub fn iter(&self) -> impl Iterator<Item = &TaskRecord> {
        self.entries.iter().map(|(_, (_, record))| record)
    }

    /// Lookups and drops since the start.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// The byte budget.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// How long a record lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
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
        {
            let mut value = TaskRecord::new(
                TaskId::from_bytes([n; 16]),
                "add",
                TaskStatus::Success,
                Codec::Json,
            );
            value.error = None;
            value.worker_id = None;
            value.attempts = 1;
            value.delivery_count = 1;
            value.submitted_ms = 0;
            value.started_ms = None;
            value.completed_ms = None;
            value.value = Bytes::new();
            value
        }
    }

    #[test]
    fn least_recently_read_is_evicted_first() {
        let now = Instant::now();
        let mut cache = ResultCache::new(2, 1 << 20, Duration::from_secs(60));
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
        let mut cache = ResultCache::new(10, 1 << 20, Duration::from_secs(5));
        cache.insert(record(1), now);
        cache.insert(record(2), now + Duration::from_secs(3));
        let later = now + Duration::from_secs(6);
        assert!(cache.get(&record(1).task_id, later).is_none());
        assert_eq!(cache.sweep(later + Duration::from_secs(3)), 1);
        assert!(cache.is_empty());
    }

    #[test]
    fn a_record_stored_again_replaces_the_old_one_without_evicting_another() {
        let now = Instant::now();
        let mut cache = ResultCache::new(2, u64::MAX, Duration::from_secs(5));
        cache.track_evictions();
        assert!(cache.insert(record(1), now));
        assert!(cache.insert(record(2), now));
        let mut again = record(2);
        again.value = Bytes::from_static(b"12345");
        assert!(cache.insert(again, now));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.bytes(), cost(&record(1)) + cost(&record(2)) + 5);
        assert_eq!(
            cache.peek(&record(2).task_id).map(|r| r.value.len()),
            Some(5)
        );
        assert!(cache.peek(&record(1).task_id).is_some());
        assert_eq!((cache.stats().evictions, cache.take_dropped()), (0, vec![]));
        // Full by count, a fresh id evicts the least recently read.
        assert!(cache.insert(record(3), now));
        assert_eq!(cache.take_dropped(), vec![record(1).task_id]);
        assert_eq!(cache.stats().evictions, 1);
    }

    #[test]
    fn a_record_too_large_for_the_budget_drops_the_one_it_would_replace() {
        let now = Instant::now();
        let mut cache = ResultCache::new(10, 2 * cost(&record(1)), Duration::from_secs(5));
        cache.track_evictions();
        assert!(cache.insert(record(1), now));
        let mut huge = record(1);
        huge.value = Bytes::from(vec![0u8; 10_000]);
        assert!(!cache.insert(huge, now));
        assert_eq!((cache.len(), cache.bytes()), (0, 0));
        // The store is told, so the old result does not come back after a restart.
        assert_eq!(cache.take_dropped(), vec![record(1).task_id]);
    }

    #[test]
    fn bytes_are_bounded_and_counted_back_on_every_removal() {
        let now = Instant::now();
        let big = |n: u8| {
            let mut value = record(n);
            value.value = Bytes::from(vec![0u8; 1000]);
            value
        };
        let one = cost(&big(1));
        let mut cache = ResultCache::new(100, 3 * one, Duration::from_secs(5));
        for n in 1..=5 {
            assert!(cache.insert(big(n), now));
            assert!(cache.bytes() <= 3 * one);
        }
        assert_eq!(cache.len(), 3, "the two least recently used went");
        assert!(cache.get(&big(1).task_id, now).is_none());
        assert!(cache.get(&big(5).task_id, now).is_some());
        // Replacing a record does not count it twice.
        assert!(cache.insert(big(5), now));
        assert_eq!(cache.bytes(), 3 * one);
        cache.remove(&big(5).task_id);
        assert_eq!(cache.bytes(), 2 * one);
        assert_eq!(cache.sweep(now + Duration::from_secs(6)), 2);
        assert_eq!(cache.bytes(), 0);
        // One record larger than the whole budget is not kept.
        let huge = {
            let mut value = record(9);
            value.value = Bytes::from(vec![0u8; 10_000]);
            value
        };
        assert!(!cache.insert(huge, now));
        assert_eq!((cache.len(), cache.bytes()), (0, 0));
    }
}
