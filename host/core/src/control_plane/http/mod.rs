//! The control plane's HTTP side (`--gui-host`/`--gui-port`): the dashboard page, the
//! JSON API of `docs/API.md`, the event stream and `/metrics`, served with axum.
//!
//! - [`calls`]: what a request asks of the event loop, and its answer.
//! - [`events`]: the event stream's hub (bounded per reader, resumable).
//! - [`sse`]: a stream's body, the events ready at once in one chunk.
//! - [`auth`]: bearer tokens (`FASTWORKER_GUI_API_KEY`, the cluster key).
//! - [`routes`]: the routes, the page's assets, CORS.
//! - [`listener`]: at most 256 connections at once, none idle for long.
//! - [`origin`]: `Host` and `Origin` checks, no framing.
//!
//! Handlers never touch the dispatcher: each sends a [`calls::Call`] to the event loop
//! and waits for its [`calls::Reply`].

pub mod auth;
pub mod calls;
pub mod events;
pub mod listener;
pub mod origin;
pub mod routes;
pub mod sse;

use std::sync::Arc;

use tokio::{net::TcpListener, sync::mpsc};
use tracing::{info, warn};

use crate::{transport::auth::ClusterKey, HostError};

/// Where and how the dashboard is served.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The host to bind (`--gui-host`).
    pub host: String,
    /// The port (`--gui-port`; 0 picks a free one).
    pub port: u16,
    /// `FASTWORKER_GUI_API_KEY`: every write needs it as a bearer token.
    pub api_key: Option<String>,
    /// The cluster key, when the cluster has one: every request needs a bearer token.
    pub cluster_key: Option<ClusterKey>,
    /// `FASTWORKER_GUI_CORS_ORIGIN`: the origin allowed to call the API from a browser
    /// (`*` for any).
    pub cors_origin: Option<String>,
}

/// Requests waiting for the event loop, at most.
const CALLS_WAITING: usize = 256;

/// A running HTTP endpoint: the loop answers its calls and publishes to its hub.
pub struct HttpEndpoint {
    /// `http://host:port/`, the port resolved.
    pub url: String,
    /// Requests for the event loop.
    pub calls: mpsc::Receiver<calls::Call>,
    /// Where the loop publishes events.
    pub hub: Arc<events::EventHub>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds the dashboard's address (a busy port is an error) and starts serving.
pub async fn start(config: HttpConfig) -> Result<HttpEndpoint, HostError> {
    let address = format!("{}:{}", config.host, config.port);
    let listener = TcpListener::bind(&address).await.map_err(|e| {
        HostError::Dashboard(format!(
            "the dashboard cannot listen on {address}: {e} (choose another --gui-port, 0 for any free one, or --no-gui)"
        ))
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| HostError::Dashboard(format!("the dashboard's address: {e}")))?;
    // A wildcard address is reached on loopback from this machine.
    let shown = if local.ip().is_unspecified() {
        let loopback: std::net::IpAddr = if local.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        std::net::SocketAddr::new(loopback, local.port())
    } else {
        local
    };
    let url = format!("http://{shown}/");
    let (tx, calls) = mpsc::channel(CALLS_WAITING);
    let hub = Arc::new(events::EventHub::new());
    if config.cluster_key.is_none() && !local.ip().is_loopback() {
        warn!("the dashboard listens on {local} without a cluster key: anyone who can reach it reads the cluster's tasks");
    }
    let app = routes::router(routes::Shared {
        calls: tx,
        hub: hub.clone(),
        auth: auth::Auth::new(config.api_key.clone(), config.cluster_key.clone()),
    });
    let policy = std::sync::Arc::new(origin::OriginPolicy::new(
        local,
        config.cors_origin.as_deref(),
    ));
    let app = app.layer(axum::middleware::from_fn_with_state(policy, origin::guard));
    let app = routes::with_cors(app, config.cors_origin.as_deref());
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener::LimitedListener::new(listener), app).await {
            warn!("the dashboard stopped serving: {err}");
        }
    });
    info!("dashboard on {url}");
    Ok(HttpEndpoint {
        url,
        calls,
        hub,
        task,
    })
}
