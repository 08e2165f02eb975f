//! [`EventHub`]: the control plane's events on their way to `/api/events` readers.
//! The event loop publishes each round's events at once; every reader has a bounded
//! buffer of [`READER_BUFFER`] events (a broadcast ring), so a slow reader never slows
//! dispatch: it falls behind, is told how many it missed (`event: lagged`), and goes
//! on from the oldest event still kept. The last [`REPLAY`] events are kept for readers
//! that reconnect with `Last-Event-ID`.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use tokio::sync::broadcast;

use crate::protocol::api::ApiEvent;

/// Events a reader may fall behind by before it is told it lagged.
pub const READER_BUFFER: usize = 1_024;
/// Events kept for readers that resume with `Last-Event-ID`.
pub const REPLAY: usize = 1_024;

/// Where the event loop publishes and readers subscribe.
pub struct EventHub {
    inner: Mutex<Kept>,
    tx: broadcast::Sender<Arc<ApiEvent>>,
}

struct Kept {
    next_id: u64,
    recent: VecDeque<Arc<ApiEvent>>,
}

/// What a new reader starts with.
pub struct Subscription {
    /// Kept events after the one it last saw, oldest first.
    pub backlog: Vec<Arc<ApiEvent>>,
    /// How many events after the one it last saw are no longer kept.
    pub missed: u64,
    /// Events from now on.
    pub live: broadcast::Receiver<Arc<ApiEvent>>,
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub::new()
    }
}

impl EventHub {
    /// A hub with no events yet; the first gets id 1.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(READER_BUFFER);
        EventHub {
            inner: Mutex::new(Kept {
                next_id: 1,
                recent: VecDeque::with_capacity(REPLAY),
            }),
            tx,
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        // A reader that panicked while holding the lock leaves the ring as it was.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Numbers `events` and hands them to every reader.
    pub fn publish(&self, events: impl ExactSizeIterator<Item = ApiEvent>) {
        if events.len() == 0 {
            return;
        }
        let mut kept = self.kept();
        for mut event in events {
            event.id = kept.next_id;
            kept.next_id += 1;
            let event = Arc::new(event);
            if kept.recent.len() >= REPLAY {
                kept.recent.pop_front();
            }
            kept.recent.push_back(event.clone());
            // Nobody listening is fine.
            let _ = self.tx.send(event);
        }
    }

    /// A reader that last saw event `last_seen` (none: it starts now). Taken under
    /// the same lock as [`EventHub::publish`], so the backlog and the live events
    /// neither overlap nor leave a gap.
    pub fn subscribe(&self, last_seen: Option<u64>) -> Subscription {
        let kept = self.kept();
        let live = self.tx.subscribe();
        let Some(last) = last_seen else {
            return Subscription {
                backlog: Vec::new(),
                missed: 0,
                live,
            };
        };
        let backlog: Vec<_> = kept
            .recent
            .iter()
            .filter(|e| e.id > last)
            .cloned()
            .collect();
        let first_kept = kept.recent.front().map_or(kept.next_id, |e| e.id);
        let missed = first_kept.saturating_sub(last.saturating_add(1));
        Subscription {
            backlog,
            missed,
            live,
        }
    }

    /// The id the next event gets.
    pub fn next_id(&self) -> u64 {
        self.kept().next_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: usize) -> std::vec::IntoIter<ApiEvent> {
        (0..n)
            .map(|i| ApiEvent::new("task.queued", i as u64))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn a_reader_resumes_after_its_last_event_without_gap_or_repeat() {
        let hub = EventHub::new();
        hub.publish(events(5));
        let mut sub = hub.subscribe(Some(3));
        let ids: Vec<u64> = sub.backlog.iter().map(|e| e.id).collect();
        assert_eq!(ids, [4, 5]);
        assert_eq!(sub.missed, 0);
        hub.publish(events(1));
        assert_eq!(sub.live.try_recv().map(|e| e.id).ok(), Some(6));
    }

    #[test]
    fn a_reader_too_far_behind_is_told_how_many_it_missed() {
        let hub = EventHub::new();
        hub.publish(events(REPLAY + 10));
        let sub = hub.subscribe(Some(2));
        assert_eq!(sub.missed, 8);
        assert_eq!(sub.backlog.len(), REPLAY);

        // A live reader that does not read lags by what overflowed its buffer.
        let mut slow = hub.subscribe(None);
        hub.publish(events(READER_BUFFER + 7));
        assert!(matches!(
            slow.live.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(7))
        ));
    }
}
