//! Small endpoints that only answer questions (the control plane's discovery endpoint,
//! a subworker's status endpoint): one way to read a request and answer it.

use bytes::Bytes;

use crate::{
    protocol::{self, FromControlPlane, ToControlPlane},
    task_error::{ErrorKind, TaskError},
    transport::{Outbox, PeerId},
};

/// The answer of a probe endpoint to `frames`: `Ping` gets `Pong`, whatever `answer`
/// handles gets its reply, any other readable request a `Rejected` carrying `hint`,
/// and an unreadable one `Refused`.
pub fn probe_reply(
    frames: &[Bytes],
    answer: impl FnOnce(&ToControlPlane) -> Option<FromControlPlane>,
    hint: &str,
) -> FromControlPlane {
    match protocol::decode::<ToControlPlane>(frames) {
        Ok(ToControlPlane::Ping { nonce }) => FromControlPlane::Pong { nonce },
        Ok(request) => answer(&request).unwrap_or_else(|| FromControlPlane::Rejected {
            request_id: 0,
            error: TaskError::new(ErrorKind::Rejected, hint),
        }),
        Err(err) => FromControlPlane::Refused {
            reason: err.to_string(),
        },
    }
}

/// Answers a peer that did not prove it knows the cluster key, in the protocol it
/// speaks, and closes its connection.
pub fn refuse_unauthenticated(outbox: &Outbox, peer: &PeerId) {
    let msg = FromControlPlane::Refused {
        reason: "this fastworker cluster requires the cluster key (--auth-key-file or FASTWORKER_AUTH_KEY)".into(),
    };
    if let Ok(frames) = protocol::encode(&msg) {
        outbox.refuse(peer, frames);
    }
}
