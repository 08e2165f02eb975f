//! # fastworker-client
//!
//! The async Rust client of fastworker: [`Client`] submits tasks (one or a batch, all
//! or none), waits for results, reads status, cancels, lists and replays dead letters,
//! reads recent events, and calls a task with typed arguments ([`Client::call`]);
//! [`discover`] asks a discovery endpoint where the control plane is.
//!
//! ```no_run
//! # async fn demo() -> Result<(), fastworker_client::ClientError> {
//! use std::time::Duration;
//! let client = fastworker_client::Client::discover("tcp://127.0.0.1:5550", Duration::from_secs(5)).await?;
//! let sum: i64 = client.call("add", &(5i64, 3i64)).await?;
//! assert_eq!(sum, 8);
//! # Ok(()) }
//! ```
//!
//! The wire types are in [`protocol`] (the `fastworker-protocol` crate); the
//! connection and the cluster key in [`transport`] (`fastworker-transport`).
//! This crate has no plugin loader, no command line and no file watching in its
//! dependency tree.
//!
//! One connection (a DEALER) carries every request; replies are matched to requests by
//! request id and results to tasks by task id, so any number of concurrent calls on
//! one client each get their own answer.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

pub mod propagation;

pub use fastworker_protocol as protocol;
pub use fastworker_transport as transport;
pub use fastworker_transport::{auth::ClusterKey, TransportConfig};

use protocol::{
    Announcement, CancelOutcome, Codec, FromControlPlane, Hello, PeerKind, TaskEnvelope, TaskError,
    TaskId, TaskRecord, TaskStatus, ToControlPlane,
};
use transport::TransportError;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The control plane could not be reached, or refused the cluster key.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The control plane refused the connection.
    #[error("the control plane refused the connection: {0}")]
    Refused(String),
    /// The control plane refused the request.
    #[error("{0}")]
    Rejected(TaskError),
    /// The task ended without success.
    #[error("{}", failure_line(.id, .status, .error))]
    TaskFailed {
        /// The task.
        id: TaskId,
        /// Its final status.
        status: TaskStatus,
        /// Its error.
        error: TaskError,
    },
    /// No answer in time.
    #[error("no answer from the control plane within {0:?}")]
    Timeout(Duration),
    /// The task was accepted but was not final when the wait ended; it keeps its
    /// place and runs (follow it by its id).
    #[error("task {id} is not finished after {waited:?}")]
    NotFinal {
        /// The task.
        id: TaskId,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The control plane's protocol version does not have this request.
    #[error("{0}")]
    Unsupported(String),
    /// The connection closed before the answer came.
    #[error("the connection to the control plane closed")]
    Disconnected,
    /// A payload did not encode or decode.
    #[error("payload: {0}")]
    Codec(#[from] protocol::codec::CodecError),
    /// The control plane answered something unexpected.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// The client's own settings are unusable (an unreadable key file, say).
    #[error("{0}")]
    Settings(String),
    /// The request is larger than one message may be; nothing was sent.
    #[error("the request is {size} bytes, over the limit of {limit} bytes for one message (--max-message-size); split the batch or send smaller payloads")]
    TooLarge {
        /// Its encoded size.
        size: u64,
        /// The limit.
        limit: u64,
    },
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<FromControlPlane>>>;
type Waiting = Mutex<HashMap<TaskId, oneshot::Sender<TaskRecord>>>;

struct Shared {
    next_request: AtomicU64,
    pending: Pending,
    waiting: Waiting,
    /// Bumped (under the `pending` lock) each time a connection is lost; a queued
    /// message from an older epoch belongs to a caller already told `Disconnected`.
    epoch: AtomicU64,
    /// The protocol version the last `Welcome` agreed on (the oldest until then).
    version: AtomicU8,
}

/// A message queued for the connection task, with the epoch it was queued in.
type Outgoing = (u64, Vec<Bytes>);

impl Shared {
    /// Nothing pending, first epoch, the oldest version until a `Welcome` says.
    fn new() -> Self {
        Shared {
            next_request: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            version: AtomicU8::new(protocol::MIN_PROTOCOL_VERSION),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connection to a control plane.
#[derive(Clone)]
pub struct Client {
    outgoing: mpsc::UnboundedSender<Outgoing>,
    shared: Arc<Shared>,
    control_plane_id: String,
    timeout: Duration,
    /// The longest message this client sends: its own limit, or the control plane's
    /// when that is lower.
    max_message: u64,
}

/// Asks the discovery endpoint where the control plane is.
pub async fn discover(
    discovery_address: &str,
    timeout: Duration,
    config: &TransportConfig,
) -> Result<Announcement, ClientError> {
    let mut conn = transport::connect(discovery_address, timeout, config).await?;
    let frames = protocol::encode_as(protocol::MIN_PROTOCOL_VERSION, &ToControlPlane::Discover)
        .map_err(|e| ClientError::Unexpected(e.to_string()))?;
    conn.sender.send(frames).await?;
    let answer = tokio::time::timeout(timeout, async {
        loop {
            let frames = conn.receiver.recv().await?;
            match protocol::decode::<FromControlPlane>(&frames) {
                Ok(FromControlPlane::Announce(a)) => return Ok(a),
                Ok(FromControlPlane::Refused { reason }) => {
                    return Err(ClientError::Refused(protocol::for_people(&reason, 1024)))
                }
                Ok(other) => debug!("discovery: ignoring {other:?}"),
                Err(e) => return Err(ClientError::Unexpected(e.to_string())),
            }
        }
    })
    .await;
    answer.map_err(|_| ClientError::Timeout(timeout))?
}

impl Client {
    /// Connects to the control plane at `address` (no cluster key, default limits) and
    /// says hello; waits at most `timeout`.
    pub async fn connect(address: &str, timeout: Duration) -> Result<Client, ClientError> {
        Client::connect_with(address, timeout, &TransportConfig::default()).await
    }

    /// Connects to the control plane at `address` with `config` (its cluster key and
    /// limits) and says hello; waits at most `timeout`.
    pub async fn connect_with(
        address: &str,
        timeout: Duration,
        config: &TransportConfig,
    ) -> Result<Client, ClientError> {
        let conn = transport::connect(address, timeout, config).await?;
        let shared = Arc::new(Shared::new());
        let mut hello = Hello::new(PeerKind::Client, format!("client-{}", std::process::id()));
        // This client reads `Results`: the control plane may group the results it pushes.
        // A task it submits and waits for is answered by its result: no `Accepted`.
        hello.features.extend([
            protocol::RESULTS_BATCH_FEATURE.to_string(),
            protocol::ACCEPTED_BY_RESULT_FEATURE.to_string(),
        ]);
        let hello = protocol::encode_as(
            protocol::MIN_PROTOCOL_VERSION,
            &ToControlPlane::Hello(hello),
        )
        .map_err(|e| ClientError::Unexpected(e.to_string()))?;
        let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
        let (welcome_tx, welcome_rx) = oneshot::channel();
        lock(&shared.pending).insert(0, welcome_tx);
        tokio::spawn(run_connection(
            address.to_string(),
            timeout,
            config.clone(),
            conn,
            hello,
            rx,
            shared.clone(),
        ));
        let welcome = tokio::time::timeout(timeout, welcome_rx)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .map_err(|_| ClientError::Disconnected)?;
        let mut max_message = config.max_message_bytes;
        let control_plane_id = match welcome {
            FromControlPlane::Welcome(w) => {
                for feature in &w.features {
                    if let Some(n) = feature
                        .strip_prefix("max-message-size=")
                        .and_then(|n| n.parse::<u64>().ok())
                    {
                        max_message = max_message.min(n);
                    }
                }
                w.control_plane_id
            }
            FromControlPlane::Refused { reason } => {
                return Err(ClientError::Refused(protocol::for_people(&reason, 1024)))
            }
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        };
        Ok(Client {
            outgoing: tx,
            shared,
            control_plane_id,
            timeout,
            max_message,
        })
    }

    /// Finds the control plane through `discovery_address`, then connects (no cluster
    /// key, default limits).
    pub async fn discover(
        discovery_address: &str,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        Client::discover_with(discovery_address, timeout, &TransportConfig::default()).await
    }

    /// Finds the control plane through `discovery_address`, then connects, both with
    /// `config`.
    pub async fn discover_with(
        discovery_address: &str,
        timeout: Duration,
        config: &TransportConfig,
    ) -> Result<Client, ClientError> {
        let announcement = discover(discovery_address, timeout, config).await?;
        Client::connect_with(&announcement.base_address, timeout, config).await
    }

    /// The id of the control plane this client talks to.
    pub fn control_plane_id(&self) -> &str {
        &self.control_plane_id
    }

    async fn request(
        &self,
        make: impl FnOnce(u64) -> ToControlPlane,
    ) -> Result<FromControlPlane, ClientError> {
        self.request_within(self.timeout, make).await
    }

    async fn request_within(
        &self,
        limit: Duration,
        make: impl FnOnce(u64) -> ToControlPlane,
    ) -> Result<FromControlPlane, ClientError> {
        let mut request = self.send_request(make)?;
        match tokio::time::timeout(limit, &mut request.answer).await {
            Ok(Ok(FromControlPlane::Rejected { error, .. })) => Err(ClientError::Rejected(error)),
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(ClientError::Disconnected),
            Err(_) => Err(ClientError::Timeout(limit)),
        }
    }

    /// Sends the request `make` builds with a fresh request id; its answer arrives on
    /// the returned [`Request`].
    fn send_request(
        &self,
        make: impl FnOnce(u64) -> ToControlPlane,
    ) -> Result<Request<'_>, ClientError> {
        let id = self.shared.next_request.fetch_add(1, Ordering::Relaxed);
        let version = self.shared.version.load(Ordering::SeqCst);
        let frames = protocol::encode_as(version, &make(id))
            .map_err(|e| ClientError::Unexpected(e.to_string()))?;
        // What the transport counts: every frame's bytes plus its per-frame overhead.
        let size: u64 = frames
            .iter()
            .map(|f| f.len() as u64 + transport::zmtp::FRAME_OVERHEAD)
            .sum();
        if size > self.max_message + transport::zmtp::FRAME_OVERHEAD {
            return Err(ClientError::TooLarge {
                size,
                limit: self.max_message,
            });
        }
        let (tx, rx) = oneshot::channel();
        let epoch = {
            let mut pending = lock(&self.shared.pending);
            pending.insert(id, tx);
            self.shared.epoch.load(Ordering::SeqCst)
        };
        let request = Request {
            shared: &self.shared,
            id,
            answer: rx,
        };
        if self.outgoing.send((epoch, frames)).is_err() {
            return Err(ClientError::Disconnected);
        }
        Ok(request)
    }

    /// Submits `tasks` (with `wait`: their results are pushed when final) and waits
    /// for `Accepted`. A lone task waited for goes as a batch of one: the control plane
    /// answers a `Submit` with `wait` from this client by its result alone.
    async fn submit_many(
        &self,
        mut tasks: Vec<TaskEnvelope>,
        wait: bool,
    ) -> Result<Vec<TaskId>, ClientError> {
        continue_current_trace(&mut tasks);
        let answer = if tasks.len() == 1 && !wait {
            let task = tasks.into_iter().next().expect("one task");
            self.request(|request_id| ToControlPlane::Submit {
                request_id,
                task,
                wait,
            })
            .await?
        } else {
            self.request(|request_id| ToControlPlane::SubmitBatch {
                request_id,
                tasks,
                wait,
            })
            .await?
        };
        match answer {
            FromControlPlane::Accepted { task_ids, .. } => Ok(task_ids),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Submits a task and returns its id at once.
    pub async fn delay(&self, task: TaskEnvelope) -> Result<TaskId, ClientError> {
        self.submit_many(vec![task], false)
            .await?
            .first()
            .copied()
            .ok_or_else(|| ClientError::Unexpected("Accepted without a task id".into()))
    }

    /// Submits a task and waits (at most `wait`) for its final record. A task that did
    /// not succeed is an error.
    pub async fn submit(
        &self,
        task: TaskEnvelope,
        wait: Duration,
    ) -> Result<TaskRecord, ClientError> {
        into_success(self.submit_record(task, wait).await?)
    }

    /// Submits a task and waits (at most `wait`) for its final record, whatever its
    /// status.
    pub async fn submit_record(
        &self,
        task: TaskEnvelope,
        wait: Duration,
    ) -> Result<TaskRecord, ClientError> {
        let id = task.id;
        let mut task = task;
        // The task's span on the client, from submission to its final record; with a
        // tracing system installed, the task carries its context to the other
        // processes.
        let span = tracing::debug_span!(
            target: "fastworker::task",
            "task",
            task_id = %id,
            task_name = %task.name,
            trace_id = tracing::field::Empty,
        );
        if !span.is_disabled() {
            if task.trace.as_ref().and_then(|t| t.trace_id()).is_none() {
                task.trace = propagation::inject(&span).map(Box::new);
            }
            match task.trace.as_ref().and_then(|t| t.trace_id()) {
                Some(trace_id) => span.record("trace_id", tracing::field::display(trace_id)),
                None => span.record("trace_id", tracing::field::display(id.0.simple())),
            };
        }
        let submit_and_wait = async move {
            continue_current_trace(std::slice::from_mut(&mut task));
            let (tx, record) = oneshot::channel();
            lock(&self.shared.waiting).insert(id, tx);
            let answered = match self.send_request(|request_id| ToControlPlane::Submit {
                request_id,
                task,
                wait: true,
            }) {
                Ok(request) => tokio::time::timeout(wait, answer_by_result(request, record))
                    .await
                    .unwrap_or(Err(ClientError::NotFinal { id, waited: wait })),
                Err(err) => Err(err),
            };
            if answered.is_err() {
                lock(&self.shared.waiting).remove(&id);
            }
            answered
        };
        tracing::Instrument::instrument(submit_and_wait, span).await
    }

    /// Submits tasks in one message, accepted all or none; returns their ids.
    pub async fn submit_batch(&self, tasks: Vec<TaskEnvelope>) -> Result<Vec<TaskId>, ClientError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        self.submit_many(tasks, false).await
    }

    /// Submits tasks in one message (all or none) and waits for every final record,
    /// in submission order. Failed tasks come back as records, not errors.
    pub async fn submit_batch_wait(
        &self,
        tasks: Vec<TaskEnvelope>,
        wait: Duration,
    ) -> Result<Vec<TaskRecord>, ClientError> {
        let mut receivers = Vec::with_capacity(tasks.len());
        {
            let mut waiting = lock(&self.shared.waiting);
            for task in &tasks {
                let (tx, rx) = oneshot::channel();
                waiting.insert(task.id, tx);
                receivers.push((task.id, rx));
            }
        }
        let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
        if let Err(err) = self.submit_many(tasks, true).await {
            let mut waiting = lock(&self.shared.waiting);
            for id in ids {
                waiting.remove(&id);
            }
            return Err(err);
        }
        // One deadline for the whole batch, not `wait` per task.
        let deadline = tokio::time::Instant::now() + wait;
        let mut records = Vec::with_capacity(receivers.len());
        let mut receivers = receivers.into_iter();
        while let Some((id, rx)) = receivers.next() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.await_record(id, rx, left).await {
                Ok(record) => records.push(record),
                Err(err) => {
                    // Nobody waits for the rest any more.
                    let mut waiting = lock(&self.shared.waiting);
                    for (rest, _) in receivers {
                        waiting.remove(&rest);
                    }
                    return Err(match err {
                        ClientError::NotFinal { id, .. } => {
                            ClientError::NotFinal { id, waited: wait }
                        }
                        other => other,
                    });
                }
            }
        }
        Ok(records)
    }

    async fn await_record(
        &self,
        id: TaskId,
        rx: oneshot::Receiver<TaskRecord>,
        wait: Duration,
    ) -> Result<TaskRecord, ClientError> {
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(record)) => Ok(record),
            Ok(Err(_)) => Err(ClientError::Disconnected),
            Err(_) => {
                lock(&self.shared.waiting).remove(&id);
                Err(ClientError::NotFinal { id, waited: wait })
            }
        }
    }

    /// The task's record now (`None` if unknown or expired).
    pub async fn status(&self, task_id: TaskId) -> Result<Option<TaskRecord>, ClientError> {
        self.status_request(task_id, false, self.timeout).await
    }

    /// Waits (at most `wait`) until the task is final, then returns its record
    /// (`None` if the control plane does not know the task).
    pub async fn result(
        &self,
        task_id: TaskId,
        wait: Duration,
    ) -> Result<Option<TaskRecord>, ClientError> {
        match self.status_request(task_id, true, wait).await {
            Err(ClientError::Timeout(waited)) => Err(ClientError::NotFinal {
                id: task_id,
                waited,
            }),
            other => other,
        }
    }

    async fn status_request(
        &self,
        task_id: TaskId,
        wait: bool,
        limit: Duration,
    ) -> Result<Option<TaskRecord>, ClientError> {
        match self
            .request_within(limit, |request_id| ToControlPlane::Status {
                request_id,
                task_id,
                wait,
            })
            .await?
        {
            FromControlPlane::StatusReply { record, .. } => Ok(record),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Cancels a task.
    pub async fn cancel(&self, task_id: TaskId) -> Result<CancelOutcome, ClientError> {
        match self
            .request(|request_id| ToControlPlane::Cancel {
                request_id,
                task_id,
            })
            .await?
        {
            FromControlPlane::CancelReply { outcome, .. } => Ok(outcome),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The dead-lettered tasks, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<TaskRecord>, ClientError> {
        match self
            .request(|request_id| ToControlPlane::DeadLetters { request_id })
            .await?
        {
            FromControlPlane::DeadLetterList { records, .. } => Ok(records),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The control plane's recent events (plugin reloads, subworkers coming and going),
    /// oldest first.
    pub async fn events(&self) -> Result<Vec<protocol::Event>, ClientError> {
        match self
            .request(|request_id| ToControlPlane::Events { request_id })
            .await?
        {
            FromControlPlane::EventList { events, .. } => Ok(events),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Queues a dead-lettered task again (same id, fresh attempts and deliveries).
    pub async fn replay(&self, task_id: TaskId) -> Result<(), ClientError> {
        match self
            .request(|request_id| ToControlPlane::Replay {
                request_id,
                task_id,
            })
            .await?
        {
            FromControlPlane::Accepted { .. } => Ok(()),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// What the cluster serves: each task with its doc, signature and defaults, and the
    /// workers that serve it, sorted by name. Needs protocol version 2.
    pub async fn tasks(&self) -> Result<Vec<protocol::ServedTask>, ClientError> {
        self.require_version(2, "listing tasks")?;
        match self
            .request(|request_id| ToControlPlane::Tasks { request_id })
            .await?
        {
            FromControlPlane::TaskList { tasks, .. } => Ok(tasks),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The tasks waiting to run (queued, scheduled or retrying) that `filter` selects,
    /// in the order they would run, and how many it selects in all. Needs protocol
    /// version 2.
    pub async fn queued(
        &self,
        filter: protocol::QueueFilter,
    ) -> Result<(Vec<protocol::QueuedTask>, u64), ClientError> {
        self.require_version(2, "listing queued tasks")?;
        match self
            .request(|request_id| ToControlPlane::Queued { request_id, filter })
            .await?
        {
            FromControlPlane::QueuedList { tasks, total, .. } => Ok((tasks, total)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Cancels every waiting task `filter` selects (running ones are left alone);
    /// returns how many, and the ids of the first 10,000. Needs protocol version 2.
    /// Waits at least a minute: with a data directory, cancelling a deep queue is
    /// written to disk before the answer.
    pub async fn purge(
        &self,
        filter: protocol::QueueFilter,
    ) -> Result<(u64, Vec<TaskId>), ClientError> {
        self.require_version(2, "purging queued tasks")?;
        let limit = self.timeout.max(Duration::from_secs(60));
        match self
            .request_within(limit, |request_id| ToControlPlane::Purge {
                request_id,
                filter,
            })
            .await?
        {
            FromControlPlane::Purged {
                total, task_ids, ..
            } => Ok((total, task_ids)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// An error unless the connection agreed on protocol version `min` or later.
    fn require_version(&self, min: u8, what: &str) -> Result<(), ClientError> {
        let version = self.shared.version.load(Ordering::SeqCst);
        if version < min {
            return Err(ClientError::Unsupported(format!(
                "{what} needs protocol version {min}; this control plane speaks {version}"
            )));
        }
        Ok(())
    }

    /// Runs `name` with `args` (a tuple, encoded with bincode) and decodes its result.
    pub async fn call<A: Serialize, R: DeserializeOwned>(
        &self,
        name: &str,
        args: &A,
    ) -> Result<R, ClientError> {
        let payload = protocol::codec::encode(Codec::Bincode, args)?;
        let task = TaskEnvelope::new(name, Codec::Bincode, payload);
        let record = self
            .submit(task, self.timeout.max(Duration::from_secs(300)))
            .await?;
        decode_value(&record)
    }

    /// Submits `name` with `args` (bincode) without waiting; returns its id.
    pub async fn delay_call<A: Serialize>(
        &self,
        name: &str,
        args: &A,
    ) -> Result<TaskId, ClientError> {
        let payload = protocol::codec::encode(Codec::Bincode, args)?;
        self.delay(TaskEnvelope::new(name, Codec::Bincode, payload))
            .await
    }
}

/// One line for a task that ended without success: `task ID failed: MESSAGE`, with the
/// error kind in parentheses when it says more than the status (`failed (timed_out)`).
fn failure_line(id: &TaskId, status: &TaskStatus, error: &TaskError) -> String {
    let (verb, plain_kind) = match status {
        TaskStatus::Cancelled => ("was cancelled", protocol::ErrorKind::Cancelled),
        _ => ("failed", protocol::ErrorKind::Failed),
    };
    if error.kind == plain_kind {
        format!("task {id} {verb}: {}", error.message)
    } else {
        format!(
            "task {id} {verb} ({}): {}",
            error.kind.as_str(),
            error.message
        )
    }
}

/// Decodes a record's value with its codec.
pub fn decode_value<R: DeserializeOwned>(record: &TaskRecord) -> Result<R, ClientError> {
    Ok(protocol::codec::decode(record.codec, &record.value)?)
}

/// The record itself when the task succeeded, else its failure as an error.
pub fn into_success(record: TaskRecord) -> Result<TaskRecord, ClientError> {
    if record.status == TaskStatus::Success {
        return Ok(record);
    }
    let error = record
        .error
        .clone()
        .unwrap_or_else(|| TaskError::new(protocol::ErrorKind::Internal, "no error recorded"));
    Err(ClientError::TaskFailed {
        id: record.task_id,
        status: record.status,
        error,
    })
}

/// A request sent and not answered yet. Dropped unanswered (its caller stopped
/// waiting), it is forgotten: an answer that comes later is dropped.
struct Request<'a> {
    shared: &'a Shared,
    id: u64,
    answer: oneshot::Receiver<FromControlPlane>,
}

impl Drop for Request<'_> {
    fn drop(&mut self) {
        // Closed first: dropping the sender of a receiver still open wakes the task
        // that last polled it, which is this one. Woken during its own poll, a task
        // is rescheduled, and on a multi-threaded runtime another worker is woken to
        // run it (a context switch per round trip, found with `perf`).
        self.answer.close();
        lock(&self.shared.pending).remove(&self.id);
    }
}

/// The final record of a task submitted with `wait` by `request`: it arrives on
/// `record`, after `Accepted`, or alone from a control plane that answers such a
/// submit by its result. A `Rejected` answer is an error.
async fn answer_by_result(
    mut request: Request<'_>,
    mut record: oneshot::Receiver<TaskRecord>,
) -> Result<TaskRecord, ClientError> {
    tokio::select! {
        biased;
        done = &mut record => return done.map_err(|_| ClientError::Disconnected),
        answer = &mut request.answer => match answer {
            Ok(FromControlPlane::Accepted { .. }) => {}
            Ok(FromControlPlane::Rejected { error, .. }) => return Err(ClientError::Rejected(error)),
            Ok(other) => return Err(ClientError::Unexpected(format!("{other:?}"))),
            Err(_) => return Err(ClientError::Disconnected),
        },
    }
    record.await.map_err(|_| ClientError::Disconnected)
}

/// Tasks continue the caller's trace when a tracing system is installed; without one
/// nothing is added (their spans are named by their ids).
fn continue_current_trace(tasks: &mut [TaskEnvelope]) {
    if let Some(current) = propagation::inject(&tracing::Span::current()) {
        for task in tasks {
            if task.trace.as_ref().and_then(|t| t.trace_id()).is_none() {
                task.trace = Some(Box::new(current.clone()));
            }
        }
    }
}

/// How often an idle client checks that its connection still works.
const KEEPALIVE: Duration = Duration::from_secs(2);

/// Owns the connection: sends what callers queue, routes what comes back, and — since
/// a connection does not reconnect by itself — opens a new connection (with
/// backoff) when a send fails (a keepalive ping every 2 s finds a dead one while idle)
/// and says hello again. Calls waiting on the lost connection, including the one whose
/// send failed, fail at once with `Disconnected`: nothing is resent behind the caller's
/// back, so a caller that retries never runs a task twice. Ends when every `Client`
/// handle is dropped.
async fn run_connection(
    address: String,
    timeout: Duration,
    config: TransportConfig,
    first: transport::Connection,
    hello: Vec<Bytes>,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
) {
    let mut conn = Some(first);
    let mut backoff = Duration::from_millis(100);
    // In the oldest version: every control plane reads it, before and after a Welcome.
    let ping = protocol::encode_as(
        protocol::MIN_PROTOCOL_VERSION,
        &ToControlPlane::Ping { nonce: 0 },
    )
    .unwrap_or_default();
    loop {
        let mut current = match conn.take() {
            Some(c) => c,
            None => match transport::connect(&address, timeout, &config).await {
                Ok(c) => {
                    debug!("client reconnected to {address}");
                    backoff = Duration::from_millis(100);
                    c
                }
                Err(err) => {
                    debug!("client reconnect failed: {err}");
                    if outgoing.is_closed() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        let mut healthy = current.sender.send(hello.clone()).await.is_ok();
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        while healthy {
            tokio::select! {
                out = outgoing.recv() => match out {
                    None => return,
                    Some((epoch, _)) if epoch < shared.epoch.load(Ordering::SeqCst) => {
                        // Its caller was already told Disconnected: never send it late.
                    }
                    Some((_, frames)) => {
                        if let Err(err) = current.sender.send(frames).await {
                            debug!("client send failed: {err}");
                            healthy = false;
                        }
                    }
                },
                incoming = current.receiver.recv() => match incoming {
                    Ok(frames) => match protocol::decode::<FromControlPlane>(&frames) {
                        Ok(msg) => route(&shared, msg),
                        Err(err) => debug!("client: unreadable message: {err}"),
                    },
                    Err(err) => {
                        debug!("client connection closed: {err}");
                        healthy = false;
                    }
                },
                _ = keepalive.tick() => {
                    if current.sender.send(ping.clone()).await.is_err() {
                        healthy = false;
                    }
                }
            }
        }
        // The calls waiting on the lost connection will get no answer on a new one;
        // what they queued and was not sent yet is dropped (see the epoch).
        {
            let mut pending = lock(&shared.pending);
            shared.epoch.fetch_add(1, Ordering::SeqCst);
            pending.clear();
        }
        lock(&shared.waiting).clear();
    }
}

fn route(shared: &Shared, msg: FromControlPlane) {
    let msg = match msg {
        FromControlPlane::Result(record) => return deliver(shared, [record]),
        FromControlPlane::Results { records } => return deliver(shared, records),
        other => other,
    };
    let request_id = match &msg {
        FromControlPlane::Welcome(welcome) => {
            if (protocol::MIN_PROTOCOL_VERSION..=protocol::max_version())
                .contains(&welcome.protocol_version)
            {
                shared
                    .version
                    .store(welcome.protocol_version, Ordering::SeqCst);
            }
            0
        }
        FromControlPlane::Refused { .. } => 0,
        FromControlPlane::Accepted { request_id, .. }
        | FromControlPlane::Rejected { request_id, .. }
        | FromControlPlane::StatusReply { request_id, .. }
        | FromControlPlane::CancelReply { request_id, .. }
        | FromControlPlane::DeadLetterList { request_id, .. }
        | FromControlPlane::EventList { request_id, .. }
        | FromControlPlane::TaskList { request_id, .. }
        | FromControlPlane::QueuedList { request_id, .. }
        | FromControlPlane::Purged { request_id, .. } => *request_id,
        other => {
            debug!("client: ignoring {other:?}");
            return;
        }
    };
    if let Some(tx) = lock(&shared.pending).remove(&request_id) {
        let _ = tx.send(msg);
    }
}

/// Hands final records to the callers waiting for them.
fn deliver(shared: &Shared, records: impl IntoIterator<Item = TaskRecord>) {
    let mut waiting = lock(&shared.waiting);
    for record in records {
        if let Some(tx) = waiting.remove(&record.task_id) {
            let _ = tx.send(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        future::Future,
        pin::Pin,
        sync::atomic::AtomicUsize,
        task::{Context, Wake, Waker},
    };

    use super::*;

    /// Counts its wake-ups.
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A task that waited for an answer and gives the request up (a waiting submit
    /// answered by its result) is not woken by that: woken during its own poll, it
    /// would be rescheduled, and another worker woken to run it.
    #[test]
    fn a_request_given_up_does_not_wake_the_task_that_waited_for_it() {
        let shared = Shared::new();
        let (tx, answer) = oneshot::channel();
        lock(&shared.pending).insert(7, tx);
        let mut request = Request {
            shared: &shared,
            id: 7,
            answer,
        };
        let wakes = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut request.answer).poll(&mut cx).is_pending());
        drop(request);
        assert!(lock(&shared.pending).is_empty(), "the request is forgotten");
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            0,
            "the waiting task was woken"
        );
    }
}
