//! [`PeerTerms`]: what each connected peer of the base endpoint speaks and asked for.
//!
//! The protocol version its `Welcome` agreed (the oldest before that, which every
//! build reads), whether it reads `Results`, and whether a `Submit` it sent with
//! `wait` is answered by the task's result alone (`accepted-by-result`): then its
//! `Accepted` is not sent, and the client wakes once per task instead of twice.

use crate::{
    protocol::{self, FromControlPlane, Hello, ToControlPlane},
    transport::PeerId,
};

use super::{FastMap, FastSet};

/// What the connected peers speak and asked for.
#[derive(Debug, Default)]
pub(super) struct PeerTerms {
    versions: FastMap<PeerId, u8>,
    /// Peers whose `Hello` has the feature `results-batch`.
    batched: FastSet<PeerId>,
    /// Peers whose `Hello` has the feature `accepted-by-result`.
    accepted_by_result: FastSet<PeerId>,
    /// Their `Submit`s with `wait` not answered yet: the `Accepted` of each is not
    /// sent (a `Rejected` is). Each submit is answered once, so this holds at most
    /// the submits in flight.
    unanswered: FastSet<(PeerId, u64)>,
}

impl PeerTerms {
    /// Notes the version a `Welcome` to `peer` agreed.
    pub(super) fn heard(&mut self, peer: &PeerId, version: u8) {
        self.versions.insert(*peer, version);
    }

    /// Notes what a message from `peer` says about what it reads: its `Hello`'s
    /// features, or a `Submit` with `wait` whose `Accepted` it does not need.
    pub(super) fn received(&mut self, peer: &PeerId, msg: &ToControlPlane) {
        match msg {
            ToControlPlane::Hello(hello) => self.hello(peer, hello),
            ToControlPlane::Submit {
                request_id,
                wait: true,
                ..
            } if self.accepted_by_result.contains(peer) => {
                self.unanswered.insert((*peer, *request_id));
            }
            _ => {}
        }
    }

    fn hello(&mut self, peer: &PeerId, hello: &Hello) {
        let has = |feature: &str| hello.features.iter().any(|f| f == feature);
        for (set, feature) in [
            (&mut self.batched, protocol::RESULTS_BATCH_FEATURE),
            (
                &mut self.accepted_by_result,
                protocol::ACCEPTED_BY_RESULT_FEATURE,
            ),
        ] {
            if has(feature) {
                set.insert(*peer);
            } else {
                set.remove(peer);
            }
        }
    }

    /// The agreed version; `None` before a `Welcome` or after the peer left.
    pub(super) fn version(&self, peer: &PeerId) -> Option<u8> {
        self.versions.get(peer).copied()
    }

    /// May results to `peer` be grouped into `Results` messages?
    pub(super) fn batches_results(&self, peer: &PeerId) -> bool {
        self.batched.contains(peer) && self.version(peer).is_some_and(|v| v >= 2)
    }

    /// Is `msg` to `peer` to be sent? Not the `Accepted` of a `Submit` that its
    /// result answers.
    pub(super) fn wants(&mut self, peer: &PeerId, msg: &FromControlPlane) -> bool {
        let request_id = match msg {
            FromControlPlane::Accepted { request_id, .. }
            | FromControlPlane::Rejected { request_id, .. } => *request_id,
            _ => return true,
        };
        if self.unanswered.is_empty() {
            return true;
        }
        let unanswered = self.unanswered.remove(&(*peer, request_id));
        !(unanswered && matches!(msg, FromControlPlane::Accepted { .. }))
    }

    /// Forgets a peer that left.
    pub(super) fn forget(&mut self, peer: &PeerId) {
        self.versions.remove(peer);
        self.batched.remove(peer);
        self.accepted_by_result.remove(peer);
        self.unanswered.retain(|(p, _)| p != peer);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::protocol::{Codec, PeerKind, TaskEnvelope};
    use crate::task_error::{ErrorKind, TaskError};

    fn hello(features: &[&str]) -> ToControlPlane {
        let mut hello = Hello::new(PeerKind::Client, "a client");
        hello.features = features.iter().map(|f| f.to_string()).collect();
        ToControlPlane::Hello(hello)
    }

    fn submit(request_id: u64, wait: bool) -> ToControlPlane {
        ToControlPlane::Submit {
            request_id,
            task: TaskEnvelope::new("add", Codec::Json, Bytes::from_static(b"[1, 2]")),
            wait,
        }
    }

    fn accepted(request_id: u64) -> FromControlPlane {
        FromControlPlane::Accepted {
            request_id,
            task_ids: Vec::new(),
        }
    }

    fn rejected(request_id: u64) -> FromControlPlane {
        FromControlPlane::Rejected {
            request_id,
            error: TaskError::new(ErrorKind::Rejected, "no"),
        }
    }

    #[test]
    fn only_the_accepted_of_a_waiting_submit_from_a_peer_that_asked_is_left_out() {
        let (quiet, other) = (PeerId::named(b"quiet"), PeerId::named(b"other"));
        let mut terms = PeerTerms::default();
        terms.received(&quiet, &hello(&[protocol::ACCEPTED_BY_RESULT_FEATURE]));
        terms.received(&other, &hello(&[protocol::RESULTS_BATCH_FEATURE]));
        for (peer, request_id) in [(&quiet, 1), (&quiet, 2), (&quiet, 3), (&other, 1)] {
            terms.received(peer, &submit(request_id, request_id != 3));
        }
        assert!(!terms.wants(&quiet, &accepted(1)), "its result answers it");
        assert!(
            terms.wants(&quiet, &rejected(2)),
            "a refusal is always said"
        );
        assert!(terms.wants(&quiet, &accepted(3)), "a submit without wait");
        assert!(terms.wants(&other, &accepted(1)), "a peer that did not ask");
        assert!(terms.wants(&quiet, &accepted(4)), "a request never seen");
        // Each answer is left out once: a request id used again is answered.
        assert!(terms.wants(&quiet, &accepted(1)));
        assert!(terms.unanswered.is_empty());
    }

    #[test]
    fn a_peer_that_leaves_or_says_hello_again_without_the_feature_is_forgotten() {
        let peer = PeerId::named(b"peer");
        let mut terms = PeerTerms::default();
        terms.received(&peer, &hello(&[protocol::ACCEPTED_BY_RESULT_FEATURE]));
        terms.received(&peer, &submit(1, true));
        terms.forget(&peer);
        assert!(terms.unanswered.is_empty());
        assert!(terms.wants(&peer, &accepted(1)));
        terms.received(&peer, &hello(&[protocol::ACCEPTED_BY_RESULT_FEATURE]));
        terms.received(&peer, &hello(&[]));
        terms.received(&peer, &submit(2, true));
        assert!(terms.wants(&peer, &accepted(2)));
    }
}
