//! Who waits for a task's end: clients that submitted and wait for the result, or
//! asked for its status with `wait`. A task's waiters ([`Waiting`]) are kept with the
//! task itself in the [`super::task_store::TaskStore`]: they are read when the task
//! ends, which removes the task's entry anyway, so they cost no lookup of their own (a
//! map of their own cost a cache miss per task, 6 % of the control plane's time under
//! load). [`WaitingPeers`] counts each peer's waits and remembers which peers left
//! while they still waited: their waits are dropped as their tasks end, so a peer
//! leaving costs no search of the held tasks (a million of them, with
//! `--max-queued`'s default).

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
    /// `waiter` waits too, unless it already does (the same submission sent again,
    /// after a lost `Accepted`, is told its result once); whether it was added.
    pub(super) fn push(&mut self, waiter: Waiter) -> bool {
        *self = match std::mem::take(self) {
            Waiting::None => Waiting::One(waiter),
            Waiting::One(first) if first == waiter => {
                *self = Waiting::One(first);
                return false;
            }
            Waiting::One(first) => Waiting::Many(vec![first, waiter]),
            Waiting::Many(list) if list.contains(&waiter) => {
                *self = Waiting::Many(list);
                return false;
            }
            Waiting::Many(mut list) => {
                list.push(waiter);
                Waiting::Many(list)
            }
        };
        true
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
    /// here when the last task it waited for ends.
    gone: FastSet<PeerId>,
}

impl WaitingPeers {
    /// `waiter` waits for a task.
    pub(super) fn added(&mut self, waiter: &Waiter) {
        let peer = waiter.peer();
        *self.waits.entry(*peer).or_default() += 1;
        if !self.gone.is_empty() {
            // A peer id is never given twice; one seen again is the same peer back.
            self.gone.remove(peer);
        }
    }

    /// The waits in `waiting` go on (a task replaced under its id keeps them).
    pub(super) fn resumed(&mut self, waiting: &Waiting) {
        match waiting {
            Waiting::None => {}
            Waiting::One(waiter) => self.added(waiter),
            Waiting::Many(list) => list.iter().for_each(|w| self.added(w)),
        }
    }

    /// The task `waiting` waited for ended: the waiters to tell (those whose peer did
    /// not leave).
    pub(super) fn ended(&mut self, waiting: Waiting) -> Waiting {
        if matches!(waiting, Waiting::None) {
            return waiting;
        }
        let mut told = Waiting::None;
        for waiter in waiting {
            let peer = *waiter.peer();
            let left = !self.gone.is_empty() && self.gone.contains(&peer);
            if let Some(n) = self.waits.get_mut(&peer) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.waits.remove(&peer);
                    self.gone.remove(&peer);
                }
            }
            if !left {
                told.push(waiter);
            }
        }
        told
    }

    /// `peer` left: what it waits for is not sent to it.
    pub(super) fn left(&mut self, peer: &PeerId) {
        if self.waits.contains_key(peer) {
            self.gone.insert(*peer);
        }
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
        if waiting.push(waiter.clone()) {
            peers.added(&waiter);
        }
    }

    #[test]
    fn waiters_come_back_in_order_once_each_and_a_gone_peer_is_told_nothing() {
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
            status.clone(),
        ] {
            wait(&mut peers, &mut waiting, waiter);
        }
        assert_eq!(
            peers.waits(&peer("a")),
            1,
            "the same wait twice counts once"
        );
        assert_eq!(peers.waits(&peer("b")), 1);
        peers.left(&peer("a"));
        peers.left(&peer("nobody"));
        assert_eq!(peers.counted(), (3, 1));
        let told: Vec<Waiter> = peers.ended(waiting).into_iter().collect();
        assert_eq!(told, vec![status, Waiter::Result(peer("c"))]);
        assert_eq!(
            peers.counted(),
            (0, 0),
            "every count and every gone peer went"
        );

        // A peer that left with waits on two tasks is told of neither, and is
        // forgotten with the second.
        let (mut one, mut two) = (Waiting::default(), Waiting::default());
        wait(&mut peers, &mut one, Waiter::Result(peer("a")));
        wait(&mut peers, &mut two, Waiter::Result(peer("a")));
        wait(&mut peers, &mut two, Waiter::Result(peer("b")));
        peers.left(&peer("a"));
        assert_eq!(peers.ended(one).into_iter().count(), 0);
        assert_eq!(peers.counted(), (2, 1));
        let told: Vec<Waiter> = peers.ended(two).into_iter().collect();
        assert_eq!(told, vec![Waiter::Result(peer("b"))]);
        assert_eq!(peers.counted(), (0, 0));
    }
}
