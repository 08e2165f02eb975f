//! [`LogLimiter`]: says a thing at most once per interval per key, and counts what it
//! kept quiet, so a peer that misbehaves fast cannot flood the log.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Keys remembered at most (older ones are dropped past this).
const MAX_KEYS: usize = 10_000;

/// At most one line per `interval` per key.
pub struct LogLimiter {
    interval: Duration,
    last: Mutex<HashMap<String, (Instant, u64)>>,
}

impl LogLimiter {
    /// A limiter allowing one line per `interval` per key.
    pub fn new(interval: Duration) -> Self {
        LogLimiter {
            interval,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(suppressed since the last time)` when `key` may be logged now.
    pub fn allow(&self, key: &str) -> Option<u64> {
        self.allow_at(key, Instant::now())
    }

    /// The same, at `now` (for callers that keep their own clock).
    pub fn allow_at(&self, key: &str, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.len() > MAX_KEYS {
            last.retain(|_, (at, _)| now.saturating_duration_since(*at) < self.interval);
        }
        match last.get_mut(key) {
            Some((at, quiet)) if now.saturating_duration_since(*at) < self.interval => {
                *quiet += 1;
                None
            }
            Some((at, quiet)) => {
                let n = *quiet;
                *at = now;
                *quiet = 0;
                Some(n)
            }
            None => {
                last.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_interval_per_key_counting_the_rest() {
        let t = Instant::now();
        let limiter = LogLimiter::new(Duration::from_secs(1));
        assert_eq!(limiter.allow_at("a", t), Some(0));
        assert_eq!(limiter.allow_at("a", t + Duration::from_millis(10)), None);
        assert_eq!(limiter.allow_at("a", t + Duration::from_millis(20)), None);
        assert_eq!(limiter.allow_at("b", t), Some(0));
        assert_eq!(limiter.allow_at("a", t + Duration::from_secs(1)), Some(2));
    }
}
