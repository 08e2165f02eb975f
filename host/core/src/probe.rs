//! Small endpoints that only answer questions (the control plane's discovery endpoint,
//! a subworker's status endpoint): one way to read a request and answer it, in the
//! protocol version it came in.

use bytes::Bytes;

use crate::{
    protocol::{self, FromControlPlane, ToControlPlane},
    task_error::{ErrorKind, TaskError},
    transport::{Outbox, PeerId},
};

/// The answer of a probe endpoint to `frames`, encoded in the protocol version the
/// request came in (the oldest one for a request that did not decode): `Ping` gets
/// `Pong`, whatever `answer` handles gets its reply (`answer` is told the version),
/// any other readable request a `Rejected` carrying `hint`, and an unreadable one
/// `Refused`.
pub fn probe_reply(
    frames: &[Bytes],
    answer: impl FnOnce(&ToControlPlane, u8) -> Option<FromControlPlane>,
    hint: &str,
) -> Option<Vec<Bytes>> {
    let (version, reply) = match protocol::decode_versioned::<ToControlPlane>(frames) {
        Ok((version, ToControlPlane::Ping { nonce })) => {
            (version, FromControlPlane::Pong { nonce })
        }
        Ok((version, request)) => (
            version,
            answer(&request, version).unwrap_or_else(|| FromControlPlane::Rejected {
                request_id: 0,
                error: TaskError::new(ErrorKind::Rejected, hint),
            }),
        ),
        Err(err) => (
            protocol::MIN_PROTOCOL_VERSION,
            FromControlPlane::Refused {
                reason: err.to_string(),
            },
        ),
    };
    protocol::encode_as(version, &reply).ok()
}

/// Answers a peer that did not prove it knows the cluster key, in the protocol it
/// speaks, and closes its connection.
pub fn refuse_unauthenticated(outbox: &Outbox, peer: &PeerId) {
    let msg = FromControlPlane::Refused {
        reason: "this fastworker cluster requires the cluster key (--auth-key-file or FASTWORKER_AUTH_KEY)".into(),
    };
    // In the oldest version: the peer has agreed on none, and every build reads it.
    if let Ok(frames) = protocol::encode_as(protocol::MIN_PROTOCOL_VERSION, &msg) {
        outbox.refuse(peer, frames);
    }
}
