//! The subworker: registers with the control plane, runs what it is handed, reports
//! outcomes, heartbeats, and reconnects when the control plane goes quiet.
//!
//! Liveness runs both ways: the subworker heartbeats every `--heartbeat-interval` and
//! the control plane acknowledges each one. A connection does not reconnect by
//! itself, so after three missed acknowledgements the subworker opens a new connection
//! (with backoff), registers again naming the tasks it is still running, and resends
//! outcomes it could not deliver.
//!
//! Shutdown sequence (Ctrl+C or SIGTERM): tell the control plane it is draining (no new
//! tasks), finish and report every task it holds, unregister, exit 0. Past
//! `--shutdown-grace` it unregisters with tasks still running (the control plane hands
//! them to others) and exits 0; a second Ctrl+C exits at once (130). Where it is in
//! that life (running, draining to exit, draining to restart) is a [`lifecycle::Lifecycle`].

pub mod lifecycle;

use std::{collections::VecDeque, path::PathBuf, time::Duration};

use tokio::{sync::mpsc, time::Instant};
use tracing::{debug, error, info, warn};

use self::lifecycle::{AfterDrain, Lifecycle};
use crate::{
    executor::Executor,
    plugin::watch::load_and_watch,
    protocol::{
        self, max_version, Assignment, FromControlPlane, Hello, LeaseToken, PeerKind, PluginEvent,
        Registration, RunningClaim, TaskEnvelope, TaskId, TaskOutcome, ToControlPlane, WorkerId,
        WorkerSecret, MIN_PROTOCOL_VERSION,
    },
    transport::{self, Connection, ServerEvent, TransportConfig},
    HostError,
};
use fastworker_client::discover;

/// How a subworker finds its control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlPlaneLocation {
    /// Connect to this endpoint.
    Address(String),
    /// Ask this discovery endpoint where the control plane is, at every (re)connect.
    Discovery(String),
}

/// Everything a subworker needs to run.
#[derive(Debug, Clone)]
pub struct SubworkerConfig {
    /// Its worker id.
    pub worker_id: String,
    /// Where its control plane is.
    pub control_plane: ControlPlaneLocation,
    /// Its own status endpoint, if wanted: where it listens and what that socket
    /// enforces.
    pub status_endpoint: Option<(String, TransportConfig)>,
    /// The task modules it loads.
    pub task_modules: Vec<String>,
    /// Where bare module names are looked up.
    pub plugin_dir: PathBuf,
    /// Tasks run at once.
    pub concurrency: u32,
    /// Calls of a task name whose recent calls averaged under this run on the async
    /// runtime, not a pool thread ([`Duration::ZERO`]: never).
    pub inline_below: Duration,
    /// How often it heartbeats.
    pub heartbeat_interval: Duration,
    /// Whether it watches its plugin files and reloads them.
    pub watch: bool,
    /// Plugin reloads before it restarts itself in place.
    pub max_reloads: u64,
    /// How long past its deadline a task that does not stop may run before the
    /// subworker restarts in place.
    pub hung_task_grace: Duration,
    /// How long every slot may be on the same tasks while prefetched tasks wait
    /// behind them before those are handed back.
    pub handback_after: Duration,
    /// How long a stop waits for running tasks.
    pub shutdown_grace: Duration,
    /// What the connection to the control plane enforces (key, message size).
    pub transport: TransportConfig,
    /// The largest result sent, in bytes.
    pub max_payload_bytes: u64,
}

/// Where a subworker restarting in place finds its worker secret.
const SECRET_ENV: &str = "FASTWORKER_WORKER_SECRET";

/// Where a subworker restarting in place finds the newest control-plane epoch it saw.
const EPOCH_ENV: &str = "FASTWORKER_NEWEST_EPOCH";

/// How long to wait for the control plane when (re)connecting.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The most outcomes one `Outcomes` message reports, and (roughly) the most value
/// bytes: a message over that closes the group.
const OUTCOMES_PER_MESSAGE: usize = 256;
const OUTCOME_BYTES_PER_MESSAGE: usize = 1 << 20;

/// While tasks wait, slots are looked at this often (for `--handback-after`).
const STALL_CHECK: Duration = Duration::from_millis(20);

/// Under load, outcomes are held back until this many are ready...
const REPORT_BATCH: usize = 64;
/// ...or the first of them has waited this long.
const REPORT_DELAY: Duration = Duration::from_micros(300);

/// Runs a subworker until it is asked to stop.
pub async fn run(args: SubworkerConfig) -> Result<(), HostError> {
    let mut plugins = load_and_watch(&args.task_modules, &args.plugin_dir, args.watch)?;
    let registry = plugins.registry.clone();
    if registry.load().task_names().is_empty() {
        warn!("no tasks loaded (--task-modules): this subworker will get no work");
    }
    let worker_id = WorkerId::new(args.worker_id.clone());
    // The secret that lets this worker id register again: issued by the control plane
    // in `Registered`, handed to our own restart in place through the environment.
    let mut secret = std::env::var(SECRET_ENV)
        .ok()
        .and_then(|hex| WorkerSecret::from_hex(&hex));

    let connect_config = args.transport.clone();
    let status_address = match &args.status_endpoint {
        Some((address, config)) => Some(serve_status(address, &worker_id, config).await?),
        None => None,
    };

    let (outcome_tx, mut outcomes) = mpsc::unbounded_channel::<TaskOutcome>();
    let executor = Executor::new(
        registry.clone(),
        outcome_tx,
        args.concurrency as usize,
        args.inline_below,
    )
    .map_err(HostError::Thread)?;
    let mut undelivered: VecDeque<TaskOutcome> = VecDeque::new();
    // The first stop signal drains (see the module docs); a second one exits at once.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::shutdown::shutdown_signal().await;
        let _ = stop_tx.send(true);
        crate::shutdown::shutdown_signal().await;
        warn!("a second stop signal: exiting now; the control plane hands this subworker's tasks to others");
        std::process::exit(130);
    });
    let stopping = stop_rx.clone();
    let shutdown = async move {
        let _ = stop_rx.changed().await;
    };
    tokio::pin!(shutdown);
    let grace = args.shutdown_grace;
    let mut life = Lifecycle::Running;
    let heartbeat_every = args.heartbeat_interval.max(Duration::from_millis(50));
    let mut backoff = Duration::from_millis(100);
    // The newest control-plane epoch seen in an assignment (kept across a restart in
    // place, like the secret).
    let mut newest_epoch: u64 = std::env::var(EPOCH_ENV)
        .ok()
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);

    // Outcomes not reported yet: sent at the end of a turn of the loop, or held back
    // briefly under load to go together (moved to `undelivered` at a reconnect).
    let mut ready: Vec<TaskOutcome> = Vec::new();

    'connection: loop {
        if *stopping.borrow() {
            life.stop(Instant::now(), grace);
        }
        let (mut conn, address) =
            match connect_to_control_plane(&args.control_plane, &connect_config).await {
                Ok(connected) => connected,
                Err(err) => {
                    if let ConnectError::Transport(transport::TransportError::Refused(reason)) =
                        &err
                    {
                        // Without a key, a refusal is this process's configuration. With
                        // one, whoever answered could not prove the key: maybe an impostor
                        // on the port while the control plane restarts, so keep trying.
                        if connect_config.key.is_none() {
                            error!("{reason}");
                            return Err(HostError::Refused(reason.clone()));
                        }
                        error!("{reason}; retrying in {backoff:?}");
                    } else {
                        warn!("{err}; retrying in {backoff:?}");
                    }
                    if wait_or_stop(backoff, &mut shutdown, &mut life, &executor, grace).await {
                        return finish_without_control_plane(&executor, &undelivered);
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
        // Claims first, then what finished since: a task that left `running` before
        // the claims were read has its outcome in the channel by then (the executor
        // does both under one lock), so nothing finished is missed and left for the
        // control plane to run again.
        // Tasks still waiting for a slot are not claimed: the control plane queues
        // them again (they may have run elsewhere meanwhile; running them here too
        // would run them twice).
        let dropped = executor.hand_back();
        if !dropped.is_empty() {
            info!(worker = %worker_id, "{} task(s) that had not started left to the control plane", dropped.len());
        }
        let claims = executor.running_claims();
        undelivered.extend(ready.drain(..));
        while let Ok(mut outcome) = outcomes.try_recv() {
            outcome.cap_value(args.max_payload_bytes);
            undelivered.push_back(outcome);
        }
        let mut registration = Registration::new(
            worker_id.clone(),
            registry.load().task_specs(),
            args.concurrency.max(1),
        );
        registration.address = status_address.clone();
        registration.secret = secret;
        registration.plugins = registry.load().plugin_infos();
        // Tasks finished but not reported yet count as held too, so the control plane
        // (restarted, say) waits for their outcomes instead of handing them to
        // someone else.
        registration.running = claims
            .into_iter()
            .chain(
                undelivered
                    .iter()
                    .map(|o| RunningClaim::new(o.task_id, o.lease)),
            )
            .collect();
        // Hello first, in the oldest version; the rest goes once the `Welcome` says
        // which version this connection speaks.
        let mut version = MIN_PROTOCOL_VERSION;
        // Whether this control plane reads `Outcomes` (its Welcome says so).
        let mut groups_outcomes = false;
        // Whether it hands out prefetched tasks and reads `Report` (its Welcome says so).
        let mut prefetch = false;
        // Prefetched tasks started and not reported yet (a new registration claims
        // them instead).
        let mut started: Vec<TaskId> = Vec::new();
        // When the outcomes held back (under load) are reported at the latest.
        let mut report_by: Option<Instant> = None;
        // Prefetched tasks handed back unstarted, to report.
        let mut returned: Vec<TaskId> = Vec::new();
        // How often slots stuck on long tasks are looked for while tasks wait.
        let mut stall_check = tokio::time::interval(STALL_CHECK);
        stall_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut after_welcome = vec![ToControlPlane::Register(registration)];
        if life.draining() {
            after_welcome.push(ToControlPlane::Draining);
        }
        let hello = ToControlPlane::Hello(Hello::new(PeerKind::Subworker, worker_id.to_string()));
        if !send(&mut conn, version, &hello).await {
            if wait_or_stop(backoff, &mut shutdown, &mut life, &executor, grace).await {
                return finish_without_control_plane(&executor, &undelivered);
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue 'connection;
        }
        // Registered only once the control plane says so (`Registered`): until then
        // outcomes wait, and the backoff is not reset, so a peer that accepts the
        // connection and then drops it cannot make this loop spin.
        let mut registered = false;
        let mut last_heard = Instant::now();
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        // After a pause, one late tick rather than a burst of them.
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_tick = Instant::now();

        loop {
            if *stopping.borrow() {
                life.stop(Instant::now(), grace);
            }
            let idle = executor.running() == 0
                && ready.is_empty()
                && executor.waiting() == 0
                && undelivered.is_empty()
                && outcomes.is_empty();
            if let Some(then) = life.after_drain().filter(|_| idle) {
                if then == AfterDrain::Restart {
                    // Not Unregister: the control plane keeps this worker's entry, so
                    // its tasks stay known (and queue) while the new process starts.
                    let _ = send(&mut conn, version, &ToControlPlane::Restarting).await;
                    info!(worker = %worker_id, "all tasks finished and reported; restarting");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    drop(conn);
                    return Err(restart_in_place(secret, newest_epoch));
                }
                let _ = send(&mut conn, version, &ToControlPlane::Unregister).await;
                info!(worker = %worker_id, "all tasks finished and reported; unregistered");
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Ok(());
            }
            tokio::select! {
                frames = conn.receiver.recv() => {
                    let frames = match frames {
                        Ok(f) => f,
                        Err(err) => {
                            warn!("connection to the control plane lost: {err}; reconnecting in {backoff:?}");
                            if wait_or_stop(backoff, &mut shutdown, &mut life, &executor, grace).await {
                                return finish_without_control_plane(&executor, &undelivered);
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            continue 'connection;
                        }
                    };
                    last_heard = Instant::now();
                    match protocol::decode::<FromControlPlane>(&frames) {
                        Ok(FromControlPlane::Assign { task, lease, epoch }) => {
                            take_assignments(
                                vec![Assignment::new(task, lease, false)],
                                epoch,
                                &mut newest_epoch,
                                &worker_id,
                                &executor,
                            );
                        }
                        Ok(FromControlPlane::Assigns { assignments, epoch }) => {
                            take_assignments(
                                assignments,
                                epoch,
                                &mut newest_epoch,
                                &worker_id,
                                &executor,
                            );
                        }
                        Ok(FromControlPlane::Welcome(welcome)) => {
                            if (MIN_PROTOCOL_VERSION..=max_version()).contains(&welcome.protocol_version) {
                                version = welcome.protocol_version;
                            }
                            let has = |feature: &str| {
                                version >= 2 && welcome.features.iter().any(|f| f == feature)
                            };
                            groups_outcomes = has(protocol::OUTCOMES_BATCH_FEATURE);
                            prefetch = has(protocol::PREFETCH_FEATURE);
                            debug!(version, prefetch, "the control plane welcomed this subworker");
                            let mut ok = true;
                            for mut msg in std::mem::take(&mut after_welcome) {
                                if let ToControlPlane::Register(registration) = &mut msg {
                                    registration.prefetch = prefetch;
                                }
                                ok &= send(&mut conn, version, &msg).await;
                            }
                            if !ok {
                                continue 'connection;
                            }
                        }
                        Ok(FromControlPlane::Registered { secret: issued }) => {
                            secret = Some(issued);
                            if !registered {
                                registered = true;
                                backoff = Duration::from_millis(100);
                                info!(worker = %worker_id, "registered with the control plane at {address}");
                                while let Some(outcome) = undelivered.front() {
                                    if !send(&mut conn, version, &ToControlPlane::Outcome(outcome.clone())).await {
                                        continue 'connection;
                                    }
                                    undelivered.pop_front();
                                }
                            }
                        }
                        Ok(FromControlPlane::CancelTask { task_id }) => {
                            if executor.cancel(&task_id) {
                                info!(task = %task_id, "cancel requested");
                            } else if executor.cancel_waiting(&task_id) {
                                info!(task = %task_id, "cancelled before it started");
                            }
                        }
                        Ok(FromControlPlane::Refused { reason }) => {
                            let reason = protocol::for_people(&reason, 1024);
                            error!("the control plane refused this subworker: {reason}");
                            return Err(HostError::Refused(reason));
                        }
                        Ok(FromControlPlane::Rejected { error, .. }) => {
                            if error.message == protocol::HELLO_FIRST {
                                warn!("the control plane does not know this connection; registering again in {backoff:?}");
                                if wait_or_stop(backoff, &mut shutdown, &mut life, &executor, grace).await {
                                    return finish_without_control_plane(&executor, &undelivered);
                                }
                                backoff = (backoff * 2).min(Duration::from_secs(5));
                                continue 'connection;
                            }
                            warn!("control plane: {error}");
                        }
                        Ok(_) => {}
                        Err(err) => warn!("unreadable message from the control plane: {err}"),
                    }
                }
                Some(outcome) = outcomes.recv() => ready.push(outcome),
                _ = heartbeat.tick() => {
                    let gap = last_tick.elapsed();
                    last_tick = Instant::now();
                    if gap > heartbeat_every * 2 + Duration::from_millis(500) {
                        // This process was paused (SIGSTOP, a long stall): the silence
                        // was ours, not the control plane's. The connection is checked
                        // (this heartbeat must be answered) before it is replaced, so
                        // the tasks running here stay here.
                        info!(worker = %worker_id, "this process was paused for {gap:.1?}; checking the connection before replacing it");
                        last_heard = Instant::now();
                        if prefetch {
                            // The control plane may have given them to others meanwhile.
                            returned.extend(executor.hand_back());
                        }
                    }
                    if let Some(stuck) = executor.longest_overdue() {
                        if stuck > args.hung_task_grace && life.takes_tasks() {
                            warn!(
                                worker = %worker_id,
                                "{} task(s) ignored their timeout for {stuck:?}: draining, then restarting in place to free their threads",
                                executor.overdue()
                            );
                            life.restart();
                            if !send(&mut conn, version, &ToControlPlane::Draining).await {
                                continue 'connection;
                            }
                        }
                    }
                    if last_heard.elapsed() > heartbeat_every * 3 + Duration::from_secs(1) {
                        warn!("the control plane has been silent for {:?}; reconnecting", last_heard.elapsed());
                        continue 'connection;
                    }
                    let running = executor.running() as u32;
                    let msg = ToControlPlane::Heartbeat {
                        running,
                        free_slots: args
                            .concurrency
                            .max(1)
                            .saturating_sub(running + executor.waiting() as u32),
                    };
                    if !send(&mut conn, version, &msg).await {
                        continue 'connection;
                    }
                }
                Some(report) = plugins.reports.recv() => {
                    report.log(worker_id.as_str());
                    let mut ok = send(&mut conn, version, &ToControlPlane::PluginEvent(PluginEvent::from(&report))).await;
                    if report.changed_tasks() {
                        let tasks = registry.load().task_specs();
                        ok &= send(&mut conn, version, &ToControlPlane::TasksChanged { tasks }).await;
                    }
                    let reloads = plugins.reloads();
                    if reloads >= args.max_reloads && life.takes_tasks() {
                        info!(
                            worker = %worker_id,
                            "{reloads} plugin reloads (--max-reloads {}): draining, then restarting in place",
                            args.max_reloads
                        );
                        life.restart();
                        ok &= send(&mut conn, version, &ToControlPlane::Draining).await;
                    }
                    if !ok {
                        continue 'connection;
                    }
                }
                _ = tokio::time::sleep_until(report_by.unwrap_or_else(Instant::now)), if report_by.is_some() => {}
                _ = stall_check.tick(), if prefetch && executor.waiting() > 0 => {
                    if executor.stalled(args.handback_after) {
                        let back = executor.hand_back();
                        debug!(count = back.len(), "every slot is on a long task: handing back the tasks waiting behind them");
                        returned.extend(back);
                    }
                }
                _ = tokio::time::sleep_until(life.give_up_at().unwrap_or_else(Instant::now)), if life.give_up_at().is_some() => {
                    warn!(
                        worker = %worker_id,
                        "--shutdown-grace of {grace:?} ran out with {} task(s) running: handing them back to the control plane and exiting",
                        executor.running()
                    );
                    // Unregister: the control plane queues what this worker held for others.
                    let _ = send(&mut conn, version, &ToControlPlane::Unregister).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Ok(());
                }
                _ = &mut shutdown, if life.takes_tasks() => {
                    info!(
                        worker = %worker_id,
                        "shutting down: finishing {} running tasks, taking no more",
                        executor.running()
                    );
                    life.stop(Instant::now(), grace);
                    let _ = send(&mut conn, version, &ToControlPlane::Draining).await;
                }
            }
            if prefetch {
                started.extend(executor.take_started());
                if !life.takes_tasks() {
                    // Draining: what has not started goes back, to run elsewhere now.
                    returned.extend(executor.hand_back());
                }
            }
            if ready.is_empty() && started.is_empty() && returned.is_empty() {
                continue;
            }
            // Under load more outcomes are ready: report them together when the
            // control plane reads `Outcomes` or `Report`.
            let mut bytes: usize = ready.iter().map(|o| o.value.len()).sum();
            if groups_outcomes || prefetch {
                while ready.len() < OUTCOMES_PER_MESSAGE && bytes < OUTCOME_BYTES_PER_MESSAGE {
                    match outcomes.try_recv() {
                        Ok(more) => {
                            bytes += more.value.len();
                            ready.push(more);
                        }
                        Err(_) => break,
                    }
                }
            }
            // Under load (prefetched tasks wait here, so more outcomes follow within
            // microseconds) outcomes are held back briefly to share one report: fewer
            // messages for both sides. A lone task, or the last of a burst, is
            // reported at once.
            if prefetch
                && registered
                && returned.is_empty()
                && executor.waiting() > 0
                && ready.len() < REPORT_BATCH
                && bytes < OUTCOME_BYTES_PER_MESSAGE
                && !life.draining()
            {
                let by = *report_by.get_or_insert_with(|| Instant::now() + REPORT_DELAY);
                if Instant::now() < by {
                    continue;
                }
            }
            report_by = None;
            for outcome in &mut ready {
                outcome.cap_value(args.max_payload_bytes);
            }
            if !registered {
                undelivered.extend(ready.drain(..));
                continue;
            }
            let msg = if prefetch {
                ToControlPlane::Report {
                    started: std::mem::take(&mut started),
                    outcomes: std::mem::take(&mut ready),
                    run_ns: executor.take_run_times(),
                    returned: std::mem::take(&mut returned),
                }
            } else if ready.len() == 1 {
                ToControlPlane::Outcome(ready.remove(0))
            } else {
                ToControlPlane::Outcomes {
                    outcomes: std::mem::take(&mut ready),
                }
            };
            if !send(&mut conn, version, &msg).await {
                // Kept for the next connection (moved back, not cloned up front).
                match msg {
                    ToControlPlane::Outcome(outcome) => undelivered.push_back(outcome),
                    ToControlPlane::Outcomes { outcomes }
                    | ToControlPlane::Report { outcomes, .. } => undelivered.extend(outcomes),
                    _ => {}
                }
                continue 'connection;
            }
        }
    }
}

/// Takes tasks the control plane handed out under `epoch`: to the executor (they
/// start as slots free up), or refused when a newer control plane has taken over.
fn take_assignments(
    assignments: Vec<Assignment>,
    epoch: u64,
    newest_epoch: &mut u64,
    worker_id: &WorkerId,
    executor: &Executor,
) {
    if epoch < *newest_epoch {
        for Assignment { task, lease, .. } in assignments {
            let reason = format!(
                "subworker {worker_id} refused this assignment of epoch {epoch}: a control plane of epoch {newest_epoch} has taken over (if this control plane's data directory was replaced, restart the subworker)"
            );
            warn!(task = %task.id, "{reason}");
            // Said, not dropped: the sender learns it is fenced off, and the task does
            // not wait for an answer forever.
            executor.report(refusal(&task, lease, reason));
        }
        return;
    }
    *newest_epoch = epoch;
    for Assignment {
        task,
        lease,
        prefetched,
        ..
    } in assignments
    {
        debug!(task = %task.id, name = %task.name, epoch, prefetched, "assigned");
        executor.enqueue(task, lease, prefetched);
    }
}

/// The outcome that refuses `task`: `rejected`, with `reason`.
fn refusal(task: &TaskEnvelope, lease: LeaseToken, reason: String) -> TaskOutcome {
    crate::executor::failure(
        task,
        lease,
        crate::task_error::TaskError::new(crate::task_error::ErrorKind::Rejected, reason),
        protocol::now_ms(),
    )
}

/// Replaces this process with a fresh copy of itself, same arguments (so the same
/// worker id). Old plugin versions stay mapped until the process is replaced; this is
/// how `--max-reloads` bounds that memory. Returns only if the exec failed.
fn restart_in_place(secret: Option<WorkerSecret>, newest_epoch: u64) -> HostError {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // /proc/self/exe still opens the running binary after a rebuild replaced the
        // file (current_exe() would then name ".../fastworker (deleted)").
        let proc_exe = std::path::Path::new("/proc/self/exe");
        let exe = if proc_exe.exists() {
            proc_exe.to_path_buf()
        } else {
            match std::env::current_exe() {
                Ok(exe) => exe,
                Err(err) => return HostError::Restart(err.to_string()),
            }
        };
        info!("restarting in place: {}", exe.display());
        let mut command = std::process::Command::new(exe);
        command.args(std::env::args_os().skip(1));
        if let Some(secret) = secret {
            // The environment, not argv: other users cannot read it in /proc.
            command.env(SECRET_ENV, secret.to_hex());
        }
        command.env(EPOCH_ENV, newest_epoch.to_string());
        // A control plane's own subworker dies with it, restarted or not.
        crate::child::still_dies_with_parent(&mut command);
        let err = command.exec();
        HostError::Restart(err.to_string())
    }
    #[cfg(not(unix))]
    {
        HostError::Restart("it is only supported on Unix; restart this subworker".into())
    }
}

/// Sends `msg` in protocol `version`; false when the connection failed.
async fn send(conn: &mut Connection, version: u8, msg: &ToControlPlane) -> bool {
    match protocol::encode_as(version, msg) {
        Ok(frames) => match conn.sender.send(frames).await {
            Ok(()) => true,
            Err(err) => {
                warn!("send to the control plane failed: {err}");
                false
            }
        },
        Err(err) => {
            warn!("cannot encode a message: {err}");
            true
        }
    }
}

/// Why a (re)connect to the control plane failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    /// Discovery did not answer.
    #[error("cannot find the control plane: {0}")]
    Discovery(fastworker_client::ClientError),
    /// The connection failed or was refused.
    #[error(transparent)]
    Transport(transport::TransportError),
}

/// Finds the control plane (directly or through discovery) and connects to it.
async fn connect_to_control_plane(
    location: &ControlPlaneLocation,
    config: &TransportConfig,
) -> Result<(Connection, String), ConnectError> {
    let address = match location {
        ControlPlaneLocation::Address(address) => address.clone(),
        ControlPlaneLocation::Discovery(discovery) => {
            let announcement = discover(discovery, CONNECT_TIMEOUT, config)
                .await
                .map_err(ConnectError::Discovery)?;
            announcement
                .subworker_address
                .unwrap_or(announcement.base_address)
        }
    };
    let conn = transport::connect(&address, CONNECT_TIMEOUT, config)
        .await
        .map_err(ConnectError::Transport)?;
    Ok((conn, address))
}

/// Sleeps `delay`, noticing a shutdown request. True when the subworker should exit
/// now: asked to stop while it holds no tasks.
async fn wait_or_stop(
    delay: Duration,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    life: &mut Lifecycle,
    executor: &Executor,
    grace: Duration,
) -> bool {
    if life.takes_tasks() {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.as_mut() => life.stop(Instant::now(), grace),
        }
    } else {
        tokio::time::sleep(delay).await;
    }
    life.draining() && (executor.running() == 0 || life.gave_up(Instant::now()))
}

fn finish_without_control_plane(
    executor: &Executor,
    undelivered: &VecDeque<TaskOutcome>,
) -> Result<(), HostError> {
    if !undelivered.is_empty() || executor.running() > 0 {
        warn!(
            "stopping without a control plane: {} outcomes could not be reported",
            undelivered.len()
        );
    }
    info!("subworker stopped");
    Ok(())
}

/// Binds the subworker's own status endpoint at `address`: it answers `Hello` and
/// `Ping`, so an operator (or the dashboard) can check it directly.
async fn serve_status(
    address: &str,
    worker_id: &WorkerId,
    config: &TransportConfig,
) -> Result<String, HostError> {
    let mut server = transport::bind(&[address.to_string()], config)
        .await
        .map_err(|e| {
            HostError::transport(
                format!("subworker {worker_id} cannot use --base-address {address}"),
                e,
            )
        })?;
    let endpoint = server.endpoints[0].clone();
    let id = worker_id.to_string();
    tokio::spawn(async move {
        while let Some(event) = server.events.recv().await {
            let (peer, frames) = match event {
                ServerEvent::Message { peer, frames } => (peer, frames),
                ServerEvent::Unauthenticated { peer, .. } => {
                    crate::probe::refuse_unauthenticated(&server.outbox, &peer);
                    continue;
                }
                ServerEvent::Disconnected(_) => continue,
            };
            let answer = crate::probe::probe_reply(
                &frames,
                |request, version| {
                    matches!(request, ToControlPlane::Hello(_)).then(|| {
                        let mut welcome = protocol::Welcome::new(version, id.clone());
                        welcome.features = vec!["status".into()];
                        FromControlPlane::Welcome(welcome)
                    })
                },
                "a subworker's status endpoint answers Hello and Ping only; submit tasks to the control plane",
            );
            if let Some(frames) = answer {
                server.outbox.send(&peer, frames);
            }
        }
    });
    info!(worker = %worker_id, "status endpoint on {endpoint}");
    Ok(endpoint)
}
