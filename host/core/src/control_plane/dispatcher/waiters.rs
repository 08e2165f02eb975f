//! Who waits for a task's end: clients that submitted and wait for the result, or
//! asked for its status with `wait`. A task's waiters ([`Waiting`]) are kept with the
//! task itself in the [`super::task_store::TaskStore`]: they are read when the task
//! ends, which removes the task's entry anyway, so they cost no lookup of their own (a
//! map of their own cost a cache miss per task, 6 % of the control plane's time under
//! load). [`WaitingPeers`] counts each peer's waits, so a peer that leaves without
//! waiting for anything costs no search of the held tasks.

use crate::{control_plane::FastMap, transport::PeerId};

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

/// The waiters of one task, in the order they came. Almost always none or exactly
/// one, so one is kept in place and only a second one takes a list.
#[derive(Debug, Default)]
pub(super) enum Waiting {
    #[default]
    None,
    One(Waiter),
    Many(Vec<Waiter>),
}

impl Waiting {
    /// `waiter` waits too.
    pub(super) fn push(&mut self, waiter: Waiter) {
        *self = match std::mem::take(self) {
            Waiting::None => Waiting::One(waiter),
            Waiting::One(first) => Waiting::Many(vec![first, waiter]),
            Waiting::Many(mut list) => {
                list.push(waiter);
                Waiting::Many(list)
            }
        };
    }

    /// Forgets the waits of `peer`; how many there were.
    pub(super) fn forget_peer(&mut self, peer: &PeerId) -> usize {
        match self {
            Waiting::None => 0,
            Waiting::One(waiter) => {
                if waiter.peer() != peer {
                    return 0;
                }
                *self = Waiting::None;
                1
            }
            Waiting::Many(list) => {
                let before = list.len();
                list.retain(|w| w.peer() != peer);
                let gone = before - list.len();
                if list.is_empty() {
                    *self = Waiting::None;
                }
                gone
            }
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        matches!(self, Waiting::None)
    }
}

impl IntoIterator for Waiting {
    type Item = Waiter;
    type IntoIter = std::iter::Chain<std::option::IntoIter<Waiter>, std::vec::IntoIter<Waiter>>;

    fn into_iter(self) -> Self::IntoIter {
        let (one, many) = match self {
            Waiting::None => (None, Vec::new()),
            Waiting::One(waiter) => (Some(waiter), Vec::new()),
            Waiting::Many(list) => (None, list),
        };
        one.into_iter().chain(many)
    }
}

/// How many waits each peer has, over all held tasks (peers with none are absent).
#[derive(Debug, Default)]
pub(super) struct WaitingPeers {
    waits: FastMap<PeerId, usize>,
}

impl WaitingPeers {
    /// `waiter` waits for a task.
    pub(super) fn added(&mut self, waiter: &Waiter) {
        *self.waits.entry(*waiter.peer()).or_default() += 1;
    }

    /// The waits in `waiting` go on (after [`Self::ended`]).
    pub(super) fn resumed(&mut self, waiting: &Waiting) {
        match waiting {
            Waiting::None => {}
            Waiting::One(waiter) => self.added(waiter),
            Waiting::Many(list) => list.iter().for_each(|w| self.added(w)),
        }
    }

    /// The waits in `waiting` ended (told or forgotten).
    pub(super) fn ended(&mut self, waiting: &Waiting) {
        match waiting {
            Waiting::None => {}
            Waiting::One(waiter) => self.less(waiter.peer(), 1),
            Waiting::Many(list) => list.iter().for_each(|w| self.less(w.peer(), 1)),
        }
    }

    /// `gone` waits of `peer` ended.
    pub(super) fn less(&mut self, peer: &PeerId, gone: usize) {
        if let Some(n) = self.waits.get_mut(peer) {
            *n = n.saturating_sub(gone);
            if *n == 0 {
                self.waits.remove(peer);
            }
        }
    }

    /// Does `peer` wait for any task?
    pub(super) fn waits(&self, peer: &PeerId) -> bool {
        self.waits.contains_key(peer)
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
        let mut peers = WaitingPeers::default();
        let mut waiting = Waiting::default();
        let status = Waiter::Status {
            peer: peer("b"),
            request_id: 7,
        };
        for waiter in [
            Waiter::Result(peer("a")),
            status.clone(),
            Waiter::Result(peer("c")),
            Waiter::Result(peer("a")),
        ] {
            peers.added(&waiter);
            waiting.push(waiter);
        }
        assert_eq!(waiting.forget_peer(&peer("a")), 2);
        peers.less(&peer("a"), 2);
        assert!(!peers.waits(&peer("a")));
        assert!(peers.waits(&peer("b")) && peers.waits(&peer("c")));
        peers.ended(&waiting);
        assert!(!peers.waits(&peer("b")) && !peers.waits(&peer("c")));
        let seen: Vec<Waiter> = waiting.into_iter().collect();
        assert_eq!(seen, vec![status, Waiter::Result(peer("c"))]);

        let mut one = Waiting::default();
        one.push(Waiter::Result(peer("a")));
        assert_eq!(one.forget_peer(&peer("b")), 0);
        assert_eq!(one.forget_peer(&peer("a")), 1);
        assert!(one.is_empty());
        assert_eq!(one.into_iter().count(), 0);
    }
}
