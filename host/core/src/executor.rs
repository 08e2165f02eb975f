//! [`Executor`]: runs tasks on this host, against the current plugin registry.
//!
//! Tasks handed to it wait in a [`LocalQueue`](local_queue) for one of its slots
//! (`--concurrency`) and start most urgent first. A finished task starts the next one
//! itself, without a trip through the subworker's event loop, so a queue of short
//! tasks runs back to back. Each task runs on a [`CallPool`](call_pool) thread
//! (plugin code is synchronous and may take long). A task with a deadline is reported `timed_out` when it passes, and its
//! context is cancelled so a cooperative task stops; one that ignores that keeps its
//! thread until it returns (counted by [`Executor::overdue`]) but no longer holds a
//! slot the control plane knows about.
//!
//! Used by the subworker and by the control plane for the tasks it runs itself.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::debug;

use crate::{
    plugin::{call::call_task, CallContext},
    protocol::{
        now_ms, AttemptResult, LeaseToken, RunningClaim, TaskEnvelope, TaskId, TaskOutcome,
    },
    task_error::{ErrorKind, TaskError},
};

pub use crate::plugin::SharedRegistry;

mod call_pool;
mod local_queue;
use call_pool::CallPool;
use local_queue::LocalQueue;

/// The most threads plugin calls may hold at once: the slots a host offers, plus tasks
/// that ignore their timeout (each keeps its thread until it returns).
const MAX_CALL_THREADS: usize = 1024;

/// One task running here.
struct Running {
    /// Set to cancel it.
    cancelled: Arc<AtomicBool>,
    /// The delivery and lease its outcome answers: a task handed out again while it
    /// still runs here (its lease was given up while this host was silent) keeps
    /// running once and answers the newest assignment.
    assignment: Arc<Mutex<(u32, LeaseToken)>>,
}

/// Runs tasks and reports their outcomes on a channel.
#[derive(Clone)]
pub struct Executor {
    registry: SharedRegistry,
    running: Arc<Mutex<HashMap<TaskId, Running>>>,
    overdue: Arc<Mutex<HashMap<TaskId, Instant>>>,
    outcomes: mpsc::UnboundedSender<TaskOutcome>,
    calls: CallPool,
    /// Each task name's recent mean plugin call time.
    run_times: Arc<Mutex<HashMap<String, RunTime>>>,
    slots: Arc<Mutex<Slots>>,
    concurrency: usize,
}

/// A task name's recent mean plugin call time.
#[derive(Debug, Clone, Copy)]
struct RunTime {
    /// An exponential moving average over about the last eight calls, in ns.
    mean_ns: u64,
    /// Changed since [`Executor::take_run_times`] last reported it.
    fresh: bool,
}

/// The most task names whose run times are kept (a plugin serves at most
/// [`crate::protocol::MAX_TASKS_PER_WORKER`] names; this bounds a map fed per call).
const MAX_TIMED_NAMES: usize = crate::protocol::MAX_TASKS_PER_WORKER;

/// The tasks waiting for a slot, and the slots taken.
#[derive(Default)]
struct Slots {
    waiting: LocalQueue,
    /// Slots taken by tasks started and not finished (or timed out).
    taken: usize,
    /// Prefetched tasks started since [`Executor::take_started`] was last called.
    started: Vec<TaskId>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Executor {
    /// An executor over `registry` running `concurrency` tasks at once, reporting to
    /// `outcomes`.
    pub fn new(
        registry: SharedRegistry,
        outcomes: mpsc::UnboundedSender<TaskOutcome>,
        concurrency: usize,
    ) -> Self {
        Executor {
            registry,
            running: Arc::new(Mutex::new(HashMap::new())),
            overdue: Arc::new(Mutex::new(HashMap::new())),
            outcomes,
            calls: CallPool::new(MAX_CALL_THREADS),
            run_times: Arc::new(Mutex::new(HashMap::new())),
            slots: Arc::new(Mutex::new(Slots::default())),
            concurrency: concurrency.max(1),
        }
    }

    /// Takes `task` under `lease`: it starts when a slot is free, most urgent first.
    /// A `prefetched` task's start is reported by [`Self::take_started`]. Must be
    /// called inside a tokio runtime.
    pub fn enqueue(&self, task: TaskEnvelope, lease: LeaseToken, prefetched: bool) {
        lock(&self.slots).waiting.push(task, lease, prefetched);
        self.fill();
    }

    /// Starts waiting tasks while slots are free.
    fn fill(&self) {
        loop {
            let next = {
                let mut slots = lock(&self.slots);
                if slots.taken >= self.concurrency {
                    return;
                }
                let Some(next) = slots.waiting.pop() else {
                    return;
                };
                slots.taken += 1;
                if next.prefetched {
                    slots.started.push(next.task.id);
                }
                next
            };
            if !self.start(next.task, next.lease) {
                lock(&self.slots).taken -= 1;
            }
        }
    }

    /// Gives a slot back and starts what waits for it.
    fn free_slot(&self) {
        {
            let mut slots = lock(&self.slots);
            slots.taken = slots.taken.saturating_sub(1);
        }
        self.fill();
    }

    /// The prefetched tasks started since the last call, in the order they started.
    pub fn take_started(&self) -> Vec<TaskId> {
        std::mem::take(&mut lock(&self.slots).started)
    }

    /// Tasks waiting for a slot.
    pub fn waiting(&self) -> usize {
        lock(&self.slots).waiting.len()
    }

    /// Takes a waiting task off the queue and reports it cancelled, without calling
    /// its plugin. False if it is not waiting here.
    pub fn cancel_waiting(&self, id: &TaskId) -> bool {
        let Some(gone) = lock(&self.slots).waiting.remove(id) else {
            return false;
        };
        let error = TaskError::new(ErrorKind::Cancelled, "cancelled before it started");
        self.report(failure(&gone.task, gone.lease, error, now_ms()));
        true
    }

    /// For each task name that ran since the last call: its recent mean plugin call
    /// time in ns (a moving average over about the last eight calls).
    pub fn take_run_times(&self) -> std::collections::BTreeMap<String, u64> {
        lock(&self.run_times)
            .iter_mut()
            .filter(|(_, t)| t.fresh)
            .map(|(name, t)| {
                t.fresh = false;
                (name.clone(), t.mean_ns)
            })
            .collect()
    }

    /// Folds one call of `name` that took `took` into its moving average.
    fn record_run_time(&self, name: &str, took: Duration) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
        let mut times = lock(&self.run_times);
        if let Some(time) = times.get_mut(name) {
            time.mean_ns = (time.mean_ns - time.mean_ns / 8 + sample / 8).max(1);
            time.fresh = true;
        } else if times.len() < MAX_TIMED_NAMES {
            times.insert(
                name.to_string(),
                RunTime {
                    mean_ns: sample,
                    fresh: true,
                },
            );
        }
    }

    /// Reports `outcome` as this executor's own (for a task that never started here).
    pub fn report(&self, outcome: TaskOutcome) {
        if self.outcomes.send(outcome).is_err() {
            debug!("outcome dropped: the executor's owner is gone");
        }
    }

    /// Starts `task` under `lease` in a slot taken for it; its outcome arrives on the
    /// channel. False when it did not keep the slot (it failed at once, or it is
    /// already running here).
    fn start(&self, task: TaskEnvelope, lease: LeaseToken) -> bool {
        let started_ms = now_ms();
        let handle = self.registry.load().task(&task.name).cloned();
        let Some(handle) = handle else {
            let error = TaskError::new(
                ErrorKind::UnknownTask,
                format!("no loaded plugin serves task `{}` here", task.name),
            );
            let _ = self.outcomes.send(failure(&task, lease, error, started_ms));
            return false;
        };
        let Some(codec) = crate::plugin::abi::codec(task.codec) else {
            let error = TaskError::new(
                ErrorKind::BadArguments,
                format!(
                    "the payload's codec {:?} is not one plugins know",
                    task.codec
                ),
            );
            let _ = self.outcomes.send(failure(&task, lease, error, started_ms));
            return false;
        };
        let cancelled = Arc::new(AtomicBool::new(false));
        let assignment = Arc::new(Mutex::new((task.delivery_count, lease)));
        {
            let mut running = lock(&self.running);
            if let Some(already) = running.get(&task.id) {
                *lock(&already.assignment) = (task.delivery_count, lease);
                debug!(task = %task.id, "handed out again while it runs here: not started twice");
                return false;
            }
            running.insert(
                task.id,
                Running {
                    cancelled: cancelled.clone(),
                    assignment: assignment.clone(),
                },
            );
        }
        // The deadline runs from this host's own start of the attempt, on its own clock.
        let deadline_ms = match task.timeout_secs.and_then(crate::protocol::secs_to_ms) {
            Some(ms) if ms > 0 => started_ms.saturating_add(ms),
            _ => task.deadline_ms,
        };
        let ctx = CallContext {
            task_id: task.id.to_string(),
            attempt: task.attempt,
            deadline_unix_ms: deadline_ms,
            cancelled: cancelled.clone(),
        };
        let this = self.clone();
        // The task's span on this host: its id, name, attempt and the trace it
        // continues (the W3C context it was submitted with). DEBUG: off unless asked.
        let span = tracing::debug_span!(
            target: "fastworker::task",
            "task",
            task_id = %task.id,
            task_name = %task.name,
            attempt = task.attempt,
            trace_id = tracing::field::Empty,
        );
        if !span.is_disabled() {
            span.record(
                "trace_id",
                tracing::field::display(crate::control_plane::task_spans::trace_id(&task)),
            );
        }
        if let Some(trace) = &task.trace {
            fastworker_client::propagation::link(&span, trace);
        }
        let call_span = span.clone();
        let task_future = async move {
            let payload = task.payload.clone();
            let finished = Arc::new(AtomicBool::new(false));
            let finished_in_call = finished.clone();
            let overdue = this.overdue.clone();
            let task_id = task.id;
            let call = this.calls.spawn(move || {
                let _in_span = call_span.enter();
                let began = Instant::now();
                let result = call_task(handle.info(), &ctx, codec, &payload);
                let took = began.elapsed();
                if finished_in_call.swap(true, Ordering::SeqCst) {
                    // Reported as timed out earlier; the thread is free again now.
                    lock(&overdue).remove(&task_id);
                }
                (result, took)
            });
            let call_began = Instant::now();
            let timed = |joined: Result<(_, Duration), _>| {
                joined.map(|(result, took)| {
                    this.record_run_time(&task.name, took);
                    result
                })
            };
            let result = if deadline_ms > 0 {
                let wait = Duration::from_millis(deadline_ms.saturating_sub(now_ms()));
                match tokio::time::timeout(wait, call).await {
                    Ok(joined) => timed(joined),
                    Err(_) => {
                        // It ran at least this long: never a short task.
                        this.record_run_time(&task.name, call_began.elapsed());
                        // Its slot is free again; its thread is not until it returns.
                        cancelled.store(true, Ordering::SeqCst);
                        if !finished.swap(true, Ordering::SeqCst) {
                            lock(&this.overdue).insert(task.id, Instant::now());
                        }
                        Ok(Err(TaskError::new(
                            ErrorKind::TimedOut,
                            format!("task `{}` ran past its timeout", task.name),
                        )))
                    }
                }
            } else {
                timed(call.await)
            };
            let mut outcome = match result {
                Ok(Ok(value)) => {
                    let mut outcome = TaskOutcome::new(
                        task.id,
                        task.delivery_count,
                        lease,
                        AttemptResult::Success,
                    );
                    outcome.started_ms = started_ms;
                    outcome.completed_ms = now_ms();
                    outcome.value = value.into();
                    outcome
                }
                // A task that stopped because its context said so is reported as
                // cancelled or timed out by the SDK inside the plugin (it sees the
                // same flag and deadline), so its error passes through as it is.
                Ok(Err(error)) => failure(&task, lease, error, started_ms),
                Err(_) => failure(
                    &task,
                    lease,
                    TaskError::new(
                        ErrorKind::Internal,
                        "the task's thread failed outside the plugin (a panic in the host)",
                    ),
                    started_ms,
                ),
            };
            // The next task starts before this one's outcome is queued, so whoever
            // reads the outcome also sees that start in `take_started`.
            this.free_slot();
            // Leave `running` and queue the outcome under one lock, so whoever sees
            // `running() == 0` also sees every outcome already queued (a draining
            // subworker must not unregister with an outcome still unsent).
            let mut running = lock(&this.running);
            running.remove(&task.id);
            (outcome.delivery_count, outcome.lease) = *lock(&assignment);
            debug!(target: "fastworker::task", "done: {}", match &outcome.result {
                AttemptResult::Success => "success".to_string(),
                AttemptResult::Failure(error) => format!("failure ({error})"),
                _ => "other".to_string(),
            });
            if this.outcomes.send(outcome).is_err() {
                debug!(task = %task.id, "outcome dropped: the executor's owner is gone");
            }
            drop(running);
        };
        tokio::spawn(tracing::Instrument::instrument(task_future, span));
        true
    }

    /// Cancels a running task. True if it was running here.
    pub fn cancel(&self, id: &TaskId) -> bool {
        match lock(&self.running).get(id) {
            Some(task) => {
                task.cancelled.store(true, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// Tasks running now.
    pub fn running(&self) -> usize {
        lock(&self.running).len()
    }

    /// The tasks held here (running, or waiting for a slot), each with the lease it
    /// runs under.
    pub fn held_claims(&self) -> Vec<RunningClaim> {
        let mut claims: Vec<RunningClaim> = lock(&self.running)
            .iter()
            .map(|(id, r)| RunningClaim::new(*id, lock(&r.assignment).1))
            .collect();
        claims.extend(lock(&self.slots).waiting.claims());
        claims
    }

    /// Tasks reported timed out whose threads have not returned yet.
    pub fn overdue(&self) -> usize {
        lock(&self.overdue).len()
    }

    /// How long the longest-overdue task has ignored its timeout, if any has.
    pub fn longest_overdue(&self) -> Option<Duration> {
        lock(&self.overdue).values().map(Instant::elapsed).max()
    }
}

/// The outcome of an attempt of `task` (under `lease`, started at `started_ms`) that
/// failed with `error`.
pub(crate) fn failure(
    task: &TaskEnvelope,
    lease: LeaseToken,
    error: TaskError,
    started_ms: u64,
) -> TaskOutcome {
    let mut outcome = TaskOutcome::new(
        task.id,
        task.delivery_count,
        lease,
        AttemptResult::Failure(error),
    );
    outcome.started_ms = started_ms;
    outcome.completed_ms = now_ms();
    outcome
}
