//! [`TaskStore`]: the tasks the control plane holds (accepted, not final), each a
//! [`TaskEntry`] (the task and its lease, the same type the store keeps). It keeps the totals the submission limits
//! and the unserved-name check read: payload bytes held, and tasks held per name. Each
//! task's waiters are kept beside its entry (see [`super::waiters`]).

use std::collections::hash_map::Entry;

use super::waiters::{Waiter, Waiting, WaitingPeers};
use crate::{
    control_plane::{observe::TrailMark, store::TaskEntry},
    protocol::TaskId,
    transport::PeerId,
};

/// The waits of peers that left that are kept, at least, before a pass drops them.
pub(super) const DEAD_WAITS_SWEPT: usize = 1024;

/// A held task: its entry, who waits for its end, and where the dashboard keeps its
/// timeline.
#[derive(Debug)]
struct Held {
    entry: TaskEntry,
    waiting: Waiting,
    trail: Option<TrailMark>,
}

/// A task no longer held.
#[derive(Debug)]
pub(super) struct Released {
    pub entry: TaskEntry,
    /// It was the last held task of its name.
    pub last_of_name: bool,
    /// Who waited for its end and is still there to be told.
    pub waiting: Waiting,
    /// Where the dashboard keeps its timeline.
    pub trail: Option<TrailMark>,
}

/// The held tasks, by id.
#[derive(Debug, Default)]
pub(super) struct TaskStore {
    /// Boxed: an entry is several hundred bytes, and a slot of the map at a random
    /// place is memory gone cold, while a box freed by the task that just finished
    /// is warm and is what the allocator hands the next submission. (With the entries
    /// inline, writing them was 38 % of the dispatcher bench's cache misses on writes.)
    entries: crate::control_plane::TaskMap<Box<Held>>,
    /// Payload bytes held.
    bytes: u64,
    /// Tasks held, by name.
    by_name: crate::control_plane::FastMap<String, usize>,
    /// Who waits for any held task.
    waiting_peers: WaitingPeers,
}

impl TaskStore {
    pub fn get(&self, id: &TaskId) -> Option<&TaskEntry> {
        self.entries.get(id).map(|held| &held.entry)
    }

    pub fn get_mut(&mut self, id: &TaskId) -> Option<&mut TaskEntry> {
        self.entries.get_mut(id).map(|held| &mut held.entry)
    }

    pub fn contains(&self, id: &TaskId) -> bool {
        self.entries.contains_key(id)
    }

    /// Holds `entry`, its timeline at `trail`. One held under the same id is replaced
    /// in place: its waiters wait for this one. One lookup of the map.
    pub fn insert(&mut self, entry: TaskEntry, trail: Option<TrailMark>) {
        // Counted before the old one is uncounted: a replacement of the same name
        // keeps its key.
        self.count(&entry);
        let replaced = match self.entries.entry(entry.envelope.id) {
            Entry::Occupied(mut held) => {
                let held = held.get_mut();
                held.trail = trail;
                Some(std::mem::replace(&mut held.entry, entry))
            }
            Entry::Vacant(place) => {
                place.insert(Box::new(Held {
                    entry,
                    waiting: Waiting::default(),
                    trail,
                }));
                None
            }
        };
        if let Some(old) = replaced {
            self.uncount(&old);
        }
    }

    /// Adds `entry` to the totals.
    fn count(&mut self, entry: &TaskEntry) {
        self.bytes += entry.envelope.payload.len() as u64;
        // No new String per task while the name is already held.
        match self.by_name.get_mut(&entry.envelope.name) {
            Some(n) => *n += 1,
            None => {
                self.by_name.insert(entry.envelope.name.clone(), 1);
            }
        }
    }

    /// Takes `entry` off the totals; whether it was the last held task of its name.
    fn uncount(&mut self, entry: &TaskEntry) -> bool {
        self.bytes = self
            .bytes
            .saturating_sub(entry.envelope.payload.len() as u64);
        let Some(n) = self.by_name.get_mut(&entry.envelope.name) else {
            return false;
        };
        *n -= 1;
        if *n > 0 {
            return false;
        }
        self.by_name.remove(&entry.envelope.name);
        true
    }

    /// Held task `id` to change, and where the dashboard keeps its timeline (one
    /// lookup for both).
    pub fn get_mut_with_trail(
        &mut self,
        id: &TaskId,
    ) -> Option<(&mut TaskEntry, Option<TrailMark>)> {
        self.entries
            .get_mut(id)
            .map(|held| (&mut held.entry, held.trail))
    }

    /// Held task `id`'s timeline is at `trail`.
    pub fn set_trail(&mut self, id: &TaskId, trail: TrailMark) {
        if let Some(held) = self.entries.get_mut(id) {
            held.trail = Some(trail);
        }
    }

    /// `waiter` waits for the end of held task `id`; false when no such task is held.
    pub fn add_waiter(&mut self, id: &TaskId, waiter: Waiter) -> bool {
        let Some(held) = self.entries.get_mut(id) else {
            return false;
        };
        self.waiting_peers.added(&waiter);
        held.waiting.push(waiter);
        true
    }

    /// A peer that is gone waits for nothing any more: nothing is sent to it when the
    /// tasks it waited for end, and its waits go with them, without a search of the
    /// held tasks now. Once the waits of peers that left outnumber the held tasks
    /// (and [`DEAD_WAITS_SWEPT`]), one pass over the held tasks drops them all: memory
    /// stays bounded by the tasks held, and each pass is paid for by at least as many
    /// waits that came and went.
    pub fn peer_left(&mut self, peer: &PeerId) {
        self.waiting_peers.left(peer);
        if self.waiting_peers.dead() > DEAD_WAITS_SWEPT.max(self.entries.len()) {
            let peers = &mut self.waiting_peers;
            for held in self.entries.values_mut() {
                peers.forget_gone(&mut held.waiting);
            }
        }
    }

    /// Stops holding task `id`.
    pub fn remove(&mut self, id: &TaskId) -> Option<Released> {
        let Held {
            entry,
            waiting,
            trail,
        } = *self.entries.remove(id)?;
        let waiting = self.waiting_peers.ended(waiting);
        let last_of_name = self.uncount(&entry);
        Some(Released {
            entry,
            last_of_name,
            waiting,
            trail,
        })
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
        self.entries.iter().map(|(id, held)| (id, &held.entry))
    }
}

impl std::ops::Index<&TaskId> for TaskStore {
    type Output = TaskEntry;

    /// The entry of a task known to be held (panics otherwise, like a map's index).
    fn index(&self, id: &TaskId) -> &TaskEntry {
        &self.entries[id].entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Codec, TaskEnvelope, TaskRecord, TaskStatus};

    fn entry(name: &str) -> TaskEntry {
        let envelope = TaskEnvelope::new(name, Codec::Json, bytes::Bytes::from_static(b"[1]"));
        let record = TaskRecord::new(envelope.id, name, TaskStatus::Queued, Codec::Json);
        TaskEntry {
            envelope,
            record,
            seq: 0,
            attempt: 1,
            deliveries: 0,
            not_before_ms: 0,
            lost: 0,
            lease: None,
            holder: None,
            cancel_requested: false,
            epoch: 0,
        }
    }

    #[test]
    fn waiters_stay_with_their_task_replaced_and_the_counts_end_with_it() {
        let (a, b) = (PeerId::named(b"a"), PeerId::named(b"b"));
        let mut store = TaskStore::default();
        let held = entry("add");
        let id = held.envelope.id;
        store.insert(held.clone(), None);
        assert!(!store.add_waiter(&crate::protocol::TaskId::new(), Waiter::Result(a)));
        assert!(store.add_waiter(&id, Waiter::Result(a)));
        assert!(store.add_waiter(&id, Waiter::Result(b)));
        // Replaced under its id (a restart reading its data directory): same waiters.
        store.insert(held, None);
        assert_eq!(store.len(), 1);
        assert_eq!(store.waiting_peers.waits(&a), 1);
        store.peer_left(&b);
        let released = store.remove(&id).expect("held");
        let told: Vec<Waiter> = released.waiting.into_iter().collect();
        assert_eq!(told, vec![Waiter::Result(a)], "b left: told nothing");
        assert_eq!(store.waiting_peers.counted(), (0, 0));
        assert_eq!((store.len(), store.bytes()), (0, 0));
        assert!(!store.holds_name("add"));
    }

    #[test]
    fn the_waits_of_peers_that_left_are_dropped_once_they_outnumber_the_held_tasks() {
        let mut store = TaskStore::default();
        let ids: Vec<TaskId> = (0..8)
            .map(|_| {
                let held = entry("add");
                let id = held.envelope.id;
                store.insert(held, None);
                id
            })
            .collect();
        let stays = PeerId::named(b"stays");
        for id in &ids {
            store.add_waiter(id, Waiter::Result(stays));
        }
        // Clients that each wait for every task and leave (a client that reconnects
        // and submits its pending tasks again gets a new peer each time).
        let per_peer = ids.len();
        let peers_before_a_pass = DEAD_WAITS_SWEPT / per_peer + 1;
        for n in 0..peers_before_a_pass {
            let gone = PeerId::named(format!("gone-{n}").into_bytes());
            for id in &ids {
                store.add_waiter(id, Waiter::Result(gone));
            }
            store.peer_left(&gone);
            let dead = store.waiting_peers.dead();
            assert!(dead <= DEAD_WAITS_SWEPT, "{dead} dead waits kept");
            if n + 1 < peers_before_a_pass {
                assert_eq!(dead, (n + 1) * per_peer, "no pass yet");
            }
        }
        assert_eq!(store.waiting_peers.dead(), 0, "one pass dropped them all");
        assert_eq!(store.waiting_peers.counted(), (1, 0));
        for id in &ids {
            let told: Vec<Waiter> = store
                .remove(id)
                .expect("held")
                .waiting
                .into_iter()
                .collect();
            assert_eq!(told, vec![Waiter::Result(stays)]);
        }
        assert_eq!(store.waiting_peers.counted(), (0, 0));
    }
}
