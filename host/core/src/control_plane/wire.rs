//! The control plane's wire stages, so the event loop, which every message passes
//! through one at a time, neither decodes nor encodes (under load that was a fifth of
//! its time, `perf`): messages are decoded on the transport's reader task
//! ([`inbound`]) and, under load, encoded on its writer task ([`Encoder`]), each
//! alongside the loop on the runtime's other thread, with no hand-off between tasks of
//! their own. A lone message is encoded and written by the loop itself
//! ([`Delivery::AtOnce`]): on a round trip the hand-off to the writer cost more than
//! the encoding.
//!
//! Each of those tasks is first in first out, and the loop writes only to a peer with
//! nothing queued, so messages keep their order per peer (and across peers).

use tracing::{debug, warn};

use crate::{
    protocol::{self, FromControlPlane, ProtocolError, ToControlPlane},
    transport::{Outbox, PeerId, ServerEvent},
};

/// What the event loop hears: a server event with its message decoded.
#[derive(Debug)]
pub enum Inbound {
    /// A message from `peer`, or why it could not be read.
    Message {
        /// Who sent it.
        peer: PeerId,
        /// The message (boxed: the channel holds many, most of them small).
        msg: Box<Result<ToControlPlane, ProtocolError>>,
    },
    /// `peer` sent a message without the cluster key's handshake.
    Unauthenticated(PeerId),
    /// `peer`'s connection dropped.
    Disconnected(PeerId),
}

/// A server event with its message decoded: the transport's reader task calls this
/// on each event ([`crate::transport::bind_mapped`]), so decoding runs beside the event loop
/// with no hand-off of its own.
pub fn inbound(event: ServerEvent) -> Inbound {
    match event {
        ServerEvent::Message { peer, frames } => Inbound::Message {
            msg: Box::new(protocol::decode::<ToControlPlane>(&frames)),
            peer,
        },
        ServerEvent::Unauthenticated { peer, .. } => Inbound::Unauthenticated(peer),
        ServerEvent::Disconnected(peer) => Inbound::Disconnected(peer),
    }
}

/// How the loop's messages of one round leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Encoded and written by the loop itself to a peer whose socket is idle (else
    /// queued): a lone message reaches the socket without a hand-off to a writer task.
    AtOnce,
    /// Encoded and written by each peer's writer task while the loop goes on: under
    /// load, where writing on the loop cost a tenth of the throughput (`bench`).
    Queued,
}

/// Queues messages for peers, each encoded on the transport's writer task, or
/// written at once ([`Delivery`]).
#[derive(Clone)]
pub struct Encoder {
    outbox: Outbox,
}

impl Encoder {
    /// An encoder that sends through `outbox`.
    pub fn new(outbox: Outbox) -> Self {
        Encoder { outbox }
    }

    /// Sends `msg` to `peer` in protocol `version` (`None` when the peer has none:
    /// it left), as `delivery` says.
    pub fn send(
        &self,
        peer: &PeerId,
        version: Option<u8>,
        msg: FromControlPlane,
        delivery: Delivery,
    ) {
        let encode = move || {
            match protocol::encode_as(version.unwrap_or(protocol::MIN_PROTOCOL_VERSION), &msg) {
                Ok(frames) => Some(frames),
                // A late answer to a peer that has gone (its version is forgotten):
                // nobody is there to read it.
                Err(err) if version.is_none() => {
                    debug!("reply to a peer that left dropped: {err}");
                    None
                }
                Err(err) => {
                    warn!("cannot encode a reply: {err}");
                    None
                }
            }
        };
        match delivery {
            Delivery::AtOnce => self.outbox.send_encoded_at_once(peer, encode),
            Delivery::Queued => self.outbox.send_encoded(peer, encode),
        }
    }

    /// Waits (at most `limit`) until every message queued before this call has been
    /// encoded and handed to the transport.
    pub async fn flush(&self, limit: std::time::Duration) {
        self.outbox.flush(limit).await;
    }
}
