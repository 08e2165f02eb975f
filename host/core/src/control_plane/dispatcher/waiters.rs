//! Who waits for which task's end: clients that submitted and wait for the result, or
//! asked for its status with `wait`. Almost always exactly one per task, so one is kept
//! in place and only a second one takes a list (an allocation per task otherwise).

use std::collections::hash_map::Entry;

use crate::{control_plane::TaskMap, protocol::TaskId, transport::PeerId};

/// One client waiting for a task's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Waiter {
    /// Wants the result.
    Result(PeerId),
    /// Wants a status reply to its request.
    Status { peer: PeerId, request_id: u64 },
}

impl Waiter {
    fn peer(&self) -> &PeerId {
        match self {
            Waiter::Result(peer) | Waiter::Status { peer, .. } => peer,
        }
    }
}

/// The waiters of one task.
#[derive(Debug)]
enum Waiting {
    One(Waiter),
    Many(Vec<Waiter>),
}

/// The waiters of every task that has any.
#[derive(Debug, Default)]
pub(super) struct Waiters {
    by_task: TaskMap<Waiting>,
}

impl Waiters {
    /// `waiter` waits for `task`'s end too.
    pub(super) fn add(&mut self, task: TaskId, waiter: Waiter) {
        match self.by_task.entry(task) {
            Entry::Vacant(place) => {
                place.insert(Waiting::One(waiter));
            }
            Entry::Occupied(mut place) => {
                let waiting = place.get_mut();
                *waiting = match std::mem::replace(waiting, Waiting::Many(Vec::new())) {
                    Waiting::One(first) => Waiting::Many(vec![first, waiter]),
                    Waiting::Many(mut list) => {
                        list.push(waiter);
                        Waiting::Many(list)
                    }
                };
            }
        }
    }

    /// Calls `each` for every waiter of `task` (in order), forgetting them here.
    pub(super) fn drain(&mut self, task: &TaskId, mut each: impl FnMut(Waiter)) {
        match self.by_task.remove(task) {
            None => {}
            Some(Waiting::One(waiter)) => each(waiter),
            Some(Waiting::Many(list)) => list.into_iter().for_each(each),
        }
    }

    /// Forgets the waiters of `task`.
    pub(super) fn remove(&mut self, task: &TaskId) {
        self.by_task.remove(task);
    }

    /// A peer that is gone waits for nothing any more.
    pub(super) fn forget_peer(&mut self, peer: &PeerId) {
        self.by_task.retain(|_, waiting| match waiting {
            Waiting::One(waiter) => waiter.peer() != peer,
            Waiting::Many(list) => {
                list.retain(|w| w.peer() != peer);
                !list.is_empty()
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &'static str) -> PeerId {
        PeerId::named(name)
    }

    #[test]
    fn waiters_come_back_in_order_and_a_gone_peer_waits_for_nothing() {
        let (one, two) = (TaskId::new(), TaskId::new());
        let mut waiters = Waiters::default();
        waiters.add(one, Waiter::Result(peer("a")));
        waiters.add(two, Waiter::Result(peer("a")));
        waiters.add(
            two,
            Waiter::Status {
                peer: peer("b"),
                request_id: 7,
            },
        );
        waiters.add(two, Waiter::Result(peer("c")));
        waiters.forget_peer(&peer("a"));
        let mut seen = Vec::new();
        waiters.drain(&one, |w| seen.push(w));
        assert_eq!(seen, Vec::new());
        waiters.drain(&two, |w| seen.push(w));
        assert_eq!(
            seen,
            vec![
                Waiter::Status {
                    peer: peer("b"),
                    request_id: 7
                },
                Waiter::Result(peer("c")),
            ]
        );
        waiters.drain(&two, |w| panic!("{w:?} was drained already"));
        waiters.add(one, Waiter::Result(peer("b")));
        waiters.forget_peer(&peer("b"));
        assert!(waiters.by_task.is_empty());
    }
}
