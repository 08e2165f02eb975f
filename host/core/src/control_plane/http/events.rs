//! [`EventHub`]: the control plane's events on their way to `/api/events` readers.
//! The event loop publishes each round's events at once; every reader has a bounded
//! buffer of [`READER_BUFFER`] events (a broadcast ring), so a slow reader never slows
//! dispatch: it falls behind, is told how many it missed (`event: lagged`), and goes
//! on from the oldest event still kept. The last [`REPLAY`] events are kept for readers
//! that reconnect with `Last-Event-ID`.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
};

use tokio::sync::broadcast;

use crate::protocol::api::ApiEvent;

/// Events a reader may fall behind by before it is told it lagged.
pub const READER_BUFFER: usize = 1_024;
/// Events kept for readers that resume with `Last-Event-ID`.
pub const REPLAY: usize = 1_024;
/// Event streams open at once, at most (each costs its reader's writes, on the same
/// cores as dispatch).
pub const MAX_READERS: usize = 32;

/// An event as the readers share it: its JSON is made once, by the first reader that
/// needs it, never on the event loop.
#[derive(Debug)]
pub struct SharedEvent {
    /// The event.
    pub event: ApiEvent,
    json: OnceLock<String>,
}

impl SharedEvent {
    fn new(event: ApiEvent) -> Self {
        SharedEvent {
            event,
            json: OnceLock::new(),
        }
    }

    /// The event as JSON.
    pub fn json(&self) -> &str {
        self.json
            .get_or_init(|| serde_json::to_string(&self.event).unwrap_or_else(|_| "{}".into()))
    }
}

/// Where the event loop publishes and readers subscribe.
pub struct EventHub {
    inner: Mutex<Kept>,
    tx: broadcast::Sender<Arc<SharedEvent>>,
    readers: Arc<AtomicUsize>,
}

/// One open event stream; dropping it frees its place.
#[derive(Debug)]
pub struct ReaderSlot(Arc<AtomicUsize>);

impl Drop for ReaderSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Kept {
    next_id: u64,
    recent: VecDeque<ApiEvent>,
}

/// What a new reader starts with.
pub struct Subscription {
    /// Kept events after the one it last saw, oldest first.
    pub backlog: Vec<Arc<SharedEvent>>,
    /// How many events after the one it last saw are no longer kept.
    pub missed: u64,
    /// Events from now on.
    pub live: broadcast::Receiver<Arc<SharedEvent>>,
    /// Its place among the open streams.
    pub slot: ReaderSlot,
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
            readers: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        // A reader that panicked while holding the lock leaves the ring as it was.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Publishes `events` in order, numbering them. The replay ring keeps events by
    /// value, so with no reader connected publishing allocates nothing: an event is
    /// wrapped for sharing only when a reader is there to receive it.
    pub fn publish(&self, events: impl ExactSizeIterator<Item = ApiEvent>) {
        let count = events.len();
        if count == 0 {
            return;
        }
        let mut kept = self.kept();
        let live = self.tx.receiver_count() > 0;
        // Events that the same call would push out of the ring again are not kept.
        let unkept = count.saturating_sub(REPLAY);
        for (i, mut event) in events.enumerate() {
            event.id = kept.next_id;
            kept.next_id += 1;
            if live {
                // Nobody left listening by now is fine.
                let _ = self.tx.send(Arc::new(SharedEvent::new(event.clone())));
            }
            if i < unkept {
                continue;
            }
            if kept.recent.len() >= REPLAY {
                kept.recent.pop_front();
            }
            kept.recent.push_back(event);
        }
    }

    /// A reader that last saw event `last_seen` (none: it starts now). Taken under
    /// the same lock as [`EventHub::publish`], so the backlog and the live events
    /// neither overlap nor leave a gap.
    /// `None` when [`MAX_READERS`] streams are open. A `last_seen` beyond the newest
    /// event (from before a restart of the control plane) resumes from the oldest kept,
    /// told it missed an unknown number (`missed` is `u64::MAX`).
    pub fn subscribe(&self, last_seen: Option<u64>) -> Option<Subscription> {
        let open = self.readers.fetch_add(1, Ordering::AcqRel);
        let slot = ReaderSlot(self.readers.clone());
        if open >= MAX_READERS {
            return None;
        }
        let kept = self.kept();
        let live = self.tx.subscribe();
        let Some(mut last) = last_seen else {
            return Some(Subscription {
                backlog: Vec::new(),
                missed: 0,
                live,
                slot,
            });
        };
        let mut unknown = false;
        if last >= kept.next_id {
            unknown = true;
            last = 0;
        }
        let backlog: Vec<_> = kept
            .recent
            .iter()
            .filter(|e| e.id > last)
            .map(|e| Arc::new(SharedEvent::new(e.clone())))
            .collect();
        let first_kept = kept.recent.front().map_or(kept.next_id, |e| e.id);
        let missed = if unknown {
            u64::MAX
        } else {
            first_kept.saturating_sub(last.saturating_add(1))
        };
        Some(Subscription {
            backlog,
            missed,
            live,
            slot,
        })
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
        let mut sub = hub.subscribe(Some(3)).expect("a place");
        let ids: Vec<u64> = sub.backlog.iter().map(|e| e.event.id).collect();
        assert_eq!(ids, [4, 5]);
        assert_eq!(sub.missed, 0);
        hub.publish(events(1));
        assert_eq!(sub.live.try_recv().map(|e| e.event.id).ok(), Some(6));
    }

    #[test]
    fn a_reader_too_far_behind_is_told_how_many_it_missed() {
        let hub = EventHub::new();
        hub.publish(events(REPLAY + 10));
        let sub = hub.subscribe(Some(2)).expect("a place");
        assert_eq!(sub.missed, 8);
        assert_eq!(sub.backlog.len(), REPLAY);

        // A live reader that does not read lags by what overflowed its buffer.
        let mut slow = hub.subscribe(None).expect("a place");
        hub.publish(events(READER_BUFFER + 7));
        assert!(matches!(
            slow.live.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(7))
        ));

        // An id from before a restart: everything kept, and an unknown number missed.
        let from_before = hub.subscribe(Some(u64::MAX - 1)).expect("a place");
        assert_eq!(from_before.missed, u64::MAX);
        assert_eq!(from_before.backlog.len(), REPLAY);
    }

    #[test]
    fn a_live_reader_gets_a_round_larger_than_the_ring_up_to_its_buffer() {
        let hub = EventHub::new();
        hub.publish(events(3));
        let mut live = hub.subscribe(None).expect("a place");
        hub.publish(events(REPLAY + 5));
        assert!(matches!(
            live.live.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(n)) if n as usize == REPLAY + 5 - READER_BUFFER
        ));
        let ids: Vec<u64> = std::iter::from_fn(|| live.live.try_recv().ok())
            .map(|e| e.event.id)
            .collect();
        let first = 4 + (REPLAY + 5 - READER_BUFFER) as u64;
        assert_eq!(ids, (first..=(REPLAY as u64 + 8)).collect::<Vec<_>>());
        // The ring holds the newest REPLAY, ids and all, for a reader resuming.
        let resumed = hub.subscribe(Some(0)).expect("a place");
        assert_eq!(resumed.missed, 8);
        let kept: Vec<u64> = resumed.backlog.iter().map(|e| e.event.id).collect();
        assert_eq!(kept, (9..=(REPLAY as u64 + 8)).collect::<Vec<_>>());
    }

    #[test]
    fn streams_are_limited_and_a_closed_one_frees_its_place() {
        let hub = EventHub::new();
        let open: Vec<_> = (0..MAX_READERS).map(|_| hub.subscribe(None)).collect();
        assert!(open.iter().all(Option::is_some));
        assert!(hub.subscribe(None).is_none());
        drop(open);
        assert!(hub.subscribe(None).is_some());
    }
}
