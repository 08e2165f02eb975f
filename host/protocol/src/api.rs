//! The JSON the control plane's HTTP API answers with (`/api/...`), and the events of
//! its server-sent event stream (`/api/events`). Each shape is defined once, here;
//! `docs/API.md` shows an example of each. A task's record is [`StatusJson`], the same
//! form `fastworker status --json` prints; an error is [`ErrorJson`] everywhere.
//!
//! These are views for people and scripts, not protocol messages: fields may be added.

use serde::Serialize;

use std::{borrow::Cow, fmt, ops::Deref, sync::Arc};

use crate::{
    ids::TaskId,
    json::{ErrorJson, StatusJson},
    messages::PluginEvent,
};

/// How many tasks wait at each priority.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PriorityDepths {
    /// Waiting at `critical`.
    pub critical: u64,
    /// Waiting at `high`.
    pub high: u64,
    /// Waiting at `normal`.
    pub normal: u64,
    /// Waiting at `low`.
    pub low: u64,
}

impl PriorityDepths {
    /// All four added up.
    pub fn total(&self) -> u64 {
        self.critical + self.high + self.normal + self.low
    }
}

/// Tasks that became final (or were accepted) since the control plane started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TaskTotals {
    /// Accepted.
    pub submitted: u64,
    /// Ended `success`.
    pub success: u64,
    /// Ended `failure`.
    pub failure: u64,
    /// Ended `cancelled`.
    pub cancelled: u64,
    /// Attempts that failed and were retried.
    pub retried: u64,
}

/// `GET /api/status`: the control plane at a glance.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ApiStatus {
    /// Its id.
    pub control_plane_id: String,
    /// The fastworker version it runs.
    pub version: String,
    /// The newest protocol version it speaks.
    pub protocol_version: u8,
    /// Where clients and subworkers connect.
    pub address: String,
    /// Seconds since it started.
    pub uptime_secs: u64,
    /// Whether it takes new tasks (false while shutting down or while its store
    /// cannot be written).
    pub accepting: bool,
    /// Whether it keeps its state in a data directory.
    pub durable: bool,
    /// Why the data directory cannot be written, while it cannot.
    pub store_error: Option<String>,
    /// Subworkers that take tasks now.
    pub active_workers: u64,
    /// Subworkers known (active, draining, restarting or silent).
    pub workers: u64,
    /// Tasks waiting to run, by priority.
    pub queued: PriorityDepths,
    /// Tasks running (or handed to a worker).
    pub running: u64,
    /// Of those, tasks handed out ahead (`assigned`): waiting in a subworker's own
    /// queue for a free slot.
    pub assigned: u64,
    /// Tasks waiting for their countdown or eta.
    pub scheduled: u64,
    /// Tasks waiting to retry.
    pub retrying: u64,
    /// Results kept.
    pub cached_results: u64,
    /// Dead letters kept.
    pub dead_letters: u64,
    /// Totals since the start.
    pub totals: TaskTotals,
}

/// A plugin a subworker has loaded.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ApiPlugin {
    /// The subworker that loaded it.
    pub worker_id: String,
    /// The plugin's name.
    pub name: String,
    /// Its crate version.
    pub version: String,
    /// The first 8 hex digits of its file's hash ("" when the worker did not say).
    pub build: String,
    /// The file it was loaded from.
    pub path: String,
    /// The tasks it serves.
    pub tasks: Vec<String>,
}

/// `GET /api/workers`: one subworker.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ApiWorker {
    /// Its id.
    pub worker_id: String,
    /// `active`, `draining`, `restarting` or `inactive` (silent too long).
    pub status: &'static str,
    /// Whether it is the control plane's own subworker (its `--task-modules`).
    pub own: bool,
    /// Its status endpoint, if it has one.
    pub address: Option<String>,
    /// Its process id, as it says.
    pub pid: u32,
    /// Tasks it holds now.
    pub running: u64,
    /// Its slots (`--concurrency`).
    pub slots: u64,
    /// Its widest credit window: the most tasks it is handed at once (its slots, plus
    /// the prefetched tasks that the quickest name's measured run time allows).
    pub window: u64,
    /// Each task name's recent mean run time on it, in µs, as it reports it (only a
    /// subworker that takes prefetched tasks reports them).
    pub run_us: std::collections::BTreeMap<String, f64>,
    /// For each name in `run_us`: the most tasks it is handed at once when they are of
    /// that name.
    pub windows: std::collections::BTreeMap<String, u64>,
    /// running / slots.
    pub load: f64,
    /// Milliseconds since it last said anything.
    pub last_seen_ms_ago: u64,
    /// Tasks handed to it since it registered.
    pub assigned_total: u64,
    /// Tasks it finished since it registered.
    pub completed_total: u64,
    /// The task names it serves.
    pub tasks: Vec<String>,
    /// Its plugins, with versions and builds.
    pub plugins: Vec<ApiPlugin>,
}

/// Waiting and running tasks of one name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct NameDepth {
    /// The task name.
    pub name: String,
    /// Waiting to run.
    pub waiting: u64,
    /// Running.
    pub running: u64,
}

/// `GET /api/queues`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ApiQueues {
    /// Due tasks waiting for a worker, by priority.
    pub queued: PriorityDepths,
    /// Waiting for a countdown or eta.
    pub scheduled: u64,
    /// Waiting to retry.
    pub retrying: u64,
    /// Running.
    pub running: u64,
    /// By task name (names with anything waiting or running).
    pub by_name: Vec<NameDepth>,
}

/// `GET /api/tasks`: one page of recent tasks, newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ApiTaskPage {
    /// Tasks that match the filter, in all.
    pub total: u64,
    /// The page asked for.
    pub offset: u64,
    /// The page size asked for.
    pub limit: u64,
    /// The page.
    pub tasks: Vec<StatusJson>,
}

/// A name that events and timelines share: a task's or a worker's. One the control
/// plane interned (kept for the life of the process, a bounded set) is cloned by
/// copying a pointer; any other is shared by a count, which every clone and drop
/// updates atomically. Serialized as the string.
#[derive(Clone)]
pub enum SharedName {
    /// Interned: kept for good.
    Interned(&'static str),
    /// Counted.
    Counted(Arc<str>),
}

impl SharedName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        match self {
            SharedName::Interned(s) => s,
            SharedName::Counted(s) => s,
        }
    }
}

impl Deref for SharedName {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for SharedName {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SharedName {}

impl fmt::Debug for SharedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for SharedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for SharedName {
    fn from(s: &str) -> Self {
        SharedName::Counted(Arc::from(s))
    }
}

impl Serialize for SharedName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One step of a task's life.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct TimelineEntry {
    /// Unix ms.
    pub at: u64,
    /// `submitted`, `scheduled`, `started`, `retrying`, `requeued`, `success`,
    /// `failure` or `cancelled`.
    pub event: &'static str,
    /// The attempt it concerns.
    pub attempt: u32,
    /// The worker, for `started` and the final step.
    pub worker_id: Option<SharedName>,
    /// Why (a retry's error, a re-queue's reason).
    pub message: Option<String>,
}

impl TimelineEntry {
    /// Step `event` of `attempt` at `at` (unix ms).
    pub fn new(at: u64, event: &'static str, attempt: u32) -> Self {
        TimelineEntry {
            at,
            event,
            attempt,
            worker_id: None,
            message: None,
        }
    }
}

/// `GET /api/tasks/{id}`: a task's record, priority and timeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ApiTask {
    /// Its record.
    #[serde(flatten)]
    pub record: StatusJson,
    /// Its priority ("" when no longer known).
    pub priority: &'static str,
    /// Whether `POST /api/tasks/{id}/retry` can queue it again now.
    pub retryable: bool,
    /// Its steps, oldest first (empty for a task this control plane did not see
    /// submitted, e.g. one restored from its data directory).
    pub timeline: Vec<TimelineEntry>,
}

/// `GET /api/cache`: the result cache.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ApiCache {
    /// Results kept.
    pub entries: u64,
    /// The most kept (`--result-cache-size`).
    pub capacity: u64,
    /// Bytes of results kept (as counted against the limit).
    pub bytes: u64,
    /// The most bytes kept (`--result-cache-max-bytes`).
    pub max_bytes: u64,
    /// How long a result is kept, seconds.
    pub ttl_secs: u64,
    /// Lookups that found a result.
    pub hits: u64,
    /// Lookups that found none.
    pub misses: u64,
    /// Results dropped to make room or because they expired.
    pub evictions: u64,
}

/// A plugin event kept for `/api/plugins`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ApiPluginEvent {
    /// Unix ms.
    pub at: u64,
    /// The subworker it happened on.
    pub worker_id: String,
    /// `reloaded`, `retired` or `rejected`.
    pub kind: String,
    /// The plugin ("" when the file did not load).
    pub plugin: String,
    /// The file.
    pub path: String,
    /// The version before.
    pub old_version: Option<String>,
    /// The version after.
    pub new_version: Option<String>,
    /// The build before.
    pub old_build: Option<String>,
    /// The build after.
    pub new_build: Option<String>,
    /// One line for people (a rejection's reason).
    pub message: String,
}

impl ApiPluginEvent {
    /// `event`, seen at `at` (unix ms) on `worker_id`.
    pub fn new(at: u64, worker_id: impl Into<String>, event: &PluginEvent) -> Self {
        ApiPluginEvent {
            at,
            worker_id: worker_id.into(),
            kind: event.kind.clone(),
            plugin: event.plugin.clone(),
            path: event.path.clone(),
            old_version: event.old_version.clone(),
            new_version: event.new_version.clone(),
            old_build: event.old_build.clone(),
            new_build: event.new_build.clone(),
            message: event.message.clone(),
        }
    }
}

/// `GET /api/plugins`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ApiPlugins {
    /// Every plugin loaded on a connected subworker.
    pub plugins: Vec<ApiPlugin>,
    /// Reloads, retirements and rejections, oldest first (the last 200).
    pub history: Vec<ApiPluginEvent>,
}

/// One sample of the task totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ThroughputSample {
    /// Unix ms.
    pub at: u64,
    /// Tasks that ended `success` since the previous sample.
    pub success: u64,
    /// Tasks that ended `failure` since the previous sample.
    pub failure: u64,
    /// Tasks accepted since the previous sample.
    pub submitted: u64,
}

/// `GET /api/throughput`: what finished in each interval of the last minutes, oldest
/// first (for the dashboard's charts).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ApiThroughput {
    /// Seconds between samples.
    pub interval_secs: u64,
    /// The samples (at most 300: five minutes).
    pub samples: Vec<ThroughputSample>,
}

/// What `POST /api/tasks/{id}/cancel`, `/retry` and `/api/dead-letters/{id}/replay`
/// answer with on success.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ApiActionReply {
    /// The task.
    pub task_id: String,
    /// `cancelled` (it will not run), `signalled` (its worker was told to stop),
    /// `queued` (retried or replayed).
    pub outcome: &'static str,
}

/// The body of every error answer (4xx, 5xx).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ApiErrorBody {
    /// What went wrong.
    pub error: ErrorJson,
}

/// One event of `/api/events`. Its `id` (also the SSE `id:` line) grows by one per
/// event, so a reader that reconnects with `Last-Event-ID` resumes after it. Built on
/// the dispatch path for every step of every task, so it allocates little: a task
/// event's type is static, its id is the id itself, its name shared.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ApiEvent {
    /// Its sequence number.
    pub id: u64,
    /// `task.queued`, `task.scheduled`, `task.started`, `task.success`,
    /// `task.failure`, `task.cancelled`, `task.retrying`, `task.requeued`, or a worker
    /// or plugin event (`worker.registered`, `worker.lost`, `plugin.reloaded`, ...).
    #[serde(rename = "type")]
    pub kind: Cow<'static, str>,
    /// Unix ms.
    pub at: u64,
    /// The task, for a task event.
    pub task_id: Option<TaskId>,
    /// The task's name, for a task event.
    pub task_name: Option<SharedName>,
    /// The worker concerned.
    pub worker_id: Option<SharedName>,
    /// The attempt, for a task event.
    pub attempt: Option<u32>,
    /// The error of a failure, retry or cancel.
    pub error: Option<ErrorJson>,
    /// One line for people.
    pub message: Option<String>,
}

impl ApiEvent {
    /// An event of `kind` at `at` (unix ms), with nothing else said yet; its id is
    /// given when it is published.
    pub fn new(kind: impl Into<Cow<'static, str>>, at: u64) -> Self {
        ApiEvent {
            id: 0,
            kind: kind.into(),
            at,
            task_id: None,
            task_name: None,
            worker_id: None,
            attempt: None,
            error: None,
            message: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_gives_its_trace_id_and_bad_ones_none() {
        let good = crate::TraceContext::new(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
        );
        assert_eq!(good.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "",
            "00-xyz-0000000000000001-01",
            "00-00000000000000000000000000000000-0000000000000001-01",
        ] {
            assert_eq!(crate::TraceContext::new(bad, "").trace_id(), None, "{bad}");
        }
    }

    #[test]
    fn an_event_names_its_type_and_a_task_page_flattens_nothing_else() {
        let mut event = ApiEvent::new("task.success", 5);
        event.id = 7;
        let id = TaskId::new();
        event.task_id = Some(id);
        event.task_name = Some("add".into());
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "task.success");
        assert_eq!(json["id"], 7);
        assert_eq!(json["task_id"], id.to_string().as_str());
        assert_eq!(json["task_name"], "add");
        assert!(json.get("kind").is_none());
    }
}
