//! The routes: the page and its assets, `/healthz`, `/readyz`, `/metrics`, the JSON
//! API and the event stream. Every handler checks the bearer token ([`Auth`]), then
//! asks the event loop and turns its [`Reply`] into a response.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{rejection::QueryRejection, Path, Query as UrlQuery, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, MethodRouter},
    Router,
};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::{
    auth::{Auth, Refusal},
    calls::{self, Answer, Call, Query, Reply},
    events::{EventHub, Subscription},
};
use crate::{
    control_plane::dispatcher::TaskQuery,
    protocol::TaskId,
    task_error::{ErrorKind, TaskError},
};

/// What every handler shares.
#[derive(Clone)]
pub struct Shared {
    /// Requests for the event loop.
    pub calls: mpsc::Sender<Call>,
    /// The event stream.
    pub hub: Arc<EventHub>,
    /// The tokens.
    pub auth: Auth,
}

/// The statuses `/api/tasks?status=` takes.
const TASK_STATUSES: [&str; 9] = [
    "pending",
    "scheduled",
    "queued",
    "assigned",
    "running",
    "success",
    "failure",
    "retrying",
    "cancelled",
];

/// How long a request waits for the event loop.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// The largest page `/api/tasks` returns.
const MAX_PAGE: u64 = 1_000;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The routes, without CORS.
pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(app_js))
        .route("/assets/app.css", get(app_css))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", read(Query::Metrics))
        .route("/api/status", read(Query::Status))
        .route("/api/workers", read(Query::Workers))
        .route("/api/queues", read(Query::Queues))
        .route("/api/tasks", get(tasks))
        .route("/api/tasks/{id}", about_task(false, Query::Task))
        .route("/api/tasks/{id}/cancel", about_task(true, Query::Cancel))
        .route("/api/tasks/{id}/retry", about_task(true, Query::Retry))
        .route("/api/cache", read(Query::Cache))
        .route("/api/plugins", read(Query::Plugins))
        .route("/api/dead-letters", read(Query::DeadLetters))
        .route(
            "/api/dead-letters/{id}/replay",
            about_task(true, Query::Replay),
        )
        .route("/api/throughput", read(Query::Throughput))
        .route("/api/events", get(events))
        .fallback(not_found)
        .with_state(shared)
}

/// `router` with `FASTWORKER_GUI_CORS_ORIGIN` applied (`*` for any origin).
pub fn with_cors(router: Router, origin: Option<&str>) -> Router {
    let Some(origin) = origin.map(str::trim).filter(|o| !o.is_empty()) else {
        return router;
    };
    let allow = if origin == "*" {
        AllowOrigin::any()
    } else {
        match HeaderValue::from_str(origin) {
            Ok(value) => AllowOrigin::exact(value),
            Err(_) => {
                tracing::warn!(
                    "FASTWORKER_GUI_CORS_ORIGIN {origin:?} is not a valid origin: ignored"
                );
                return router;
            }
        }
    };
    router.layer(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("last-event-id"),
            ]),
    )
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        (
            self.status,
            [
                (header::CONTENT_TYPE, self.content_type),
                (header::CACHE_CONTROL, "no-store"),
            ],
            self.body,
        )
            .into_response()
    }
}

fn refused(refusal: Refusal) -> Response {
    let Refusal::Unauthorized(why) = refusal;
    let mut response = calls::error(
        StatusCode::UNAUTHORIZED,
        &TaskError::new(ErrorKind::Rejected, why),
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"fastworker\""),
    );
    response
}

fn bad_request(why: String) -> Response {
    calls::error(
        StatusCode::BAD_REQUEST,
        &TaskError::new(ErrorKind::Rejected, why),
    )
    .into_response()
}

/// Sends `query` to the event loop and waits for the answer.
async fn ask_loop(shared: &Shared, query: Query) -> Response {
    let (reply, answer) = oneshot::channel();
    let unavailable = |why: &str| {
        calls::error(
            StatusCode::SERVICE_UNAVAILABLE,
            &TaskError::new(ErrorKind::Rejected, why),
        )
        .into_response()
    };
    if shared.calls.send(Call { query, reply }).await.is_err() {
        return unavailable("the control plane is stopping");
    }
    match tokio::time::timeout(ANSWER_WITHIN, answer).await {
        Ok(Ok(Answer::Now(reply))) => reply.into_response(),
        Ok(Ok(Answer::Later(make))) => match tokio::task::spawn_blocking(make).await {
            Ok(reply) => reply.into_response(),
            Err(_) => unavailable("the answer could not be made"),
        },
        Ok(Err(_)) => unavailable("the control plane is stopping"),
        Err(_) => unavailable("the control plane did not answer within 10 s"),
    }
}

/// Checks the token, then asks.
async fn ask(shared: &Shared, headers: &HeaderMap, write: bool, query: Query) -> Response {
    if let Err(refusal) = shared.auth.check(headers, write) {
        return refused(refusal);
    }
    ask_loop(shared, query).await
}

/// Asks `query` of task `id` (its text from the path), or answers 400 for a bad id.
async fn ask_about(
    shared: &Shared,
    headers: &HeaderMap,
    write: bool,
    id: &str,
    query: fn(TaskId) -> Query,
) -> Response {
    if let Err(refusal) = shared.auth.check(headers, write) {
        return refused(refusal);
    }
    match TaskId::parse(id) {
        Ok(id) => ask_loop(shared, query(id)).await,
        Err(_) => bad_request(format!(
            "{:?} is not a task id",
            crate::protocol::for_people(id, 64)
        )),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

async fn not_found() -> Response {
    calls::error(
        StatusCode::NOT_FOUND,
        &TaskError::new(ErrorKind::Rejected, "no such page (see docs/API.md)"),
    )
    .into_response()
}

async fn healthz(State(shared): State<Shared>) -> Response {
    ask_loop(&shared, Query::Alive).await
}

async fn readyz(State(shared): State<Shared>) -> Response {
    ask_loop(&shared, Query::Ready).await
}

/// A `GET` that needs read access and asks `query`.
fn read(query: Query) -> MethodRouter<Shared> {
    get(move |State(shared): State<Shared>, headers: HeaderMap| {
        let query = query.clone();
        async move { ask(&shared, &headers, false, query).await }
    })
}

/// A route about the task its path names: a `POST` when it writes, else a `GET`.
fn about_task(write: bool, query: fn(TaskId) -> Query) -> MethodRouter<Shared> {
    let handler = move |State(shared): State<Shared>,
                        headers: HeaderMap,
                        Path(id): Path<String>| async move {
        ask_about(&shared, &headers, write, &id, query).await
    };
    if write {
        post(handler)
    } else {
        get(handler)
    }
}

/// `/api/tasks`'s parameters.
#[derive(Debug, Deserialize)]
struct TasksParams {
    limit: Option<u64>,
    offset: Option<u64>,
    status: Option<String>,
    name: Option<String>,
}

async fn tasks(
    State(shared): State<Shared>,
    headers: HeaderMap,
    params: Result<UrlQuery<TasksParams>, QueryRejection>,
) -> Response {
    let UrlQuery(params) = match params {
        Ok(params) => params,
        Err(err) => return bad_request(format!("bad query: {err}")),
    };
    let status = params.status.filter(|s| !s.is_empty());
    if let Some(status) = &status {
        if !TASK_STATUSES.contains(&status.as_str()) {
            return bad_request(format!(
                "status {:?} is none of {}",
                crate::protocol::for_people(status, 64),
                TASK_STATUSES.join(", ")
            ));
        }
    }
    let query = TaskQuery {
        status,
        name: params.name.filter(|s| !s.is_empty()),
        offset: params.offset.unwrap_or(0),
        limit: params.limit.unwrap_or(50).min(MAX_PAGE),
    };
    ask(&shared, &headers, false, Query::Tasks(query)).await
}

/// `/api/events`'s parameters: where to resume when `Last-Event-ID` cannot be sent.
#[derive(Debug, Deserialize)]
struct EventsParams {
    last_event_id: Option<u64>,
}

async fn events(
    State(shared): State<Shared>,
    headers: HeaderMap,
    params: Result<UrlQuery<EventsParams>, QueryRejection>,
) -> Response {
    if let Err(refusal) = shared.auth.check(&headers, false) {
        return refused(refusal);
    }
    let from_header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let from_query = params.ok().and_then(|UrlQuery(p)| p.last_event_id);
    let Some(subscription) = shared.hub.subscribe(from_header.or(from_query)) else {
        return calls::error(
            StatusCode::SERVICE_UNAVAILABLE,
            &TaskError::new(
                ErrorKind::Rejected,
                format!(
                    "{} event streams are open, the most this control plane serves; poll the API instead",
                    super::events::MAX_READERS
                ),
            ),
        )
        .into_response();
    };
    let Subscription {
        backlog,
        missed,
        live,
        slot,
    } = subscription;
    let reader = super::sse::Reader {
        slot,
        missed,
        backlog: backlog.into(),
        live,
    };
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        reader.into_body(),
    )
        .into_response()
}
