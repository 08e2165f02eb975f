//! The control plane's event loop: sockets, timers and signals in; the [`Dispatcher`]'s
//! actions out. Its own `--task-modules` run in a child subworker
//! ([`own_worker`](super::own_worker)) that registers like any other.
//!
//! Start-up: bind, start the own subworker (if there are task modules), and print the
//! "ready" line once it has registered, so its tasks are known from the first
//! submission. A child that fails before it ever registered (a missing module, say)
//! stops the control plane with its error.
//!
//! Shutdown sequence (Ctrl+C or SIGTERM): stop accepting new tasks (they are refused
//! with a clear error), keep dispatching and collecting what was accepted, and exit 0
//! once nothing is queued or running, or when `--shutdown-grace` runs out (then say how
//! many tasks were left); then stop the own subworker.

use std::{path::Path, path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::{sync::mpsc, time::MissedTickBehavior};
use tracing::{info, warn};

use crate::probe::probe_reply;

use super::dispatcher::{Action, Dispatcher, DispatcherConfig, Now};
use super::http::calls::{answer, Call, LoopContext};
use super::peer_terms::PeerTerms;
use super::{
    commit::{CommitsDone, Committer},
    own_worker::{ChildCommand, ChildExit, Supervisor},
    store::{redb_store::RedbStore, Store},
    wire::{self, Delivery, Encoder, Inbound},
};
use crate::{
    protocol::{self, Announcement, FromControlPlane, TaskRecord, ToControlPlane, WorkerSecret},
    transport::{self, Outbox, PeerId, ServerEvent, TransportConfig},
    HostError,
};

/// How long start-up waits for the own subworker to register before saying "ready"
/// anyway.
const OWN_WORKER_STARTUP: Duration = Duration::from_secs(30);

/// Builds the command line of the control plane's own subworker, given the address it
/// connects to and the worker secret it registers with. The binary supplies it: only
/// the binary knows its own command line.
pub type OwnWorkerCommand = Arc<dyn Fn(&str, &WorkerSecret) -> ChildCommand + Send + Sync>;

/// The control plane's own subworker: what it runs and how to start it.
#[derive(Clone)]
pub struct OwnWorker {
    /// The task modules it loads (for the log).
    pub task_modules: Vec<String>,
    /// How to start it.
    pub command: OwnWorkerCommand,
}

impl std::fmt::Debug for OwnWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnWorker")
            .field("task_modules", &self.task_modules)
            .finish_non_exhaustive()
    }
}

/// Everything a control plane needs to run.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Its id (and its own subworker's worker id).
    pub id: String,
    /// Where clients and subworkers connect.
    pub base_address: String,
    /// An extra endpoint for subworkers, if any (see [`subworker_endpoint`]).
    pub subworker_address: Option<String>,
    /// The discovery endpoint.
    pub discovery_address: String,
    /// What the sockets enforce (key, message size, connections, handshake time).
    pub transport: TransportConfig,
    /// Results kept, at most.
    pub cache_size: usize,
    /// How long a result is kept.
    pub cache_ttl: Duration,
    /// Bytes of results kept, at most.
    pub cache_max_bytes: u64,
    /// Tasks held (queued, scheduled, retrying, running), at most.
    pub max_queued: usize,
    /// Bytes of payload held, at most.
    pub max_queued_bytes: u64,
    /// How long a task nobody serves waits before it fails.
    pub unserved_timeout: Duration,
    /// Silence after which a worker counts as lost.
    pub inactive_after: Duration,
    /// Deliveries of one task before it is dead-lettered.
    pub max_deliveries: u32,
    /// The most tasks per slot a subworker that runs them quickly is handed (1: no
    /// prefetching).
    pub prefetch_per_slot: u32,
    /// The largest payload or result accepted, in bytes.
    pub max_payload_bytes: u64,
    /// How long a stop waits for running tasks.
    pub shutdown_grace: Duration,
    /// Where tasks, results and schedules are kept across restarts, if anywhere.
    pub data_dir: Option<PathBuf>,
    /// The own subworker, when the control plane has task modules.
    pub own_worker: Option<OwnWorker>,
    /// Where and how the dashboard and the HTTP API are served, if they are.
    pub dashboard: Option<super::http::HttpConfig>,
}

/// The subworker endpoint beside `base`: its host with `port` (none for port 0).
pub fn subworker_endpoint(base: &str, port: u16) -> Option<String> {
    if port == 0 {
        return None;
    }
    let (host, _) = base.rsplit_once(':')?;
    Some(format!("{host}:{port}"))
}

/// Sends `msg` to `peer` in the version it speaks; a `Welcome` sets that version.
/// Not an `Accepted` the peer said it does not need.
fn send(
    encoder: &Encoder,
    delivery: Delivery,
    terms: &mut PeerTerms,
    peer: &PeerId,
    msg: FromControlPlane,
) {
    if let FromControlPlane::Welcome(welcome) = &msg {
        terms.heard(peer, welcome.protocol_version);
    }
    if terms.wants(peer, &msg) {
        encoder.send(peer, terms.version(peer), msg, delivery);
    }
}

/// Where a process on this host reaches `endpoint`: a wildcard address becomes loopback.
fn local_endpoint(endpoint: &str) -> String {
    endpoint
        .replacen("tcp://0.0.0.0:", "tcp://127.0.0.1:", 1)
        .replacen("tcp://[::]:", "tcp://[::1]:", 1)
        .replacen("tcp://*:", "tcp://127.0.0.1:", 1)
}

/// What a control plane says once it takes tasks.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The control plane's id.
    pub id: String,
    /// The endpoint clients use.
    pub endpoint: String,
    /// The tasks served then (by its own subworker, or subworkers registered early),
    /// by name.
    pub tasks: Vec<crate::protocol::ServedTask>,
    /// The dashboard's address (`http://host:port/`), when it is served.
    pub dashboard: Option<String>,
}

/// Runs the control plane until it is asked to stop. `on_ready` is called once, when
/// it takes tasks (after its own subworker registered).
pub async fn run(
    config: ControlPlaneConfig,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), HostError> {
    let args = config;
    let mut on_ready = Some(on_ready);
    let mut endpoints = vec![args.base_address.clone()];
    if let Some(e) = &args.subworker_address {
        if e != &args.base_address {
            endpoints.push(e.clone());
        }
    }
    let transport_config = args.transport.clone();
    let mut server = transport::bind_mapped(&endpoints, &transport_config, wire::inbound)
        .await
        .map_err(|e| HostError::transport("control plane cannot start", e))?;
    let mut discovery = transport::bind(
        std::slice::from_ref(&args.discovery_address),
        &transport_config,
    )
    .await
    .map_err(|e| HostError::transport("control plane cannot start its discovery endpoint", e))?;

    let mut announcement = Announcement::new(args.id.clone(), server.endpoints[0].clone());
    announcement.subworker_address = server.endpoints.get(1).cloned();
    let own_secret = WorkerSecret::new();
    let config = DispatcherConfig {
        id: args.id.clone(),
        own_secret,
        inactive_after: args.inactive_after.max(Duration::from_millis(100)),
        max_deliveries: args.max_deliveries.max(1),
        prefetch_per_slot: args.prefetch_per_slot.max(1),
        cache_size: args.cache_size,
        cache_ttl: args.cache_ttl,
        cache_max_bytes: args.cache_max_bytes,
        max_queued: args.max_queued,
        max_queued_bytes: args.max_queued_bytes,
        unserved_timeout: args.unserved_timeout,
        announcement: announcement.clone(),
        max_payload_bytes: args.max_payload_bytes,
        max_message_bytes: transport_config.max_message_bytes,
        durable: args.data_dir.is_some(),
        observe: args.dashboard.is_some(),
    };
    let mut dispatcher = Dispatcher::new(config, Now::current());
    let (mut committer, mut commits_done) = match &args.data_dir {
        Some(dir) => {
            let (committer, done) = open_store(dir, &mut dispatcher)?;
            dispatcher.seed_recent();
            (Some(committer), Some(done))
        }
        None => (None, None),
    };

    info!(
        id = %args.id,
        "control plane listening on {} (discovery on {})",
        server.endpoints.join(", "),
        discovery.endpoints[0]
    );
    // Before the own subworker starts: a busy dashboard port stops the start cleanly.
    let mut http = match &args.dashboard {
        Some(config) => Some(super::http::start(config.clone()).await?),
        None => None,
    };
    let (exit_tx, mut own_exits) = mpsc::unbounded_channel::<ChildExit>();
    let supervisor = match &args.own_worker {
        None => {
            info!("no task modules: every task runs on subworkers");
            None
        }
        Some(own) => {
            let address = local_endpoint(&server.endpoints[0]);
            let command = (own.command)(&address, &own_secret);
            info!(
                "its own subworker (a child process) runs {} when no other subworker can",
                own.task_modules.join(" ")
            );
            Some(Supervisor::start(command, exit_tx))
        }
    };
    let mut ready_pending = true;
    let started = tokio::time::Instant::now();
    let mut api_context = LoopContext {
        version: env!("CARGO_PKG_VERSION").to_string(),
        address: server.endpoints[0].clone(),
        started: std::time::Instant::now(),
        rejected_connections: 0,
    };

    // Callback receivers are the user's own programs: guarded, but without the key.
    let callback_config = transport_config.clone().with_key(None);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut announce = tokio::time::interval(Duration::from_secs(2));
    let mut sweep = tokio::time::interval(Duration::from_secs(60));
    let mut discovery_peers: Vec<PeerId> = Vec::new();
    let mut terms = PeerTerms::default();
    // Messages arrive decoded (by the transport's reader task) and leave to be
    // encoded (by its writer task): neither happens on this loop.
    let inbound = &mut server.events;
    let encoder = Encoder::new(server.outbox.clone());
    let mut shutdown = crate::shutdown::stop_requested();
    let mut stopping_until: Option<tokio::time::Instant> = None;
    let grace = args.shutdown_grace;

    loop {
        // A round that handled one message (or none: a timer) with none waiting after
        // it writes what it produced itself; otherwise it is under load, and leaves
        // the writing to the peers' writer tasks, beside it.
        let mut delivery = Delivery::AtOnce;
        tokio::select! {
            event = inbound.recv() => {
                let Some(event) = event else {
                    return Err(HostError::Stopped("the control plane's socket closed".into()));
                };
                handle_event(event, &mut dispatcher, &mut terms, &server.outbox);
                // Under load, more are waiting: handle them before sending what they
                // produce, so replies and results to one peer can share a message;
                // but not for long, or subworkers wait for their next tasks.
                let round = std::time::Instant::now();
                for _ in 1..EVENTS_PER_ROUND {
                    if round.elapsed() >= ROUND_TIME {
                        break;
                    }
                    match inbound.try_recv() {
                        Ok(event) => {
                            delivery = Delivery::Queued;
                            handle_event(event, &mut dispatcher, &mut terms, &server.outbox);
                        }
                        Err(_) => break,
                    }
                }
                if !inbound.is_empty() {
                    delivery = Delivery::Queued;
                }
            }
            event = discovery.events.recv() => match event {
                Some(ServerEvent::Message { peer, frames }) => {
                    let answer = probe_reply(
                        &frames,
                        |request, _| {
                            matches!(request, ToControlPlane::Discover).then(|| {
                                if !discovery_peers.contains(&peer) {
                                    discovery_peers.push(peer);
                                }
                                FromControlPlane::Announce(announcement.clone())
                            })
                        },
                        "this is the discovery endpoint: send Discover",
                    );
                    if let Some(frames) = answer {
                        discovery.outbox.send(&peer, frames);
                    }
                }
                Some(ServerEvent::Unauthenticated { peer, .. }) => crate::probe::refuse_unauthenticated(&discovery.outbox, &peer),
                Some(ServerEvent::Disconnected(peer)) => discovery_peers.retain(|p| p != &peer),
                None => return Err(HostError::Stopped("the discovery socket closed".into())),
            },
            Some(exit) = own_exits.recv() => {
                if ready_pending && !exit.success {
                    return Err(HostError::Stopped(format!(
                        "the control plane's own subworker (which runs --task-modules) failed at start ({}); its error is above",
                        exit.status
                    )));
                }
                dispatcher.record_event(
                    "worker.exited",
                    &args.id,
                    format!("the control plane's own subworker exited ({}) after {:.1?}; restarting it", exit.status, exit.ran_for),
                );
            }
            _ = tick.tick() => dispatcher.tick(Now::current()),
            Some(call) = next_call(&mut http) => {
                // A caller that gave up waiting (its 10 s ran out) costs nothing more.
                if !call.reply.is_closed() {
                    api_context.rejected_connections = server.front.rejected() + discovery.front.rejected();
                    let reply = answer(call.query, &mut dispatcher, &api_context);
                    let _ = call.reply.send(reply);
                }
            }
            Some(written) = next_commit(&mut commits_done) => {
                if let Some(committer) = committer.as_mut() {
                    let actions = committer.finish(&mut dispatcher, written);
                    perform_all(actions, &encoder, Delivery::Queued, &mut terms, &callback_config);
                }
            }
            _ = announce.tick() => {
                // In the oldest version, so a peer of any version finds this one.
                let msg = FromControlPlane::Announce(announcement.clone());
                if let Ok(frames) = protocol::encode_as(protocol::MIN_PROTOCOL_VERSION, &msg) {
                    for peer in &discovery_peers {
                        discovery.outbox.send(peer, frames.clone());
                    }
                }
            }
            _ = sweep.tick() => {
                let swept = dispatcher.sweep_cache(Now::current());
                if swept > 0 {
                    info!("swept {swept} expired results");
                }
            }
            _ = &mut shutdown, if stopping_until.is_none() => {
                info!(
                    "shutting down: refusing new tasks, finishing {} running and {} queued (at most {:?})",
                    dispatcher.in_flight(), dispatcher.queued(), grace
                );
                dispatcher.begin_shutdown();
                stopping_until = Some(tokio::time::Instant::now() + grace);
            }
        }
        let actions = releasable(&mut committer, &mut dispatcher);
        perform_all(actions, &encoder, delivery, &mut terms, &callback_config);
        if let Some(http) = &http {
            http.hub.publish(dispatcher.drain_feed());
        }
        if ready_pending {
            let registered = supervisor.is_none() || dispatcher.own_worker_registered();
            if registered || started.elapsed() >= OWN_WORKER_STARTUP {
                if !registered {
                    warn!("the control plane's own subworker has not registered after {OWN_WORKER_STARTUP:?}; its tasks are unknown until it does");
                }
                ready_pending = false;
                if let Some(on_ready) = on_ready.take() {
                    on_ready(&Ready {
                        id: args.id.clone(),
                        endpoint: server.endpoints[0].clone(),
                        tasks: dispatcher.served_tasks(),
                        dashboard: http.as_ref().map(|h| h.url.clone()),
                    });
                }
            }
        }
        if let Some(until) = stopping_until {
            // With a data directory, queued and scheduled tasks wait there for the next
            // start: only running ones are waited for.
            let idle =
                dispatcher.in_flight() == 0 && (committer.is_some() || dispatcher.queued() == 0);
            if idle || tokio::time::Instant::now() >= until {
                if !idle {
                    warn!(
                        "shutdown grace ran out with {} running and {} queued tasks",
                        dispatcher.in_flight(),
                        dispatcher.queued()
                    );
                }
                let left = if committer.is_some() {
                    0
                } else {
                    dispatcher.abandon_all(
                        Now::current(),
                        "the control plane shut down before this task finished",
                    )
                };
                if left > 0 {
                    warn!("{left} tasks (running, queued, scheduled or retrying) end as failures: the control plane is stopping");
                }
                let last = match (committer.as_mut(), commits_done.as_mut()) {
                    (Some(committer), Some(done)) => committer.flush(&mut dispatcher, done).await,
                    _ => dispatcher.take_actions(),
                };
                perform_all(
                    last,
                    &encoder,
                    Delivery::Queued,
                    &mut terms,
                    &callback_config,
                );
                if committer.is_some() {
                    info!(
                        "kept {} queued, {} scheduled and {} running task(s) in the data directory for the next start",
                        dispatcher.queued(),
                        dispatcher.scheduled(),
                        dispatcher.in_flight()
                    );
                }
                // Every last reply encoded, then a moment for the writer to send them.
                encoder.flush(Duration::from_secs(5)).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let Some(supervisor) = supervisor {
                    tokio::task::spawn_blocking(move || supervisor.stop())
                        .await
                        .ok();
                }
                info!("control plane stopped");
                return Ok(());
            }
        }
    }
}

/// The dispatcher's actions that may go now: all of them without a data directory;
/// with one, those that need no commit (the rest go when theirs is written).
fn releasable(committer: &mut Option<Committer>, dispatcher: &mut Dispatcher) -> Vec<Action> {
    match committer.as_mut() {
        Some(committer) => committer.stage(dispatcher),
        None => dispatcher.take_actions(),
    }
}

/// Opens the data directory and resumes what it holds.
fn open_store(
    dir: &Path,
    dispatcher: &mut Dispatcher,
) -> Result<(Committer, CommitsDone), HostError> {
    let started = std::time::Instant::now();
    let store = RedbStore::open(dir).map_err(|e| HostError::Store(e.to_string()))?;
    let snapshot = store.load().map_err(|e| HostError::Store(e.to_string()))?;
    let restored = dispatcher.restore(snapshot, Now::current());
    info!(
        epoch = store.epoch(),
        "data directory {}: resumed {} task(s) ({} assigned), {} result(s), {} dead letter(s), {} worker identit(ies) in {:.1?}",
        dir.display(),
        restored.tasks,
        restored.assigned,
        restored.results,
        restored.dead_letters,
        restored.workers,
        started.elapsed()
    );
    Ok(Committer::new(Box::new(store)))
}

/// The next request from the HTTP side, or never without a dashboard.
async fn next_call(http: &mut Option<super::http::HttpEndpoint>) -> Option<Call> {
    match http {
        Some(http) => http.calls.recv().await,
        None => std::future::pending().await,
    }
}

/// The next written commit, or never without a data directory.
async fn next_commit(done: &mut Option<CommitsDone>) -> Option<super::commit::Written> {
    match done {
        Some(done) => done.recv().await,
        None => std::future::pending().await,
    }
}

/// Events from the base endpoint handled before what they produce is sent...
const EVENTS_PER_ROUND: usize = 256;
/// ...unless handling them has taken this long already.
const ROUND_TIME: Duration = Duration::from_micros(500);

/// The most records one `Results` message carries, and (roughly) the most value bytes.
const RESULTS_PER_MESSAGE: usize = 256;
const RESULTS_BYTES_PER_MESSAGE: usize = 1 << 20;

/// One event from the base endpoint: a message for the dispatcher (a `Hello` also
/// says what its sender reads), a peer that failed the key handshake, or one that left.
fn handle_event(
    event: Inbound,
    dispatcher: &mut Dispatcher,
    terms: &mut PeerTerms,
    outbox: &Outbox,
) {
    match event {
        Inbound::Message { peer, msg } => match *msg {
            Ok(msg) => {
                terms.received(&peer, &msg);
                dispatcher.handle(&peer, msg, Now::current());
            }
            Err(err) => dispatcher.malformed(&peer, &err),
        },
        Inbound::Unauthenticated(peer) => crate::probe::refuse_unauthenticated(outbox, &peer),
        Inbound::Disconnected(peer) => {
            terms.forget(&peer);
            dispatcher.peer_disconnected(&peer, Now::current())
        }
    }
}

/// Carries out `actions` in order, except that the results pushed to a peer that
/// reads `Results` are held to the end and sent grouped (in the order they became
/// final); a task's `Accepted` always precedes its `Result` (it was sent in an
/// earlier action or round).
fn perform_all(
    actions: Vec<Action>,
    encoder: &Encoder,
    delivery: Delivery,
    terms: &mut PeerTerms,
    callbacks: &TransportConfig,
) {
    let mut grouped: Vec<(PeerId, Vec<TaskRecord>)> = Vec::new();
    for action in actions {
        match action {
            Action::Send {
                peer,
                msg: FromControlPlane::Result(record),
            } if terms.batches_results(&peer) => {
                match grouped.iter_mut().find(|(p, _)| p == &peer) {
                    Some((_, records)) => records.push(record),
                    None => grouped.push((peer, vec![record])),
                }
            }
            Action::Send { peer, msg } => send(encoder, delivery, terms, &peer, msg),
            Action::Callback { callback, record } => {
                tokio::spawn(deliver_callback(callback, record, callbacks.clone()));
            }
        }
    }
    for (peer, records) in grouped {
        for msg in group_results(records) {
            send(encoder, delivery, terms, &peer, msg);
        }
    }
}

/// `records` as messages: a lone one as `Result`, the rest as `Results` of at most
/// [`RESULTS_PER_MESSAGE`] records and about [`RESULTS_BYTES_PER_MESSAGE`] of values.
fn group_results(records: Vec<TaskRecord>) -> Vec<FromControlPlane> {
    let mut messages = Vec::new();
    let mut current: Vec<TaskRecord> = Vec::new();
    let mut bytes = 0;
    let close =
        |current: &mut Vec<TaskRecord>, messages: &mut Vec<FromControlPlane>| match current.len() {
            0 => {}
            1 => messages.extend(current.pop().map(FromControlPlane::Result)),
            _ => messages.push(FromControlPlane::Results {
                records: std::mem::take(current),
            }),
        };
    for record in records {
        if !current.is_empty()
            && (current.len() >= RESULTS_PER_MESSAGE
                || bytes + record.value.len() > RESULTS_BYTES_PER_MESSAGE)
        {
            close(&mut current, &mut messages);
            bytes = 0;
        }
        bytes += record.value.len();
        current.push(record);
    }
    close(&mut current, &mut messages);
    messages
}

/// Sends a final record to a callback address: a few tries, never blocking dispatch.
async fn deliver_callback(
    callback: crate::protocol::Callback,
    record: crate::protocol::TaskRecord,
    config: TransportConfig,
) {
    let body = protocol::json::CallbackJson::new(&record, &callback.data);
    let body = match serde_json::to_vec(&body) {
        Ok(body) => body,
        Err(err) => {
            warn!(task = %record.task_id, "cannot encode the callback body: {err}");
            return;
        }
    };
    let payload = Bytes::from(body);
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=3 {
        match transport::connect(&callback.address, Duration::from_secs(2), &config).await {
            Ok(mut conn) => {
                if conn.sender.send(vec![payload.clone()]).await.is_ok() {
                    return;
                }
            }
            Err(err) => warn!(attempt, "callback to {} failed: {err}", callback.address),
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    warn!(task = %record.task_id, "callback to {} given up after 3 tries", callback.address);
}

#[cfg(test)]
mod grouping_tests {
    use super::*;
    use crate::protocol::{Codec, TaskId, TaskStatus};

    fn record(value_len: usize) -> TaskRecord {
        let mut record = TaskRecord::new(TaskId::new(), "add", TaskStatus::Success, Codec::Json);
        record.value = Bytes::from(vec![b'1'; value_len]);
        record
    }

    fn sizes(messages: &[FromControlPlane]) -> Vec<usize> {
        messages
            .iter()
            .map(|m| match m {
                FromControlPlane::Result(_) => 1,
                FromControlPlane::Results { records } => records.len(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn results_are_grouped_by_count_and_bytes_in_order_and_a_lone_one_stays_a_result() {
        assert!(group_results(Vec::new()).is_empty());
        let one = group_results(vec![record(1)]);
        assert!(matches!(one.as_slice(), [FromControlPlane::Result(_)]));

        let records: Vec<_> = (0..600).map(|_| record(1)).collect();
        let ids: Vec<_> = records.iter().map(|r| r.task_id).collect();
        let messages = group_results(records);
        assert_eq!(sizes(&messages), vec![256, 256, 88]);
        let back: Vec<_> = messages
            .iter()
            .flat_map(|m| match m {
                FromControlPlane::Results { records } => {
                    records.iter().map(|r| r.task_id).collect::<Vec<_>>()
                }
                FromControlPlane::Result(r) => vec![r.task_id],
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(back, ids, "in the order they became final");

        // 400 KiB values: two fit under 1 MiB, the third starts a new message; a value
        // larger than the budget travels alone.
        let messages = group_results(vec![
            record(400 << 10),
            record(400 << 10),
            record(400 << 10),
            record(2 << 20),
            record(1),
        ]);
        assert_eq!(sizes(&messages), vec![2, 1, 1, 1]);
    }
}
