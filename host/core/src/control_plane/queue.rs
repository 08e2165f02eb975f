//! [`ReadyQueues`]: the four priority queues of tasks ready to run.
//!
//! Within a priority, tasks are kept per task name, each in submission order (by a
//! sequence number the control plane hands out). Dispatch asks for the oldest task of
//! the most urgent priority *that some executor can take now*; a task that no free
//! executor serves waits without blocking tasks that other executors could run, and
//! nothing of a lower priority goes to an executor that a more urgent task could use
//! (that task would have been placed first).

use std::collections::BTreeMap;

use super::FastMap;
use crate::protocol::{Priority, TaskId};

/// What [`ReadyQueues::pop_oldest_servable`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Oldest<P> {
    /// The oldest servable task, taken, with its place.
    Placed(TaskId, P),
    /// The oldest servable task, of this name, has no place now.
    Blocked(String),
    /// No servable task waits at this priority.
    Empty,
}

/// The ready tasks.
#[derive(Debug, Default)]
pub struct ReadyQueues {
    levels: [FastMap<String, BTreeMap<u64, TaskId>>; 4],
    lens: [usize; 4],
}

impl ReadyQueues {
    /// Empty queues.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a task. `seq` orders it among tasks of its priority and name; a re-queued
    /// task keeps its original `seq`, and so its place.
    pub fn push(&mut self, priority: Priority, name: &str, seq: u64, id: TaskId) {
        let level = &mut self.levels[priority.index()];
        let queue = match level.get_mut(name) {
            Some(q) => q,
            None => level.entry(name.to_string()).or_default(),
        };
        if queue.insert(seq, id).is_none() {
            self.lens[priority.index()] += 1;
        }
    }

    /// Removes a task (cancelled before it ran). True if it was queued.
    pub fn remove(&mut self, priority: Priority, name: &str, seq: u64) -> bool {
        let level = &mut self.levels[priority.index()];
        let Some(queue) = level.get_mut(name) else {
            return false;
        };
        let removed = queue.remove(&seq).is_some();
        if queue.is_empty() {
            level.remove(name);
        }
        if removed {
            self.lens[priority.index()] -= 1;
        }
        removed
    }

    /// Takes the oldest task of `priority` for whose name `place` finds a place, and
    /// returns it with that place (so the caller does not look for it twice).
    pub fn pop_placeable<P>(
        &mut self,
        priority: Priority,
        mut place: impl FnMut(&str) -> Option<P>,
    ) -> Option<(TaskId, P)> {
        let level = &mut self.levels[priority.index()];
        let mut best: Option<(&String, u64, P)> = None;
        for (name, queue) in level.iter() {
            let Some((&seq, _)) = queue.first_key_value() else {
                continue;
            };
            if best.as_ref().is_some_and(|(_, s, _)| *s < seq) {
                continue;
            }
            if let Some(found) = place(name) {
                best = Some((name, seq, found));
            }
        }
        let (name, seq, found) = best.map(|(n, s, f)| (n.clone(), s, f))?;
        let queue = level.get_mut(&name)?;
        let id = queue.remove(&seq)?;
        if queue.is_empty() {
            level.remove(&name);
        }
        self.lens[priority.index()] -= 1;
        Some((id, found))
    }

    /// Looks at the oldest task of `priority` among the names `servable` accepts: takes
    /// it if `place` finds it a place, else says it is blocked (so nothing younger or
    /// less urgent may pass it).
    pub fn pop_oldest_servable<P>(
        &mut self,
        priority: Priority,
        servable: impl Fn(&str) -> bool,
        place: impl FnOnce(&str) -> Option<P>,
    ) -> Oldest<P> {
        let level = &mut self.levels[priority.index()];
        let oldest = level
            .iter()
            .filter_map(|(name, queue)| Some((name, *queue.first_key_value()?.0)))
            .filter(|(name, _)| servable(name))
            .min_by_key(|(_, seq)| *seq);
        let Some((name, seq)) = oldest else {
            return Oldest::Empty;
        };
        let Some(found) = place(name) else {
            return Oldest::Blocked(name.clone());
        };
        let name = name.clone();
        let Some(queue) = level.get_mut(&name) else {
            return Oldest::Empty;
        };
        let Some(id) = queue.remove(&seq) else {
            return Oldest::Empty;
        };
        if queue.is_empty() {
            level.remove(&name);
        }
        self.lens[priority.index()] -= 1;
        Oldest::Placed(id, found)
    }

    /// How many tasks wait at `priority`.
    pub fn len(&self, priority: Priority) -> usize {
        self.lens[priority.index()]
    }

    /// How many tasks wait in all.
    pub fn total(&self) -> usize {
        self.lens.iter().sum()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> TaskId {
        TaskId::from_bytes([n; 16])
    }

    #[test]
    fn oldest_first_within_a_priority_across_names() {
        let mut q = ReadyQueues::new();
        q.push(Priority::Normal, "b", 2, id(2));
        q.push(Priority::Normal, "a", 1, id(1));
        q.push(Priority::Normal, "a", 3, id(3));
        let order: Vec<_> = std::iter::from_fn(|| q.pop_placeable(Priority::Normal, |_| Some(())))
            .map(|(id, ())| id.0.as_bytes()[0] as u64)
            .collect();
        assert_eq!(order, [1, 2, 3]);
        assert!(q.is_empty());
    }

    #[test]
    fn unplaceable_names_are_skipped_not_lost() {
        let mut q = ReadyQueues::new();
        q.push(Priority::High, "busy", 1, id(1));
        q.push(Priority::High, "free", 2, id(2));
        let got = q
            .pop_placeable(Priority::High, |n| (n == "free").then_some(n.len()))
            .unwrap();
        assert_eq!(got, (id(2), 4), "the task and the place found for it");
        assert_eq!(q.len(Priority::High), 1);
        assert!(q
            .pop_placeable(Priority::High, |n| (n == "free").then_some(()))
            .is_none());
    }

    #[test]
    fn requeue_keeps_its_place_and_remove_works() {
        let mut q = ReadyQueues::new();
        q.push(Priority::Low, "a", 5, id(5));
        q.push(Priority::Low, "a", 1, id(1));
        assert!(q.remove(Priority::Low, "a", 5));
        assert!(!q.remove(Priority::Low, "a", 5));
        assert_eq!(
            q.pop_placeable(Priority::Low, |_| Some(())).unwrap().0,
            id(1)
        );
        assert_eq!(q.total(), 0);
    }

    #[test]
    fn the_oldest_servable_task_is_placed_or_blocks() {
        let mut q = ReadyQueues::new();
        q.push(Priority::Normal, "nobody", 1, id(1));
        q.push(Priority::Normal, "long", 2, id(2));
        q.push(Priority::Normal, "short", 3, id(3));
        let servable = |n: &str| n != "nobody";
        // `long` is the oldest that someone serves: it has no place, so `short` waits.
        assert_eq!(
            q.pop_oldest_servable(Priority::Normal, servable, |n| (n == "short").then_some(())),
            Oldest::Blocked("long".to_string())
        );
        assert_eq!(
            q.pop_oldest_servable(Priority::Normal, servable, |_| Some(7)),
            Oldest::Placed(id(2), 7)
        );
        assert_eq!(
            q.pop_oldest_servable(Priority::Normal, servable, |_| Some(())),
            Oldest::Placed(id(3), ())
        );
        assert_eq!(
            q.pop_oldest_servable(Priority::Normal, servable, |_| Some(())),
            Oldest::Empty,
            "a task nobody serves blocks nothing"
        );
        assert_eq!(q.len(Priority::Normal), 1);
    }
}
