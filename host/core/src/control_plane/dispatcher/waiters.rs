//! Who waits for a task's end: clients that submitted and wait for the result, or
//! asked for its status with `wait`. A task's waiters ([`Waiting`]) are kept with the
//! task itself in the [`super::task_store::TaskStore`]: they are read when the task
//! ends, which removes the task's entry anyway, so they cost no lookup of their own (a
//! map of their own cost a cache miss per task, 6 % of the control plane's time under
//! load). [`WaitingPeers`] counts each peer's waits and remembers which peers left
//! while they still waited: nothing is sent to those, and their waits go as their
//! tasks end, so a peer leaving costs no search of the held tasks (a million of them,
//! with `--max-queued`'s default). The waits of peers that left are bounded all the
//! same: past as many as there are held tasks, one pass drops them all
//! ([`super::task_store::TaskStore::peer_left`]).

use crate::{
    control_plane::{FastMap, FastSet},
    transport::PeerId,
};

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

    /// Keeps the waiters `keep` says yes to, in order.
    fn retain(&mut self, mut keep: impl FnMut(&Waiter) -> bool) {
        let empty = match self {
            Waiting::None => false,
            Waiting::One(waiter) => !keep(waiter),
            Waiting::Many(list) => {
                list.retain(|w| keep(w));
                list.is_empty()
            }
        };
        if empty {
            *self = Waiting::None;
        }
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

/// How many waits each peer has over all held tasks (peers with none are absent), and
/// which of them left.
#[derive(Debug, Default)]
pub(super) struct WaitingPeers {
    waits: FastMap<PeerId, usize>,
    /// Peers that left while they waited: nothing is sent to them, and each goes from
    /// here when the last of its waits goes.
    gone: FastSet<PeerId>,
    /// The waits of the peers in `gone`.
    dead: usize,
}

impl WaitingPeers {
    /// `waiter` waits for a task.
    pub(super) fn added(&mut self, waiter: &Waiter) {
        let peer = waiter.peer();
        let n = self.waits.entry(*peer).or_default();
        if !self.gone.is_empty() && self.gone.remove(peer) {
            // A peer id is never given twice: one seen again is the same peer back
            // (tests name their peers), and its waits count again.
            self.dead = self.dead.saturating_sub(*n);
        }
        *n += 1;
    }

    /// One wait of `peer` ended; whether `peer` is still there to be told.
    fn end(&mut self, peer: &PeerId) -> bool {
        let left = !self.gone.is_empty() && self.gone.contains(peer);
        if left {
            self.dead = self.dead.saturating_sub(1);
        }
        if let Some(n) = self.waits.get_mut(peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.waits.remove(peer);
                if left {
                    self.gone.remove(peer);
                }
            }
        }
        !left
    }

    /// The task `waiting` waited for ended: the waiters to tell (those whose peer did
    /// not leave).
    pub(super) fn ended(&mut self, mut waiting: Waiting) -> Waiting {
        waiting.retain(|w| self.end(w.peer()));
        waiting
    }

    /// Drops from `waiting` the waiters whose peer left.
    pub(super) fn forget_gone(&mut self, waiting: &mut Waiting) {
        if self.gone.is_empty() {
            return;
        }
        waiting.retain(|w| !self.gone.contains(w.peer()) || self.end(w.peer()));
    }

    /// `peer` left: what it waits for is not sent to it.
    pub(super) fn left(&mut self, peer: &PeerId) {
        if let Some(n) = self.waits.get(peer) {
            if self.gone.insert(*peer) {
                self.dead += n;
            }
        }
    }

    /// The waits of peers that left, still held.
    pub(super) fn dead(&self) -> usize {
        self.dead
    }

    /// How many waits `peer` has.
    #[cfg(test)]
    pub(super) fn waits(&self, peer: &PeerId) -> usize {
        self.waits.get(peer).copied().unwrap_or(0)
    }

    /// Peers counted (waiting, or gone with waits still held).
    #[cfg(test)]
    pub(super) fn counted(&self) -> (usize, usize) {
        (self.waits.len(), self.gone.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &'static str) -> PeerId {
        PeerId::named(name)
    }

    fn wait(peers: &mut WaitingPeers, waiting: &mut Waiting, waiter: Waiter) {
        peers.added(&waiter);
        waiting.push(waiter);
    }

    #[test]
    fn waiters_come_back_in_order_and_a_gone_peer_is_told_nothing() {
        let mut peers = WaitingPeers::default();
        let mut waiting = Waiting::default();
        let status = |request_id| Waiter::Status {
            peer: peer("b"),
            request_id,
        };
        for waiter in [
            Waiter::Result(peer("a")),
            status(7),
            Waiter::Result(peer("c")),
            Waiter::Result(peer("a")),
            status(8),
        ] {
            wait(&mut peers, &mut waiting, waiter);
        }
        assert_eq!(peers.waits(&peer("a")), 2);
        assert_eq!(peers.waits(&peer("b")), 2);
        peers.left(&peer("a"));
        peers.left(&peer("a"));
        peers.left(&peer("nobody"));
        assert_eq!((peers.counted(), peers.dead()), ((3, 1), 2));
        let told: Vec<Waiter> = peers.ended(waiting).into_iter().collect();
        assert_eq!(told, vec![status(7), Waiter::Result(peer("c")), status(8)]);
        assert_eq!((peers.counted(), peers.dead()), ((0, 0), 0));

        // A peer that left with waits on two tasks is told of neither: one task ends,
        // the other is swept; it is forgotten with its last wait.
        let (mut one, mut two) = (Waiting::default(), Waiting::default());
        wait(&mut peers, &mut one, Waiter::Result(peer("a")));
        wait(&mut peers, &mut two, Waiter::Result(peer("a")));
        wait(&mut peers, &mut two, Waiter::Result(peer("b")));
        peers.left(&peer("a"));
        assert_eq!(peers.dead(), 2);
        assert_eq!(peers.ended(one).into_iter().count(), 0);
        assert_eq!((peers.counted(), peers.dead()), ((2, 1), 1));
        peers.forget_gone(&mut two);
        assert_eq!((peers.counted(), peers.dead()), ((1, 0), 0));
        let told: Vec<Waiter> = peers.ended(two).into_iter().collect();
        assert_eq!(told, vec![Waiter::Result(peer("b"))]);
        assert_eq!((peers.counted(), peers.dead()), ((0, 0), 0));
    }
}
