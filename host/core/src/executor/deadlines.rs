//! [`Deadlines`]: one thread that runs an action when a deadline passes.
//!
//! Task deadlines are watched here, not on the async runtime: a short plugin call may
//! run on a runtime worker (see [`super::Executor`]), and a watchdog spawned from
//! inside it would land in that worker's LIFO slot, which tokio does not let other
//! workers steal: a call that hangs would never be timed out.
//!
//! Watching costs a lock and a map insert; giving a watch up (the call returned)
//! a lock and a remove. The thread is woken only for a deadline earlier than the one
//! it sleeps until: with one timeout for every task, deadlines arrive in order and
//! the thread sleeps through them (it wakes once per timeout, not once per task).

use std::{
    collections::BTreeMap,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::Instant,
};

use tracing::warn;

type Action = Box<dyn FnOnce() + Send>;

/// Runs actions when their deadlines pass, on its own thread. Cloned handles share
/// the thread; it ends when the last handle is dropped.
#[derive(Clone)]
pub(crate) struct Deadlines {
    owner: Arc<Owner>,
}

/// Stops the thread when the last [`Deadlines`] goes.
struct Owner {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// Pending actions by deadline (and a sequence number: deadlines may be equal).
    pending: BTreeMap<(Instant, u64), Action>,
    next_key: u64,
    /// When the thread wakes next if nothing wakes it (`None`: not until woken).
    sleeps_until: Option<Instant>,
    /// Times the thread has woken.
    wakes: u64,
    closed: bool,
}

/// A watched deadline: dropping it before the deadline passes cancels its action.
pub(crate) struct Watch {
    shared: Arc<Shared>,
    key: (Instant, u64),
}

impl Drop for Watch {
    fn drop(&mut self) {
        lock(&self.shared.state).pending.remove(&self.key);
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        lock(&self.shared.state).closed = true;
        self.shared.wake.notify_one();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Actions run outside the lock and panics in them are caught: the state stays whole.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Deadlines {
    /// Starts the thread.
    pub(crate) fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let on_thread = shared.clone();
        std::thread::Builder::new()
            .name("fastworker-deadlines".into())
            .spawn(move || on_thread.run())?;
        Ok(Deadlines {
            owner: Arc::new(Owner { shared }),
        })
    }

    /// Runs `action` on the deadline thread at `at`, unless the returned [`Watch`] is
    /// dropped first.
    pub(crate) fn watch(&self, at: Instant, action: impl FnOnce() + Send + 'static) -> Watch {
        let shared = &self.owner.shared;
        let mut state = lock(&shared.state);
        let key = (at, state.next_key);
        state.next_key += 1;
        state.pending.insert(key, Box::new(action));
        if state.sleeps_until.is_none_or(|until| at < until) {
            state.sleeps_until = Some(at);
            shared.wake.notify_one();
        }
        Watch {
            shared: shared.clone(),
            key,
        }
    }
}

impl Shared {
    /// The thread: runs what is due, then sleeps until the earliest pending deadline.
    fn run(self: Arc<Self>) {
        let mut state = lock(&self.state);
        loop {
            if state.closed {
                return;
            }
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some(entry) = state.pending.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove());
            }
            if !due.is_empty() {
                drop(state);
                for action in due {
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(action)).is_err() {
                        warn!("a deadline's action panicked");
                    }
                }
                state = lock(&self.state);
                continue;
            }
            // A watch given up leaves `sleeps_until` as it was: the thread sleeps on
            // until then even when nothing is pending any more, so that watches
            // given up one after another (calls that return in time) do not wake it
            // each time; then it sleeps until the earliest deadline left.
            let next = state
                .pending
                .keys()
                .next()
                .map(|(at, _)| *at)
                .or(state.sleeps_until.filter(|until| *until > now));
            state.sleeps_until = next;
            state = match next {
                None => self.wake.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(at) => {
                    self.wake
                        .wait_timeout(state, at.saturating_duration_since(now))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
            state.wakes += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::mpsc,
        time::{Duration, Instant},
    };

    use super::*;

    #[test]
    fn actions_run_at_their_deadlines_in_order() {
        let deadlines = Deadlines::start().unwrap();
        let (tx, rx) = mpsc::channel();
        let start = Instant::now();
        let mut watches = Vec::new();
        for ms in [60u64, 20, 40] {
            let tx = tx.clone();
            watches.push(deadlines.watch(start + Duration::from_millis(ms), move || {
                let _ = tx.send((ms, Instant::now()));
            }));
        }
        let fired: Vec<(u64, Instant)> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(
            fired.iter().map(|(ms, _)| *ms).collect::<Vec<_>>(),
            [20, 40, 60]
        );
        for (ms, at) in fired {
            assert!(
                at >= start + Duration::from_millis(ms),
                "{ms} ms fired early"
            );
        }
    }

    #[test]
    fn a_dropped_watch_never_runs_and_an_earlier_one_is_not_held_up_by_it() {
        let deadlines = Deadlines::start().unwrap();
        let (tx, rx) = mpsc::channel();
        let late_tx = tx.clone();
        // The thread sleeps until this one's deadline...
        let given_up = deadlines.watch(Instant::now() + Duration::from_millis(50), move || {
            let _ = late_tx.send("given up");
        });
        drop(given_up);
        // ...and one far later, then one sooner than anything, are watched.
        let _far = deadlines.watch(Instant::now() + Duration::from_secs(3600), || {});
        let soon = Instant::now() + Duration::from_millis(10);
        let _soon = deadlines.watch(soon, move || {
            let _ = tx.send("soon");
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "soon");
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "a dropped watch ran"
        );
    }

    #[test]
    fn watches_given_up_in_time_do_not_wake_the_thread_each_time() {
        let deadlines = Deadlines::start().unwrap();
        let started = Instant::now();
        for _ in 0..1000 {
            drop(deadlines.watch(Instant::now() + Duration::from_millis(200), || {}));
            // As calls come in a round trip: the thread has time to wake between them.
            std::thread::sleep(Duration::from_micros(100));
        }
        let took = started.elapsed();
        let wakes = lock(&deadlines.owner.shared.state).wakes;
        // Twice per 200 ms at most (once woken for the first watch, once at its
        // deadline); waking the thread for each watch made this about 1,000.
        let most = 2 * (took.as_millis() as u64 / 200 + 1) + 2;
        assert!(
            wakes <= most,
            "{wakes} wake-ups for 1,000 watches given up in {took:?}"
        );
    }

    #[test]
    fn a_panicking_action_leaves_the_thread_running() {
        let deadlines = Deadlines::start().unwrap();
        let (tx, rx) = mpsc::channel();
        let _bad = deadlines.watch(Instant::now(), || panic!("in an action"));
        let _good = deadlines.watch(Instant::now() + Duration::from_millis(5), move || {
            let _ = tx.send(());
        });
        assert!(rx.recv_timeout(Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn the_last_handle_closes_the_thread() {
        let deadlines = Deadlines::start().unwrap();
        let shared = deadlines.owner.shared.clone();
        let copy = deadlines.clone();
        drop(deadlines);
        assert!(!lock(&shared.state).closed, "closed while a handle is left");
        drop(copy);
        assert!(lock(&shared.state).closed);
    }
}
