//! The control plane's wire stages: messages are decoded on their way in and encoded
//! on their way out by tasks of their own, so the event loop, which every message
//! passes through one at a time, does neither (under load that was a fifth of its
//! time, `perf`), and the runtime's other thread does it alongside.
//!
//! Each stage is one task, first in first out, so messages keep their order per peer
//! (and across peers).

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::{
    protocol::{self, FromControlPlane, ProtocolError, ToControlPlane},
    transport::{Outbox, PeerId, ServerEvent},
};

/// Decoded messages waiting for the event loop, at most (the transport's own queue
/// holds more, and pushes back on readers beyond that).
const DECODED_AHEAD: usize = 1024;

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

/// Decodes `events` on a task of its own; the loop reads the result.
pub fn decode_stage(mut events: mpsc::Receiver<ServerEvent>) -> mpsc::Receiver<Inbound> {
    let (tx, rx) = mpsc::channel(DECODED_AHEAD);
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let inbound = match event {
                ServerEvent::Message { peer, frames } => Inbound::Message {
                    msg: Box::new(protocol::decode::<ToControlPlane>(&frames)),
                    peer,
                },
                ServerEvent::Unauthenticated { peer, .. } => Inbound::Unauthenticated(peer),
                ServerEvent::Disconnected(peer) => Inbound::Disconnected(peer),
            };
            if tx.send(inbound).await.is_err() {
                break;
            }
        }
    });
    rx
}

/// One message to encode, or a marker to answer once every message before it has
/// been handed to the transport.
// Nearly every value is a `Message`: boxing it would cost an allocation each for
// nothing.
#[allow(clippy::large_enum_variant)]
enum Outgoing {
    Message {
        peer: PeerId,
        /// The version agreed with the peer; `None` when it has none (it left).
        version: Option<u8>,
        msg: FromControlPlane,
    },
    Flushed(oneshot::Sender<()>),
}

/// Encodes messages on a task of its own and hands them to the transport.
#[derive(Clone)]
pub struct Encoder {
    tx: mpsc::UnboundedSender<Outgoing>,
}

impl Encoder {
    /// An encoder that sends through `outbox`.
    pub fn new(outbox: Outbox) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
        tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                let (peer, version, msg) = match out {
                    Outgoing::Message { peer, version, msg } => (peer, version, msg),
                    Outgoing::Flushed(done) => {
                        let _ = done.send(());
                        continue;
                    }
                };
                match protocol::encode_as(version.unwrap_or(protocol::MIN_PROTOCOL_VERSION), &msg) {
                    Ok(frames) => outbox.send(&peer, frames),
                    // A late answer to a peer that has gone (its version is
                    // forgotten): nobody is there to read it.
                    Err(err) if version.is_none() => {
                        debug!("reply to a peer that left dropped: {err}")
                    }
                    Err(err) => warn!("cannot encode a reply: {err}"),
                }
            }
        });
        Encoder { tx }
    }

    /// Queues `msg` for `peer` in protocol `version`.
    pub fn send(&self, peer: &PeerId, version: Option<u8>, msg: FromControlPlane) {
        // Fails only when the task has ended, i.e. at shutdown.
        let _ = self.tx.send(Outgoing::Message {
            peer: peer.clone(),
            version,
            msg,
        });
    }

    /// Waits (at most `limit`) until every message queued before this call has been
    /// encoded and handed to the transport.
    pub async fn flush(&self, limit: std::time::Duration) {
        let (done, flushed) = oneshot::channel();
        if self.tx.send(Outgoing::Flushed(done)).is_ok() {
            let _ = tokio::time::timeout(limit, flushed).await;
        }
    }
}
