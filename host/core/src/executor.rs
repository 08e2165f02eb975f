//! [`Executor`]: runs tasks on this host, against the current plugin registry.
//!
//! Tasks handed to it wait in a [`LocalQueue`](local_queue) for one of its slots
//! (`--concurrency`) and start most urgent first. Each busy slot is a
//! [`CallPool`](call_pool) thread (plugin code is synchronous and may take long) that
//! runs one task after another while any wait, reporting each outcome on a channel:
//! no hand-off to the async runtime and back between two short tasks.
//!
//! A call whose task name's recent calls averaged under `inline_below` (a few µs) runs
//! on the async runtime instead, as a task of its own: handing it to a pool thread and
//! its outcome back cost more than the call (about four context switches per round
//! trip). At most one such call runs at a time, and only on a runtime with two or more
//! workers, so a short task that suddenly blocks holds at most one of them.
//!
//! A task with a deadline is watched by the [`Deadlines`](deadlines) thread: when the
//! deadline passes first, the task is reported `timed_out` and its context is
//! cancelled so a cooperative task stops; one that ignores that keeps its thread until
//! it returns (counted by [`Executor::overdue`]), and its slot goes on on another
//! thread.

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::{
    fast_map::{FastMap, TaskMap},
    plugin::{call::call_task, CallContext},
    protocol::{
        now_ms, AttemptResult, LeaseToken, RunningClaim, TaskEnvelope, TaskId, TaskOutcome,
    },
    task_error::{ErrorKind, TaskError},
};

pub use crate::plugin::SharedRegistry;

mod call_pool;
mod deadlines;
mod local_queue;
use call_pool::CallPool;
use deadlines::Deadlines;
use local_queue::LocalQueue;

/// The most threads plugin calls may hold at once: the slots a host offers, plus tasks
/// that ignore their timeout (each keeps its thread until it returns).
const MAX_CALL_THREADS: usize = 1024;

/// One task running here.
struct Running {
    /// When it took its slot.
    since: Instant,
    /// Its task name.
    name: String,
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
    running: Arc<Mutex<TaskMap<Running>>>,
    overdue: Arc<Mutex<TaskMap<Instant>>>,
    outcomes: mpsc::UnboundedSender<TaskOutcome>,
    calls: CallPool,
    /// Each task name's recent mean plugin call time.
    run_times: Arc<Mutex<FastMap<String, RunTime>>>,
    slots: Arc<Mutex<Slots>>,
    concurrency: usize,
    /// Watches the running tasks' deadlines.
    deadlines: Deadlines,
    /// Where short calls run; `None` when they may not run there (a runtime with
    /// fewer than two workers, or turned off).
    runtime: Option<tokio::runtime::Handle>,
    /// Calls whose name's recent mean is under this run on `runtime`.
    inline_below: Duration,
    /// A call runs on the runtime now (or ran past its deadline there and has not
    /// returned): no other may start there.
    inline_busy: Arc<AtomicBool>,
}

/// How long a call on the runtime may run before another worker is woken to serve
/// the runtime meanwhile: the longest the runtime's sockets may wait for a call that
/// was short and is no longer. The deadline thread wakes about twice per this span
/// while short calls keep coming.
const INLINE_STALL: Duration = Duration::from_millis(5);

/// A task taken off the queue into a slot.
struct Admitted {
    task: TaskEnvelope,
    lease: LeaseToken,
    cancelled: Arc<AtomicBool>,
    assignment: Arc<Mutex<(u32, LeaseToken)>>,
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
    /// `outcomes`; calls whose name's recent mean run time is under `inline_below`
    /// run on the current tokio runtime when it has two or more workers
    /// ([`Duration::ZERO`]: never). Fails when its deadline thread cannot start.
    pub fn new(
        registry: SharedRegistry,
        outcomes: mpsc::UnboundedSender<TaskOutcome>,
        concurrency: usize,
        inline_below: Duration,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Handle::try_current()
            .ok()
            .filter(|runtime| {
                runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
                    && runtime.metrics().num_workers() >= 2
                    && !inline_below.is_zero()
            });
        Ok(Executor {
            registry,
            running: Arc::new(Mutex::new(TaskMap::default())),
            overdue: Arc::new(Mutex::new(TaskMap::default())),
            outcomes,
            calls: CallPool::new(MAX_CALL_THREADS),
            run_times: Arc::new(Mutex::new(FastMap::default())),
            slots: Arc::new(Mutex::new(Slots::default())),
            concurrency: concurrency.max(1),
            deadlines: Deadlines::start()?,
            runtime,
            inline_below,
            inline_busy: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Takes `task` under `lease`: it starts when a slot is free, most urgent first.
    /// A `prefetched` task's start is reported by [`Self::take_started`].
    pub fn enqueue(&self, task: TaskEnvelope, lease: LeaseToken, prefetched: bool) {
        lock(&self.slots).waiting.push(task, lease, prefetched);
        self.fill();
    }

    /// Starts each waiting task while slots are free: a short call on the runtime
    /// (when this runs on it and none runs there yet), others on a slot's thread.
    fn fill(&self) {
        loop {
            let first = {
                let mut slots = lock(&self.slots);
                if slots.taken >= self.concurrency {
                    return;
                }
                let Some(first) = self.admit_next(&mut slots) else {
                    return;
                };
                slots.taken += 1;
                first
            };
            let this = self.clone();
            match self.inline_runtime(&first.task.name) {
                Some(runtime) => {
                    let handle = runtime.clone();
                    runtime.spawn(async move { this.run_inline(first, handle) });
                }
                None => self.calls.run(move || this.run_slot(first)),
            }
        }
    }

    /// The runtime to run a call of `name` on, if it may run there: its recent calls
    /// were short, this thread is one of the runtime's, and no call runs there now
    /// (which this then claims).
    fn inline_runtime(&self, name: &str) -> Option<&tokio::runtime::Handle> {
        let runtime = self.runtime.as_ref()?;
        let short = lock(&self.run_times)
            .get(name)
            .is_some_and(|t| Duration::from_nanos(t.mean_ns) < self.inline_below);
        // A deadline's thread or a pool thread frees slots too: it hands to the pool.
        let on_runtime = tokio::runtime::Handle::try_current().is_ok();
        (short
            && on_runtime
            && self
                .inline_busy
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok())
        .then_some(runtime)
    }

    /// Runs one short call on a runtime worker, then gives its slot back (unless the
    /// call ran past its deadline: that freed the slot already).
    fn run_inline(&self, admitted: Admitted, runtime: tokio::runtime::Handle) {
        // While the call runs, this worker runs no other task and does not poll the
        // runtime's sockets; if no other worker is awake, nobody does (a call that
        // blocked 1.5 s held up a cancel that long). A call still running after
        // INLINE_STALL has the deadline thread spawn a no-op task from outside the
        // runtime, which wakes a sleeping worker to take over.
        let wake_another = self
            .deadlines
            .watch(Instant::now() + INLINE_STALL, move || {
                runtime.spawn(async {});
            });
        let keeps_slot = self.run_guarded(admitted, true);
        drop(wake_another);
        self.inline_busy.store(false, Ordering::Release);
        if keeps_slot {
            self.free_slot();
        }
    }

    /// Takes the most urgent waiting task into `running` (from here on cancels and
    /// claims see it), skipping one already running here (it takes the newest
    /// assignment). `None` when nothing waits.
    fn admit_next(&self, slots: &mut Slots) -> Option<Admitted> {
        loop {
            let next = slots.waiting.pop()?;
            let mut running = lock(&self.running);
            let (task, lease) = (next.task, next.lease);
            if let Some(already) = running.get(&task.id) {
                *lock(&already.assignment) = (task.delivery_count, lease);
                debug!(task = %task.id, "handed out again while it runs here: not started twice");
                continue;
            }
            if next.prefetched {
                slots.started.push(task.id);
            }
            let cancelled = Arc::new(AtomicBool::new(false));
            let assignment = Arc::new(Mutex::new((task.delivery_count, lease)));
            running.insert(
                task.id,
                Running {
                    since: Instant::now(),
                    name: task.name.clone(),
                    cancelled: cancelled.clone(),
                    assignment: assignment.clone(),
                },
            );
            return Some(Admitted {
                task,
                lease,
                cancelled,
                assignment,
            });
        }
    }

    /// Takes every task still waiting for a slot off the queue (to hand them back to
    /// the control plane, which runs them elsewhere): their ids.
    pub fn hand_back(&self) -> Vec<TaskId> {
        let mut slots = lock(&self.slots);
        std::iter::from_fn(|| slots.waiting.pop())
            .map(|w| w.task.id)
            .collect()
    }

    /// Are tasks waiting behind slots that have all been busy longer than `limit`?
    /// Then the tasks running are long ones, whatever their names' run times said:
    /// that run time is raised to what they have run so far.
    pub fn stalled(&self, limit: Duration) -> bool {
        if lock(&self.slots).waiting.len() == 0 {
            return false;
        }
        let long: Vec<(String, Duration)> = {
            let running = lock(&self.running);
            if running.len() < self.concurrency {
                return false;
            }
            let ran: Vec<(String, Duration)> = running
                .values()
                .map(|r| (r.name.clone(), r.since.elapsed()))
                .collect();
            if ran.iter().any(|(_, ran)| *ran < limit) {
                return false;
            }
            ran
        };
        for (name, ran) in long {
            self.record_run_time(&name, ran);
        }
        true
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
        // Never started: no start time.
        self.report(failure(&gone.task, gone.lease, error, 0));
        true
    }

    /// For each task name that ran since the last call: its recent mean plugin call
    /// time in ns (a moving average over about the last eight calls that follows a
    /// longer call at once).
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
            // Up at once, down slowly: one long call is enough to stop prefetching
            // that name, a run of short ones to start again.
            time.mean_ns = if sample > time.mean_ns {
                sample
            } else {
                (time.mean_ns - time.mean_ns / 8 + sample / 8).max(1)
            };
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

    /// Runs tasks in one slot on this pool thread, `first` and then whatever waits,
    /// until nothing does (the slot is given back) or a task outlives its deadline
    /// (the watchdog gave the slot to another thread; this one leaves when the task
    /// returns).
    fn run_slot(&self, first: Admitted) {
        let mut next = first;
        loop {
            if !self.run_guarded(next, false) {
                return;
            }
            let mut slots = lock(&self.slots);
            let Some(admitted) = self.admit_next(&mut slots) else {
                slots.taken = slots.taken.saturating_sub(1);
                return;
            };
            next = admitted;
        }
    }

    /// [`Self::run_one`], reporting a panic outside the plugin as the task's failure.
    fn run_guarded(&self, admitted: Admitted, on_runtime: bool) -> bool {
        let task_id = admitted.task.id;
        let (delivery, lease) = (admitted.task.delivery_count, admitted.lease);
        match catch_unwind(AssertUnwindSafe(|| self.run_one(admitted, on_runtime))) {
            Ok(keeps_slot) => keeps_slot,
            Err(_) => {
                let error = TaskError::new(
                    ErrorKind::Internal,
                    "the task's thread failed outside the plugin (a panic in the host)",
                );
                let mut outcome =
                    TaskOutcome::new(task_id, delivery, lease, AttemptResult::Failure(error));
                outcome.completed_ms = now_ms();
                let mut running = lock(&self.running);
                running.remove(&task_id);
                self.report(outcome);
                true
            }
        }
    }

    /// Runs `task` under `lease` on this thread (`on_runtime`: a runtime worker) and
    /// reports its outcome. False when it ran past its deadline: its slot was given to
    /// another thread meanwhile.
    fn run_one(&self, admitted: Admitted, on_runtime: bool) -> bool {
        let Admitted {
            task,
            lease,
            cancelled,
            assignment,
        } = admitted;
        let started_ms = now_ms();
        let handle = self.registry.load().task(&task.name).cloned();
        let Some(handle) = handle else {
            let error = TaskError::new(
                ErrorKind::UnknownTask,
                format!("no loaded plugin serves task `{}` here", task.name),
            );
            self.finish(
                &task.id,
                failure(&task, lease, error, started_ms),
                &assignment,
            );
            return true;
        };
        let Some(codec) = crate::plugin::abi::codec(task.codec) else {
            let error = TaskError::new(
                ErrorKind::BadArguments,
                format!(
                    "the payload's codec {:?} is not one plugins know",
                    task.codec
                ),
            );
            self.finish(
                &task.id,
                failure(&task, lease, error, started_ms),
                &assignment,
            );
            return true;
        };
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
        let _in_span = span.enter();
        // Set by whoever ends the attempt first: this thread when the call returns,
        // or the deadline thread when the deadline passes.
        let finished = Arc::new(AtomicBool::new(false));
        let watchdog = (deadline_ms > 0).then(|| {
            let this = self.clone();
            let (finished, cancelled, task) = (finished.clone(), cancelled.clone(), task.clone());
            let assignment = assignment.clone();
            let at = Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms()));
            self.deadlines.watch(at, move || {
                this.time_out(
                    &task,
                    &finished,
                    &cancelled,
                    &assignment,
                    started_ms,
                    on_runtime,
                );
            })
        });
        let began = Instant::now();
        let result = call_task(handle.info(), &ctx, codec, &task.payload);
        let took = began.elapsed();
        // Stopped here, or on a panic of this thread when it unwinds.
        drop(watchdog);
        if finished.swap(true, Ordering::SeqCst) {
            // Reported as timed out already; this thread is free again now.
            lock(&self.overdue).remove(&task.id);
            return false;
        }
        self.record_run_time(&task.name, took);
        let outcome = match result {
            Ok(value) => {
                let mut outcome =
                    TaskOutcome::new(task.id, task.delivery_count, lease, AttemptResult::Success);
                outcome.started_ms = started_ms;
                outcome.completed_ms = now_ms();
                outcome.value = value.into();
                outcome
            }
            // A task that stopped because its context said so is reported as
            // cancelled or timed out by the SDK inside the plugin (it sees the same
            // flag and deadline), so its error passes through as it is.
            Err(error) => failure(&task, lease, error, started_ms),
        };
        self.finish(&task.id, outcome, &assignment);
        true
    }

    /// The watchdog of a task whose deadline passed: unless it returned meanwhile, it
    /// is cancelled (a cooperative task stops), reported `timed_out`, counted overdue
    /// until its thread returns, and its slot goes to another thread.
    fn time_out(
        &self,
        task: &TaskEnvelope,
        finished: &AtomicBool,
        cancelled: &AtomicBool,
        assignment: &Mutex<(u32, LeaseToken)>,
        started_ms: u64,
        on_runtime: bool,
    ) {
        {
            // Under the lock the task's thread takes to leave `overdue`: it cannot
            // leave before it was entered.
            let mut overdue = lock(&self.overdue);
            if finished.swap(true, Ordering::SeqCst) {
                return;
            }
            overdue.insert(task.id, Instant::now());
        }
        cancelled.store(true, Ordering::SeqCst);
        if on_runtime {
            warn!(
                task = %task.id,
                "task `{}` ran past its timeout in a call that was short until now: it holds one of the runtime's threads until it returns (the others serve on; no other call runs there meanwhile)",
                task.name
            );
        }
        // It ran at least this long: never a short task.
        let ran = Duration::from_millis(now_ms().saturating_sub(started_ms));
        self.record_run_time(&task.name, ran);
        let lease = lock(assignment).1;
        let error = TaskError::new(
            ErrorKind::TimedOut,
            format!("task `{}` ran past its timeout", task.name),
        );
        self.finish(
            &task.id,
            failure(task, lease, error, started_ms),
            assignment,
        );
        self.free_slot();
    }

    /// Leaves `running` and queues `outcome` (for the newest assignment of the task)
    /// under one lock, so whoever sees `running() == 0` also sees every outcome
    /// already queued (a draining subworker must not unregister with one unsent).
    fn finish(&self, id: &TaskId, mut outcome: TaskOutcome, assignment: &Mutex<(u32, LeaseToken)>) {
        let mut running = lock(&self.running);
        running.remove(id);
        (outcome.delivery_count, outcome.lease) = *lock(assignment);
        debug!(target: "fastworker::task", "done: {}", match &outcome.result {
            AttemptResult::Success => "success".to_string(),
            AttemptResult::Failure(error) => format!("failure ({error})"),
            _ => "other".to_string(),
        });
        self.report(outcome);
        drop(running);
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

    /// The tasks running here, each with the lease it runs under (waiting ones are
    /// not claimed: a reconnecting subworker hands them back first).
    pub fn running_claims(&self) -> Vec<RunningClaim> {
        lock(&self.running)
            .iter()
            .map(|(id, r)| RunningClaim::new(*id, lock(&r.assignment).1))
            .collect()
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
