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

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use tokio::{sync::mpsc, time::MissedTickBehavior};
use tracing::{info, warn};

use crate::probe::probe_reply;

use super::dispatcher::{Action, Dispatcher, DispatcherConfig, Now};
use super::{
    commit::{CommitsDone, Committer},
    own_worker::{ChildCommand, ChildExit, Supervisor},
    store::{redb_store::RedbStore, Store},
};
use crate::{
    cli::{ControlPlaneArgs, LogLevel},
    protocol::{
        self, Announcement, FromControlPlane, ToControlPlane, WorkerSecret, PROTOCOL_VERSION,
    },
    transport::{self, Outbox, PeerId, ServerEvent, TransportConfig},
};

/// How long start-up waits for the own subworker to register before saying "ready"
/// anyway.
const OWN_WORKER_STARTUP: Duration = Duration::from_secs(30);

/// The subworker endpoint: the base address's host with `port`.
fn subworker_endpoint(base: &str, port: u16) -> Option<String> {
    if port == 0 {
        return None;
    }
    let (host, _) = base.rsplit_once(':')?;
    Some(format!("{host}:{port}"))
}

fn send(outbox: &Outbox, peer: &PeerId, msg: &FromControlPlane) {
    match protocol::encode(msg) {
        Ok(frames) => outbox.send(peer, frames),
        Err(err) => warn!("cannot encode a reply: {err}"),
    }
}

/// Where a process on this host reaches `endpoint`: a wildcard address becomes loopback.
fn local_endpoint(endpoint: &str) -> String {
    endpoint
        .replacen("tcp://0.0.0.0:", "tcp://127.0.0.1:", 1)
        .replacen("tcp://[::]:", "tcp://[::1]:", 1)
        .replacen("tcp://*:", "tcp://127.0.0.1:", 1)
}

/// The command line of the own subworker: the control plane's task flags, its limits,
/// and its address; the key and the worker secret go in the environment.
fn own_worker_command(
    args: &ControlPlaneArgs,
    plugin_dir: &Path,
    log_level: LogLevel,
    address: &str,
    secret: WorkerSecret,
) -> anyhow::Result<ChildCommand> {
    let program = std::env::current_exe().context("cannot find the fastworker binary")?;
    let mut argv: Vec<std::ffi::OsString> = vec![
        "--log-level".into(),
        log_level.as_str().into(),
        "--plugin-dir".into(),
        plugin_dir.into(),
        "subworker".into(),
        "--worker-id".into(),
        args.worker_id.clone().into(),
        "--control-plane-address".into(),
        address.into(),
        "--concurrency".into(),
        args.concurrency.max(1).to_string().into(),
        "--max-reloads".into(),
        args.max_reloads.to_string().into(),
        "--max-message-size".into(),
        args.security.max_message_size.to_string().into(),
        "--max-payload-size".into(),
        args.security.max_payload_size.to_string().into(),
        "--shutdown-grace".into(),
        args.shutdown_grace.to_string().into(),
        "--hung-task-grace".into(),
        args.hung_task_grace.to_string().into(),
    ];
    if args.no_watch {
        argv.push("--no-watch".into());
    }
    argv.push("--task-modules".into());
    argv.extend(args.task_modules.iter().map(Into::into));
    let mut env = vec![("FASTWORKER_WORKER_SECRET".to_string(), secret.to_hex())];
    if let Some(file) = &args.security.auth_key_file {
        let file = std::path::absolute(file).unwrap_or_else(|_| file.clone());
        env.push((
            "FASTWORKER_AUTH_KEY_FILE".into(),
            file.to_string_lossy().into_owned(),
        ));
    }
    Ok(ChildCommand {
        program,
        args: argv,
        env,
        inherit: vec!["FASTWORKER_AUTH_KEY".into(), "FASTWORKER_LOG".into()],
    })
}

/// Runs the control plane until it is asked to stop.
pub async fn run(
    args: ControlPlaneArgs,
    plugin_dir: &Path,
    log_level: LogLevel,
) -> anyhow::Result<()> {
    let mut endpoints = vec![args.base_address.clone()];
    let sub_endpoint = subworker_endpoint(&args.base_address, args.subworker_port);
    if let Some(e) = &sub_endpoint {
        if e != &args.base_address {
            endpoints.push(e.clone());
        }
    }
    let mut listening: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    listening.push(&args.discovery_address);
    let transport_config = args
        .security
        .listen_config(&args.listen, &listening)
        .map_err(|e| anyhow::anyhow!(e))?;
    let mut server = transport::bind(&endpoints, &transport_config)
        .await
        .context("control plane cannot start")?;
    let mut discovery = transport::bind(
        std::slice::from_ref(&args.discovery_address),
        &transport_config,
    )
    .await
    .context("control plane cannot start its discovery endpoint")?;

    let announcement = Announcement {
        control_plane_id: args.worker_id.clone(),
        base_address: server.endpoints[0].clone(),
        subworker_address: server.endpoints.get(1).cloned(),
        protocol_version: PROTOCOL_VERSION,
    };
    let own_secret = WorkerSecret::new();
    let config = DispatcherConfig {
        id: args.worker_id.clone(),
        own_secret,
        inactive_after: Duration::from_secs_f64(args.inactive_after.max(0.1)),
        max_deliveries: args.max_deliveries.max(1),
        cache_size: args.result_cache_size as usize,
        cache_ttl: Duration::from_secs(args.result_cache_ttl),
        cache_max_bytes: args.result_cache_max_bytes,
        max_queued: args.max_queued,
        max_queued_bytes: args.max_queued_bytes,
        unserved_timeout: Duration::from_secs_f64(
            args.unserved_timeout
                .clamp(0.0, crate::protocol::MAX_SPAN_SECS),
        ),
        announcement: announcement.clone(),
        max_payload_bytes: args.security.max_payload_size,
        max_message_bytes: args.security.max_message_size,
        durable: args.data_dir.is_some(),
    };
    let mut dispatcher = Dispatcher::new(config, Now::current());
    let (mut committer, mut commits_done) = match &args.data_dir {
        Some(dir) => {
            let (committer, done) = open_store(dir, &mut dispatcher)?;
            (Some(committer), Some(done))
        }
        None => (None, None),
    };

    info!(
        id = %args.worker_id,
        "control plane listening on {} (discovery on {})",
        server.endpoints.join(", "),
        discovery.endpoints[0]
    );
    let (exit_tx, mut own_exits) = mpsc::unbounded_channel::<ChildExit>();
    let supervisor = if args.task_modules.is_empty() {
        info!("no --task-modules: every task runs on subworkers");
        None
    } else {
        let address = local_endpoint(&server.endpoints[0]);
        let command = own_worker_command(&args, plugin_dir, log_level, &address, own_secret)?;
        info!(
            "its own subworker (a child process) runs {} when no other subworker can",
            args.task_modules.join(" ")
        );
        Some(Supervisor::start(command, exit_tx))
    };
    let mut ready_pending = true;
    let started = tokio::time::Instant::now();
    if !args.no_gui {
        info!(
            "the dashboard is not built yet; nothing listens on http://{}:{}",
            args.gui_host, args.gui_port
        );
    }

    // Callback receivers are the user's own programs: guarded, but without the key.
    let callback_config = TransportConfig {
        key: None,
        ..transport_config.clone()
    };
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut announce = tokio::time::interval(Duration::from_secs(2));
    let mut sweep = tokio::time::interval(Duration::from_secs(60));
    let mut discovery_peers: Vec<PeerId> = Vec::new();
    let shutdown = crate::shutdown::shutdown_signal();
    tokio::pin!(shutdown);
    let mut stopping_until: Option<tokio::time::Instant> = None;
    let grace = Duration::from_secs_f64(args.shutdown_grace.max(0.0));

    loop {
        tokio::select! {
            event = server.events.recv() => match event {
                Some(ServerEvent::Message { peer, frames }) => {
                    match protocol::decode::<ToControlPlane>(&frames) {
                        Ok(msg) => dispatcher.handle(&peer, msg, Now::current()),
                        Err(err) => dispatcher.malformed(&peer, &err),
                    }
                }
                Some(ServerEvent::Unauthenticated { peer, .. }) => crate::probe::refuse_unauthenticated(&server.outbox, &peer),
                Some(ServerEvent::Disconnected(peer)) => dispatcher.peer_disconnected(&peer, Now::current()),
                None => anyhow::bail!("the control plane's socket closed"),
            },
            event = discovery.events.recv() => match event {
                Some(ServerEvent::Message { peer, frames }) => {
                    let answer = probe_reply(
                        &frames,
                        |request| {
                            matches!(request, ToControlPlane::Discover).then(|| {
                                if !discovery_peers.contains(&peer) {
                                    discovery_peers.push(peer.clone());
                                }
                                FromControlPlane::Announce(announcement.clone())
                            })
                        },
                        "this is the discovery endpoint: send Discover",
                    );
                    send(&discovery.outbox, &peer, &answer);
                }
                Some(ServerEvent::Unauthenticated { peer, .. }) => crate::probe::refuse_unauthenticated(&discovery.outbox, &peer),
                Some(ServerEvent::Disconnected(peer)) => discovery_peers.retain(|p| p != &peer),
                None => anyhow::bail!("the discovery socket closed"),
            },
            Some(exit) = own_exits.recv() => {
                if ready_pending && !exit.success {
                    anyhow::bail!(
                        "the control plane's own subworker (which runs --task-modules) failed at start ({}); its error is above",
                        exit.status
                    );
                }
                dispatcher.record_event(
                    "worker.exited",
                    &args.worker_id,
                    format!("the control plane's own subworker exited ({}) after {:.1?}; restarting it", exit.status, exit.ran_for),
                );
            }
            _ = tick.tick() => dispatcher.tick(Now::current()),
            Some(written) = next_commit(&mut commits_done) => {
                if let Some(committer) = committer.as_mut() {
                    for action in committer.finish(&mut dispatcher, written) {
                        perform(action, &server.outbox, &callback_config);
                    }
                }
            }
            _ = announce.tick() => {
                let msg = FromControlPlane::Announce(announcement.clone());
                for peer in &discovery_peers {
                    send(&discovery.outbox, peer, &msg);
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
        for action in releasable(&mut committer, &mut dispatcher) {
            perform(action, &server.outbox, &callback_config);
        }
        if ready_pending {
            let registered = supervisor.is_none() || dispatcher.own_worker_registered();
            if registered || started.elapsed() >= OWN_WORKER_STARTUP {
                if !registered {
                    warn!("the control plane's own subworker has not registered after {OWN_WORKER_STARTUP:?}; its tasks are unknown until it does");
                }
                ready_pending = false;
                println!(
                    "fastworker control plane `{}` ready on {}; submit with: fastworker submit --control-plane-address {} --task-name add --args 5 3",
                    args.worker_id, server.endpoints[0], server.endpoints[0]
                );
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
                for action in last {
                    perform(action, &server.outbox, &callback_config);
                }
                if committer.is_some() {
                    info!(
                        "kept {} queued, {} scheduled and {} running task(s) in the data directory for the next start",
                        dispatcher.queued(),
                        dispatcher.scheduled(),
                        dispatcher.in_flight()
                    );
                }
                // Give the writer a moment to flush the last replies.
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
fn open_store(dir: &Path, dispatcher: &mut Dispatcher) -> anyhow::Result<(Committer, CommitsDone)> {
    let started = std::time::Instant::now();
    let store = RedbStore::open(dir).map_err(|e| anyhow::anyhow!(e))?;
    let snapshot = store.load().map_err(|e| anyhow::anyhow!(e))?;
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

/// The next written commit, or never without a data directory.
async fn next_commit(done: &mut Option<CommitsDone>) -> Option<super::commit::Written> {
    match done {
        Some(done) => done.recv().await,
        None => std::future::pending().await,
    }
}

fn perform(action: Action, outbox: &Outbox, callbacks: &TransportConfig) {
    match action {
        Action::Send { peer, msg } => send(outbox, &peer, &msg),
        Action::Callback { callback, record } => {
            tokio::spawn(deliver_callback(callback, record, callbacks.clone()));
        }
    }
}

/// Sends a final record to a callback address: a few tries, never blocking dispatch.
async fn deliver_callback(
    callback: crate::protocol::Callback,
    record: crate::protocol::TaskRecord,
    config: TransportConfig,
) {
    let body = serde_json::json!({
        "task_id": record.task_id.to_string(),
        "status": record.status.as_str(),
        "result": crate::commands::render::value_json(&record),
        "error": record.error.as_ref().map(|e| e.to_string()),
        "started_at": record.started_ms,
        "completed_at": record.completed_ms,
        "callback_data": callback.data,
    });
    let payload = Bytes::from(body.to_string());
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
