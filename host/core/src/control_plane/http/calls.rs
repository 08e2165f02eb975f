//! What an HTTP request asks of the event loop ([`Query`]), and the loop's answer
//! ([`Reply`]): handlers never touch the dispatcher, they send a [`Call`] and wait.
//! The loop answers between rounds, so a read sees a consistent state and a write
//! (cancel, retry, replay) goes through the same dispatcher as every other request.

use std::time::Instant;

use axum::http::StatusCode;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::{
    control_plane::{
        dispatcher::{
            Dispatcher, Now, RetryRefused, StatusContext, TaskDetail, TaskPage, TaskQuery,
        },
        metrics::{self, ServerCounts},
    },
    protocol::{
        api::{ApiActionReply, ApiErrorBody, ApiTask, ApiTaskPage},
        json::{ErrorJson, StatusJson},
        CancelOutcome, TaskId,
    },
    task_error::{ErrorKind, TaskError},
};

/// What a request asks.
#[derive(Debug, Clone)]
pub enum Query {
    /// Is the loop answering?
    Alive,
    /// Does it take tasks?
    Ready,
    /// `/api/status`.
    Status,
    /// `/api/workers`.
    Workers,
    /// `/api/queues`.
    Queues,
    /// `/api/tasks`.
    Tasks(TaskQuery),
    /// `/api/tasks/{id}`.
    Task(TaskId),
    /// `/api/cache`.
    Cache,
    /// `/api/plugins`.
    Plugins,
    /// `/api/dead-letters`.
    DeadLetters,
    /// `/api/throughput`.
    Throughput,
    /// `/metrics`.
    Metrics,
    /// `POST /api/tasks/{id}/cancel`.
    Cancel(TaskId),
    /// `POST /api/tasks/{id}/retry`.
    Retry(TaskId),
    /// `POST /api/dead-letters/{id}/replay`.
    Replay(TaskId),
}

/// The answer: a status and a body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The HTTP status.
    pub status: StatusCode,
    /// `application/json` or the Prometheus text type.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

/// What the loop answers: a reply, or the records a reply is made of. Turning
/// records into JSON (decoding results, escaping text) is left to the HTTP side, off
/// the event loop: a page of big results must not hold up dispatch.
pub enum Answer {
    /// The reply, ready.
    Now(Reply),
    /// Makes the reply (run on a blocking thread).
    Later(Box<dyn FnOnce() -> Reply + Send>),
}

/// A request on its way to the loop, with where the answer goes.
pub struct Call {
    /// What it asks.
    pub query: Query,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Answer>,
}

/// The most bytes of a result or error a task list shows (`/api/tasks`,
/// `/api/dead-letters`); one task's own page shows it whole.
pub const PREVIEW_BYTES: usize = 1024;

fn page_reply(page: TaskPage) -> Reply {
    let mut json = ApiTaskPage::default();
    json.total = page.total;
    json.offset = page.offset;
    json.limit = page.limit;
    json.tasks = page
        .records
        .iter()
        .map(|r| StatusJson::preview(r, PREVIEW_BYTES))
        .collect();
    json_reply(StatusCode::OK, &json)
}

fn detail_reply(detail: TaskDetail) -> Reply {
    let mut json = ApiTask::default();
    json.record = StatusJson::from(&detail.record);
    json.priority = detail.priority;
    json.retryable = detail.retryable;
    json.timeline = detail.timeline;
    json_reply(StatusCode::OK, &json)
}

/// What the loop knows that the dispatcher does not.
pub struct LoopContext {
    /// The fastworker version.
    pub version: String,
    /// Where clients connect.
    pub address: String,
    /// When the control plane started.
    pub started: Instant,
    /// Connections refused or closed for misbehaving, on every endpoint.
    pub rejected_connections: u64,
}

const JSON: &str = "application/json";
/// The Prometheus text exposition format.
pub const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `value` as a JSON reply with `status`.
pub fn json_reply(status: StatusCode, value: &impl Serialize) -> Reply {
    match serde_json::to_string(value) {
        Ok(body) => Reply {
            status,
            content_type: JSON,
            body,
        },
        Err(err) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &TaskError::new(
                ErrorKind::Internal,
                format!("cannot encode the answer: {err}"),
            ),
        ),
    }
}

/// An error reply.
pub fn error(status: StatusCode, error: &TaskError) -> Reply {
    let mut body = ApiErrorBody::default();
    body.error = ErrorJson::from(error);
    Reply {
        status,
        content_type: JSON,
        body: serde_json::to_string(&body).unwrap_or_else(|_| "{}".into()),
    }
}

fn done(task: TaskId, outcome: &'static str) -> Reply {
    let mut body = ApiActionReply::default();
    body.task_id = task.to_string();
    body.outcome = outcome;
    json_reply(StatusCode::OK, &body)
}

fn not_found(task: TaskId) -> Reply {
    error(
        StatusCode::NOT_FOUND,
        &TaskError::new(ErrorKind::Rejected, format!("no task {task} is known")),
    )
}

/// Answers `query` from the dispatcher (called by the event loop): small answers at
/// once, task records as a job for the HTTP side.
pub fn answer(query: Query, dispatcher: &mut Dispatcher, context: &LoopContext) -> Answer {
    let uptime_secs = context.started.elapsed().as_secs();
    let reply = match query {
        Query::Tasks(query) => {
            let page = dispatcher.api_tasks(&query);
            return Answer::Later(Box::new(move || page_reply(page)));
        }
        Query::Task(id) => match dispatcher.api_task(&id) {
            Some(detail) => return Answer::Later(Box::new(move || detail_reply(detail))),
            None => not_found(id),
        },
        Query::DeadLetters => {
            let records = dispatcher.api_dead_letters();
            return Answer::Later(Box::new(move || {
                let json: Vec<StatusJson> = records
                    .iter()
                    .map(|r| StatusJson::preview(r, PREVIEW_BYTES))
                    .collect();
                json_reply(StatusCode::OK, &json)
            }));
        }
        Query::Alive => json_reply(StatusCode::OK, &serde_json::json!({"status": "alive"})),
        Query::Ready => {
            if dispatcher.accepting() {
                json_reply(StatusCode::OK, &serde_json::json!({"status": "ready"}))
            } else {
                let why = dispatcher
                    .api_status(StatusContext {
                        version: context.version.clone(),
                        address: context.address.clone(),
                        uptime_secs,
                    })
                    .store_error
                    .unwrap_or_else(|| "shutting down".into());
                json_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &serde_json::json!({"status": "not ready", "reason": why}),
                )
            }
        }
        Query::Status => json_reply(
            StatusCode::OK,
            &dispatcher.api_status(StatusContext {
                version: context.version.clone(),
                address: context.address.clone(),
                uptime_secs,
            }),
        ),
        Query::Workers => json_reply(StatusCode::OK, &dispatcher.api_workers()),
        Query::Queues => json_reply(StatusCode::OK, &dispatcher.api_queues()),
        Query::Cache => json_reply(StatusCode::OK, &dispatcher.api_cache()),
        Query::Plugins => json_reply(StatusCode::OK, &dispatcher.api_plugins()),
        Query::Throughput => json_reply(StatusCode::OK, &dispatcher.api_throughput()),
        Query::Metrics => {
            let counts = ServerCounts {
                rejected_connections: context.rejected_connections,
                accepting: dispatcher.accepting(),
                uptime_secs,
            };
            Reply {
                status: StatusCode::OK,
                content_type: PROMETHEUS,
                body: metrics::render(&dispatcher.metrics_input(), counts),
            }
        }
        Query::Cancel(id) => match dispatcher.api_cancel(id, Now::current()) {
            CancelOutcome::Cancelled => done(id, "cancelled"),
            CancelOutcome::Signalled => done(id, "signalled"),
            CancelOutcome::AlreadyFinished(status) => error(
                StatusCode::CONFLICT,
                &TaskError::new(
                    ErrorKind::Rejected,
                    format!("task {id} already finished ({})", status.as_str()),
                ),
            ),
            _ => not_found(id),
        },
        Query::Retry(id) => match dispatcher.api_retry(id, Now::current()) {
            Ok(()) => done(id, "queued"),
            Err(RetryRefused::NotFound) => not_found(id),
            Err(RetryRefused::NotFinal(status)) => error(
                StatusCode::CONFLICT,
                &TaskError::new(
                    ErrorKind::Rejected,
                    format!(
                        "task {id} is not final ({}): only a finished task can be retried",
                        status.as_str()
                    ),
                ),
            ),
            Err(RetryRefused::Gone) => error(
                StatusCode::GONE,
                &TaskError::new(
                    ErrorKind::Rejected,
                    format!("task {id} is final, but its submission is not kept: a control plane keeps those in memory only, for the last 10,000 tasks since it started (32 MiB in all); submit it again"),
                ),
            ),
            Err(RetryRefused::Rejected(err)) => error(StatusCode::SERVICE_UNAVAILABLE, &err),
        },
        Query::Replay(id) if !dispatcher.is_dead_letter(&id) => error(
            StatusCode::NOT_FOUND,
            &TaskError::new(ErrorKind::Rejected, format!("task {id} is not a dead letter")),
        ),
        Query::Replay(id) => match dispatcher.api_replay(id, Now::current()) {
            Ok(()) => done(id, "queued"),
            Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, &err),
        },
    };
    Answer::Now(reply)
}
