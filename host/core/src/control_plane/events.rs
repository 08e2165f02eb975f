//! [`EventLog`]: the control plane's recent events (plugin reloads, subworkers coming
//! and going), newest last, bounded. The dashboard's event stream reads it.

use std::collections::VecDeque;

pub use crate::protocol::Event;

/// The last `capacity` events.
#[derive(Debug)]
pub struct EventLog {
    events: VecDeque<Event>,
    capacity: usize,
    total: u64,
}

impl EventLog {
    /// An empty log keeping at most `capacity` events.
    pub fn new(capacity: usize) -> Self {
        EventLog {
            events: VecDeque::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
            total: 0,
        }
    }

    /// Appends an event, dropping the oldest when full.
    pub fn push(&mut self, event: Event) {
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(event);
        self.total += 1;
    }

    /// The events kept, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Event> {
        self.events.iter()
    }

    /// Events ever pushed.
    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_capacity_events() {
        let mut log = EventLog::new(2);
        for i in 0..3 {
            log.push(Event::new(i, "k", "s", i.to_string()));
        }
        let kept: Vec<u64> = log.iter().map(|e| e.at_ms).collect();
        assert_eq!(kept, [1, 2]);
        assert_eq!(log.total(), 3);
    }
}
