//! [`Dispatcher`]: the control plane's state machine. It owns the tasks, the priority
//! queues, the schedule of delayed tasks, the subworker table, the local executor's
//! slots and the result cache. It does no I/O: every input is a method call, every
//! output an [`Action`] for the caller to carry out, so it is tested without sockets
//! or real time.
//!
//! A task's life: submitted → `Scheduled` (countdown/eta) or `Queued` → handed to the
//! least-loaded subworker with a free slot that serves it, or else to the control
//! plane's own subworker (a child process it supervises; `Running`) → `Success`, or `Failure` (after its retries:
//! `Retrying` → `Queued`), or `Cancelled`. A task whose worker is lost goes back to its
//! place in the queue with its delivery count raised; past `max_deliveries` it fails
//! as `worker_lost`. Final records go to the result cache and to whoever waits.

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, Instant},
};

use bytes::Bytes;
use tracing::{debug, info, warn};

use self::waiters::Waiter;
use super::{
    dead_letters::DeadLetters,
    delay_queue::DelayQueue,
    events::{Event, EventLog},
    observe::Observer,
    periodic::{PeriodicScheduler, PeriodicStatus},
    queue::{Oldest, ReadyQueues},
    result_cache::ResultCache,
    retry::RetryPolicy,
    workers::WorkerTable,
};
use crate::{
    log_limit::LogLimiter,
    protocol::{for_people, MAX_ID_BYTES, MAX_TASKS_PER_WORKER},
    protocol::{
        Assignment, AttemptResult, Callback, CancelOutcome, FromControlPlane, LeaseToken, PeerKind,
        QueueFilter, QueuedTask, TaskEnvelope, TaskId, TaskOutcome, TaskRecord, TaskSpec,
        TaskStatus, ToControlPlane, WorkerId, WorkerSecret,
    },
    task_error::{ErrorKind, TaskError},
    transport::PeerId,
};

/// The moment an event happens, in both clocks.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// For durations.
    pub at: Instant,
    /// For records and schedules (Unix ms).
    pub unix_ms: u64,
}

impl Now {
    /// The current time.
    pub fn current() -> Self {
        Now {
            at: Instant::now(),
            unix_ms: crate::protocol::now_ms(),
        }
    }

    /// This moment plus `d`.
    pub fn plus(self, d: Duration) -> Self {
        Now {
            at: self.at + d,
            unix_ms: self.unix_ms + d.as_millis() as u64,
        }
    }
}

/// Settings.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// The control plane's id, and the worker id of its own subworker (the child
    /// process that runs its `--task-modules`).
    pub id: String,
    /// What its own subworker shows to register under `id`: nobody else may.
    pub own_secret: WorkerSecret,
    /// Silence after which a subworker is inactive.
    pub inactive_after: Duration,
    /// Deliveries after which a task whose worker keeps getting lost fails.
    pub max_deliveries: u32,
    /// The most tasks per slot a subworker that runs them quickly is handed (1: no
    /// prefetching).
    pub prefetch_per_slot: u32,
    /// Result cache capacity.
    pub cache_size: usize,
    /// Result cache TTL.
    pub cache_ttl: Duration,
    /// Result cache budget in bytes.
    pub cache_max_bytes: u64,
    /// Tasks held at most (queued, scheduled, retrying or running); more are refused.
    pub max_queued: usize,
    /// Payload bytes held at most; more are refused.
    pub max_queued_bytes: u64,
    /// How long tasks may wait for a worker that serves their name before they fail.
    pub unserved_timeout: Duration,
    /// The endpoints announced by discovery.
    pub announcement: crate::protocol::Announcement,
    /// The largest payload or result accepted, in bytes.
    pub max_payload_bytes: u64,
    /// The largest message the transport accepts, in bytes (told to clients in
    /// `Welcome`, so they can refuse an oversized batch themselves).
    pub max_message_bytes: u64,
    /// Whether its state goes to a store (`--data-dir`): it then records what changed
    /// ([`Dispatcher::take_changes`]), and a shutdown keeps queued tasks for the next
    /// start instead of running them.
    pub durable: bool,
    /// Whether to record events, timelines and counts for the dashboard, the HTTP
    /// API and `/metrics` ([`Observer`]).
    pub observe: bool,
}

/// Something the caller must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send `msg` to `peer`.
    Send {
        /// To whom.
        peer: PeerId,
        /// What.
        msg: FromControlPlane,
    },
    /// Deliver a final record to a callback address.
    Callback {
        /// Where.
        callback: Callback,
        /// What.
        record: TaskRecord,
    },
}

/// A peer that said hello.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// What it is.
    pub kind: PeerKind,
    /// Its id.
    pub id: String,
}

/// The control plane's state.
pub struct Dispatcher {
    config: DispatcherConfig,
    tasks: TaskStore,
    queues: ReadyQueues,
    scheduled: DelayQueue,
    workers: WorkerTable,
    /// The tasks the control plane's own subworker said it serves last: still known
    /// (submittable, their defaults applied) while that child restarts.
    own_tasks: super::FastMap<String, TaskSpec>,
    /// The monotonic clock's zero: schedules count from it, so a wall-clock step does
    /// not move a countdown or a retry delay.
    origin: Instant,
    cache: ResultCache,
    peers: super::FastMap<PeerId, PeerInfo>,
    next_seq: u64,
    shutting_down: bool,
    actions: Vec<Action>,
    now: Now,
    rng_state: u64,
    events: EventLog,
    periodic: PeriodicScheduler,
    dead_letters: DeadLetters,
    /// Rate limit for the warning about unreadable messages.
    malformed_log: LogLimiter,
    /// Names that tasks wait for and no live worker serves, and since when.
    unserved: super::FastMap<String, Instant>,
    /// When `unserved` was last brought up to date.
    unserved_checked: Option<Instant>,
    /// What changed since the last [`Dispatcher::take_changes`] (with `durable` only).
    changed: durable::Changed,
    /// Why the store cannot be written, while it cannot: submissions are refused.
    store_error: Option<String>,
    /// This control plane's epoch (from the store; 0 without one), sent with every
    /// assignment.
    epoch: u64,
    /// Task names the data directory knew as served when this control plane started:
    /// submittable (they wait for a worker) even before one registers.
    served_before: super::FastSet<String>,
    /// Task names recorded as served in the data directory.
    served_names: super::FastSet<String>,
    /// What the dashboard sees.
    observer: Observer,
    /// Each task's `tracing` span, while it is held.
    spans: super::task_spans::TaskSpans,
    /// Assignments to subworkers that take prefetched tasks, made in this dispatch
    /// pass: sent as one `Assigns` per subworker when the pass ends.
    outgoing: Vec<(WorkerId, Assignment)>,
}

/// The most tasks one `Assigns` message carries, and (roughly) the most payload
/// bytes: past either, the rest go in another message.
const ASSIGNS_PER_MESSAGE: usize = 256;
const ASSIGN_BYTES_PER_MESSAGE: usize = 1 << 20;

/// The most retries a submission may ask for.
pub const MAX_RETRIES: u32 = 10_000;

/// How many dead letters are kept (the oldest are dropped past this).
pub const MAX_DEAD_LETTERS: usize = 10_000;

/// The most waiting tasks one `QueuedList` shows, and the most ids one `Purged` names
/// (each also says how many there are in all).
pub const MAX_QUEUED_LISTED: usize = 10_000;

/// What `batch` holds, leaving it empty and as large as it was: the next batch starts
/// that large instead of growing from nothing by copying (growing the actions and the
/// outgoing assignments was 6 % of the dispatcher's instructions in the dispatcher
/// bench).
fn take_sized<T>(batch: &mut Vec<T>) -> Vec<T> {
    let next = Vec::with_capacity(batch.len());
    std::mem::replace(batch, next)
}

fn reply(peer: &PeerId, msg: FromControlPlane) -> Action {
    Action::Send { peer: *peer, msg }
}

impl Dispatcher {
    /// A dispatcher with no workers yet.
    pub fn new(config: DispatcherConfig, now: Now) -> Self {
        let mut cache =
            ResultCache::new(config.cache_size, config.cache_max_bytes, config.cache_ttl);
        if config.durable {
            cache.track_evictions();
        }
        let observe = config.observe;
        let prefetch_per_slot = config.prefetch_per_slot;
        Dispatcher {
            config,
            tasks: TaskStore::default(),
            queues: ReadyQueues::new(),
            scheduled: DelayQueue::new(),
            workers: WorkerTable::new(prefetch_per_slot),
            own_tasks: Default::default(),
            origin: now.at,
            cache,
            peers: Default::default(),
            next_seq: 0,
            shutting_down: false,
            actions: Vec::new(),
            now,
            rng_state: now.unix_ms | 1,
            events: EventLog::new(1000),
            periodic: PeriodicScheduler::new(),
            dead_letters: DeadLetters::new(MAX_DEAD_LETTERS),
            malformed_log: LogLimiter::new(Duration::from_secs(1)),
            unserved: Default::default(),
            unserved_checked: None,
            changed: durable::Changed::default(),
            store_error: None,
            epoch: 0,
            served_before: Default::default(),
            served_names: Default::default(),
            observer: Observer::new(observe),
            spans: super::task_spans::TaskSpans::default(),
            outgoing: Vec::new(),
        }
    }

    /// The periodic tasks and when each fires next.
    pub fn periodic(&self) -> Vec<PeriodicStatus> {
        self.periodic.statuses()
    }

    /// The dead-lettered tasks, oldest first.
    pub fn dead_letters(&self) -> Vec<TaskRecord> {
        self.dead_letters.records()
    }

    /// Records an event for the log and the dashboard.
    pub fn record_event(&mut self, kind: &str, subject: &str, message: String) {
        // Bounded: the log keeps 1,000 events, and what peers send must not make each
        // of them megabytes.
        let event = Event::new(
            self.now.unix_ms,
            for_people(kind, 64),
            for_people(subject, MAX_ID_BYTES),
            for_people(&message, 1024),
        );
        self.observer
            .event(&event.kind, &event.subject, &event.message, event.at_ms);
        self.events.push(event);
    }

    /// The dashboard's events since the last call.
    pub fn drain_feed(&mut self) -> std::vec::Drain<'_, crate::protocol::api::ApiEvent> {
        self.observer.drain_feed()
    }

    /// Recent events.
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// Whether the control plane's own subworker is registered now.
    pub fn own_worker_registered(&self) -> bool {
        self.workers
            .get(&WorkerId::new(self.config.id.clone()))
            .is_some_and(|w| w.gone_since.is_none())
    }

    /// The actions produced since the last call.
    pub fn take_actions(&mut self) -> Vec<Action> {
        take_sized(&mut self.actions)
    }

    /// Handles one message from `peer`.
    pub fn handle(&mut self, peer: &PeerId, msg: ToControlPlane, now: Now) {
        self.now = now;
        if let Some(worker) = self.workers.touch(peer, now.at) {
            debug!(%worker, "message from subworker");
        }
        match msg {
            ToControlPlane::Hello(hello) => self.hello(peer, hello),
            ToControlPlane::Ping { nonce } => {
                self.actions
                    .push(reply(peer, FromControlPlane::Pong { nonce }));
            }
            ToControlPlane::Discover => {
                self.actions.push(reply(
                    peer,
                    FromControlPlane::Announce(self.config.announcement.clone()),
                ));
            }
            other if !self.peers.contains_key(peer) => {
                let request_id = request_id_of(&other);
                self.actions.push(reply(
                    peer,
                    FromControlPlane::Rejected {
                        request_id,
                        error: TaskError::new(ErrorKind::Rejected, crate::protocol::HELLO_FIRST),
                    },
                ));
            }
            ToControlPlane::PluginEvent(event) => self.plugin_event(peer, event),
            ToControlPlane::Events { request_id } => {
                let events = self.events.iter().cloned().collect();
                self.actions.push(reply(
                    peer,
                    FromControlPlane::EventList { request_id, events },
                ));
            }
            ToControlPlane::Tasks { request_id } => {
                let tasks = self.served_tasks();
                self.actions.push(reply(
                    peer,
                    FromControlPlane::TaskList { request_id, tasks },
                ));
            }
            ToControlPlane::Queued { request_id, filter } => {
                let (tasks, total) = self.waiting(&filter);
                self.actions.push(reply(
                    peer,
                    FromControlPlane::QueuedList {
                        request_id,
                        tasks,
                        total,
                    },
                ));
            }
            ToControlPlane::Purge { request_id, filter } => {
                let mut task_ids = self.purge(&filter);
                let total = task_ids.len() as u64;
                task_ids.truncate(MAX_QUEUED_LISTED);
                self.actions.push(reply(
                    peer,
                    FromControlPlane::Purged {
                        request_id,
                        total,
                        task_ids,
                    },
                ));
            }
            ToControlPlane::DeadLetters { request_id } => {
                let records = self.dead_letters();
                self.actions.push(reply(
                    peer,
                    FromControlPlane::DeadLetterList {
                        request_id,
                        records,
                    },
                ));
            }
            ToControlPlane::Replay {
                request_id,
                task_id,
            } => {
                let msg = match self.replay(task_id) {
                    Ok(()) => FromControlPlane::Accepted {
                        request_id,
                        task_ids: vec![task_id],
                    },
                    Err(error) => FromControlPlane::Rejected { request_id, error },
                };
                self.actions.push(reply(peer, msg));
            }
            ToControlPlane::Submit {
                request_id,
                task,
                wait,
            } => self.submit(peer, request_id, vec![task], wait),
            ToControlPlane::SubmitBatch {
                request_id,
                tasks,
                wait,
            } => self.submit(peer, request_id, tasks, wait),
            ToControlPlane::Status {
                request_id,
                task_id,
                wait,
            } => self.status(peer, request_id, task_id, wait),
            ToControlPlane::Cancel {
                request_id,
                task_id,
            } => {
                let outcome = self.cancel(task_id);
                self.actions.push(reply(
                    peer,
                    FromControlPlane::CancelReply {
                        request_id,
                        outcome,
                    },
                ));
            }
            ToControlPlane::Register(reg) => self.register(peer, reg, now),
            ToControlPlane::Heartbeat { .. } => {
                if self.workers.by_peer(peer).is_some() {
                    self.actions
                        .push(reply(peer, FromControlPlane::HeartbeatAck));
                }
            }
            ToControlPlane::Outcome(outcome) => {
                if let Some(worker) = self.workers.by_peer(peer).cloned() {
                    self.outcome(worker, outcome);
                } else {
                    debug!(task = %outcome.task_id, "outcome from an unregistered peer ignored");
                }
            }
            ToControlPlane::Outcomes { outcomes } => {
                if let Some(worker) = self.workers.by_peer(peer).cloned() {
                    for outcome in outcomes {
                        self.outcome(worker.clone(), outcome);
                    }
                } else {
                    debug!(
                        count = outcomes.len(),
                        "outcomes from an unregistered peer ignored"
                    );
                }
            }
            ToControlPlane::Report {
                started,
                outcomes,
                run_ns,
                returned,
            } => {
                if let Some(worker) = self.workers.by_peer(peer).cloned() {
                    self.report(worker, started, returned, outcomes, run_ns);
                } else {
                    debug!(
                        count = outcomes.len(),
                        "a report from an unregistered peer ignored"
                    );
                }
            }
            ToControlPlane::TasksChanged { tasks } => self.tasks_changed(peer, tasks),
            ToControlPlane::Draining => {
                if let Some(id) = self.workers.by_peer(peer).cloned() {
                    info!(worker = %id, "subworker draining");
                    if let Some(worker) = self.workers.get_mut(&id) {
                        worker.draining = true;
                    }
                }
            }
            ToControlPlane::Restarting => self.restarting(peer),
            ToControlPlane::Unregister => self.unregister(peer),
            other => {
                // Only a newer protocol has such a message, and a peer speaks it only
                // after the handshake agreed on that version.
                warn!("a message this control plane does not handle: {other:?}");
                self.actions.push(reply(
                    peer,
                    FromControlPlane::Rejected {
                        request_id: 0,
                        error: TaskError::new(
                            ErrorKind::Rejected,
                            "this control plane does not handle that message",
                        ),
                    },
                ));
            }
        }
        self.dispatch();
    }

    /// A message from `peer` could not be read.
    pub fn malformed(&mut self, peer: &PeerId, error: &crate::protocol::ProtocolError) {
        // At most one warning a second, however fast a peer sends garbage.
        if let Some(quiet) = self.malformed_log.allow_at("malformed", self.now.at) {
            warn!("dropping an unreadable message: {error} ({quiet} more since the last warning)");
        }
        let msg = match error {
            crate::protocol::ProtocolError::UnsupportedVersion { .. } => {
                FromControlPlane::Refused {
                    reason: error.to_string(),
                }
            }
            _ => FromControlPlane::Rejected {
                request_id: 0,
                error: TaskError::new(ErrorKind::Rejected, error.to_string()),
            },
        };
        self.actions.push(reply(peer, msg));
    }

    /// `peer`'s connection dropped.
    pub fn peer_disconnected(&mut self, peer: &PeerId, now: Now) {
        self.now = now;
        if let Some(id) = self.workers.by_peer(peer).cloned() {
            if self.workers.park_restarting(&id, now.at) {
                info!(worker = %id, "subworker away while it restarts");
            } else {
                warn!(worker = %id, "subworker connection lost");
                self.record_event(
                    "worker.lost",
                    id.as_str(),
                    format!("subworker {id} connection lost"),
                );
                self.remove_worker(&id);
            }
        }
        self.peers.remove(peer);
        self.tasks.peer_left(peer);
        self.dispatch();
    }

    /// Moves due tasks to the queues, marks silent subworkers inactive, sweeps the cache.
    pub fn tick(&mut self, now: Now) {
        self.now = now;
        let mono = self.mono_ms(now);
        while let Some(id) = self.scheduled.pop_due(mono) {
            self.enqueue(id);
        }
        self.fire_periodic();
        self.check_unserved();
        self.observer.sample(now.unix_ms);
        for id in self
            .workers
            .overdue_restarts(now.at, self.config.inactive_after)
        {
            warn!(worker = %id, "subworker did not come back from its restart");
            self.record_event(
                "worker.lost",
                id.as_str(),
                format!("subworker {id} did not come back from its restart"),
            );
            self.remove_worker(&id);
        }
        for id in self.workers.expire(now.at, self.config.inactive_after) {
            warn!(worker = %id, "subworker inactive: no message for {:?}", self.config.inactive_after);
            let held = self.workers.take_in_flight(&id);
            for task in held {
                self.worker_lost_task(task, &id);
            }
        }
        self.dispatch();
    }

    /// Drops expired results from the cache.
    pub fn sweep_cache(&mut self, now: Now) -> usize {
        self.cache.sweep(now.at)
    }

    /// Ends every task still held (queued, scheduled, retrying or running) as a failure
    /// saying why, so whoever waits for one, and its callback, hears of it rather than
    /// nothing: the control plane is about to exit and keeps no queue on disk yet.
    /// Returns how many there were.
    pub fn abandon_all(&mut self, now: Now, reason: &str) -> usize {
        self.now = now;
        let ids: Vec<TaskId> = self.tasks.ids();
        for id in &ids {
            self.finalize(
                *id,
                TaskStatus::Failure,
                Some(TaskError::new(ErrorKind::Internal, reason)),
                Bytes::new(),
            );
        }
        ids.len()
    }

    /// Stops accepting new tasks; work already accepted carries on.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// Tasks handed to an executor and not finished.
    pub fn in_flight(&self) -> usize {
        self.tasks
            .iter()
            .filter(|(_, e)| e.holder.is_some())
            .count()
    }

    /// Tasks waiting in the queues.
    pub fn queued(&self) -> usize {
        self.queues.total()
    }

    /// Tasks waiting for their countdown, eta or retry delay.
    pub fn scheduled(&self) -> usize {
        self.scheduled.len()
    }

    /// The subworkers.
    pub fn workers(&self) -> &WorkerTable {
        &self.workers
    }

    /// The result cache.
    pub fn cache(&self) -> &ResultCache {
        &self.cache
    }

    /// The task names anyone here can run.
    pub fn known_task(&self, name: &str) -> bool {
        self.own_tasks.contains_key(name) || self.workers.anyone_serves(name)
    }

    /// Submits every periodic task that is due (schedules come from the plugins of
    /// every subworker, the control plane's own included).
    pub(super) fn fire_periodic(&mut self) {
        let mut specs: BTreeMap<&str, &crate::protocol::PeriodicSpec> = BTreeMap::new();
        for spec in self.own_tasks.values() {
            if let Some(p) = &spec.periodic {
                specs.insert(&spec.name, p);
            }
        }
        for worker in self.workers.iter() {
            for spec in worker.tasks.values() {
                if let Some(p) = &spec.periodic {
                    specs.entry(&spec.name).or_insert(p);
                }
            }
        }
        let errors = self.periodic.sync(specs, self.now.unix_ms);
        for (name, err) in errors {
            warn!(task = %name, "periodic schedule ignored: {err}");
        }
        let tasks = &self.tasks;
        let due = self.periodic.due(self.now.unix_ms, |id| tasks.contains(id));
        if self.config.durable {
            self.changed.periodic.extend(self.periodic.take_moved());
        } else {
            self.periodic.take_moved();
        }
        if self.shutting_down {
            return;
        }
        for name in due {
            let priority = self
                .spec(&name)
                .map_or(crate::protocol::Priority::Normal, |s| s.priority);
            let mut task = TaskEnvelope::new(
                name.clone(),
                crate::protocol::Codec::Json,
                Bytes::from_static(b"[]"),
            );
            // One id per tick: a tick fired again (after a restart from the store)
            // is the same task, so it never runs twice.
            if let Some(tick) = self.periodic.last_fired(&name) {
                task.id = super::periodic::tick_id(&name, tick);
                if self.tasks.contains(&task.id) || self.cache.peek(&task.id).is_some() {
                    continue;
                }
            }
            task.priority = priority;
            debug!(task = %task.id, %name, "periodic task due");
            self.periodic.submitted(&name, task.id);
            self.accept(task);
        }
    }

    fn replay(&mut self, id: TaskId) -> Result<(), TaskError> {
        let key = self.dead_letters.key_of(&id).ok_or_else(|| {
            TaskError::new(
                ErrorKind::Rejected,
                format!("task {id} is not a dead letter"),
            )
        })?;
        if self.shutting_down {
            return Err(TaskError::new(
                ErrorKind::Rejected,
                "the control plane is shutting down",
            ));
        }
        let cached = self.cache.remove(&id);
        let Some((_, envelope)) = self.dead_letters.get(key).cloned() else {
            return Err(TaskError::new(
                ErrorKind::Rejected,
                format!("task {id} is not a dead letter"),
            ));
        };
        if let Err(err) = self.validate(std::slice::from_ref(&envelope)) {
            if let Some(record) = cached {
                self.cache.insert(record, self.now.at);
            }
            return Err(err);
        }
        let removed = self.dead_letters.remove(key);
        self.dead_letter_changed(key);
        if let (true, Some((record, envelope))) = (self.config.durable, removed) {
            self.changed.replayed.push((id, key, record, envelope));
        }
        info!(task = %id, "replaying a dead letter");
        self.accept(envelope);
        Ok(())
    }

    fn spec(&self, name: &str) -> Option<&TaskSpec> {
        self.workers.spec(name).or_else(|| self.own_tasks.get(name))
    }

    /// What the cluster serves, by name: each task as its first worker (by id)
    /// declares it, with every worker that serves it; the control plane's own tasks
    /// count while its own subworker restarts.
    pub fn served_tasks(&self) -> Vec<crate::protocol::ServedTask> {
        let mut by_name: std::collections::BTreeMap<&str, (&TaskSpec, Vec<WorkerId>)> =
            std::collections::BTreeMap::new();
        let mut workers: Vec<_> = self.workers.iter().collect();
        workers.sort_by(|a, b| a.id().cmp(b.id()));
        for worker in workers {
            for (name, spec) in &worker.tasks {
                by_name
                    .entry(name.as_str())
                    .or_insert_with(|| (spec, Vec::new()))
                    .1
                    .push(worker.id().clone());
            }
        }
        for (name, spec) in &self.own_tasks {
            by_name
                .entry(name.as_str())
                .or_insert_with(|| (spec, vec![WorkerId::new(self.config.id.clone())]));
        }
        by_name
            .into_values()
            .map(|(spec, workers)| crate::protocol::ServedTask::new(spec.clone(), workers))
            .collect()
    }

    /// Accepts a request's tasks, all or none. Submitting is idempotent by task id: a
    /// task already accepted under the same id and name (a client resending after a
    /// lost `Accepted`) is acknowledged again, never accepted a second time.
    fn submit(&mut self, peer: &PeerId, request_id: u64, tasks: Vec<TaskEnvelope>, wait: bool) {
        let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
        // Sent again is rare: the tasks are split (moved, into vectors that grow) only
        // when one is.
        let (again, fresh): (Vec<TaskEnvelope>, Vec<TaskEnvelope>) =
            if tasks.iter().any(|t| self.is_resubmission(t)) {
                tasks.into_iter().partition(|t| self.is_resubmission(t))
            } else {
                (Vec::new(), tasks)
            };
        let checked = if fresh.is_empty() && !again.is_empty() {
            Ok(())
        } else {
            self.validate(&fresh)
        };
        if let Err(error) = checked {
            self.actions.push(reply(
                peer,
                FromControlPlane::Rejected { request_id, error },
            ));
            return;
        }
        for task in fresh {
            let id = task.id;
            self.accept(task);
            if wait {
                self.tasks.add_waiter(&id, Waiter::Result(*peer));
            }
        }
        self.actions.push(reply(
            peer,
            FromControlPlane::Accepted {
                request_id,
                task_ids: ids,
            },
        ));
        if !again.is_empty() {
            debug!(
                "{} task(s) submitted again under ids already accepted: acknowledged, not run again",
                again.len()
            );
        }
        for task in again.iter().filter(|_| wait) {
            if self.tasks.add_waiter(&task.id, Waiter::Result(*peer)) {
                continue;
            }
            if let Some(record) = self.cache.get(&task.id, self.now.at) {
                let msg = FromControlPlane::Result(record.clone());
                self.actions.push(reply(peer, msg));
            }
        }
    }

    /// Is `task` one already accepted (same id, same name), sent again?
    fn is_resubmission(&self, task: &TaskEnvelope) -> bool {
        match self.tasks.get(&task.id) {
            Some(entry) => entry.envelope.name == task.name,
            None => self
                .cache
                .peek(&task.id)
                .is_some_and(|r| r.name == task.name && self.cache.contains(&task.id, self.now.at)),
        }
    }

    /// All or nothing: the first problem refuses the whole request.
    fn validate(&self, tasks: &[TaskEnvelope]) -> Result<(), TaskError> {
        if self.shutting_down {
            return Err(TaskError::new(
                ErrorKind::Rejected,
                "the control plane is shutting down",
            ));
        }
        if let Some(error) = &self.store_error {
            return Err(TaskError::new(
                ErrorKind::Rejected,
                format!("the control plane cannot write its data directory ({error}); nothing new is accepted until it can"),
            ));
        }
        if tasks.is_empty() {
            return Err(TaskError::new(
                ErrorKind::Rejected,
                "no tasks in the request",
            ));
        }
        let mut bytes = 0u64;
        for task in tasks {
            check_spans(task)?;
            let size = task.payload.len() as u64;
            bytes += size;
            if size > self.config.max_payload_bytes {
                return Err(TaskError::new(
                    ErrorKind::Rejected,
                    format!(
                        "task {}: its payload is {size} bytes, over the limit of {} bytes (--max-payload-size)",
                        task.id, self.config.max_payload_bytes
                    ),
                ));
            }
        }
        if self.tasks.len() + tasks.len() > self.config.max_queued
            || self.tasks.bytes() + bytes > self.config.max_queued_bytes
        {
            return Err(TaskError::new(
                ErrorKind::Rejected,
                format!(
                    "queue full: {} tasks of {} bytes are held (--max-queued {}, --max-queued-bytes {}); try again later",
                    self.tasks.len(),
                    self.tasks.bytes(),
                    self.config.max_queued,
                    self.config.max_queued_bytes
                ),
            ));
        }
        let mut seen = HashSet::with_capacity(tasks.len());
        for task in tasks {
            if !self.known_task(&task.name)
                && !self.tasks.holds_name(&task.name)
                && !self.served_before.contains(&task.name)
            {
                let mut known: Vec<&str> = self.own_tasks.keys().map(String::as_str).collect();
                for w in self.workers.iter() {
                    known.extend(w.tasks.keys().map(String::as_str));
                }
                known.sort_unstable();
                known.dedup();
                return Err(TaskError::new(
                    ErrorKind::UnknownTask,
                    format!(
                        "no loaded plugin serves task `{}` (known: {})",
                        task.name,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
            if !seen.insert(task.id)
                || self.tasks.contains(&task.id)
                || self.cache.contains(&task.id, self.now.at)
            {
                return Err(TaskError::new(
                    ErrorKind::Rejected,
                    format!("task id {} is already in use", task.id),
                ));
            }
        }
        Ok(())
    }

    /// Milliseconds since this dispatcher started, on the monotonic clock.
    fn mono_ms(&self, now: Now) -> u64 {
        now.at.saturating_duration_since(self.origin).as_millis() as u64
    }

    fn accept(&mut self, mut envelope: TaskEnvelope) {
        self.spans.open(&envelope);
        // How long to hold it: the countdown, or until the eta (read off the wall clock
        // once, here); the later wins. From now on only the monotonic clock counts.
        let hold_ms = envelope
            .countdown_ms
            .max(envelope.not_before_ms.saturating_sub(self.now.unix_ms));
        if envelope.countdown_ms > 0 {
            let due = self.now.unix_ms.saturating_add(envelope.countdown_ms);
            envelope.not_before_ms = envelope.not_before_ms.max(due);
            envelope.countdown_ms = 0;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let scheduled = hold_ms > 0;
        let status = if scheduled {
            TaskStatus::Scheduled
        } else {
            TaskStatus::Queued
        };
        let mut record =
            TaskRecord::new(envelope.id, envelope.name.clone(), status, envelope.codec);
        record.submitted_ms = self.now.unix_ms;
        let id = envelope.id;
        let due = scheduled.then(|| self.mono_ms(self.now).saturating_add(hold_ms));
        if let Some(due) = due {
            self.scheduled.insert(due, seq, id);
        } else {
            self.queues.push(envelope.priority, &envelope.name, seq, id);
        }
        let not_before_ms = envelope.not_before_ms;
        let trail = self
            .observer
            .submitted(&envelope, scheduled, self.now.unix_ms);
        self.tasks.insert(
            TaskEntry {
                envelope,
                record,
                seq,
                attempt: 1,
                deliveries: 0,
                not_before_ms,
                holder: None,
                cancel_requested: false,
                lost: 0,
                lease: None,
                epoch: 0,
            },
            trail,
        );
        if self.config.durable {
            self.changed.tasks.insert(id);
            self.changed.accepted.push(id);
        }
    }

    /// Once a second: notes which names tasks wait for that no live worker serves, and
    /// fails the tasks of a name unserved for longer than `unserved_timeout`.
    fn check_unserved(&mut self) {
        let now = self.now.at;
        if self
            .unserved_checked
            .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1))
        {
            return;
        }
        self.unserved_checked = Some(now);
        let names: Vec<String> = self.tasks.names().cloned().collect();
        for name in names {
            if self.known_task(&name) {
                self.unserved.remove(&name);
            } else {
                self.unserved.entry(name).or_insert(now);
            }
        }
        let expired: Vec<String> = self
            .unserved
            .iter()
            .filter(|(_, since)| {
                now.saturating_duration_since(**since) >= self.config.unserved_timeout
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            let waiting: Vec<TaskId> = self
                .tasks
                .iter()
                .filter(|(_, e)| e.envelope.name == name && e.holder.is_none())
                .map(|(id, _)| *id)
                .collect();
            warn!(
                task = %name,
                "{} task(s) waited {:?} for a worker that serves them: failing them (--unserved-timeout)",
                waiting.len(),
                self.config.unserved_timeout
            );
            for id in waiting {
                let error = TaskError::new(
                    ErrorKind::UnknownTask,
                    format!(
                        "no worker served `{name}` for {:?} (--unserved-timeout)",
                        self.config.unserved_timeout
                    ),
                );
                self.end_waiting(id, TaskStatus::Failure, error);
            }
            self.unserved.remove(&name);
        }
    }

    fn status(&mut self, peer: &PeerId, request_id: u64, task_id: TaskId, wait: bool) {
        let record = if let Some(entry) = self.tasks.get(&task_id) {
            if wait {
                self.tasks.add_waiter(
                    &task_id,
                    Waiter::Status {
                        peer: *peer,
                        request_id,
                    },
                );
                return;
            }
            let mut record = entry.record.clone();
            // Why it waits, when nobody can run it.
            if let Some(since) = self.unserved.get(&entry.envelope.name) {
                if entry.holder.is_none() {
                    record.error = Some(TaskError::new(
                        ErrorKind::UnknownTask,
                        format!(
                            "waiting: no worker serves {} since {} s",
                            entry.envelope.name,
                            self.now.at.saturating_duration_since(*since).as_secs()
                        ),
                    ));
                }
            }
            Some(record)
        } else {
            self.cache.get(&task_id, self.now.at).cloned()
        };
        self.actions.push(reply(
            peer,
            FromControlPlane::StatusReply { request_id, record },
        ));
    }

    /// The ids of the waiting tasks (not running) that `filter` selects, in the order
    /// they would run: due ones by priority then submission, then the scheduled ones
    /// by time.
    fn waiting_ids(&self, filter: &QueueFilter) -> Vec<TaskId> {
        let now_ms = self.now.unix_ms;
        let mut ids: Vec<_> = self
            .tasks
            .iter()
            .filter(|(_, e)| {
                e.holder.is_none() && filter.selects(&e.envelope.name, e.envelope.priority)
            })
            .map(|(id, e)| {
                let later = e.not_before_ms > now_ms;
                let key = (
                    later,
                    if later { e.not_before_ms } else { 0 },
                    e.envelope.priority,
                    e.seq,
                );
                (key, *id)
            })
            .collect();
        ids.sort_unstable_by_key(|a| a.0);
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// `Queued`: the first `filter.limit` (at most [`MAX_QUEUED_LISTED`]) waiting tasks
    /// it selects, and how many it selects in all.
    fn waiting(&self, filter: &QueueFilter) -> (Vec<QueuedTask>, u64) {
        let ids = self.waiting_ids(filter);
        let limit = match filter.limit {
            0 => MAX_QUEUED_LISTED,
            n => (n as usize).min(MAX_QUEUED_LISTED),
        };
        let tasks = ids
            .iter()
            .take(limit)
            .map(|id| {
                let e = &self.tasks[id];
                QueuedTask::new(e.record.clone(), e.envelope.priority, e.not_before_ms)
            })
            .collect();
        (tasks, ids.len() as u64)
    }

    /// `Purge`: every waiting task `filter` selects ends cancelled, as if each were
    /// cancelled on its own (waiters and callbacks are told).
    fn purge(&mut self, filter: &QueueFilter) -> Vec<TaskId> {
        let ids = self.waiting_ids(filter);
        for id in &ids {
            let error = TaskError::new(ErrorKind::Cancelled, "purged from the queue before it ran");
            self.end_waiting(*id, TaskStatus::Cancelled, error);
        }
        if !ids.is_empty() {
            info!("purged {} waiting task(s)", ids.len());
        }
        ids
    }

    /// Ends a task no worker holds: off its queue or schedule, final with `status`
    /// and `error` (waiters and its callback are told).
    fn end_waiting(&mut self, id: TaskId, status: TaskStatus, error: TaskError) {
        self.withdraw(id);
        self.finalize(id, status, Some(error), Bytes::new());
    }

    fn cancel(&mut self, id: TaskId) -> CancelOutcome {
        let Some(entry) = self.tasks.get_mut(&id) else {
            return match self.cache.get(&id, self.now.at) {
                Some(record) => CancelOutcome::AlreadyFinished(record.status),
                None => CancelOutcome::NotFound,
            };
        };
        match &entry.holder {
            Some(holder) => {
                entry.cancel_requested = true;
                if self.config.durable {
                    self.changed.tasks.insert(id);
                }
                if let Some(w) = self.workers.get(holder) {
                    self.actions.push(reply(
                        &w.peer.clone(),
                        FromControlPlane::CancelTask { task_id: id },
                    ));
                }
                CancelOutcome::Signalled
            }
            None => {
                self.end_waiting(id, TaskStatus::Cancelled, cancelled_error());
                CancelOutcome::Cancelled
            }
        }
    }

    fn dispatch(&mut self) {
        if self.shutting_down && self.config.durable {
            // Queued tasks wait in the store for the next start.
            return;
        }
        for priority in crate::protocol::Priority::ALL {
            loop {
                let workers = &self.workers;
                // Subworkers first (least loaded), the control plane's own last.
                let picked = self
                    .queues
                    .pop_placeable(priority, |name| workers.pick(name).cloned());
                let Some((id, holder)) = picked else {
                    break;
                };
                self.assign(id, holder);
            }
        }
        self.prefetch();
        self.send_assigns();
    }

    /// Hands out tasks past free slots, to subworkers that take prefetched tasks and
    /// run those tasks' names quickly. In priority order, oldest first: once the oldest
    /// task that some subworkers taking prefetched tasks serve cannot be prefetched
    /// (a long task, or their windows are full), those subworkers get nothing younger
    /// or less urgent, so it is not passed over for good; it waits at most for the
    /// work already prefetched. Other subworkers go on taking what they serve.
    fn prefetch(&mut self) {
        if !self.workers.anyone_prefetches() {
            return;
        }
        let mut reserved: Vec<WorkerId> = Vec::new();
        for priority in crate::protocol::Priority::ALL {
            loop {
                let workers = &self.workers;
                let found = self.queues.pop_oldest_servable(
                    priority,
                    |name| workers.anyone_prefetches_for(name, &reserved),
                    |name| workers.pick_prefetch(name, &reserved).cloned(),
                );
                match found {
                    Oldest::Placed(id, holder) => self.assign(id, holder),
                    Oldest::Blocked(name) => {
                        let before = reserved.len();
                        reserved.extend(self.workers.prefetching_for(&name, &reserved));
                        if reserved.len() == before {
                            return;
                        }
                    }
                    Oldest::Empty => break,
                }
            }
        }
    }

    /// Sends this pass's assignments to subworkers that take prefetched tasks: one
    /// `Assigns` per subworker (more past [`ASSIGNS_PER_MESSAGE`] tasks or
    /// [`ASSIGN_BYTES_PER_MESSAGE`] bytes), in the order they were made.
    fn send_assigns(&mut self) {
        if self.outgoing.is_empty() {
            return;
        }
        let epoch = self.epoch;
        let mut outgoing = take_sized(&mut self.outgoing);
        // Stable: each subworker's tasks keep their order.
        outgoing.sort_by(|a, b| a.0.cmp(&b.0));
        let mut rest = outgoing.into_iter().peekable();
        while let Some((worker, first)) = rest.next() {
            let mut bytes = first.task.payload.len();
            // Room for as many as one message takes, at most: not grown one by one.
            let mut assignments = Vec::with_capacity(ASSIGNS_PER_MESSAGE.min(1 + rest.len()));
            assignments.push(first);
            while let Some((_, next)) = rest.next_if(|(w, a)| {
                *w == worker
                    && assignments.len() < ASSIGNS_PER_MESSAGE
                    && bytes + a.task.payload.len() <= ASSIGN_BYTES_PER_MESSAGE
            }) {
                bytes += next.task.payload.len();
                assignments.push(next);
            }
            let Some(w) = self.workers.get(&worker) else {
                continue;
            };
            // One alone goes as `Assigns` too: it says whether it was prefetched.
            let msg = FromControlPlane::Assigns { assignments, epoch };
            self.actions.push(reply(&w.peer.clone(), msg));
        }
    }

    /// A subworker that takes prefetched tasks reports: the prefetched tasks it
    /// started (they are `running` from now), those it hands back unstarted, then its
    /// outcomes, and its run times.
    fn report(
        &mut self,
        from: WorkerId,
        started: Vec<TaskId>,
        returned: Vec<TaskId>,
        outcomes: Vec<TaskOutcome>,
        run_ns: std::collections::BTreeMap<String, u64>,
    ) {
        self.workers.record_run_times(&from, run_ns);
        for id in started {
            self.prefetched_started(id, &from);
        }
        if !returned.is_empty() {
            if let Some(worker) = self.workers.get_mut(&from) {
                worker.stalled = true;
            }
        }
        if !outcomes.is_empty() {
            if let Some(worker) = self.workers.get_mut(&from) {
                worker.stalled = false;
            }
        }
        for id in returned {
            self.handed_back(id, &from);
        }
        for outcome in outcomes {
            self.outcome(from.clone(), outcome);
        }
    }

    /// Worker `from` hands back task `id` that it did not start: queued again at its
    /// place, for any worker (no delivery is counted as lost). Usually a prefetched
    /// task (`assigned`); but one handed to it into a slot this control plane thought
    /// free (`running` here) waits there too when that slot is still taken, by a task
    /// taken away from the worker while it was silent, and comes back the same way.
    fn handed_back(&mut self, id: TaskId, from: &WorkerId) {
        let Some(entry) = self.tasks.get_mut(&id) else {
            return;
        };
        let out = matches!(
            entry.record.status,
            TaskStatus::Assigned | TaskStatus::Running
        );
        if entry.holder.as_ref() != Some(from) || !out {
            return;
        }
        entry.holder = None;
        entry.lease = None;
        entry.record.worker_id = None;
        entry.record.started_ms = None;
        self.workers.release(from, &id, false);
        if entry.cancel_requested {
            self.finalize(
                id,
                TaskStatus::Cancelled,
                Some(cancelled_error()),
                Bytes::new(),
            );
            return;
        }
        self.observer.requeued(
            id,
            &entry.envelope.name,
            entry.attempt,
            &format!("{from} handed it back before it started"),
            self.now.unix_ms,
        );
        self.enqueue(id);
    }

    /// A prefetched task `id` started on worker `from`: `assigned` → `running`.
    fn prefetched_started(&mut self, id: TaskId, from: &WorkerId) {
        let now = self.now;
        let Some((entry, trail)) = self.tasks.get_mut_with_trail(&id) else {
            return;
        };
        if entry.holder.as_ref() != Some(from) || entry.record.status != TaskStatus::Assigned {
            return;
        }
        entry.record.status = TaskStatus::Running;
        entry.record.started_ms = Some(now.unix_ms);
        if self.config.durable {
            self.changed.tasks.insert(id);
        }
        if self.observer.is_on() {
            let ready_since = entry.record.submitted_ms.max(entry.not_before_ms);
            self.observer.started(
                trail,
                id,
                &entry.envelope.name,
                entry.attempt,
                from,
                now.unix_ms.saturating_sub(ready_since),
                now.unix_ms,
            );
        }
        self.spans.step(&id, format_args!("started on {from}"));
    }

    fn assign(&mut self, id: TaskId, worker: WorkerId) {
        let timeout = {
            let Some(entry) = self.tasks.get(&id) else {
                return;
            };
            entry
                .envelope
                .timeout_secs
                .or_else(|| self.spec(&entry.envelope.name).and_then(|s| s.timeout_secs))
        };
        let now = self.now;
        // A subworker that takes prefetched tasks with all its slots taken queues
        // this one: it is `assigned` until the subworker reports it started.
        let (takes_prefetch, prefetched) = self.workers.get(&worker).map_or((false, false), |w| {
            (
                w.takes_prefetched(),
                w.takes_prefetched() && w.would_prefetch(),
            )
        });
        let Some((entry, trail)) = self.tasks.get_mut_with_trail(&id) else {
            return;
        };
        entry.deliveries += 1;
        entry.holder = Some(worker.clone());
        let lease = LeaseToken::new();
        entry.lease = Some(lease);
        entry.epoch = self.epoch;
        let epoch = self.epoch;
        if self.config.durable {
            self.changed.tasks.insert(id);
        }
        entry.record.status = if prefetched {
            TaskStatus::Assigned
        } else {
            TaskStatus::Running
        };
        entry.record.attempts = entry.attempt;
        entry.record.delivery_count = entry.deliveries;
        entry.record.started_ms = (!prefetched).then_some(now.unix_ms);
        if self.observer.is_on() && !prefetched {
            let ready_since = entry.record.submitted_ms.max(entry.not_before_ms);
            self.observer.started(
                trail,
                id,
                &entry.envelope.name,
                entry.attempt,
                &worker,
                now.unix_ms.saturating_sub(ready_since),
                now.unix_ms,
            );
        }
        // What goes to the worker: the submission with what the control plane decided
        // for this hand-out. The worker times the attempt from its own start with the
        // timeout (clocks of other hosts may differ); deadline_ms is the control
        // plane's view, for records.
        let timeout_ms = timeout
            .and_then(crate::protocol::secs_to_ms)
            .filter(|ms| *ms > 0);
        let mut envelope = entry.envelope.clone();
        envelope.attempt = entry.attempt;
        envelope.delivery_count = entry.deliveries;
        envelope.not_before_ms = entry.not_before_ms;
        envelope.timeout_secs = timeout_ms.map(|ms| ms as f64 / 1000.0);
        envelope.deadline_ms = timeout_ms.map_or(0, |ms| now.unix_ms.saturating_add(ms));
        entry.record.worker_id = Some(worker.clone());
        self.spans.step(
            &id,
            format_args!("handed to {worker} (attempt {})", envelope.attempt),
        );
        if let Some(context) = self.spans.context(&id) {
            envelope.trace = Some(Box::new(context));
        }
        self.workers.assign(&worker, id);
        if takes_prefetch {
            self.outgoing
                .push((worker, Assignment::new(envelope, lease, prefetched)));
        } else if let Some(w) = self.workers.get(&worker) {
            self.actions.push(reply(
                &w.peer.clone(),
                FromControlPlane::Assign {
                    task: envelope,
                    lease,
                    epoch,
                },
            ));
        }
    }

    fn outcome(&mut self, from: WorkerId, mut outcome: TaskOutcome) {
        outcome.cap_value(self.config.max_payload_bytes);
        let id = outcome.task_id;
        let Some(entry) = self.tasks.get_mut(&id) else {
            debug!(task = %id, "outcome for a task no longer running: ignored");
            return;
        };
        if entry.deliveries != outcome.delivery_count {
            debug!(task = %id, "stale outcome (delivery {}) ignored", outcome.delivery_count);
            return;
        }
        if entry.lease != Some(outcome.lease) {
            warn!(task = %id, "an outcome without the task's current lease: ignored");
            return;
        }
        match &entry.holder {
            Some(h) if *h == from => {}
            None if entry.record.status == TaskStatus::Queued => {
                // Re-queued after its worker went quiet, and the worker came back
                // with the answer before anyone else took it.
                self.dequeue(id);
            }
            _ => {
                debug!(task = %id, "outcome from a worker not holding the task: ignored");
                return;
            }
        }
        self.task_changed(id);
        let entry = self.tasks.get_mut(&id).expect("checked above");
        entry.holder = None;
        // 0: it never started (cancelled in a subworker's queue).
        entry.record.started_ms = (outcome.started_ms > 0).then_some(outcome.started_ms);
        entry.record.worker_id = Some(from.clone());
        self.workers.release(&from, &id, true);
        let cancel_requested = entry.cancel_requested;
        let attempt = entry.attempt;
        if let AttemptResult::Failure(error) = &outcome.result {
            if error.kind == ErrorKind::UnknownTask && !cancel_requested {
                // The host dropped the task's plugin after it was handed out: it no
                // longer serves that name; run it elsewhere if anyone can.
                let name = self.tasks[&id].envelope.name.clone();
                if let Some(w) = self.workers.get_mut(&from) {
                    w.tasks.remove(&name);
                }
                if from.as_str() == self.config.id {
                    self.own_tasks.remove(&name);
                }
                if self.known_task(&name) {
                    self.observer.requeued(
                        id,
                        &name,
                        attempt,
                        &format!("{from} no longer serves it"),
                        self.now.unix_ms,
                    );
                    self.enqueue(id);
                    return;
                }
            }
        }
        match outcome.result {
            AttemptResult::Success => {
                self.finalize(id, TaskStatus::Success, None, outcome.value);
            }
            AttemptResult::Failure(error) if cancel_requested => {
                let error = if error.kind == ErrorKind::Cancelled {
                    error
                } else {
                    TaskError::new(
                        ErrorKind::Cancelled,
                        format!("cancelled ({})", error.message),
                    )
                };
                self.finalize(id, TaskStatus::Cancelled, Some(error), Bytes::new());
            }
            AttemptResult::Failure(error) => {
                let policy = {
                    let entry = &self.tasks[&id];
                    RetryPolicy::resolve(self.spec(&entry.envelope.name), &entry.envelope.retry)
                };
                if policy.should_retry(error.kind, attempt) {
                    let unit = self.next_unit();
                    let delay = policy.delay(attempt, unit);
                    let delay_ms = delay.as_millis() as u64;
                    let due = self.mono_ms(self.now).saturating_add(delay_ms);
                    let not_before = self.now.unix_ms.saturating_add(delay_ms);
                    let served = self.known_task(&self.tasks[&id].envelope.name);
                    let entry = self.tasks.get_mut(&id).expect("checked above");
                    info!(task = %id, attempt, "task failed ({error}); retrying in {delay:?}");
                    self.spans.step(
                        &id,
                        format_args!("attempt {attempt} failed ({error}); retrying in {delay:?}"),
                    );
                    let task = super::observe::TaskRef {
                        id,
                        name: &entry.envelope.name,
                        attempt,
                        at: self.now.unix_ms,
                    };
                    self.observer.retrying(task, &error, delay_ms, served);
                    entry.attempt += 1;
                    entry.not_before_ms = not_before;
                    entry.record.status = TaskStatus::Retrying;
                    entry.record.error = Some(error);
                    self.scheduled.insert(due, entry.seq, id);
                } else {
                    self.finalize(id, TaskStatus::Failure, Some(error), Bytes::new());
                }
            }
            other => {
                let error = TaskError::new(
                    ErrorKind::Internal,
                    format!("the worker reported an outcome this control plane does not know: {other:?}"),
                );
                self.finalize(id, TaskStatus::Failure, Some(error), Bytes::new());
            }
        }
    }

    /// A worker no longer holds `task`: queue it again at its old place, or dead-letter
    /// it once workers holding it have been lost `max_deliveries` times.
    fn worker_lost_task(&mut self, task: TaskId, worker: &WorkerId) {
        let Some(entry) = self.tasks.get_mut(&task) else {
            return;
        };
        if entry.holder.as_ref() != Some(worker) {
            return;
        }
        entry.holder = None;
        if self.config.durable {
            self.changed.tasks.insert(task);
        }
        if entry.cancel_requested {
            self.finalize(
                task,
                TaskStatus::Cancelled,
                Some(cancelled_error()),
                Bytes::new(),
            );
            return;
        }
        // A prefetched task that never started was not lost running: it does not
        // count toward dead-lettering.
        if entry.record.status != TaskStatus::Assigned {
            entry.lost += 1;
        }
        if entry.lost >= self.config.max_deliveries {
            let error = TaskError::new(
                ErrorKind::WorkerLost,
                format!(
                    "dead-lettered: the worker running it was lost {} times (last: {worker})",
                    entry.lost
                ),
            );
            warn!(%task, "{}", error.message);
            let envelope = entry.envelope.clone();
            let seq = entry.seq;
            self.finalize(task, TaskStatus::Failure, Some(error), Bytes::new());
            if let Some(record) = self.cache.peek(&task).cloned() {
                let dropped = self.dead_letters.insert(seq, record, envelope);
                self.dead_letter_changed(seq);
                for oldest in dropped {
                    self.dead_letter_changed(oldest);
                }
            }
            return;
        }
        warn!(%task, %worker, "re-queueing a task its worker lost");
        if let Some(entry) = self.tasks.get(&task) {
            self.observer.requeued(
                task,
                &entry.envelope.name,
                entry.attempt,
                &format!("its worker {worker} was lost"),
                self.now.unix_ms,
            );
        }
        self.enqueue(task);
    }

    /// Puts a task (back) in its queue, at the place its sequence number gives it.
    fn enqueue(&mut self, id: TaskId) {
        self.task_changed(id);
        if let Some(entry) = self.tasks.get_mut(&id) {
            entry.record.status = TaskStatus::Queued;
            self.queues
                .push(entry.envelope.priority, &entry.envelope.name, entry.seq, id);
        }
    }

    /// Takes a task that waits (not running) off its schedule or out of its queue.
    fn withdraw(&mut self, id: TaskId) {
        if !self.scheduled.remove(&id) {
            self.dequeue(id);
        }
    }

    /// Takes a task out of its queue; true if it was there.
    fn dequeue(&mut self, id: TaskId) -> bool {
        self.tasks.get(&id).is_some_and(|entry| {
            self.queues
                .remove(entry.envelope.priority, &entry.envelope.name, entry.seq)
        })
    }

    /// A worker that reconnected says it is still running `task`: if the task went back
    /// to the queue when the old connection dropped and nobody took it since, it stays
    /// with that worker instead of running twice.
    fn reclaim(&mut self, task: TaskId, worker: &WorkerId) {
        let Some(entry) = self.tasks.get_mut(&task) else {
            return;
        };
        if entry.holder.is_some() || entry.record.status != TaskStatus::Queued {
            return;
        }
        if !self.dequeue(task) {
            return;
        }
        let Some(entry) = self.tasks.get_mut(&task) else {
            return;
        };
        debug!(%task, %worker, "reconnected worker keeps the task it is running");
        if self.config.durable {
            self.changed.tasks.insert(task);
        }
        entry.holder = Some(worker.clone());
        entry.record.status = TaskStatus::Running;
        entry.record.worker_id = Some(worker.clone());
        self.workers.assign(worker, task);
    }

    fn remove_worker(&mut self, id: &WorkerId) {
        self.worker_changed(id, None);
        self.observer.worker_gone(id);
        if let Some(worker) = self.workers.remove(id) {
            for task in worker.into_in_flight() {
                self.worker_lost_task(task, id);
            }
        }
    }

    fn finalize(&mut self, id: TaskId, status: TaskStatus, error: Option<TaskError>, value: Bytes) {
        let Some(task_store::Released {
            mut entry,
            last_of_name,
            waiting,
            trail,
        }) = self.tasks.remove(&id)
        else {
            return;
        };
        self.task_changed(id);
        if last_of_name {
            self.unserved.remove(&entry.envelope.name);
        }
        entry.record.status = status;
        entry.record.error = error;
        entry.record.value = value;
        entry.record.completed_ms = Some(self.now.unix_ms);
        self.spans.close(&id, status.as_str());
        let record = entry.record;
        self.actions
            .extend(waiting.into_iter().map(|waiter| match waiter {
                Waiter::Result(peer) => reply(&peer, FromControlPlane::Result(record.clone())),
                Waiter::Status { peer, request_id } => reply(
                    &peer,
                    FromControlPlane::StatusReply {
                        request_id,
                        record: Some(record.clone()),
                    },
                ),
            }));
        if let Some(callback) = &entry.envelope.callback {
            self.actions.push(Action::Callback {
                callback: Callback::clone(callback),
                record: record.clone(),
            });
        }
        if self.observer.is_on() {
            let served = self.known_task(&record.name);
            self.observer
                .finished(trail, &record, entry.envelope, self.now.unix_ms, served);
        }
        if !self.cache.insert(record, self.now.at) {
            warn!(task = %id, "result not kept: it alone is over --result-cache-max-bytes");
        }
    }

    /// A number in [0, 1) for retry jitter (xorshift; quality is irrelevant here).
    fn next_unit(&mut self) -> f64 {
        let mut x = self.rng_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng_state = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A worker's id and task list within bounds (so no peer can make the control plane keep
/// megabytes per worker).
fn check_worker_tasks(worker_id: &str, tasks: &[TaskSpec]) -> Result<(), String> {
    if worker_id.len() > MAX_ID_BYTES {
        return Err(format!("a worker id is at most {MAX_ID_BYTES} bytes"));
    }
    if tasks.len() > MAX_TASKS_PER_WORKER {
        return Err(format!(
            "{} tasks; a worker may serve at most {MAX_TASKS_PER_WORKER}",
            tasks.len()
        ));
    }
    if let Some(t) = tasks.iter().find(|t| t.name.len() > MAX_ID_BYTES) {
        return Err(format!(
            "a task name of {} bytes; names are at most {MAX_ID_BYTES}",
            t.name.len()
        ));
    }
    Ok(())
}

/// Every span a submission sets must be a finite, non-negative number of seconds of at
/// most ten years: anything else would overflow the time arithmetic downstream.
fn check_spans(task: &TaskEnvelope) -> Result<(), TaskError> {
    let r = &task.retry;
    let spans = [
        ("timeout", task.timeout_secs),
        ("retry delay", r.delay_secs),
        ("retry backoff max", r.backoff_max_secs),
    ];
    for (what, secs) in spans {
        if let Some(secs) = secs {
            if crate::protocol::secs_to_ms(secs).is_none() {
                return Err(TaskError::new(
                    ErrorKind::Rejected,
                    format!(
                        "task {}: {what} of {secs} s is out of range (0 to 10 years)",
                        task.id
                    ),
                ));
            }
        }
    }
    if r.max_retries.is_some_and(|n| n > MAX_RETRIES) {
        return Err(TaskError::new(
            ErrorKind::Rejected,
            format!("task {}: at most {MAX_RETRIES} retries", task.id),
        ));
    }
    if task.name.len() > MAX_ID_BYTES {
        return Err(TaskError::new(
            ErrorKind::Rejected,
            format!("task names are at most {MAX_ID_BYTES} bytes"),
        ));
    }
    if let Some(b) = r.backoff {
        if !(b.is_finite() && (1.0..=1000.0).contains(&b)) {
            return Err(TaskError::new(
                ErrorKind::Rejected,
                format!(
                    "task {}: retry backoff {b} is out of range (1 to 1000)",
                    task.id
                ),
            ));
        }
    }
    if task.countdown_ms > (crate::protocol::MAX_SPAN_SECS * 1000.0) as u64 {
        return Err(TaskError::new(
            ErrorKind::Rejected,
            format!("task {}: countdown is longer than 10 years", task.id),
        ));
    }
    Ok(())
}

fn cancelled_error() -> TaskError {
    TaskError::new(ErrorKind::Cancelled, "cancelled before it ran")
}

fn request_id_of(msg: &ToControlPlane) -> u64 {
    match msg {
        ToControlPlane::Submit { request_id, .. }
        | ToControlPlane::SubmitBatch { request_id, .. }
        | ToControlPlane::Status { request_id, .. }
        | ToControlPlane::Cancel { request_id, .. }
        | ToControlPlane::DeadLetters { request_id }
        | ToControlPlane::Replay { request_id, .. }
        | ToControlPlane::Events { request_id }
        | ToControlPlane::Tasks { request_id }
        | ToControlPlane::Queued { request_id, .. }
        | ToControlPlane::Purge { request_id, .. } => *request_id,
        _ => 0,
    }
}

mod durable;
mod peers;
mod task_store;
mod view;
mod waiters;
use super::store::TaskEntry;
pub use durable::{Restored, Unsaved};
use task_store::TaskStore;
pub use view::{RetryRefused, StatusContext, TaskDetail, TaskPage, TaskQuery};
#[cfg(test)]
mod tests;
