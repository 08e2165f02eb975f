//! [`LocalQueue`]: the tasks handed to this host that wait for one of its slots.
//!
//! A control plane that hands out prefetched tasks gives a subworker more tasks than
//! it has slots when its tasks are short, so it never waits a round trip between two
//! of them. Those wait here and start in priority order (then in the order they came),
//! so a critical task handed out behind a queue of low ones starts first.

use std::collections::BTreeMap;

use crate::protocol::{LeaseToken, Priority, TaskEnvelope, TaskId};

/// A task waiting for a slot.
#[derive(Debug)]
pub(crate) struct Waiting {
    /// The task.
    pub task: TaskEnvelope,
    /// The lease its outcome carries.
    pub lease: LeaseToken,
    /// The control plane counts it as handed out ahead (`assigned`): its start is
    /// reported.
    pub prefetched: bool,
}

/// Waiting tasks, most urgent first.
#[derive(Debug, Default)]
pub(crate) struct LocalQueue {
    order: BTreeMap<(Priority, u64), Waiting>,
    by_id: crate::fast_map::TaskMap<(Priority, u64)>,
    next_seq: u64,
}

impl LocalQueue {
    /// Adds a task. A task already waiting here (handed out again) keeps its place
    /// and takes the newest assignment.
    pub fn push(&mut self, task: TaskEnvelope, lease: LeaseToken, prefetched: bool) {
        if let Some(key) = self.by_id.get(&task.id) {
            if let Some(waiting) = self.order.get_mut(key) {
                *waiting = Waiting {
                    task,
                    lease,
                    prefetched: waiting.prefetched || prefetched,
                };
                return;
            }
        }
        let key = (task.priority, self.next_seq);
        self.next_seq += 1;
        self.by_id.insert(task.id, key);
        self.order.insert(
            key,
            Waiting {
                task,
                lease,
                prefetched,
            },
        );
    }

    /// The most urgent task, taken off the queue.
    pub fn pop(&mut self) -> Option<Waiting> {
        let (_, waiting) = self.order.pop_first()?;
        self.by_id.remove(&waiting.task.id);
        Some(waiting)
    }

    /// Takes task `id` off the queue (it was cancelled before it started).
    pub fn remove(&mut self, id: &TaskId) -> Option<Waiting> {
        let key = self.by_id.remove(id)?;
        self.order.remove(&key)
    }

    /// Tasks waiting.
    pub fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Codec;

    fn task(n: u8, priority: Priority) -> TaskEnvelope {
        let mut task = TaskEnvelope::new("add", Codec::Json, &b"[1,2]"[..]);
        task.id = TaskId::from_bytes([n; 16]);
        task.priority = priority;
        task
    }

    #[test]
    fn the_most_urgent_first_then_in_arrival_order() {
        let mut q = LocalQueue::default();
        q.push(task(1, Priority::Low), LeaseToken::new(), true);
        q.push(task(2, Priority::Normal), LeaseToken::new(), true);
        q.push(task(3, Priority::Low), LeaseToken::new(), true);
        q.push(task(4, Priority::Critical), LeaseToken::new(), true);
        q.push(task(5, Priority::Normal), LeaseToken::new(), false);
        let order: Vec<u8> = std::iter::from_fn(|| q.pop())
            .map(|w| w.task.id.0.as_bytes()[0])
            .collect();
        assert_eq!(order, [4, 2, 5, 1, 3]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_cancelled_task_leaves_and_a_repeat_keeps_its_place() {
        let mut q = LocalQueue::default();
        q.push(task(1, Priority::Normal), LeaseToken::new(), true);
        q.push(task(2, Priority::Normal), LeaseToken::new(), true);
        let newer = LeaseToken::new();
        q.push(task(1, Priority::Normal), newer, false);
        assert_eq!(q.len(), 2);
        assert!(q.remove(&TaskId::from_bytes([2; 16])).is_some());
        assert!(q.remove(&TaskId::from_bytes([2; 16])).is_none());
        assert_eq!(q.len(), 1);
        let first = q.pop().expect("one left");
        assert_eq!(first.task.id, TaskId::from_bytes([1; 16]));
        assert_eq!(first.lease, newer, "the newest assignment");
        assert!(first.prefetched, "still reported when it starts");
        assert!(q.pop().is_none());
    }
}
