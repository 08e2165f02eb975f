//! The messages. [`ToControlPlane`] is everything a client or subworker sends;
//! [`FromControlPlane`] is everything the control plane sends back. A subworker's own
//! status endpoint and the discovery endpoint speak the same two enums.
//!
//! Fields marked "frame" are not encoded in the header: they travel as frames of their
//! own (see [`super::frames`]).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::ids::{LeaseToken, TaskId, WorkerId, WorkerSecret};
use crate::task_error::TaskError;

/// Who is speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PeerKind {
    /// Submits tasks and reads results.
    Client,
    /// Runs tasks handed to it.
    Subworker,
    /// Coordinates everything.
    ControlPlane,
}

/// The first message on every connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Hello {
    /// The protocol version the peer speaks.
    pub protocol_version: u8,
    /// What the peer is.
    pub peer_kind: PeerKind,
    /// Its id (a subworker's `--worker-id`; any name for a client).
    pub peer_id: String,
    /// Optional features it supports; unknown ones are ignored.
    pub features: Vec<String>,
}

/// The control plane's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Welcome {
    /// The protocol version the control plane speaks.
    pub protocol_version: u8,
    /// The control plane's id.
    pub control_plane_id: String,
    /// Features it supports.
    pub features: Vec<String>,
}

/// How a payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Codec {
    /// JSON: arguments are an array, the result a value.
    Json,
    /// bincode 1, standard form: arguments are a tuple.
    Bincode,
}

/// Task priority, most urgent first (the derived order is the dispatch order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Priority {
    /// First.
    Critical,
    /// Second.
    High,
    /// Third; the default.
    Normal,
    /// Last.
    Low,
}

impl Priority {
    /// All four, most urgent first.
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    /// 0 for critical .. 3 for low.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

/// Per-submission overrides of a task's retry policy; `None` keeps the plugin's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RetryOverride {
    /// Retries after the first failure.
    pub max_retries: Option<u32>,
    /// Seconds before the first retry.
    pub delay_secs: Option<f64>,
    /// Multiplier for each later delay.
    pub backoff: Option<f64>,
    /// Cap on the delay, seconds.
    pub backoff_max_secs: Option<f64>,
    /// Randomize each delay by up to ±25%.
    pub jitter: Option<bool>,
}

/// Where to send a task's result when it completes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Callback {
    /// A ZeroMQ endpoint, e.g. `tcp://127.0.0.1:6000`.
    pub address: String,
    /// Opaque data sent back with the result.
    pub data: String,
}

/// W3C trace context, carried so a later tracing layer can join spans across hosts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TraceContext {
    /// The `traceparent` header value.
    pub traceparent: String,
    /// The `tracestate` header value.
    pub tracestate: String,
}

/// One task, as submitted and as handed to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskEnvelope {
    /// Its id.
    pub id: TaskId,
    /// The task name, resolved to a plugin entry point by whoever runs it.
    pub name: String,
    /// How `payload` is encoded; the result comes back the same way.
    pub codec: Codec,
    /// Its priority.
    pub priority: Priority,
    /// 1 for the first attempt, 2 for the first retry, ...
    pub attempt: u32,
    /// How many times it has been handed to a worker (re-deliveries after a lost
    /// worker raise it).
    pub delivery_count: u32,
    /// Unix milliseconds before which it must not run; 0 = now.
    pub not_before_ms: u64,
    /// Unix milliseconds after which the current attempt has timed out; 0 = none.
    pub deadline_ms: u64,
    /// Seconds a single attempt may run; `None` keeps the plugin's default.
    pub timeout_secs: Option<f64>,
    /// Retry overrides.
    pub retry: RetryOverride,
    /// Where to send the result, if anywhere. Boxed, as the trace context: most tasks
    /// have neither, and the control plane keeps thousands of envelopes and copies one
    /// per hand-out (on the wire, the same as unboxed).
    pub callback: Option<Box<Callback>>,
    /// Trace context, if any.
    pub trace: Option<Box<TraceContext>>,
    /// Milliseconds to hold the task, counted from when the control plane accepts it
    /// (on its clock, so neither the client's clock nor the time in transit shifts
    /// it); 0 = none. Combines with `not_before_ms`: the later of the two wins.
    pub countdown_ms: u64,
    /// The arguments (frame).
    #[serde(skip)]
    pub payload: Bytes,
}

impl TaskEnvelope {
    /// A new envelope for `name` with `payload`, normal priority, first attempt.
    pub fn new(name: impl Into<String>, codec: Codec, payload: impl Into<Bytes>) -> Self {
        TaskEnvelope {
            id: TaskId::new(),
            name: name.into(),
            codec,
            priority: Priority::Normal,
            attempt: 1,
            delivery_count: 0,
            not_before_ms: 0,
            deadline_ms: 0,
            timeout_secs: None,
            retry: RetryOverride::default(),
            callback: None,
            trace: None,
            countdown_ms: 0,
            payload: payload.into(),
        }
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TaskStatus {
    /// Received, not yet queued.
    Pending,
    /// Waiting for its countdown / eta.
    Scheduled,
    /// In a priority queue.
    Queued,
    /// Handed to a worker.
    Assigned,
    /// The worker started it.
    Running,
    /// Finished with a value. Final.
    Success,
    /// Finished with an error and no retries left. Final.
    Failure,
    /// Failed; will be queued again after its retry delay.
    Retrying,
    /// Cancelled. Final.
    Cancelled,
}

impl TaskStatus {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Scheduled => "scheduled",
            TaskStatus::Queued => "queued",
            TaskStatus::Assigned => "assigned",
            TaskStatus::Running => "running",
            TaskStatus::Success => "success",
            TaskStatus::Failure => "failure",
            TaskStatus::Retrying => "retrying",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    /// Success, failure and cancelled are final.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Success | TaskStatus::Failure | TaskStatus::Cancelled
        )
    }
}

/// What is known about a task: its status and, once final, its outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskRecord {
    /// Its id.
    pub task_id: TaskId,
    /// Its name.
    pub name: String,
    /// Where it is.
    pub status: TaskStatus,
    /// The codec of `value`.
    pub codec: Codec,
    /// The error, for failure and cancelled.
    pub error: Option<TaskError>,
    /// The worker that ran (or is running) it.
    pub worker_id: Option<WorkerId>,
    /// Attempts made so far.
    pub attempts: u32,
    /// Deliveries to workers so far.
    pub delivery_count: u32,
    /// Unix ms when it was submitted.
    pub submitted_ms: u64,
    /// Unix ms when its last attempt started.
    pub started_ms: Option<u64>,
    /// Unix ms when it reached a final status.
    pub completed_ms: Option<u64>,
    /// The encoded result, for success (frame).
    #[serde(skip)]
    pub value: Bytes,
}

/// How a finished attempt ended, as a worker reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AttemptResult {
    /// The task returned a value (in the outcome's `value` frame).
    Success,
    /// The task failed.
    Failure(TaskError),
}

/// A worker's report on one attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskOutcome {
    /// The task.
    pub task_id: TaskId,
    /// The delivery it answers (so a stale report after a re-delivery is ignored).
    pub delivery_count: u32,
    /// The lease of the assignment it answers: without the right one it is ignored.
    pub lease: LeaseToken,
    /// How it ended.
    pub result: AttemptResult,
    /// Unix ms it started.
    pub started_ms: u64,
    /// Unix ms it ended.
    pub completed_ms: u64,
    /// The encoded value, for success (frame).
    #[serde(skip)]
    pub value: Bytes,
}

impl TaskOutcome {
    /// Turns a success whose value is over `max_payload` bytes into a failure that
    /// says so: such a result is never sent on or stored.
    pub fn cap_value(&mut self, max_payload: u64) {
        let size = self.value.len() as u64;
        if size > max_payload && self.result == AttemptResult::Success {
            self.result = AttemptResult::Failure(TaskError::new(
                crate::task_error::ErrorKind::Failed,
                format!(
                    "the result is {size} bytes, over the limit of {max_payload} bytes (--max-payload-size)"
                ),
            ));
            self.value = Bytes::new();
        }
    }
}

/// A task a worker serves, with the defaults its plugin declares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskSpec {
    /// The task name.
    pub name: String,
    /// Default retries after a failure.
    pub max_retries: u32,
    /// Default first retry delay, seconds.
    pub retry_delay_secs: f64,
    /// Default backoff multiplier.
    pub retry_backoff: f64,
    /// Default cap on the retry delay, seconds.
    pub retry_backoff_max_secs: f64,
    /// Default timeout of one attempt, seconds.
    pub timeout_secs: Option<f64>,
    /// The periodic schedule the plugin declares, if any.
    pub periodic: Option<PeriodicSpec>,
    /// The plugin's priority for the task: what its periodic runs are queued at.
    pub priority: Priority,
    /// The first paragraph of the task's doc comment, on one line ("" when it has none). Since
    /// version 2.
    #[serde(default)]
    pub doc: String,
    /// The task's signature as written, e.g. `(x: i64, y: i64) -> i64` ("" when
    /// unknown). Since version 2.
    #[serde(default)]
    pub signature: String,
}

/// A periodic schedule, as declared by a plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PeriodicSpec {
    /// Seconds between starts (first run at start-up); `None` for cron.
    pub interval_secs: Option<f64>,
    /// A 5-field cron expression; `None` for an interval.
    pub cron: Option<String>,
    /// How many runs in all, if limited.
    pub repeat_count: Option<u64>,
    /// No run after this Unix time (seconds), if limited.
    pub repeat_until_unix: Option<i64>,
}

/// What a subworker tells the control plane about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Registration {
    /// Its id.
    pub worker_id: WorkerId,
    /// The tasks it serves.
    pub tasks: Vec<TaskSpec>,
    /// How many tasks it runs at once (its credits).
    pub concurrency: u32,
    /// Its own status endpoint, if it bound one.
    pub address: Option<String>,
    /// Its process id, for people reading the dashboard (never trusted for anything).
    pub pid: u32,
    /// The secret from its last `Registered`, when it registers again under the same
    /// id (after a reconnect or a restart in place); `None` the first time.
    pub secret: Option<WorkerSecret>,
    /// Tasks it is still running from before a reconnect, each with its lease.
    pub running: Vec<RunningClaim>,
    /// The plugins it has loaded, for people (the dashboard). Since version 2.
    #[serde(default)]
    pub plugins: Vec<PluginInfo>,
    /// It takes prefetched tasks: it holds tasks past its `concurrency` in a queue of
    /// its own, starts them in priority order as slots free up, reads `Assigns` and
    /// reports `Report`. Set only toward a control plane whose `Welcome` has the
    /// feature `prefetch`. Since version 2.
    /// Last in the struct, and must stay last: left out when false, it would shift any
    /// field after it in version 4's arrays (docs/PROTOCOL.md §0.4).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prefetch: bool,
}

/// A plugin a subworker has loaded, as it reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PluginInfo {
    /// The plugin's name.
    pub name: String,
    /// Its crate version.
    pub version: String,
    /// The first 8 hex digits of its file's hash.
    pub build: String,
    /// The file it was loaded from.
    pub path: String,
    /// The tasks it serves.
    pub tasks: Vec<String>,
}

/// A reconnecting worker's claim that it still runs a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunningClaim {
    /// The task.
    pub task_id: TaskId,
    /// The lease it was handed with.
    pub lease: LeaseToken,
}

/// How a cancel request ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CancelOutcome {
    /// It had not started; it never will.
    Cancelled,
    /// It is running; its worker was told to stop.
    Signalled,
    /// It had already finished with this status.
    AlreadyFinished(TaskStatus),
    /// No such task is known.
    NotFound,
}

/// Where a control plane can be reached (the discovery answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Announcement {
    /// The control plane's id.
    pub control_plane_id: String,
    /// Where clients and subworkers connect.
    pub base_address: String,
    /// The extra endpoint for subworkers, if any.
    pub subworker_address: Option<String>,
    /// Its protocol version.
    pub protocol_version: u8,
}

/// Everything sent to a control plane (and to a subworker's status endpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ToControlPlane {
    /// Must come first on a connection.
    Hello(Hello),
    /// Submit one task. With `wait`, the result is pushed back when final.
    Submit {
        /// Echoed in the answer.
        request_id: u64,
        /// The task.
        task: TaskEnvelope,
        /// Push the result when final.
        wait: bool,
    },
    /// Submit many tasks, accepted all or none.
    SubmitBatch {
        /// Echoed in the answer.
        request_id: u64,
        /// The tasks.
        tasks: Vec<TaskEnvelope>,
        /// Push each result when final.
        wait: bool,
    },
    /// Ask for a task's record; with `wait`, answer only once it is final.
    Status {
        /// Echoed in the answer.
        request_id: u64,
        /// The task.
        task_id: TaskId,
        /// Answer when final rather than now.
        wait: bool,
    },
    /// Cancel a task.
    Cancel {
        /// Echoed in the answer.
        request_id: u64,
        /// The task.
        task_id: TaskId,
    },
    /// A subworker offers its tasks and slots.
    Register(Registration),
    /// A subworker is alive; what it is doing.
    Heartbeat {
        /// Tasks it is running.
        running: u32,
        /// Slots free.
        free_slots: u32,
    },
    /// A subworker's report on one attempt.
    Outcome(TaskOutcome),
    /// A subworker's task list changed (plugin reload).
    TasksChanged {
        /// The tasks it serves now.
        tasks: Vec<TaskSpec>,
    },
    /// A subworker takes no more tasks (it is shutting down or restarting).
    Draining,
    /// A subworker leaves.
    Unregister,
    /// Liveness check; answered with `Pong`.
    Ping {
        /// Echoed.
        nonce: u64,
    },
    /// Where is the control plane? Answered with `Announce`.
    Discover,
    /// A subworker's plugin changed (reloaded, retired, or a new file rejected), for
    /// the control plane's log and event stream.
    PluginEvent(PluginEvent),
    /// List the dead-lettered tasks. Answered with `DeadLetterList`.
    DeadLetters {
        /// Echoed in the answer.
        request_id: u64,
    },
    /// Queue a dead-lettered task again (fresh attempts and deliveries, same id).
    /// Answered with `Accepted` or `Rejected`.
    Replay {
        /// Echoed in the answer.
        request_id: u64,
        /// The task.
        task_id: TaskId,
    },
    /// A drained subworker is about to restart in place (same worker id): keep its
    /// entry, so the tasks it serves stay known and queue, until it registers again
    /// (or stays away longer than the inactivity limit).
    Restarting,
    /// The control plane's recent events (at most the last 1,000), oldest first.
    /// Answered with `EventList`.
    Events {
        /// Echoed in the answer.
        request_id: u64,
    },
    /// What the cluster serves: every task name a connected worker declares, with its
    /// doc, signature and defaults, and the workers that serve it. Answered with
    /// `TaskList`. Since version 2.
    Tasks {
        /// Echoed in the answer.
        request_id: u64,
    },
    /// The tasks waiting to run (queued, scheduled or retrying; not running), in the
    /// order they would run, that `filter` selects. Answered with `QueuedList`.
    /// Since version 2.
    Queued {
        /// Echoed in the answer.
        request_id: u64,
        /// Which tasks, and how many at most.
        filter: QueueFilter,
    },
    /// Cancels every waiting task that `filter` selects (running ones are left
    /// alone): they end `cancelled`. Answered with `Purged`. Since version 2.
    Purge {
        /// Echoed in the answer.
        request_id: u64,
        /// Which tasks (`limit` is ignored: all of them).
        filter: QueueFilter,
    },
    /// Several outcomes reported at once, each as an `Outcome` would be, its value in
    /// a frame of its own (in order). Sent only to a control plane whose `Welcome` has
    /// the feature `outcomes-batch`. Since version 2.
    Outcomes {
        /// The outcomes (their values travel in the frames after the header).
        outcomes: Vec<TaskOutcome>,
    },
    /// What a subworker that takes prefetched tasks has to say, all at once: the
    /// prefetched tasks it started since its last report, then the outcomes ready now
    /// (their values in frames of their own, in order), and how long its plugin calls
    /// take (so the control plane sizes its window by task name). Sent only by a
    /// subworker that registered with `prefetch`. Since version 2.
    Report {
        /// Prefetched tasks it started, in the order they started.
        started: Vec<TaskId>,
        /// Outcomes, each as an `Outcome` would be.
        outcomes: Vec<TaskOutcome>,
        /// For each task name that ran since its last report: the mean run time of
        /// its recent plugin calls, in nanoseconds.
        run_ns: std::collections::BTreeMap<String, u64>,
        /// Tasks it hands back without having started them (its slots are stuck on
        /// long tasks, it is draining, or it was paused): the control plane queues
        /// them again in their places, for any worker.
        /// Last in the variant, and must stay last: left out when empty, it would
        /// shift any field after it in version 4's arrays (docs/PROTOCOL.md §0.4).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        returned: Vec<TaskId>,
    },
}

/// Which waiting tasks a `Queued` or `Purge` request means.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueFilter {
    /// Only tasks of this name.
    pub name: Option<String>,
    /// Only tasks of this priority.
    pub priority: Option<Priority>,
    /// At most this many in the answer (0: the control plane's maximum, 10,000).
    pub limit: u32,
}

impl QueueFilter {
    /// Every waiting task (up to the maximum).
    pub fn all() -> Self {
        QueueFilter::default()
    }

    /// Does it select a task named `name` at `priority`?
    pub fn selects(&self, name: &str, priority: Priority) -> bool {
        self.name.as_deref().is_none_or(|n| n == name)
            && self.priority.is_none_or(|p| p == priority)
    }
}

/// A task waiting to run, as `QueuedList` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueuedTask {
    /// Its record (status `queued`, `scheduled` or `retrying`; no value).
    pub record: TaskRecord,
    /// Its priority.
    pub priority: Priority,
    /// Unix ms before which it does not run (0: as soon as a worker is free).
    pub not_before_ms: u64,
}

impl QueuedTask {
    /// `record`, waiting at `priority` until `not_before_ms`.
    pub fn new(record: TaskRecord, priority: Priority, not_before_ms: u64) -> Self {
        QueuedTask {
            record,
            priority,
            not_before_ms,
        }
    }
}

/// What happened to a plugin file on a subworker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PluginEvent {
    /// `reloaded`, `retired` or `rejected`.
    pub kind: String,
    /// The plugin's name ("" when the file did not load).
    pub plugin: String,
    /// The file.
    pub path: String,
    /// The version it replaced or retired.
    pub old_version: Option<String>,
    /// The version now serving.
    pub new_version: Option<String>,
    /// One line for people.
    pub message: String,
    /// The build it replaced or retired (8 hex digits of its file's hash). Since
    /// version 2.
    #[serde(default)]
    pub old_build: Option<String>,
    /// The build now serving. Since version 2.
    #[serde(default)]
    pub new_build: Option<String>,
    /// The tasks the new build serves. Since version 2.
    #[serde(default)]
    pub tasks: Vec<String>,
}

/// Everything a control plane sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FromControlPlane {
    /// The handshake succeeded.
    Welcome(Welcome),
    /// The handshake (or a message before it) was refused.
    Refused {
        /// Why.
        reason: String,
    },
    /// Tasks accepted (in submission order).
    Accepted {
        /// The request answered.
        request_id: u64,
        /// Their ids.
        task_ids: Vec<TaskId>,
    },
    /// A request was refused; nothing was accepted.
    Rejected {
        /// The request answered (0 when it could not be read).
        request_id: u64,
        /// Why.
        error: TaskError,
    },
    /// A task's final record, pushed to whoever waits for it.
    Result(TaskRecord),
    /// The answer to `Status`.
    StatusReply {
        /// The request answered.
        request_id: u64,
        /// The record, if the task is known.
        record: Option<TaskRecord>,
    },
    /// The answer to `Cancel`.
    CancelReply {
        /// The request answered.
        request_id: u64,
        /// What happened.
        outcome: CancelOutcome,
    },
    /// Run this task (to a subworker), under this lease.
    Assign {
        /// The task.
        task: TaskEnvelope,
        /// The lease its outcome must carry.
        lease: LeaseToken,
        /// The control plane's epoch: raised at every start on a data directory (0
        /// without one). A subworker refuses an assignment of an older epoch than
        /// one it has seen (it comes from a control plane that was replaced).
        epoch: u64,
    },
    /// Stop this running task (to a subworker).
    CancelTask {
        /// The task.
        task_id: TaskId,
    },
    /// Answer to a heartbeat: the control plane is alive.
    HeartbeatAck,
    /// Answer to `Ping`.
    Pong {
        /// Echoed.
        nonce: u64,
    },
    /// Where the control plane is (answer to `Discover`, and every 2 s).
    Announce(Announcement),
    /// The answer to `DeadLetters`: their records (without values), oldest first.
    DeadLetterList {
        /// The request answered.
        request_id: u64,
        /// The dead-lettered tasks.
        records: Vec<TaskRecord>,
    },
    /// The answer to `Events`: the control plane's recent events, oldest first.
    EventList {
        /// The request answered.
        request_id: u64,
        /// The events.
        events: Vec<Event>,
    },
    /// The answer to `Register`: the subworker is in, and this is its secret for
    /// registering again under the same id.
    Registered {
        /// Keep it; show it in the next `Registration`.
        secret: WorkerSecret,
    },
    /// The answer to `Tasks`, sorted by name. Since version 2.
    TaskList {
        /// The request answered.
        request_id: u64,
        /// What the cluster serves.
        tasks: Vec<ServedTask>,
    },
    /// The answer to `Queued`: the waiting tasks in the order they would run.
    /// Since version 2.
    QueuedList {
        /// The request answered.
        request_id: u64,
        /// The tasks (at most the filter's limit).
        tasks: Vec<QueuedTask>,
        /// How many the filter selects in all.
        total: u64,
    },
    /// Several final records pushed at once, in the order they became final: each
    /// as a `Result` would be, its value in a frame of its own (one per record, in
    /// order). Sent only to a peer whose `Hello` has the feature `results-batch`, when
    /// more than one result for it is ready at once. Since version 2.
    Results {
        /// The records (their values travel in the frames after the header).
        records: Vec<TaskRecord>,
    },
    /// The answer to `Purge`: how many tasks it cancelled, and the ids of the first
    /// of them (at most 10,000, so the answer stays small). Since version 2.
    Purged {
        /// The request answered.
        request_id: u64,
        /// How many it cancelled.
        total: u64,
        /// The first of them, in run order.
        task_ids: Vec<TaskId>,
    },
    /// Several tasks to run (to a subworker that registered with `prefetch`), each
    /// under its lease, the payloads in frames of their own (in order). Since version 2.
    Assigns {
        /// The tasks, in the order they were handed out.
        assignments: Vec<Assignment>,
        /// The control plane's epoch, as in `Assign`.
        epoch: u64,
    },
}

/// One task handed to a subworker that takes prefetched tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Assignment {
    /// The task.
    pub task: TaskEnvelope,
    /// The lease its outcome must carry.
    pub lease: LeaseToken,
    /// Handed out beyond the subworker's free slots: it waits in the subworker's
    /// queue, and the subworker reports it in `Report.started` when it starts. A task
    /// that is not prefetched starts at once (the control plane counted a free slot).
    pub prefetched: bool,
}

impl Assignment {
    /// `task` under `lease`.
    pub fn new(task: TaskEnvelope, lease: LeaseToken, prefetched: bool) -> Self {
        Assignment {
            task,
            lease,
            prefetched,
        }
    }
}

/// A task a cluster serves, and who serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServedTask {
    /// The task, as the first of its workers (by id) declares it.
    pub spec: TaskSpec,
    /// The workers that serve it, by id.
    pub workers: Vec<WorkerId>,
}

impl ServedTask {
    /// `spec`, served by `workers`.
    pub fn new(spec: TaskSpec, workers: Vec<WorkerId>) -> Self {
        ServedTask { spec, workers }
    }
}

/// Something that happened on the control plane or a subworker (a plugin reloaded,
/// retired or rejected; a subworker registered, restarting or lost).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Event {
    /// Unix ms.
    pub at_ms: u64,
    /// Dotted kind, e.g. `plugin.reloaded`, `worker.registered`.
    pub kind: String,
    /// Who it concerns (a worker id).
    pub subject: String,
    /// One line for people.
    pub message: String,
}

// Constructors. Every struct here is `#[non_exhaustive]`, so that a field can be added
// without breaking code outside this crate: such code builds a value with one of these
// and then sets the public fields it wants.

impl Hello {
    /// A `Hello` from a peer of `peer_kind` called `peer_id`, speaking this process's
    /// versions: `protocol_version` is the oldest ([`crate::MIN_PROTOCOL_VERSION`], the
    /// version a `Hello` is written in) and the `protocol-max=N` feature the newest
    /// ([`crate::max_version`]).
    pub fn new(peer_kind: PeerKind, peer_id: impl Into<String>) -> Self {
        Hello {
            protocol_version: crate::MIN_PROTOCOL_VERSION,
            peer_kind,
            peer_id: peer_id.into(),
            features: vec![format!(
                "{}{}",
                crate::PROTOCOL_MAX_FEATURE,
                crate::max_version()
            )],
        }
    }

    /// The versions the sender speaks, oldest and newest (a `Hello` without the
    /// `protocol-max=N` feature, from a version-1 build, speaks only its own).
    pub fn versions(&self) -> (u8, u8) {
        let newest = self
            .features
            .iter()
            .find_map(|f| {
                f.strip_prefix(crate::PROTOCOL_MAX_FEATURE)?
                    .parse::<u8>()
                    .ok()
            })
            .unwrap_or(self.protocol_version);
        (self.protocol_version, newest.max(self.protocol_version))
    }
}

impl Welcome {
    /// The control plane `control_plane_id`'s answer, in protocol `protocol_version`.
    pub fn new(protocol_version: u8, control_plane_id: impl Into<String>) -> Self {
        Welcome {
            protocol_version,
            control_plane_id: control_plane_id.into(),
            features: Vec::new(),
        }
    }
}

impl Callback {
    /// Send the result to `address` with `data`.
    pub fn new(address: impl Into<String>, data: impl Into<String>) -> Self {
        Callback {
            address: address.into(),
            data: data.into(),
        }
    }
}

impl TraceContext {
    /// A W3C trace context.
    pub fn new(traceparent: impl Into<String>, tracestate: impl Into<String>) -> Self {
        TraceContext {
            traceparent: traceparent.into(),
            tracestate: tracestate.into(),
        }
    }

    /// The trace id (32 lower-case hex digits) of a well-formed `traceparent`
    /// (`version-traceid-parentid-flags`), else `None`.
    pub fn trace_id(&self) -> Option<&str> {
        let mut parts = self.traceparent.split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        (hex(version, 2)
            && hex(trace, 32)
            && hex(parent, 16)
            && hex(flags, 2)
            && trace.bytes().any(|b| b != b'0'))
        .then_some(trace)
    }
}

impl TaskRecord {
    /// A record of `task_id` called `name` in `status`, with nothing else known yet.
    pub fn new(task_id: TaskId, name: impl Into<String>, status: TaskStatus, codec: Codec) -> Self {
        TaskRecord {
            task_id,
            name: name.into(),
            status,
            codec,
            error: None,
            worker_id: None,
            attempts: 0,
            delivery_count: 0,
            submitted_ms: 0,
            started_ms: None,
            completed_ms: None,
            value: Bytes::new(),
        }
    }
}

impl TaskOutcome {
    /// A report on delivery `delivery_count` of `task_id`, under `lease`.
    pub fn new(
        task_id: TaskId,
        delivery_count: u32,
        lease: LeaseToken,
        result: AttemptResult,
    ) -> Self {
        TaskOutcome {
            task_id,
            delivery_count,
            lease,
            result,
            started_ms: 0,
            completed_ms: 0,
            value: Bytes::new(),
        }
    }
}

impl TaskSpec {
    /// Task `name` with no retries, no timeout, no schedule, normal priority.
    pub fn new(name: impl Into<String>) -> Self {
        TaskSpec {
            name: name.into(),
            max_retries: 0,
            retry_delay_secs: 0.0,
            retry_backoff: 1.0,
            retry_backoff_max_secs: 0.0,
            timeout_secs: None,
            periodic: None,
            priority: Priority::Normal,
            doc: String::new(),
            signature: String::new(),
        }
    }
}

impl PeriodicSpec {
    /// Every `secs` seconds.
    pub fn interval(secs: f64) -> Self {
        PeriodicSpec {
            interval_secs: Some(secs),
            cron: None,
            repeat_count: None,
            repeat_until_unix: None,
        }
    }

    /// On a 5-field cron expression.
    pub fn cron(expression: impl Into<String>) -> Self {
        PeriodicSpec {
            interval_secs: None,
            cron: Some(expression.into()),
            repeat_count: None,
            repeat_until_unix: None,
        }
    }
}

impl Registration {
    /// Worker `worker_id` serving `tasks` with `concurrency` slots, registering for
    /// the first time (no secret, nothing running).
    pub fn new(worker_id: WorkerId, tasks: Vec<TaskSpec>, concurrency: u32) -> Self {
        Registration {
            worker_id,
            tasks,
            concurrency,
            address: None,
            pid: std::process::id(),
            secret: None,
            running: Vec::new(),
            plugins: Vec::new(),
            prefetch: false,
        }
    }
}

impl PluginInfo {
    /// Plugin `name` at `version`, build `build`, loaded from `path`, serving `tasks`.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        build: impl Into<String>,
        path: impl Into<String>,
        tasks: Vec<String>,
    ) -> Self {
        PluginInfo {
            name: name.into(),
            version: version.into(),
            build: build.into(),
            path: path.into(),
            tasks,
        }
    }
}

impl RunningClaim {
    /// A claim that `task_id` still runs under `lease`.
    pub fn new(task_id: TaskId, lease: LeaseToken) -> Self {
        RunningClaim { task_id, lease }
    }
}

impl Announcement {
    /// Control plane `control_plane_id`, reachable at `base_address`.
    pub fn new(control_plane_id: impl Into<String>, base_address: impl Into<String>) -> Self {
        Announcement {
            control_plane_id: control_plane_id.into(),
            base_address: base_address.into(),
            subworker_address: None,
            protocol_version: crate::max_version(),
        }
    }
}

impl PluginEvent {
    /// `kind` (`reloaded`, `retired` or `rejected`) happened to `plugin` from `path`.
    pub fn new(
        kind: impl Into<String>,
        plugin: impl Into<String>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        PluginEvent {
            kind: kind.into(),
            plugin: plugin.into(),
            path: path.into(),
            old_version: None,
            new_version: None,
            message: message.into(),
            old_build: None,
            new_build: None,
            tasks: Vec::new(),
        }
    }
}

impl Event {
    /// `kind` happened to `subject` at `at_ms`.
    pub fn new(
        at_ms: u64,
        kind: impl Into<String>,
        subject: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Event {
            at_ms,
            kind: kind.into(),
            subject: subject.into(),
            message: message.into(),
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;

    /// `critical`, `high`, `normal` or `low`, in any case.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| format!("unknown priority `{text}` (critical, high, normal or low)"))
    }
}
