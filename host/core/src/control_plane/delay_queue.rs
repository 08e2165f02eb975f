//! [`DelayQueue`]: tasks waiting for a time (a countdown, an eta, a retry delay), by
//! due time on the dispatcher's monotonic clock, ties in submission order.

use std::collections::BTreeMap;

use crate::protocol::TaskId;

/// The tasks not due yet.
#[derive(Debug, Default)]
pub struct DelayQueue {
    by_due: BTreeMap<(u64, u64), TaskId>,
    /// Where each task sits in `by_due`.
    by_task: super::TaskMap<(u64, u64)>,
}

impl DelayQueue {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Holds task `id` (sequence number `seq`) until `due_ms` (moving it if it was
    /// held already).
    pub fn insert(&mut self, due_ms: u64, seq: u64, id: TaskId) {
        self.remove(&id);
        self.by_due.insert((due_ms, seq), id);
        self.by_task.insert(id, (due_ms, seq));
    }

    /// Takes task `id` off; true if it was held.
    pub fn remove(&mut self, id: &TaskId) -> bool {
        match self.by_task.remove(id) {
            Some(key) => self.by_due.remove(&key).is_some(),
            None => false,
        }
    }

    /// Is task `id` held?
    pub fn contains(&self, id: &TaskId) -> bool {
        self.by_task.contains_key(id)
    }

    /// The next task due at or before `now_ms`, taken off.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<TaskId> {
        let (&(due, _), _) = self.by_due.first_key_value()?;
        if due > now_ms {
            return None;
        }
        let (_, id) = self.by_due.pop_first()?;
        self.by_task.remove(&id);
        Some(id)
    }

    /// Tasks held.
    pub fn len(&self) -> usize {
        self.by_due.len()
    }

    /// None held.
    pub fn is_empty(&self) -> bool {
        self.by_due.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_tasks_come_out_in_due_then_submission_order() {
        let ids: Vec<TaskId> = (0..4).map(|_| TaskId::new()).collect();
        let mut q = DelayQueue::new();
        q.insert(200, 1, ids[1]);
        q.insert(100, 3, ids[3]);
        q.insert(200, 0, ids[0]);
        q.insert(300, 2, ids[2]);
        assert_eq!(q.pop_due(99), None);
        assert_eq!(q.pop_due(250), Some(ids[3]));
        assert_eq!(q.pop_due(250), Some(ids[0]));
        assert_eq!(q.pop_due(250), Some(ids[1]));
        assert_eq!(q.pop_due(250), None);
        assert!(!q.contains(&ids[1]));
        assert!(q.contains(&ids[2]));
        assert!(q.remove(&ids[2]));
        assert!(!q.remove(&ids[2]));
        assert!(q.is_empty());
    }
}
