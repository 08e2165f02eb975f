//! The body of `/api/events`: server-sent events written by hand so that the events
//! ready at once go out in one chunk (one write) instead of one each. Under load a
//! reader then costs a write per batch, not per task step. An idle stream gets a
//! comment line every [`KEEP_ALIVE`].

use std::{collections::VecDeque, convert::Infallible, io::Write, sync::Arc, time::Duration};

use axum::body::{Body, Bytes};
use tokio::sync::broadcast::{self, error::TryRecvError};

use super::events::{ReaderSlot, SharedEvent};

/// How often an idle stream says it is alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A chunk is closed once it holds this many bytes.
const CHUNK_BYTES: usize = 64 << 10;

/// One reader's place in the stream.
pub struct Reader {
    /// Its place among the open streams (freed with the body).
    pub slot: ReaderSlot,
    /// Events missed before the first one sent (`u64::MAX`: an unknown number).
    pub missed: u64,
    /// Kept events to send first.
    pub backlog: VecDeque<Arc<SharedEvent>>,
    /// Events from now on.
    pub live: broadcast::Receiver<Arc<SharedEvent>>,
}

fn write_event(out: &mut Vec<u8>, shared: &SharedEvent) {
    let _ = write!(
        out,
        "id: {}\nevent: {}\ndata: {}\n\n",
        shared.event.id,
        shared.event.kind,
        shared.json()
    );
}

/// `missed` events were dropped (`u64::MAX`: an unknown number, the reader's id being
/// from before a restart).
fn write_lagged(out: &mut Vec<u8>, missed: u64) {
    if missed == u64::MAX {
        out.extend_from_slice(b"event: lagged\ndata: {\"missed\":null}\n\n");
    } else {
        let _ = write!(out, "event: lagged\ndata: {{\"missed\":{missed}}}\n\n");
    }
}

impl Reader {
    /// The next chunk: whatever is ready (at least one event, a lag notice, or a
    /// keep-alive comment); `None` when the hub is gone.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        let mut out = Vec::new();
        if self.missed > 0 {
            write_lagged(&mut out, std::mem::take(&mut self.missed));
        }
        while out.len() < CHUNK_BYTES {
            match self.backlog.pop_front() {
                Some(event) => write_event(&mut out, &event),
                None => break,
            }
        }
        if out.is_empty() {
            match tokio::time::timeout(KEEP_ALIVE, self.live.recv()).await {
                Err(_) => out.extend_from_slice(b":\n\n"),
                Ok(Ok(event)) => write_event(&mut out, &event),
                Ok(Err(broadcast::error::RecvError::Lagged(missed))) => {
                    write_lagged(&mut out, missed)
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
            }
        }
        while out.len() < CHUNK_BYTES {
            match self.live.try_recv() {
                Ok(event) => write_event(&mut out, &event),
                Err(TryRecvError::Lagged(missed)) => write_lagged(&mut out, missed),
                Err(_) => break,
            }
        }
        Some(Bytes::from(out))
    }

    /// The response body.
    pub fn into_body(self) -> Body {
        let stream = futures::stream::unfold(self, |mut reader| async move {
            let chunk = reader.next_chunk().await?;
            Some((Ok::<_, Infallible>(chunk), reader))
        });
        Body::from_stream(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{control_plane::http::events::EventHub, protocol::api::ApiEvent};

    #[tokio::test]
    async fn events_ready_together_go_in_one_chunk_and_a_lag_is_said_first() {
        let hub = EventHub::new();
        let sub = hub.subscribe(None).expect("a place");
        let mut reader = Reader {
            slot: sub.slot,
            missed: 3,
            backlog: sub.backlog.into(),
            live: sub.live,
        };
        hub.publish(
            (0..5)
                .map(|i| ApiEvent::new("task.queued", i))
                .collect::<Vec<_>>()
                .into_iter(),
        );
        let chunk = reader.next_chunk().await.expect("a chunk");
        let text = String::from_utf8_lossy(&chunk);
        assert!(
            text.starts_with("event: lagged\ndata: {\"missed\":3}\n\n"),
            "{text}"
        );
        assert_eq!(text.matches("event: task.queued\n").count(), 5, "{text}");
        assert!(text.contains("id: 5\nevent: task.queued\ndata: {\"id\":5,"));
    }
}
