//! [`Lifecycle`]: where a subworker is in its life, as a type instead of flags.
//!
//! `Running` takes tasks. `Draining` takes none and, once everything it holds is
//! finished and reported, either exits (a stop was asked for: Ctrl+C or SIGTERM, given
//! up on at a deadline, `--shutdown-grace`) or restarts in place (after
//! `--max-reloads`, or to free threads stuck in tasks that ignored their timeout). A
//! stop wins over a restart: a subworker asked to stop while it drains for a restart
//! exits.

use std::time::Duration;

use tokio::time::Instant;

/// What a draining subworker does once it holds nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDrain {
    /// Re-execute itself in place (same worker id).
    Restart,
    /// Unregister and exit; past `give_up_at`, with what is still running handed back.
    Exit {
        /// When it stops waiting for its running tasks.
        give_up_at: Instant,
    },
}

/// Where a subworker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Taking tasks.
    Running,
    /// Taking no more tasks; then `then`.
    Draining {
        /// What comes after.
        then: AfterDrain,
    },
}

impl Lifecycle {
    /// Does it take new tasks?
    pub fn takes_tasks(&self) -> bool {
        matches!(self, Lifecycle::Running)
    }

    /// Is it draining (for any reason)?
    pub fn draining(&self) -> bool {
        !self.takes_tasks()
    }

    /// A stop was asked for at `now`: drain, then exit, giving up after `grace`. A
    /// second call keeps the first deadline.
    pub fn stop(&mut self, now: Instant, grace: Duration) {
        if !matches!(
            self,
            Lifecycle::Draining {
                then: AfterDrain::Exit { .. }
            }
        ) {
            *self = Lifecycle::Draining {
                then: AfterDrain::Exit {
                    give_up_at: now + grace,
                },
            };
        }
    }

    /// Drain, then restart in place. Only from `Running`; false otherwise (already
    /// draining: a restart or a stop is on its way).
    pub fn restart(&mut self) -> bool {
        if self.takes_tasks() {
            *self = Lifecycle::Draining {
                then: AfterDrain::Restart,
            };
            true
        } else {
            false
        }
    }

    /// When a requested stop gives up on the tasks still running.
    pub fn give_up_at(&self) -> Option<Instant> {
        match self {
            Lifecycle::Draining {
                then: AfterDrain::Exit { give_up_at },
            } => Some(*give_up_at),
            _ => None,
        }
    }

    /// Has a requested stop's deadline passed at `now`?
    pub fn gave_up(&self, now: Instant) -> bool {
        self.give_up_at().is_some_and(|at| now >= at)
    }

    /// What to do now that it holds nothing (`None`: keep running).
    pub fn after_drain(&self) -> Option<AfterDrain> {
        match self {
            Lifecycle::Running => None,
            Lifecycle::Draining { then } => Some(*then),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_drains_then_exits_and_keeps_its_first_deadline() {
        let now = Instant::now();
        let mut life = Lifecycle::Running;
        assert!(life.takes_tasks() && life.after_drain().is_none());
        life.stop(now, Duration::from_secs(30));
        assert!(life.draining());
        let deadline = life.give_up_at().expect("a deadline");
        assert_eq!(deadline, now + Duration::from_secs(30));
        life.stop(now + Duration::from_secs(10), Duration::from_secs(30));
        assert_eq!(
            life.give_up_at(),
            Some(deadline),
            "a second signal keeps it"
        );
        assert!(!life.gave_up(now + Duration::from_secs(29)));
        assert!(life.gave_up(now + Duration::from_secs(30)));
        assert!(!life.restart(), "no restart once stopping");
        assert!(matches!(life.after_drain(), Some(AfterDrain::Exit { .. })));
    }

    #[test]
    fn a_restart_drains_first_and_a_stop_wins_over_it() {
        let now = Instant::now();
        let mut life = Lifecycle::Running;
        assert!(life.restart());
        assert!(!life.takes_tasks());
        assert_eq!(life.after_drain(), Some(AfterDrain::Restart));
        assert!(life.give_up_at().is_none(), "a restart waits for its tasks");
        assert!(!life.restart(), "once is enough");
        life.stop(now, Duration::from_secs(5));
        assert!(matches!(life.after_drain(), Some(AfterDrain::Exit { .. })));
    }
}
