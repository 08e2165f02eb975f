//! What the HTTP API reads and does: the dispatcher's state as the JSON shapes of
//! [`crate::protocol::api`], and the dashboard's cancel, retry and replay. Reads walk
//! the held tasks (at most `--max-queued`), so they cost O(tasks), never dispatch time:
//! the server answers them between rounds.

use std::collections::BTreeMap;

use super::{Dispatcher, Now};
use crate::{
    control_plane::metrics::MetricsInput,
    protocol::{
        api::{
            ApiCache, ApiPlugin, ApiPlugins, ApiQueues, ApiStatus, ApiWorker, NameDepth,
            PriorityDepths,
        },
        CancelOutcome, Priority, TaskId, TaskRecord, TaskStatus, WorkerId,
    },
    task_error::{ErrorKind, TaskError},
};

/// Which recent tasks `/api/tasks` lists.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    /// Only this status (`queued`, `running`, `success`, ...).
    pub status: Option<String>,
    /// Only this name.
    pub name: Option<String>,
    /// Skip this many.
    pub offset: u64,
    /// At most this many.
    pub limit: u64,
}

/// A page of `/api/tasks`, as records (turned into JSON off the event loop).
#[derive(Debug, Clone)]
pub struct TaskPage {
    /// Tasks that match, in all.
    pub total: u64,
    /// The page asked for.
    pub offset: u64,
    /// Its size asked for.
    pub limit: u64,
    /// The page's records, newest first.
    pub records: Vec<TaskRecord>,
}

/// `/api/tasks/{id}`, as a record (turned into JSON off the event loop).
#[derive(Debug, Clone)]
pub struct TaskDetail {
    /// The record.
    pub record: TaskRecord,
    /// Its priority ("" when no longer known).
    pub priority: &'static str,
    /// Whether a retry can queue it now.
    pub retryable: bool,
    /// Its steps.
    pub timeline: Vec<crate::protocol::api::TimelineEntry>,
}

/// Why a retry was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum RetryRefused {
    /// No such task is known (any more).
    NotFound,
    /// It has not finished: nothing to retry.
    NotFinal(TaskStatus),
    /// It is final, but its submission is no longer kept.
    Gone,
    /// It cannot be queued now (shutting down, limits, no worker serves it).
    Rejected(TaskError),
}

/// The static parts of `/api/status` the dispatcher does not know.
#[derive(Debug, Clone)]
pub struct StatusContext {
    /// The fastworker version.
    pub version: String,
    /// Where clients connect.
    pub address: String,
    /// Seconds since the start.
    pub uptime_secs: u64,
}

fn depths(of: impl Fn(Priority) -> u64) -> PriorityDepths {
    let mut d = PriorityDepths::default();
    d.critical = of(Priority::Critical);
    d.high = of(Priority::High);
    d.normal = of(Priority::Normal);
    d.low = of(Priority::Low);
    d
}

/// The held tasks by where they are, counted in one pass (status, queues, metrics).
#[derive(Debug, Clone, Copy, Default)]
struct Held {
    queued: PriorityDepths,
    scheduled: u64,
    retrying: u64,
    running: u64,
    assigned: u64,
}

impl Dispatcher {
    fn held(&self) -> Held {
        let mut held = Held {
            queued: depths(|p| self.queues.len(p) as u64),
            ..Held::default()
        };
        for (_, entry) in self.tasks.iter() {
            match (entry.holder.is_some(), entry.record.status) {
                (true, status) => {
                    held.running += 1;
                    if status == TaskStatus::Assigned {
                        held.assigned += 1;
                    }
                }
                (false, TaskStatus::Scheduled) => held.scheduled += 1,
                (false, TaskStatus::Retrying) => held.retrying += 1,
                _ => {}
            }
        }
        held
    }

    /// A task's record now, live or final (`None` once forgotten).
    fn record_of(&self, id: &TaskId) -> Option<&TaskRecord> {
        self.tasks
            .get(id)
            .map(|e| &e.record)
            .or_else(|| self.cache.peek(id))
    }

    /// Whether new tasks are taken now (for `/readyz` and `/api/status`).
    pub fn accepting(&self) -> bool {
        !self.shutting_down && self.store_error.is_none()
    }

    /// `GET /api/status`.
    pub fn api_status(&self, context: StatusContext) -> ApiStatus {
        let mut status = ApiStatus::default();
        status.control_plane_id = self.config.id.clone();
        status.version = context.version;
        status.protocol_version = crate::protocol::max_version();
        status.address = context.address;
        status.uptime_secs = context.uptime_secs;
        status.accepting = self.accepting();
        status.durable = self.config.durable;
        status.store_error = self.store_error.clone();
        status.active_workers = self
            .workers
            .iter()
            .filter(|w| w.active && !w.draining && w.gone_since.is_none())
            .count() as u64;
        status.workers = self.workers.iter().count() as u64;
        let held = self.held();
        status.queued = held.queued;
        status.running = held.running;
        status.assigned = held.assigned;
        status.scheduled = held.scheduled;
        status.retrying = held.retrying;
        status.cached_results = self.cache.len() as u64;
        status.dead_letters = self.dead_letters.len() as u64;
        status.totals = self.observer.totals();
        status
    }

    /// `GET /api/workers`, by id.
    pub fn api_workers(&self) -> Vec<ApiWorker> {
        let now = self.now.at;
        let mut workers: Vec<ApiWorker> = self
            .workers
            .iter()
            .map(|w| {
                let status = if w.gone_since.is_some() || w.restarting {
                    "restarting"
                } else if w.draining {
                    "draining"
                } else if !w.active {
                    "inactive"
                } else {
                    "active"
                };
                let mut tasks: Vec<String> = w.tasks.keys().cloned().collect();
                tasks.sort();
                let mut worker = ApiWorker::default();
                worker.worker_id = w.id().to_string();
                worker.status = status;
                worker.own = w.id().as_str() == self.config.id;
                worker.address = w.address.clone();
                worker.pid = w.pid;
                worker.running = w.in_flight().len() as u64;
                worker.slots = u64::from(w.concurrency());
                worker.window = u64::from(w.widest_window());
                worker.run_us = w
                    .run_ns
                    .iter()
                    .map(|(name, ns)| (name.clone(), *ns as f64 / 1000.0))
                    .collect();
                worker.windows = w
                    .run_ns
                    .keys()
                    .map(|name| (name.clone(), u64::from(w.window_for(name))))
                    .collect();
                worker.load = w.load();
                worker.last_seen_ms_ago =
                    now.saturating_duration_since(w.last_seen).as_millis() as u64;
                worker.assigned_total = w.assigned_total;
                worker.completed_total = w.completed_total;
                worker.tasks = tasks;
                worker.plugins = self.api_plugins_of(w.id());
                worker
            })
            .collect();
        workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        workers
    }

    fn api_plugins_of(&self, worker: &WorkerId) -> Vec<ApiPlugin> {
        self.observer
            .plugins_of(worker)
            .iter()
            .map(|p| {
                let mut plugin = ApiPlugin::default();
                plugin.worker_id = worker.to_string();
                plugin.name = p.name.clone();
                plugin.version = p.version.clone();
                plugin.build = p.build.clone();
                plugin.path = p.path.clone();
                plugin.tasks = p.tasks.clone();
                plugin
            })
            .collect()
    }

    /// `GET /api/queues`.
    pub fn api_queues(&self) -> ApiQueues {
        let mut by_name: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for (_, entry) in self.tasks.iter() {
            let counts = by_name.entry(entry.envelope.name.as_str()).or_default();
            if entry.holder.is_some() {
                counts.1 += 1;
            } else {
                counts.0 += 1;
            }
        }
        let mut queues = ApiQueues::default();
        let held = self.held();
        queues.queued = held.queued;
        queues.scheduled = held.scheduled;
        queues.retrying = held.retrying;
        queues.running = held.running;
        queues.by_name = by_name
            .into_iter()
            .map(|(name, (waiting, running))| {
                let mut depth = NameDepth::default();
                depth.name = name.to_string();
                depth.waiting = waiting;
                depth.running = running;
                depth
            })
            .collect();
        queues
    }

    /// `GET /api/tasks`: the recent tasks this control plane saw submitted, newest
    /// first, that `query` selects.
    pub fn api_tasks(&self, query: &TaskQuery) -> TaskPage {
        let matching = self.observer.recent().filter_map(|id| {
            let record = self.record_of(id)?;
            let wanted = query
                .status
                .as_deref()
                .is_none_or(|s| record.status.as_str() == s)
                && query.name.as_deref().is_none_or(|n| record.name == n);
            wanted.then_some(record)
        });
        let mut page = TaskPage {
            total: 0,
            offset: query.offset,
            limit: query.limit,
            records: Vec::new(),
        };
        for record in matching {
            if page.total >= query.offset && (page.records.len() as u64) < query.limit {
                page.records.push(record.clone());
            }
            page.total += 1;
        }
        page
    }

    /// `GET /api/tasks/{id}`.
    pub fn api_task(&self, id: &TaskId) -> Option<TaskDetail> {
        let record = self.record_of(id)?;
        let (priority, timeline) = match self.observer.timeline(id) {
            Some((priority, steps)) => (priority.as_str(), steps),
            None => (
                self.tasks
                    .get(id)
                    .map_or("", |e| e.envelope.priority.as_str()),
                Vec::new(),
            ),
        };
        let retryable = record.status.is_final()
            && (self.observer.kept_submission(id).is_some()
                || self.dead_letters.key_of(id).is_some());
        Some(TaskDetail {
            record: record.clone(),
            priority,
            retryable,
            timeline,
        })
    }

    /// Puts what the data directory gave back (held tasks, kept results) in the
    /// dashboard's recent tasks, oldest first: a restart does not empty its task list.
    pub fn seed_recent(&mut self) {
        let mut seen: Vec<(u64, TaskId, String, Priority)> = self
            .tasks
            .iter()
            .map(|(id, e)| {
                (
                    e.record.submitted_ms,
                    *id,
                    e.envelope.name.clone(),
                    e.envelope.priority,
                )
            })
            .collect();
        seen.extend(
            self.cache
                .iter()
                .map(|r| (r.submitted_ms, r.task_id, r.name.clone(), Priority::Normal)),
        );
        seen.sort_by_key(|(at, ..)| *at);
        let keep = seen.len().saturating_sub(super::super::observe::MAX_TRAILS);
        for (_, id, name, priority) in seen.into_iter().skip(keep) {
            if let Some(trail) = self.observer.seed(id, &name, priority) {
                self.tasks.set_trail(&id, trail);
            }
        }
    }

    /// `GET /api/cache`.
    pub fn api_cache(&self) -> ApiCache {
        let stats = self.cache.stats();
        let mut cache = ApiCache::default();
        cache.entries = self.cache.len() as u64;
        cache.capacity = self.cache.capacity() as u64;
        cache.bytes = self.cache.bytes();
        cache.max_bytes = self.cache.max_bytes();
        cache.ttl_secs = self.cache.ttl().as_secs();
        cache.hits = stats.hits;
        cache.misses = stats.misses;
        cache.evictions = stats.evictions;
        cache
    }

    /// `GET /api/plugins`.
    pub fn api_plugins(&self) -> ApiPlugins {
        let mut ids: Vec<&WorkerId> = self.workers.iter().map(|w| w.id()).collect();
        ids.sort();
        let plugins = ids
            .into_iter()
            .flat_map(|id| self.api_plugins_of(id))
            .collect();
        let mut all = ApiPlugins::default();
        all.plugins = plugins;
        all.history = self.observer.plugin_history().cloned().collect();
        all
    }

    /// `GET /api/throughput`.
    pub fn api_throughput(&self) -> crate::protocol::api::ApiThroughput {
        let mut throughput = crate::protocol::api::ApiThroughput::default();
        throughput.interval_secs = super::super::observe::SAMPLE_INTERVAL_MS / 1000;
        throughput.samples = self.observer.samples().copied().collect();
        throughput
    }

    /// `GET /api/dead-letters`, oldest first.
    pub fn api_dead_letters(&self) -> Vec<TaskRecord> {
        self.dead_letters.records()
    }

    /// `POST /api/tasks/{id}/cancel`.
    pub fn api_cancel(&mut self, id: TaskId, now: Now) -> CancelOutcome {
        self.now = now;
        let outcome = self.cancel(id);
        self.dispatch();
        outcome
    }

    /// Whether `id` is a dead letter now.
    pub fn is_dead_letter(&self, id: &TaskId) -> bool {
        self.dead_letters.key_of(id).is_some()
    }

    /// `POST /api/dead-letters/{id}/replay`.
    pub fn api_replay(&mut self, id: TaskId, now: Now) -> Result<(), TaskError> {
        self.now = now;
        let result = self.replay(id);
        self.dispatch();
        result
    }

    /// `POST /api/tasks/{id}/retry`: queues a final task again under its id, with
    /// fresh attempts (a dead letter is replayed).
    pub fn api_retry(&mut self, id: TaskId, now: Now) -> Result<(), RetryRefused> {
        self.now = now;
        if let Some(entry) = self.tasks.get(&id) {
            return Err(RetryRefused::NotFinal(entry.record.status));
        }
        if self.dead_letters.key_of(&id).is_some() {
            let result = self.replay(id).map_err(RetryRefused::Rejected);
            self.dispatch();
            return result;
        }
        if self.cache.peek(&id).is_none() && self.observer.timeline(&id).is_none() {
            return Err(RetryRefused::NotFound);
        }
        let Some(mut envelope) = self.observer.kept_submission(&id).cloned() else {
            return Err(RetryRefused::Gone);
        };
        if self.shutting_down {
            return Err(RetryRefused::Rejected(TaskError::new(
                ErrorKind::Rejected,
                "the control plane is shutting down",
            )));
        }
        envelope.attempt = 1;
        envelope.delivery_count = 0;
        envelope.countdown_ms = 0;
        envelope.not_before_ms = 0;
        // The old result goes, or the id would count as in use.
        let cached = self.cache.remove(&id);
        if let Err(err) = self.validate(std::slice::from_ref(&envelope)) {
            if let Some(record) = cached {
                self.cache.insert(record, self.now.at);
            }
            return Err(RetryRefused::Rejected(err));
        }
        if cached.is_some() {
            self.dropped_result(id);
        }
        tracing::info!(task = %id, "retrying a final task (asked through the HTTP API)");
        self.accept(envelope);
        self.dispatch();
        Ok(())
    }

    /// What `/metrics` shows.
    pub fn metrics_input(&self) -> MetricsInput<'_> {
        let held = self.held();
        MetricsInput {
            observer: &self.observer,
            queued: held.queued,
            scheduled: held.scheduled,
            retrying: held.retrying,
            running: held.running,
            workers: self.api_workers(),
            cache: self.api_cache(),
            dead_letters: self.dead_letters.len() as u64,
            held_payload_bytes: self.tasks.bytes(),
            served: self.served_tasks().len() as u64,
        }
    }

    /// Records that the cached result of `id` was dropped (the store forgets it too).
    fn dropped_result(&mut self, id: TaskId) {
        if self.config.durable {
            self.changed.dropped_results.push(id);
        }
    }
}
