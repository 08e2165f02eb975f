//! Retry policy: whether a failed attempt is tried again, and after how long.

use std::time::Duration;

use crate::{
    protocol::{RetryOverride, TaskSpec},
    task_error::ErrorKind,
};

/// A task's effective retry policy: the plugin's defaults with the submission's
/// overrides applied.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first failure.
    pub max_retries: u32,
    /// Seconds before the first retry.
    pub delay_secs: f64,
    /// Multiplier for each later delay.
    pub backoff: f64,
    /// Cap on the delay, seconds.
    pub backoff_max_secs: f64,
    /// Spread each delay by up to ±25%.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    /// The original's defaults: no retries, 60 s, ×2, at most 3600 s.
    fn default() -> Self {
        RetryPolicy {
            max_retries: 0,
            delay_secs: 60.0,
            backoff: 2.0,
            backoff_max_secs: 3600.0,
            jitter: false,
        }
    }
}

impl RetryPolicy {
    /// The plugin's defaults (if known) with `overrides` on top.
    pub fn resolve(spec: Option<&TaskSpec>, overrides: &RetryOverride) -> Self {
        let base = spec.map_or_else(RetryPolicy::default, |s| RetryPolicy {
            max_retries: s.max_retries,
            delay_secs: s.retry_delay_secs,
            backoff: s.retry_backoff,
            backoff_max_secs: s.retry_backoff_max_secs,
            jitter: false,
        });
        RetryPolicy {
            max_retries: overrides.max_retries.unwrap_or(base.max_retries),
            delay_secs: overrides.delay_secs.unwrap_or(base.delay_secs).max(0.0),
            backoff: overrides.backoff.unwrap_or(base.backoff).max(1.0),
            backoff_max_secs: overrides
                .backoff_max_secs
                .unwrap_or(base.backoff_max_secs)
                .max(0.0),
            jitter: overrides.jitter.unwrap_or(base.jitter),
        }
    }

    /// Is a failure of `kind` on attempt `attempt` (1-based) tried again?
    pub fn should_retry(&self, kind: ErrorKind, attempt: u32) -> bool {
        let retryable = matches!(
            kind,
            ErrorKind::Failed | ErrorKind::Panicked | ErrorKind::TimedOut | ErrorKind::Internal
        );
        retryable && attempt <= self.max_retries
    }

    /// The delay before attempt `attempt + 1`, given `unit` in [0, 1) for jitter. Never
    /// more than [`MAX_SPAN_SECS`](crate::protocol::MAX_SPAN_SECS), whatever the
    /// policy says (a plugin's declared numbers are not checked anywhere else).
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let mut secs = (self.delay_secs * self.backoff.powi(exp)).min(self.backoff_max_secs);
        if self.jitter {
            secs *= 0.75 + 0.5 * unit.clamp(0.0, 1.0);
        }
        let secs = if secs.is_nan() { 0.0 } else { secs };
        Duration::from_secs_f64(secs.clamp(0.0, crate::protocol::MAX_SPAN_SECS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_retries: 5,
            delay_secs: 1.0,
            backoff: 2.0,
            backoff_max_secs: 5.0,
            jitter: false,
        };
        let delays: Vec<u64> = (1..=5).map(|a| p.delay(a, 0.5).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
    }

    #[test]
    fn retries_stop_after_max_and_skip_permanent_errors() {
        let p = RetryPolicy {
            max_retries: 2,
            ..RetryPolicy::default()
        };
        assert!(p.should_retry(ErrorKind::Failed, 1));
        assert!(p.should_retry(ErrorKind::Panicked, 2));
        assert!(!p.should_retry(ErrorKind::Failed, 3));
        assert!(!p.should_retry(ErrorKind::BadArguments, 1));
        assert!(!p.should_retry(ErrorKind::Cancelled, 1));
    }

    #[test]
    fn absurd_numbers_are_capped_not_a_panic() {
        let p = RetryPolicy {
            max_retries: 1,
            delay_secs: 1e30,
            backoff: 1e30,
            backoff_max_secs: f64::INFINITY,
            jitter: true,
        };
        assert!(p.delay(50, 0.9).as_secs_f64() <= crate::protocol::MAX_SPAN_SECS);
        let nan = RetryPolicy {
            delay_secs: f64::NAN,
            ..p
        };
        assert!(nan.delay(1, 0.5).as_secs_f64() <= crate::protocol::MAX_SPAN_SECS);
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        let p = RetryPolicy {
            delay_secs: 4.0,
            jitter: true,
            ..RetryPolicy::default()
        };
        assert_eq!(p.delay(1, 0.0), Duration::from_secs(3));
        assert_eq!(p.delay(1, 1.0), Duration::from_secs(5));
    }

    #[test]
    fn overrides_beat_plugin_defaults() {
        let spec = {
            let mut value = TaskSpec::new("x");
            value.max_retries = 3;
            value.retry_delay_secs = 10.0;
            value.retry_backoff = 3.0;
            value.retry_backoff_max_secs = 100.0;
            value.timeout_secs = None;
            value.periodic = None;
            value.priority = crate::protocol::Priority::Normal;
            value
        };
        let p = RetryPolicy::resolve(Some(&spec), &{
            let mut value = RetryOverride::default();
            value.max_retries = Some(1);
            value
        });
        assert_eq!(p.max_retries, 1);
        assert_eq!(p.delay_secs, 10.0);
        assert_eq!(p.backoff, 3.0);
    }
}
