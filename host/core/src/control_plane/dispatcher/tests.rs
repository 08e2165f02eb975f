use std::collections::HashMap;

use bytes::Bytes;

use super::*;
use crate::protocol::{
    Announcement, Codec, Hello, Priority, Registration, RunningClaim, PROTOCOL_VERSION,
};

fn spec(name: &str) -> TaskSpec {
    {
        let mut value = TaskSpec::new(name);
        value.max_retries = 0;
        value.retry_delay_secs = 1.0;
        value.retry_backoff = 2.0;
        value.retry_backoff_max_secs = 10.0;
        value.timeout_secs = None;
        value.periodic = None;
        value.priority = Priority::Normal;
        value
    }
}

/// The secret of the control plane's own subworker in these tests.
const OWN_SECRET: WorkerSecret = WorkerSecret::from_bytes([7; 32]);

/// The connection of the control plane's own subworker in these tests.
const OWN_PEER: &[u8] = b"own";

fn config() -> DispatcherConfig {
    DispatcherConfig {
        id: "cp".into(),
        own_secret: OWN_SECRET,
        inactive_after: Duration::from_secs(30),
        max_deliveries: 3,
        prefetch_per_slot: super::super::workers::MAX_PREFETCH_PER_SLOT,
        cache_size: 100,
        cache_ttl: Duration::from_secs(60),
        cache_max_bytes: 1 << 20,
        max_queued: 1000,
        max_queued_bytes: 1 << 20,
        unserved_timeout: Duration::from_secs(300),
        announcement: {
            let mut value = Announcement::new("cp", "tcp://127.0.0.1:1");
            value.subworker_address = None;
            value.protocol_version = PROTOCOL_VERSION;
            value
        },
        max_payload_bytes: 1024,
        max_message_bytes: 4096,
        durable: false,
        observe: false,
    }
}

fn hello(d: &mut Dispatcher, peer: &PeerId, kind: PeerKind, now: Now) {
    d.handle(
        peer,
        ToControlPlane::Hello({
            let mut value = Hello::new(kind, "x");
            value.protocol_version = PROTOCOL_VERSION;
            value.features = vec![];
            value
        }),
        now,
    );
}

/// A dispatcher with `config` whose own subworker (one slot) serves `own`, if any.
fn dispatcher(config: DispatcherConfig, own: Vec<TaskSpec>, now: Now) -> Dispatcher {
    let mut d = Dispatcher::new(config, now);
    if !own.is_empty() {
        let peer = PeerId::named(OWN_PEER);
        hello(&mut d, &peer, PeerKind::Subworker, now);
        d.handle(
            &peer,
            ToControlPlane::Register(registration_of("cp", own, Some(OWN_SECRET))),
            now,
        );
        assert!(d.own_worker_registered());
        d.take_actions();
    }
    d
}

/// The control plane's own subworker reports `outcome`.
fn own_outcome(d: &mut Dispatcher, outcome: TaskOutcome, now: Now) {
    d.handle(
        &PeerId::named(OWN_PEER),
        ToControlPlane::Outcome(outcome),
        now,
    );
}

/// A dispatcher with `config` and own-subworker tasks `specs`, and a client that said
/// hello.
fn with_client(config: DispatcherConfig, specs: Vec<TaskSpec>) -> (Now, Dispatcher, PeerId) {
    let now = Now::current();
    let mut d = dispatcher(config, specs, now);
    let client = PeerId::named(b"client");
    hello(&mut d, &client, PeerKind::Client, now);
    (now, d, client)
}

/// Registers subworker `id` on `peer`, showing the secret a real subworker would hold
/// when the id is already known (it re-registers after a reconnect or a restart).
fn register(d: &mut Dispatcher, peer: &PeerId, id: &str, concurrency: u32, now: Now) {
    hello(d, peer, PeerKind::Subworker, now);
    let secret = d.workers().get(&WorkerId::new(id)).map(|w| w.secret);
    d.handle(
        peer,
        ToControlPlane::Register({
            let mut value = registration_of(id, vec![spec("add"), spec("slow")], secret);
            value.concurrency = concurrency;
            value
        }),
        now,
    );
}

/// Subworker `id` serving `tasks` with one slot, showing `secret`, claiming nothing.
fn registration_of(id: &str, tasks: Vec<TaskSpec>, secret: Option<WorkerSecret>) -> Registration {
    {
        let mut value = Registration::new(WorkerId::new(id), tasks, 1);
        value.address = None;
        value.pid = 1;
        value.secret = secret;
        value.running = vec![];
        value
    }
}

/// Subworker `id` (serving `slow`) registering again with `secret`, claiming `task`
/// under `lease`.
fn registration(
    id: &str,
    secret: Option<WorkerSecret>,
    task: TaskId,
    lease: LeaseToken,
) -> ToControlPlane {
    ToControlPlane::Register({
        let mut value = registration_of(id, vec![spec("slow")], secret);
        value.running = vec![RunningClaim::new(task, lease)];
        value
    })
}

thread_local! {
    /// The lease of each task's latest assignment seen by `local_runs` or `assigns`
    /// (each test runs on its own thread), so outcomes can carry it.
    static LEASES: std::cell::RefCell<std::collections::HashMap<TaskId, LeaseToken>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

fn remember(id: TaskId, lease: LeaseToken) {
    LEASES.with(|l| l.borrow_mut().insert(id, lease));
}

fn lease_of(id: TaskId) -> LeaseToken {
    LEASES
        .with(|l| l.borrow().get(&id).copied())
        .unwrap_or_default()
}

fn task(name: &str, priority: Priority) -> TaskEnvelope {
    let mut t = TaskEnvelope::new(name, Codec::Json, Bytes::from_static(b"[1,2]"));
    t.priority = priority;
    t
}

fn submit(d: &mut Dispatcher, client: &PeerId, t: TaskEnvelope, now: Now) {
    d.handle(
        client,
        ToControlPlane::Submit {
            request_id: 1,
            task: t,
            wait: true,
        },
        now,
    );
}

/// The tasks handed to the control plane's own subworker.
fn local_runs(actions: &[Action]) -> Vec<TaskEnvelope> {
    assigns(actions)
        .into_iter()
        .filter(|(peer, _)| *peer == PeerId::named(OWN_PEER))
        .map(|(_, task)| task)
        .collect()
}

fn assigns(actions: &[Action]) -> Vec<(PeerId, TaskEnvelope)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                peer,
                msg: FromControlPlane::Assign { task, lease, .. },
            } => {
                remember(task.id, *lease);
                Some((*peer, task.clone()))
            }
            _ => None,
        })
        .collect()
}

fn results(actions: &[Action]) -> Vec<TaskRecord> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                msg: FromControlPlane::Result(r),
                ..
            } => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn success(t: &TaskEnvelope, payload_bytes: &'static [u8]) -> TaskOutcome {
    {
        let mut value = TaskOutcome::new(
            t.id,
            t.delivery_count,
            lease_of(t.id),
            AttemptResult::Success,
        );
        value.started_ms = 1;
        value.completed_ms = 2;
        value.value = Bytes::from_static(payload_bytes);
        value
    }
}

fn failure(t: &TaskEnvelope) -> TaskOutcome {
    {
        let mut value = success(t, b"");
        value.result = AttemptResult::Failure(TaskError::new(ErrorKind::Failed, "nope"));
        value
    }
}

#[test]
fn runs_locally_when_no_subworker_and_pushes_the_result() {
    let (now, mut d, client) = with_client(config(), vec![spec("add")]);
    let t = task("add", Priority::Normal);
    submit(&mut d, &client, t.clone(), now);
    let run = local_runs(&d.take_actions());
    assert_eq!(run.len(), 1);
    assert_eq!(run[0].delivery_count, 1);
    own_outcome(&mut d, success(&run[0], b"3"), now);
    let res = results(&d.take_actions());
    assert_eq!(res.len(), 1);
    assert_eq!(res[0].task_id, t.id);
    assert_eq!(res[0].status, TaskStatus::Success);
    assert_eq!(&res[0].value[..], b"3");
    assert_eq!(res[0].worker_id, Some(WorkerId::new("cp")));
}

#[test]
fn unknown_task_and_message_before_hello_are_rejected() {
    let now = Now::current();
    let mut d = dispatcher(config(), vec![spec("add")], now);
    let client = PeerId::named(b"client");
    submit(&mut d, &client, task("add", Priority::Normal), now);
    assert!(matches!(
        &d.take_actions()[..],
        [Action::Send {
            msg: FromControlPlane::Rejected { .. },
            ..
        }]
    ));
    hello(&mut d, &client, PeerKind::Client, now);
    d.take_actions();
    submit(&mut d, &client, task("nope", Priority::Normal), now);
    match &d.take_actions()[..] {
        [Action::Send {
            msg: FromControlPlane::Rejected { error, .. },
            ..
        }] => {
            assert_eq!(error.kind, ErrorKind::UnknownTask);
            assert!(error.message.contains("nope") && error.message.contains("add"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn strict_priority_when_the_only_executor_is_saturated() {
    let (now, mut d, client) = with_client(config(), vec![spec("add")]);
    let first = task("add", Priority::Low);
    submit(&mut d, &client, first, now);
    let mut running = local_runs(&d.take_actions()).remove(0);
    let order = [
        Priority::Low,
        Priority::Normal,
        Priority::Critical,
        Priority::High,
        Priority::Critical,
    ];
    let mut ids = HashMap::new();
    for p in order {
        let t = task("add", p);
        ids.insert(t.id, p);
        submit(&mut d, &client, t, now);
    }
    assert!(
        local_runs(&d.take_actions()).is_empty(),
        "the one slot is busy"
    );
    let mut seen = Vec::new();
    for _ in 0..order.len() {
        own_outcome(&mut d, success(&running, b"0"), now);
        let next = local_runs(&d.take_actions());
        assert_eq!(next.len(), 1);
        running = next[0].clone();
        seen.push(ids[&running.id]);
    }
    assert_eq!(
        seen,
        [
            Priority::Critical,
            Priority::Critical,
            Priority::High,
            Priority::Normal,
            Priority::Low
        ]
    );
}

#[test]
fn subworkers_are_preferred_and_least_loaded_first() {
    let now = Now::current();
    let mut d = dispatcher(config(), vec![spec("add")], now);
    for (peer, id) in [(&b"p1"[..], "sw1"), (b"p2", "sw2"), (b"p3", "sw3")] {
        register(&mut d, &PeerId::named(peer), id, 2, now);
    }
    let client = PeerId::named(b"client");
    hello(&mut d, &client, PeerKind::Client, now);
    d.take_actions();
    for _ in 0..6 {
        submit(&mut d, &client, task("add", Priority::Normal), now);
    }
    let actions = d.take_actions();
    assert!(local_runs(&actions).is_empty());
    let mut per_peer: HashMap<PeerId, usize> = HashMap::new();
    for (peer, _) in assigns(&actions) {
        *per_peer.entry(peer).or_default() += 1;
    }
    assert_eq!(per_peer.len(), 3);
    assert!(per_peer.values().all(|&n| n == 2), "{per_peer:?}");
    // Every subworker slot is full: the next task runs on the control plane itself.
    submit(&mut d, &client, task("add", Priority::Normal), now);
    assert_eq!(local_runs(&d.take_actions()).len(), 1);
}

#[test]
fn a_lost_subworkers_tasks_are_redelivered_then_fail_after_max_deliveries() {
    let (now, mut d, client) = with_client(config(), vec![]);
    let t = task("add", Priority::Normal);
    let mut worker_no = 0u8;
    let mut new_worker = |d: &mut Dispatcher| {
        worker_no += 1;
        let peer = PeerId::named([worker_no]);
        register(d, &peer, &format!("sw{worker_no}"), 1, now);
        peer
    };
    let p1 = new_worker(&mut d);
    submit(&mut d, &client, t.clone(), now);
    let a = assigns(&d.take_actions());
    assert_eq!(a[0].1.delivery_count, 1);
    d.peer_disconnected(&p1, now);
    let p2 = new_worker(&mut d);
    let a = assigns(&d.take_actions());
    assert_eq!((a[0].0, a[0].1.delivery_count), (p2, 2));
    // A stale outcome from the first delivery is ignored.
    d.handle(
        &p2,
        ToControlPlane::Outcome(success(
            &{
                let mut value = t.clone();
                value.delivery_count = 1;
                value
            },
            b"x",
        )),
        now,
    );
    assert!(results(&d.take_actions()).is_empty());
    d.peer_disconnected(&p2, now);
    let p3 = new_worker(&mut d);
    let a = assigns(&d.take_actions());
    assert_eq!(a[0].1.delivery_count, 3);
    d.peer_disconnected(&p3, now);
    let res = results(&d.take_actions());
    assert_eq!(res.len(), 1);
    assert_eq!(res[0].status, TaskStatus::Failure);
    assert_eq!(res[0].error.as_ref().unwrap().kind, ErrorKind::WorkerLost);
}

#[test]
fn failures_retry_with_delay_then_end_after_max_retries_plus_one_attempts() {
    let (now, mut d, client) = with_client(config(), vec![spec("add")]);
    let mut t = task("add", Priority::Normal);
    t.retry.max_retries = Some(2);
    submit(&mut d, &client, t, now);
    let mut clock = now;
    let mut attempts = 0;
    loop {
        let run = local_runs(&d.take_actions());
        if run.is_empty() {
            break;
        }
        attempts += 1;
        assert_eq!(run[0].attempt, attempts);
        own_outcome(&mut d, failure(&run[0]), clock);
        let after = d.take_actions();
        if !results(&after).is_empty() {
            assert_eq!(results(&after)[0].attempts, 3);
            break;
        }
        // Not before its delay.
        d.tick(clock.plus(Duration::from_millis(500)));
        assert!(local_runs(&d.take_actions()).is_empty());
        clock = clock.plus(Duration::from_secs(5));
        d.tick(clock);
        let due = local_runs(&d.actions.clone());
        assert_eq!(due.len(), 1, "retry dispatched once due");
    }
    assert_eq!(attempts, 3);
}

#[test]
fn countdown_waits_and_cancel_prevents_the_run() {
    let (now, mut d, client) = with_client(config(), vec![spec("add")]);
    let mut later = task("add", Priority::Normal);
    later.not_before_ms = now.unix_ms + 2_000;
    let mut cancelled = task("add", Priority::Normal);
    cancelled.not_before_ms = now.unix_ms + 2_000;
    submit(&mut d, &client, later.clone(), now);
    submit(&mut d, &client, cancelled.clone(), now);
    assert!(local_runs(&d.take_actions()).is_empty());
    d.handle(
        &client,
        ToControlPlane::Cancel {
            request_id: 9,
            task_id: cancelled.id,
        },
        now,
    );
    let acts = d.take_actions();
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Send {
            msg: FromControlPlane::CancelReply {
                outcome: CancelOutcome::Cancelled,
                ..
            },
            ..
        }
    )));
    d.tick(now.plus(Duration::from_millis(1_999)));
    assert!(local_runs(&d.take_actions()).is_empty());
    d.tick(now.plus(Duration::from_millis(2_000)));
    let run = local_runs(&d.take_actions());
    assert_eq!(run.len(), 1);
    assert_eq!(run[0].id, later.id);
    d.tick(now.plus(Duration::from_secs(10)));
    assert!(local_runs(&d.take_actions()).is_empty(), "never twice");
}

#[test]
fn a_task_past_max_deliveries_is_dead_lettered_and_can_be_replayed() {
    let (now, mut d, client) = with_client(config(), vec![]);
    let t = task("add", Priority::Normal);
    for n in 1..=3u8 {
        let peer = PeerId::named([n]);
        register(&mut d, &peer, &format!("sw{n}"), 1, now);
        if n == 1 {
            submit(&mut d, &client, t.clone(), now);
        }
        d.take_actions();
        d.peer_disconnected(&peer, now);
    }
    let dead = d.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].task_id, t.id);
    assert_eq!(dead[0].delivery_count, 3);
    d.take_actions();

    d.handle(&client, ToControlPlane::DeadLetters { request_id: 4 }, now);
    assert!(matches!(
        &d.take_actions()[..],
        [Action::Send { msg: FromControlPlane::DeadLetterList { records, .. }, .. }] if records.len() == 1
    ));
    let peer = PeerId::named(b"good");
    register(&mut d, &peer, "good", 1, now);
    d.take_actions();
    d.handle(
        &client,
        ToControlPlane::Replay {
            request_id: 5,
            task_id: t.id,
        },
        now,
    );
    let actions = d.take_actions();
    let a = assigns(&actions);
    assert_eq!(a.len(), 1, "{actions:?}");
    assert_eq!(
        (a[0].1.id, a[0].1.delivery_count, a[0].1.attempt),
        (t.id, 1, 1)
    );
    assert!(d.dead_letters().is_empty());
    d.handle(&peer, ToControlPlane::Outcome(success(&a[0].1, b"3")), now);
    d.handle(
        &client,
        ToControlPlane::Status {
            request_id: 6,
            task_id: t.id,
            wait: false,
        },
        now,
    );
    assert!(d.take_actions().iter().any(|a| matches!(a,
        Action::Send { msg: FromControlPlane::StatusReply { record: Some(r), .. }, .. } if r.status == TaskStatus::Success)));
}

#[test]
fn periodic_tasks_fire_from_subworker_schedules_only_once_per_tick() {
    let now = Now::current();
    let mut d = dispatcher(config(), vec![], now);
    let periodic = |name: &str| {
        let mut value = spec(name);
        value.periodic = Some({
            let mut value = crate::protocol::PeriodicSpec::interval(0.0);
            value.interval_secs = Some(10.0);
            value.cron = None;
            value.repeat_count = Some(2);
            value.repeat_until_unix = None;
            value
        });
        value.priority = Priority::High;
        value
    };
    for n in 1..=2u8 {
        let peer = PeerId::named([n]);
        hello(&mut d, &peer, PeerKind::Subworker, now);
        d.handle(
            &peer,
            ToControlPlane::Register(registration_of(
                &format!("sw{n}"),
                vec![periodic("beat")],
                None,
            )),
            now,
        );
    }
    // It fires when the schedule is first seen (the first registration).
    d.tick(now);
    let first = assigns(&d.take_actions());
    assert_eq!(first.len(), 1, "one run at start-up, not one per subworker");
    assert_eq!(
        first[0].1.priority,
        Priority::High,
        "queued at the plugin's priority"
    );
    let (peer, run) = first[0].clone();
    // Still running at the next tick: skipped.
    d.tick(now.plus(Duration::from_secs(10)));
    assert!(assigns(&d.take_actions()).is_empty());
    d.handle(
        &peer,
        ToControlPlane::Outcome(success(&run, b"1")),
        now.plus(Duration::from_secs(11)),
    );
    d.tick(now.plus(Duration::from_secs(20)));
    assert_eq!(assigns(&d.take_actions()).len(), 1);
    d.tick(now.plus(Duration::from_secs(60)));
    assert!(
        assigns(&d.take_actions()).is_empty(),
        "repeat_count 2 reached"
    );
}

#[test]
fn cancelling_a_running_task_signals_its_worker_and_ends_cancelled() {
    let (now, mut d, client) = with_client(config(), vec![]);
    let peer = PeerId::named(b"w");
    register(&mut d, &peer, "sw1", 1, now);
    let t = task("slow", Priority::Normal);
    submit(&mut d, &client, t.clone(), now);
    let a = assigns(&d.take_actions());
    d.handle(
        &client,
        ToControlPlane::Cancel {
            request_id: 2,
            task_id: t.id,
        },
        now,
    );
    let actions = d.take_actions();
    assert!(actions.iter().any(|a| matches!(a, Action::Send { peer: p, msg: FromControlPlane::CancelTask { task_id } } if *p == peer && *task_id == t.id)));
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Send {
            msg: FromControlPlane::CancelReply {
                outcome: CancelOutcome::Signalled,
                ..
            },
            ..
        }
    )));
    let cancelled = {
        let mut value = success(&a[0].1, b"");
        value.result = AttemptResult::Failure(TaskError::new(ErrorKind::Cancelled, "stopped"));
        value
    };
    d.handle(&peer, ToControlPlane::Outcome(cancelled), now);
    let res = results(&d.take_actions());
    assert_eq!(res[0].status, TaskStatus::Cancelled);
    // Cancelling again says it had finished.
    d.handle(
        &client,
        ToControlPlane::Cancel {
            request_id: 3,
            task_id: t.id,
        },
        now,
    );
    assert!(d.take_actions().iter().any(|a| matches!(
        a,
        Action::Send {
            msg: FromControlPlane::CancelReply {
                outcome: CancelOutcome::AlreadyFinished(TaskStatus::Cancelled),
                ..
            },
            ..
        }
    )));
}

#[test]
fn a_task_its_worker_no_longer_serves_is_run_elsewhere() {
    let (now, mut d, client) = with_client(config(), vec![spec("add")]);
    let peer = PeerId::named(b"w");
    register(&mut d, &peer, "sw1", 1, now);
    let t = task("add", Priority::Normal);
    submit(&mut d, &client, t.clone(), now);
    let a = assigns(&d.take_actions());
    let unknown = {
        let mut value = success(&a[0].1, b"");
        value.result =
            AttemptResult::Failure(TaskError::new(ErrorKind::UnknownTask, "plugin removed"));
        value
    };
    d.handle(&peer, ToControlPlane::Outcome(unknown), now);
    let actions = d.take_actions();
    assert!(results(&actions).is_empty(), "not a failure");
    let local = local_runs(&actions);
    assert_eq!(local.len(), 1, "{actions:?}");
    assert_eq!(local[0].id, t.id);
}

#[test]
fn a_batch_is_accepted_all_or_none() {
    let (now, mut d, client) = with_client(config(), vec![spec("add")]);
    d.take_actions();
    let batch = vec![
        task("add", Priority::Normal),
        task("nope", Priority::Normal),
    ];
    d.handle(
        &client,
        ToControlPlane::SubmitBatch {
            request_id: 1,
            tasks: batch,
            wait: false,
        },
        now,
    );
    let actions = d.take_actions();
    assert!(matches!(
        &actions[..],
        [Action::Send {
            msg: FromControlPlane::Rejected { .. },
            ..
        }]
    ));
    assert_eq!(
        d.queued() + d.in_flight(),
        0,
        "nothing of the batch was accepted"
    );
}

#[test]
fn a_reconnecting_worker_keeps_the_task_it_is_still_running() {
    let (now, mut d, client) = with_client(config(), vec![]);
    let old = PeerId::named(b"old");
    register(&mut d, &old, "sw1", 1, now);
    let t = task("slow", Priority::Normal);
    submit(&mut d, &client, t.clone(), now);
    let a = assigns(&d.take_actions());
    let secret = d.workers().get(&WorkerId::new("sw1")).map(|w| w.secret);
    d.peer_disconnected(&old, now);
    let new = PeerId::named(b"new");
    hello(&mut d, &new, PeerKind::Subworker, now);
    d.handle(&new, registration("sw1", secret, t.id, lease_of(t.id)), now);
    assert!(
        assigns(&d.take_actions()).is_empty(),
        "not handed out a second time"
    );
    d.handle(&new, ToControlPlane::Outcome(success(&a[0].1, b"7")), now);
    let res = results(&d.take_actions());
    assert_eq!(res.len(), 1);
    assert_eq!(
        (res[0].status, res[0].delivery_count),
        (TaskStatus::Success, 1)
    );
}

#[test]
fn requests_other_than_hello_ping_and_discover_need_hello_first() {
    let now = Now::current();
    let mut d = dispatcher(config(), vec![], now);
    let stranger = PeerId::named(b"x");
    for msg in [
        ToControlPlane::DeadLetters { request_id: 1 },
        ToControlPlane::Replay {
            request_id: 2,
            task_id: TaskId::new(),
        },
        ToControlPlane::Heartbeat {
            running: 0,
            free_slots: 1,
        },
    ] {
        d.handle(&stranger, msg, now);
        assert!(matches!(
            &d.take_actions()[..],
            [Action::Send {
                msg: FromControlPlane::Rejected { .. },
                ..
            }]
        ));
    }
}

#[test]
fn a_restarting_subworker_keeps_its_tasks_known_until_it_is_back() {
    let (now, mut d, client) = with_client(config(), vec![]);
    let old = PeerId::named(b"old");
    register(&mut d, &old, "sw1", 1, now);
    d.handle(&old, ToControlPlane::Restarting, now);
    d.peer_disconnected(&old, now);
    d.take_actions();
    let t = task("add", Priority::Normal);
    submit(&mut d, &client, t.clone(), now);
    let actions = d.take_actions();
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Send {
                msg: FromControlPlane::Accepted { .. },
                ..
            }
        )),
        "accepted while the worker restarts: {actions:?}"
    );
    assert!(assigns(&actions).is_empty());
    let new = PeerId::named(b"new");
    register(&mut d, &new, "sw1", 1, now);
    let a = assigns(&d.take_actions());
    assert_eq!((a.len(), a[0].0, a[0].1.id), (1, new, t.id));

    // One that never comes back is dropped after the inactivity limit.
    let newer = PeerId::named(b"newer");
    register(&mut d, &newer, "sw2", 1, now);
    d.handle(&newer, ToControlPlane::Restarting, now);
    d.peer_disconnected(&newer, now);
    d.tick(now.plus(Duration::from_secs(31)));
    assert!(d.workers().get(&WorkerId::new("sw2")).is_none());
}

#[test]
fn a_second_subworker_with_the_same_id_is_refused() {
    let now = Now::current();
    let mut d = dispatcher(config(), vec![], now);
    let first = PeerId::named(b"first");
    register(&mut d, &first, "sw1", 1, now);
    d.take_actions();
    let second = PeerId::named(b"second");
    hello(&mut d, &second, PeerKind::Subworker, now);
    d.take_actions();
    d.handle(
        &second,
        ToControlPlane::Register(registration_of("sw1", vec![spec("add")], None)),
        now,
    );
    assert!(matches!(
        &d.take_actions()[..],
        [Action::Send { msg: FromControlPlane::Refused { reason }, .. }]
            if reason.contains("sw1") && !reason.contains("pid")
    ));
    assert_eq!(d.workers().by_peer(&first), Some(&WorkerId::new("sw1")));
}

#[test]
fn a_wall_clock_step_does_not_move_a_countdown_or_a_retry() {
    let (now, mut d, client) = with_client(config(), vec![spec("add")]);
    let mut t = task("add", Priority::Normal);
    t.countdown_ms = 2_000;
    submit(&mut d, &client, t.clone(), now);
    assert!(local_runs(&d.take_actions()).is_empty());
    // Two seconds pass on the monotonic clock while the wall clock steps back an hour.
    let stepped = Now {
        at: now.at + Duration::from_secs(2),
        unix_ms: now.unix_ms - 3_600_000,
    };
    d.tick(stepped);
    let run = local_runs(&d.take_actions());
    assert_eq!(
        run.len(),
        1,
        "due after 2 s of real time, whatever the wall clock says"
    );
    assert_eq!(run[0].id, t.id);
}

#[test]
fn an_outcome_or_a_claim_without_the_current_lease_counts_for_nothing() {
    let (now, mut d, client) = with_client(config(), vec![]);
    let peer = PeerId::named(b"sw");
    register(&mut d, &peer, "sw1", 1, now);
    let t = task("slow", Priority::Normal);
    submit(&mut d, &client, t.clone(), now);
    let a = assigns(&d.take_actions());
    // A forged outcome: right task, right delivery, wrong lease.
    let forged = {
        let mut value = success(&a[0].1, b"666");
        value.lease = LeaseToken::new();
        value
    };
    d.handle(&peer, ToControlPlane::Outcome(forged), now);
    assert!(
        results(&d.take_actions()).is_empty(),
        "forged outcome ignored"
    );

    // The worker reconnects claiming the task with a made-up lease: not reclaimed,
    // so it goes to the queue and is handed out again under a new lease.
    let secret = d.workers().get(&WorkerId::new("sw1")).map(|w| w.secret);
    d.peer_disconnected(&peer, now);
    let again = PeerId::named(b"sw-again");
    hello(&mut d, &again, PeerKind::Subworker, now);
    d.handle(
        &again,
        registration("sw1", secret, t.id, LeaseToken::new()),
        now,
    );
    let old_lease = lease_of(t.id);
    let b = assigns(&d.take_actions());
    assert_eq!(b.len(), 1, "handed out again");
    assert_ne!(lease_of(t.id), old_lease, "under a new lease");
    // The old lease no longer counts either.
    let stale = {
        let mut value = success(&b[0].1, b"1");
        value.lease = old_lease;
        value
    };
    d.handle(&again, ToControlPlane::Outcome(stale), now);
    assert!(results(&d.take_actions()).is_empty());
    d.handle(&again, ToControlPlane::Outcome(success(&b[0].1, b"7")), now);
    let res = results(&d.take_actions());
    assert_eq!((res.len(), &res[0].value[..]), (1, &b"7"[..]));
}

#[test]
fn a_restarting_worker_id_cannot_be_taken_without_its_secret() {
    let now = Now::current();
    let mut d = dispatcher(config(), vec![], now);
    let old = PeerId::named(b"old");
    register(&mut d, &old, "sw1", 1, now);
    d.handle(&old, ToControlPlane::Restarting, now);
    d.peer_disconnected(&old, now);
    d.take_actions();
    let thief = PeerId::named(b"thief");
    hello(&mut d, &thief, PeerKind::Subworker, now);
    d.take_actions();
    d.handle(
        &thief,
        ToControlPlane::Register({
            let mut value = registration_of("sw1", vec![spec("add")], Some(WorkerSecret::new()));
            value.concurrency = 64;
            value
        }),
        now,
    );
    assert!(matches!(
        &d.take_actions()[..],
        [Action::Send {
            msg: FromControlPlane::Refused { .. },
            ..
        }]
    ));
    // The real one, with its secret, is welcome back and gets the same secret.
    let secret = d.workers().get(&WorkerId::new("sw1")).map(|w| w.secret);
    let back = PeerId::named(b"back");
    register(&mut d, &back, "sw1", 1, now);
    assert!(d.take_actions().iter().any(|a| matches!(
        a,
        Action::Send { msg: FromControlPlane::Registered { secret: s }, .. } if Some(*s) == secret
    )));
}

#[test]
fn what_peers_send_for_the_event_log_and_the_worker_table_is_bounded() {
    let now = Now::current();
    let mut d = dispatcher(config(), vec![], now);
    let peer = PeerId::named(b"sw");
    register(&mut d, &peer, "sw1", 1, now);
    d.handle(
        &peer,
        ToControlPlane::PluginEvent({
            let mut value = crate::protocol::PluginEvent::new(
                "retired\u{1b}[2J".repeat(1000),
                "p",
                "x",
                "A".repeat(1 << 20),
            );
            value.old_version = None;
            value.new_version = None;
            value
        }),
        now,
    );
    let last = d.events().iter().last().expect("an event").clone();
    assert!(
        last.message.len() <= 1027 && last.kind.len() <= 67,
        "{}",
        last.kind.len()
    );
    assert!(!last.kind.contains('\u{1b}'));
    // A worker id, a task list or a task name over the bounds is refused.
    let other = PeerId::named(b"big");
    hello(&mut d, &other, PeerKind::Subworker, now);
    d.take_actions();
    for (id, tasks) in [
        ("x".repeat(300), vec![spec("add")]),
        ("ok".to_string(), vec![spec(&"n".repeat(300))]),
        (
            "ok".to_string(),
            (0..10_001).map(|i| spec(&format!("t{i}"))).collect(),
        ),
    ] {
        d.handle(
            &other,
            ToControlPlane::Register(registration_of(&id, tasks, None)),
            now,
        );
        assert!(matches!(
            &d.take_actions()[..],
            [Action::Send {
                msg: FromControlPlane::Refused { .. },
                ..
            }]
        ));
    }
}

#[test]
fn past_the_queue_bounds_submissions_are_refused_as_queue_full() {
    let (now, mut d, client) = with_client(
        DispatcherConfig {
            max_queued: 2,
            max_queued_bytes: 1 << 20,
            ..config()
        },
        vec![spec("add")],
    );
    for _ in 0..2 {
        submit(&mut d, &client, task("add", Priority::Normal), now);
    }
    d.take_actions();
    submit(&mut d, &client, task("add", Priority::Normal), now);
    assert!(matches!(
        &d.take_actions()[..],
        [Action::Send { msg: FromControlPlane::Rejected { error, .. }, .. }] if error.message.starts_with("queue full")
    ));
    // By bytes, too.
    let (now, mut d, client) = with_client(
        DispatcherConfig {
            max_queued_bytes: 10,
            ..config()
        },
        vec![spec("add")],
    );
    let mut big = task("add", Priority::Normal);
    big.payload = Bytes::from_static(b"[1, 2, 3, 4, 5]");
    d.take_actions();
    submit(&mut d, &client, big, now);
    assert!(matches!(
        &d.take_actions()[..],
        [Action::Send { msg: FromControlPlane::Rejected { error, .. }, .. }] if error.message.contains("--max-queued-bytes")
    ));
}

#[test]
fn tasks_whose_workers_are_gone_say_so_stay_submittable_and_fail_after_the_timeout() {
    let (now, mut d, client) = with_client(config(), vec![]);
    let sw = PeerId::named(b"sw");
    register(&mut d, &sw, "sw1", 1, now);
    let t = task("slow", Priority::Normal);
    submit(&mut d, &client, t.clone(), now);
    d.peer_disconnected(&sw, now);
    d.take_actions();
    let later = now.plus(Duration::from_secs(12));
    d.tick(later);
    d.handle(
        &client,
        ToControlPlane::Status {
            request_id: 5,
            task_id: t.id,
            wait: false,
        },
        later,
    );
    let actions = d.take_actions();
    let reply = actions.iter().find_map(|a| match a {
        Action::Send {
            msg: FromControlPlane::StatusReply {
                record: Some(r), ..
            },
            ..
        } => Some(r.clone()),
        _ => None,
    });
    let record = reply.expect("a status reply");
    assert_eq!(record.status, TaskStatus::Queued);
    let why = record.error.expect("says why it waits").message;
    assert!(
        why.starts_with("waiting: no worker serves slow since"),
        "{why}"
    );
    // Another submission of the same name is accepted, not refused as unknown.
    let u = task("slow", Priority::Normal);
    submit(&mut d, &client, u.clone(), later);
    assert!(d.take_actions().iter().any(|a| matches!(
        a,
        Action::Send {
            msg: FromControlPlane::Accepted { .. },
            ..
        }
    )));
    // A name nobody ever served is still refused.
    submit(&mut d, &client, task("never", Priority::Normal), later);
    assert!(d.take_actions().iter().any(|a| matches!(
        a,
        Action::Send {
            msg: FromControlPlane::Rejected { .. },
            ..
        }
    )));
    // Past the timeout both fail, saying why.
    d.tick(later.plus(Duration::from_secs(301)));
    let failed = results(&d.take_actions());
    assert_eq!(failed.len(), 2, "{failed:?}");
    for r in failed {
        assert_eq!(r.status, TaskStatus::Failure);
        assert!(r.error.unwrap().message.contains("--unserved-timeout"));
    }
}

#[test]
fn only_the_control_planes_own_subworker_registers_under_its_id() {
    let (now, mut d, _client) = with_client(config(), vec![]);
    let impostor = PeerId::named(b"impostor");
    hello(&mut d, &impostor, PeerKind::Subworker, now);
    d.handle(
        &impostor,
        ToControlPlane::Register(registration_of(
            "cp",
            vec![spec("add")],
            Some(WorkerSecret::from_bytes([8; 32])),
        )),
        now,
    );
    let refused = d.take_actions().iter().any(|a| {
        matches!(a, Action::Send { msg: FromControlPlane::Refused { reason }, .. }
            if reason.contains("the control plane's own subworker"))
    });
    assert!(refused);
    assert!(!d.own_worker_registered());
    assert!(!d.known_task("add"));

    // The own subworker's tasks stay known while it restarts (its connection drops).
    let own = PeerId::named(OWN_PEER);
    hello(&mut d, &own, PeerKind::Subworker, now);
    d.handle(
        &own,
        ToControlPlane::Register(registration_of("cp", vec![spec("add")], Some(OWN_SECRET))),
        now,
    );
    assert!(d.own_worker_registered());
    d.peer_disconnected(&own, now);
    assert!(!d.own_worker_registered());
    assert!(d.known_task("add"), "submittable while the child restarts");
}

/// The record `d` answers for `id` (`None`: unknown).
fn status_of(d: &mut Dispatcher, client: &PeerId, id: TaskId, now: Now) -> Option<TaskRecord> {
    d.handle(
        client,
        ToControlPlane::Status {
            request_id: 77,
            task_id: id,
            wait: false,
        },
        now,
    );
    d.take_actions().into_iter().find_map(|a| match a {
        Action::Send {
            msg: FromControlPlane::StatusReply { record, .. },
            ..
        } => Some(record),
        _ => None,
    })?
}

fn durable() -> DispatcherConfig {
    DispatcherConfig {
        durable: true,
        observe: false,
        ..config()
    }
}

#[test]
fn what_a_durable_dispatcher_commits_a_fresh_one_resumes() {
    use crate::control_plane::store::{redb_store::RedbStore, Store};
    let dir = tempfile::tempdir().expect("tempdir");
    let (now, mut d, client) = with_client(durable(), vec![]);
    let sw = PeerId::named(b"sw");
    register(&mut d, &sw, "w1", 1, now);
    let (running, queued, cancelled) = (
        task("slow", Priority::Normal),
        task("add", Priority::Low),
        task("add", Priority::Normal),
    );
    for t in [&running, &queued, &cancelled] {
        submit(&mut d, &client, (*t).clone(), now);
    }
    assert_eq!(assigns(&d.take_actions()).len(), 1);
    d.handle(
        &client,
        ToControlPlane::Cancel {
            request_id: 2,
            task_id: cancelled.id,
        },
        now,
    );
    let secret = d.workers().get(&WorkerId::new("w1")).expect("w1").secret;
    let (changes, accepted) = d.take_changes();
    assert_eq!(accepted.tasks().len(), 3);
    {
        let mut store = RedbStore::open(dir.path()).expect("open");
        store.commit(&changes).expect("commit");
    }
    let store = RedbStore::open(dir.path()).expect("reopen");
    let mut fresh = dispatcher(durable(), vec![], now);
    let restored = fresh.restore(store.load().expect("load"), now);
    assert_eq!(
        (restored.tasks, restored.assigned, restored.results),
        (2, 1, 1)
    );
    hello(&mut fresh, &client, PeerKind::Client, now);
    let record = status_of(&mut fresh, &client, cancelled.id, now).expect("its result");
    assert_eq!(record.status, TaskStatus::Cancelled);
    let record = status_of(&mut fresh, &client, queued.id, now).expect("still queued");
    assert_eq!(record.status, TaskStatus::Queued);
    // Before any worker is back, a name the directory knew as served is accepted (it
    // waits); a name never served is refused.
    let waits = task("slow", Priority::Normal);
    submit(&mut fresh, &client, waits.clone(), now);
    let actions = fresh.take_actions();
    assert!(
        actions.iter().any(|a| matches!(a, Action::Send { msg: FromControlPlane::Accepted { task_ids, .. }, .. } if task_ids == &vec![waits.id])),
        "{actions:?}"
    );
    submit(&mut fresh, &client, task("nope", Priority::Normal), now);
    let actions = fresh.take_actions();
    assert!(
        actions.iter().any(|a| matches!(a, Action::Send { msg: FromControlPlane::Rejected { error, .. }, .. } if error.kind == ErrorKind::UnknownTask)),
        "{actions:?}"
    );

    // The worker comes back with its identity and claims its task by the lease: it
    // keeps it (no second run) and its outcome counts.
    let sw2 = PeerId::named(b"sw2");
    hello(&mut fresh, &sw2, PeerKind::Subworker, now);
    fresh.handle(
        &sw2,
        registration("w1", Some(secret), running.id, lease_of(running.id)),
        now,
    );
    let actions = fresh.take_actions();
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Send {
                msg: FromControlPlane::Registered { .. },
                ..
            }
        )),
        "{actions:?}"
    );
    assert!(
        assigns(&actions).is_empty(),
        "its one slot is still taken by the claimed task"
    );
    let mut ran = running.clone();
    ran.delivery_count = 1;
    fresh.handle(&sw2, ToControlPlane::Outcome(success(&ran, b"1")), now);
    let record = status_of(&mut fresh, &client, running.id, now).expect("finished");
    assert_eq!(record.status, TaskStatus::Success);
    assert_eq!(record.delivery_count, 1);
}

#[test]
fn a_periodic_tick_is_one_task_however_often_it_is_fired() {
    let id = crate::control_plane::periodic::tick_id("beat", 60_000);
    assert_eq!(id, crate::control_plane::periodic::tick_id("beat", 60_000));
    assert_ne!(id, crate::control_plane::periodic::tick_id("beat", 70_000));
    assert_ne!(id, crate::control_plane::periodic::tick_id("beat2", 60_000));
}

/// A store whose commits wait for the test to release them, one by one.
struct GatedStore(std::sync::mpsc::Receiver<Result<(), String>>);

impl crate::control_plane::store::Store for GatedStore {
    fn load(
        &self,
    ) -> Result<crate::control_plane::store::Snapshot, crate::control_plane::store::StoreError>
    {
        Ok(crate::control_plane::store::Snapshot::default())
    }

    fn commit(
        &mut self,
        _changes: &crate::control_plane::store::Changes,
    ) -> Result<(), crate::control_plane::store::StoreError> {
        let reason = match self.0.recv() {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(reason)) => reason,
            Err(e) => e.to_string(),
        };
        Err(crate::control_plane::store::StoreError::Database {
            dir: "test".into(),
            reason,
        })
    }

    fn epoch(&self) -> u64 {
        1
    }
}

fn accepted_ids(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                msg: FromControlPlane::Accepted { request_id, .. },
                ..
            } => Some(*request_id),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_accepted_leaves_before_its_commit_and_a_failed_commit_refuses_its_tasks() {
    use crate::control_plane::commit::Committer;
    let (release, gate) = std::sync::mpsc::channel();
    let (mut committer, mut written) = Committer::new(Box::new(GatedStore(gate)));
    let (now, mut d, client) = with_client(durable(), vec![]);
    let sw = PeerId::named(b"sw");
    register(&mut d, &sw, "w1", 1, now);
    let early = committer.stage(&mut d);
    assert!(
        !early.iter().any(|a| matches!(
            a,
            Action::Send {
                msg: FromControlPlane::Registered { .. },
                ..
            }
        )),
        "Registered waits for the identity's commit: {early:?}"
    );
    release.send(Ok(())).expect("gate");
    let sent = committer.finish(&mut d, written.recv().await.expect("written"));
    assert!(sent.iter().any(|a| matches!(
        a,
        Action::Send {
            msg: FromControlPlane::Registered { .. },
            ..
        }
    )));

    let submit_as = |d: &mut Dispatcher, request_id: u64| {
        let t = task("add", Priority::Normal);
        d.handle(
            &client,
            ToControlPlane::Submit {
                request_id,
                task: t.clone(),
                wait: false,
            },
            now,
        );
        t
    };
    let first = submit_as(&mut d, 5);
    let early = committer.stage(&mut d);
    assert!(
        accepted_ids(&early).is_empty(),
        "Accepted waits for its commit"
    );
    // The assignment does not wait (its lease is written with this commit).
    assert_eq!(assigns(&early).len(), 1);
    assert_eq!(assigns(&early)[0].1.id, first.id);
    // Arrives while that commit is being written: waits for the next one.
    let second = submit_as(&mut d, 6);
    assert!(accepted_ids(&committer.stage(&mut d)).is_empty());
    release.send(Ok(())).expect("gate");
    let sent = committer.finish(&mut d, written.recv().await.expect("written"));
    assert_eq!(accepted_ids(&sent), vec![5]);

    // The next commit (the second submission) fails: a full disk.
    assert!(committer.stage(&mut d).is_empty());
    release.send(Err("File too large".into())).expect("gate");
    let sent = committer.finish(&mut d, written.recv().await.expect("written"));
    assert!(accepted_ids(&sent).is_empty(), "{sent:?}");
    let refused = sent.iter().any(|a| {
        matches!(a, Action::Send { msg: FromControlPlane::Rejected { request_id: 6, error }, .. }
            if error.message.contains("could not write its data directory (data directory test: File too large)"))
    });
    assert!(refused, "{sent:?}");
    assert!(
        status_of(&mut d, &client, second.id, now).is_none(),
        "never accepted"
    );
    // Meanwhile new submissions are refused, saying why.
    submit_as(&mut d, 7);
    let sent = committer.stage(&mut d);
    let refused = sent.iter().any(|a| {
        matches!(a, Action::Send { msg: FromControlPlane::Rejected { request_id: 7, error }, .. }
            if error.message.contains("cannot write its data directory"))
    });
    assert!(refused, "{sent:?}");
    drop(release);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_whose_commit_fails_leaves_the_dead_letter_where_it_was() {
    use crate::control_plane::commit::Committer;
    let (release, gate) = std::sync::mpsc::channel();
    let (mut committer, mut written) = Committer::new(Box::new(GatedStore(gate)));
    let (now, mut d, client) = with_client(durable(), vec![]);
    let t = task("add", Priority::Normal);
    for n in 1..=3u8 {
        let peer = PeerId::named([n]);
        register(&mut d, &peer, &format!("sw{n}"), 1, now);
        if n == 1 {
            submit(&mut d, &client, t.clone(), now);
        }
        d.peer_disconnected(&peer, now);
    }
    assert_eq!(d.dead_letters().len(), 1);
    let good = PeerId::named(b"good");
    register(&mut d, &good, "good", 1, now);
    committer.stage(&mut d);
    release.send(Ok(())).expect("gate");
    committer.finish(&mut d, written.recv().await.expect("written"));

    d.handle(
        &client,
        ToControlPlane::Replay {
            request_id: 9,
            task_id: t.id,
        },
        now,
    );
    assert!(d.dead_letters().is_empty(), "taken out to run");
    committer.stage(&mut d);
    release.send(Err("File too large".into())).expect("gate");
    let sent = committer.finish(&mut d, written.recv().await.expect("written"));
    assert!(
        sent.iter().any(|a| matches!(
            a,
            Action::Send {
                msg: FromControlPlane::Rejected { request_id: 9, .. },
                ..
            }
        )),
        "{sent:?}"
    );
    let dead = d.dead_letters();
    assert_eq!(
        dead.len(),
        1,
        "the replay was not saved: still a dead letter"
    );
    assert_eq!(dead[0].task_id, t.id);
    let record = status_of(&mut d, &client, t.id, now).expect("its result is back");
    assert_eq!(record.status, TaskStatus::Failure);
    drop(release);
}

#[test]
fn several_outcomes_in_one_message_each_count_as_their_own() {
    let now = Now::current();
    let mut d = dispatcher(config(), vec![], now);
    let sw = PeerId::named(b"sw-peer");
    register(&mut d, &sw, "sw1", 4, now);
    let client = PeerId::named(b"client");
    hello(&mut d, &client, PeerKind::Client, now);
    d.take_actions();
    for _ in 0..3 {
        submit(&mut d, &client, task("add", Priority::Normal), now);
    }
    let assigned = assigns(&d.take_actions());
    assert_eq!(assigned.len(), 3);
    let outcomes = vec![
        success(&assigned[0].1, b"1"),
        failure(&assigned[1].1),
        success(&assigned[2].1, b"3"),
    ];
    d.handle(&sw, ToControlPlane::Outcomes { outcomes }, now);
    let finals = results(&d.take_actions());
    let by_id: HashMap<TaskId, &TaskRecord> = finals.iter().map(|r| (r.task_id, r)).collect();
    assert_eq!(by_id.len(), 3, "{finals:?}");
    assert_eq!(by_id[&assigned[0].1.id].value, Bytes::from_static(b"1"));
    assert_eq!(by_id[&assigned[1].1.id].status, TaskStatus::Failure);
    assert_eq!(by_id[&assigned[2].1.id].value, Bytes::from_static(b"3"));
    // From a peer that is not a registered subworker: nothing counts.
    submit(&mut d, &client, task("add", Priority::Normal), now);
    let next = assigns(&d.take_actions());
    let stranger = PeerId::named(b"stranger");
    hello(&mut d, &stranger, PeerKind::Client, now);
    d.handle(
        &stranger,
        ToControlPlane::Outcomes {
            outcomes: vec![success(&next[0].1, b"9")],
        },
        now,
    );
    assert!(results(&d.take_actions()).is_empty());
}

/// The assignments sent to `peer` as `Assigns`, each with whether it was prefetched.
fn prefetch_assigns(actions: &[Action], to: &PeerId) -> Vec<(TaskEnvelope, bool)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                peer,
                msg: FromControlPlane::Assigns { assignments, .. },
            } if peer == to => Some(assignments),
            _ => None,
        })
        .flatten()
        .map(|a| {
            remember(a.task.id, a.lease);
            (a.task.clone(), a.prefetched)
        })
        .collect()
}

#[test]
fn a_prefetching_subworker_gets_a_window_sized_from_its_run_time() {
    let (now, mut d, client) = with_client(config(), vec![]);
    let peer = PeerId::named(b"pw");
    hello(&mut d, &peer, PeerKind::Subworker, now);
    let mut reg = registration_of("pw", vec![spec("add")], None);
    reg.concurrency = 2;
    reg.prefetch = true;
    d.handle(&peer, ToControlPlane::Register(reg), now);
    d.take_actions();
    let tasks: Vec<_> = (0..30).map(|_| task("add", Priority::Low)).collect();
    for t in &tasks {
        submit(&mut d, &client, t.clone(), now);
    }
    // No run time measured yet: its slots only, in one message, none prefetched.
    let actions = d.take_actions();
    let sent: Vec<_> = actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::Send {
                    msg: FromControlPlane::Assigns { .. },
                    ..
                }
            )
        })
        .collect();
    assert_eq!(
        sent.len(),
        2,
        "one Assigns per dispatch pass (one per submit)"
    );
    let first = prefetch_assigns(&actions, &peer);
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|(_, prefetched)| !prefetched));
    assert!(
        assigns(&actions).is_empty(),
        "no plain Assign to a prefetching worker"
    );

    // 100 µs a call: 10 tasks a slot, 20 in all; one finished, so 19 more go out.
    d.handle(
        &peer,
        ToControlPlane::Report {
            started: vec![],
            outcomes: vec![success(&first[0].0, b"3")],
            run_ns: [("add".to_string(), 100_000)].into(),
            returned: vec![],
        },
        now,
    );
    let actions = d.take_actions();
    let more = prefetch_assigns(&actions, &peer);
    assert_eq!(more.len(), 19, "the window is 20: 1 held, 19 more");
    assert_eq!(
        actions
            .iter()
            .filter(|a| matches!(
                a,
                Action::Send {
                    msg: FromControlPlane::Assigns { .. },
                    ..
                }
            ))
            .count(),
        1,
        "handed out in one message"
    );
    // One slot was free: that task starts at once; the rest wait on the subworker.
    assert!(!more[0].1);
    assert!(more[1..].iter().all(|(_, prefetched)| *prefetched));
    assert_eq!(
        d.tasks.get(&more[0].0.id).unwrap().record.status,
        TaskStatus::Running
    );
    let waiting = &more[1].0;
    let record = &d.tasks.get(&waiting.id).unwrap().record;
    assert_eq!(record.status, TaskStatus::Assigned);
    assert_eq!(record.started_ms, None);
    assert_eq!(
        d.workers()
            .get(&WorkerId::new("pw"))
            .unwrap()
            .window_for("add"),
        20
    );

    // It reports the start: running.
    d.handle(
        &peer,
        ToControlPlane::Report {
            started: vec![waiting.id],
            outcomes: vec![],
            run_ns: [("add".to_string(), 100_000)].into(),
            returned: vec![],
        },
        now,
    );
    assert_eq!(
        d.tasks.get(&waiting.id).unwrap().record.status,
        TaskStatus::Running
    );

    // A prefetched task is cancelled on the subworker, which answers without running it.
    let queued = &more[5].0;
    d.handle(
        &client,
        ToControlPlane::Cancel {
            request_id: 9,
            task_id: queued.id,
        },
        now,
    );
    let actions = d.take_actions();
    assert!(actions.iter().any(|a| matches!(a, Action::Send { peer: p, msg: FromControlPlane::CancelTask { task_id } } if *p == peer && *task_id == queued.id)));
    let mut cancelled = success(queued, b"");
    cancelled.result =
        AttemptResult::Failure(TaskError::new(ErrorKind::Cancelled, "before it started"));
    d.handle(
        &peer,
        ToControlPlane::Report {
            started: vec![],
            outcomes: vec![cancelled],
            run_ns: [("add".to_string(), 100_000)].into(),
            returned: vec![],
        },
        now,
    );
    let res = results(&d.take_actions());
    assert!(res
        .iter()
        .any(|r| r.task_id == queued.id && r.status == TaskStatus::Cancelled));

    // Long tasks: exactly one per slot again.
    d.handle(
        &peer,
        ToControlPlane::Report {
            started: vec![],
            outcomes: vec![],
            run_ns: [("add".to_string(), 5_000_000)].into(),
            returned: vec![],
        },
        now,
    );
    assert_eq!(
        d.workers()
            .get(&WorkerId::new("pw"))
            .unwrap()
            .window_for("add"),
        2
    );
}

#[test]
fn a_subworker_that_does_not_prefetch_gets_its_slots_only() {
    let (now, mut d, client) = with_client(config(), vec![]);
    let peer = PeerId::named(b"w");
    register(&mut d, &peer, "sw", 2, now);
    for _ in 0..5 {
        submit(&mut d, &client, task("add", Priority::Normal), now);
    }
    let a = assigns(&d.take_actions());
    assert_eq!(a.len(), 2);
    // A report it should not send changes nothing about its window.
    d.handle(
        &peer,
        ToControlPlane::Report {
            started: vec![],
            outcomes: vec![success(&a[0].1, b"3")],
            run_ns: [("add".to_string(), 1)].into(),
            returned: vec![],
        },
        now,
    );
    assert_eq!(
        d.workers()
            .get(&WorkerId::new("sw"))
            .unwrap()
            .window_for("add"),
        2
    );
    assert_eq!(assigns(&d.take_actions()).len(), 1);
}

#[test]
fn a_long_task_is_never_prefetched_and_short_ones_do_not_pass_it() {
    let (now, mut d, client) = with_client(config(), vec![]);
    let peer = PeerId::named(b"pw");
    hello(&mut d, &peer, PeerKind::Subworker, now);
    let mut reg = registration_of("pw", vec![spec("add"), spec("slow")], None);
    reg.prefetch = true;
    d.handle(&peer, ToControlPlane::Register(reg), now);
    d.take_actions();
    let report = |d: &mut Dispatcher, outcomes: Vec<TaskOutcome>| {
        d.handle(
            &peer,
            ToControlPlane::Report {
                started: vec![],
                outcomes,
                run_ns: [
                    ("add".to_string(), 10_000),
                    ("slow".to_string(), 50_000_000),
                ]
                .into(),
                returned: vec![],
            },
            now,
        );
    };
    report(&mut d, vec![]);
    let slow = task("slow", Priority::Normal);
    submit(&mut d, &client, slow.clone(), now);
    let running = prefetch_assigns(&d.take_actions(), &peer);
    assert_eq!(running.len(), 1, "its one slot");
    let short: Vec<_> = (0..3).map(|_| task("add", Priority::Normal)).collect();
    for t in &short {
        submit(&mut d, &client, t.clone(), now);
    }
    let prefetched = prefetch_assigns(&d.take_actions(), &peer);
    assert_eq!(prefetched.len(), 3, "short tasks go past the slot");
    assert!(prefetched.iter().all(|(_, p)| *p));
    // A second long task cannot be prefetched: it waits, and so does every short task
    // submitted after it.
    let slow2 = task("slow", Priority::Normal);
    submit(&mut d, &client, slow2.clone(), now);
    let late = task("add", Priority::Normal);
    submit(&mut d, &client, late.clone(), now);
    assert!(prefetch_assigns(&d.take_actions(), &peer).is_empty());
    assert_eq!(
        d.tasks.get(&slow2.id).unwrap().record.status,
        TaskStatus::Queued
    );
    // The prefetched ones finish, then the first long one: the second gets the slot.
    let done: Vec<_> = prefetched.iter().map(|(t, _)| success(t, b"3")).collect();
    report(&mut d, done);
    assert!(prefetch_assigns(&d.take_actions(), &peer).is_empty());
    report(&mut d, vec![success(&running[0].0, b"1")]);
    let next = prefetch_assigns(&d.take_actions(), &peer);
    assert_eq!(next[0].0.id, slow2.id, "{next:?}");
    assert!(!next[0].1, "it takes the free slot");
    assert!(
        next.iter().any(|(t, p)| t.id == late.id && *p),
        "then the short one behind it is prefetched"
    );
}

#[test]
fn a_task_handed_back_or_lost_before_it_started_is_queued_again_and_not_counted() {
    let (now, mut d, client) = with_client(config(), vec![]);
    let peer = PeerId::named(b"pw");
    hello(&mut d, &peer, PeerKind::Subworker, now);
    let mut reg = registration_of("pw", vec![spec("add")], None);
    reg.prefetch = true;
    d.handle(&peer, ToControlPlane::Register(reg), now);
    let report = |d: &mut Dispatcher, outcomes: Vec<TaskOutcome>, returned: Vec<TaskId>| {
        d.handle(
            &peer,
            ToControlPlane::Report {
                started: vec![],
                outcomes,
                run_ns: [("add".to_string(), 10_000)].into(),
                returned,
            },
            now,
        );
    };
    report(&mut d, vec![], vec![]);
    d.take_actions();
    for _ in 0..3 {
        submit(&mut d, &client, task("add", Priority::Normal), now);
    }
    let sent = prefetch_assigns(&d.take_actions(), &peer);
    assert_eq!(
        sent.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
        [false, true, true]
    );
    let (first, second, third) = (&sent[0].0, &sent[1].0, &sent[2].0);

    // Handed back: queued again, and nothing more goes to that worker until a slot
    // frees.
    report(&mut d, vec![], vec![second.id]);
    assert!(prefetch_assigns(&d.take_actions(), &peer).is_empty());
    let entry = d.tasks.get(&second.id).unwrap();
    assert_eq!(entry.record.status, TaskStatus::Queued);
    assert_eq!(entry.holder, None);
    report(&mut d, vec![success(first, b"3")], vec![]);
    let again = prefetch_assigns(&d.take_actions(), &peer);
    assert_eq!(again[0].0.id, second.id, "handed out again: {again:?}");
    assert!(
        again[0].1,
        "prefetched: the freed slot is the third's, waiting there"
    );

    // The third starts in the freed slot; then the worker is lost: the task it ran
    // counts toward dead-lettering, the one still waiting in its queue does not.
    d.handle(
        &peer,
        ToControlPlane::Report {
            started: vec![third.id],
            outcomes: vec![],
            run_ns: Default::default(),
            returned: vec![],
        },
        now,
    );
    let status = |d: &Dispatcher, id: &TaskId| d.tasks.get(id).unwrap().record.status;
    assert_eq!(status(&d, &third.id), TaskStatus::Running);
    assert_eq!(status(&d, &second.id), TaskStatus::Assigned);
    d.peer_disconnected(&peer, now);
    assert_eq!(d.tasks.get(&third.id).unwrap().lost, 1);
    assert_eq!(d.tasks.get(&second.id).unwrap().lost, 0);
    assert_eq!(status(&d, &second.id), TaskStatus::Queued);
}

/// A subworker that went quiet (paused, say) is marked inactive and its task runs
/// elsewhere; when it speaks again it still runs that task, so a task handed to it
/// into what the control plane counts as a free slot waits there, and it hands that
/// task back unstarted. That task is queued again (not left assigned to a worker that
/// no longer holds it), and nothing more goes to that worker until a slot frees.
#[test]
fn a_task_handed_back_from_a_slot_the_control_plane_thought_free_is_queued_again() {
    let (now, mut d, client) = with_client(config(), vec![]);
    let pw = PeerId::named(b"pw");
    hello(&mut d, &pw, PeerKind::Subworker, now);
    let mut reg = registration_of("pw", vec![spec("slow")], None);
    reg.prefetch = true;
    d.handle(&pw, ToControlPlane::Register(reg), now);
    d.take_actions();
    let old = task("slow", Priority::Normal);
    submit(&mut d, &client, old.clone(), now);
    assert_eq!(prefetch_assigns(&d.take_actions(), &pw).len(), 1);

    // Quiet past --inactive-after: its task goes to another worker.
    let sw = PeerId::named(b"sw");
    let meanwhile = Now {
        at: now.at + Duration::from_secs(20),
        unix_ms: now.unix_ms + 20_000,
    };
    register(&mut d, &sw, "sw", 1, meanwhile);
    let later = Now {
        at: now.at + Duration::from_secs(31),
        unix_ms: now.unix_ms + 31_000,
    };
    d.tick(later);
    let moved = assigns(&d.take_actions());
    assert_eq!((moved[0].0, moved[0].1.id), (sw, old.id));

    // It speaks again and is handed the next task, into the slot `old` still holds.
    d.handle(
        &pw,
        ToControlPlane::Heartbeat {
            running: 1,
            free_slots: 0,
        },
        later,
    );
    let next = task("slow", Priority::Normal);
    submit(&mut d, &client, next.clone(), later);
    let sent = prefetch_assigns(&d.take_actions(), &pw);
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].0.id, sent[0].1), (next.id, false));

    // It hands `next` back unstarted: queued again, and not handed to it again while
    // its slot is taken.
    d.handle(
        &pw,
        ToControlPlane::Report {
            started: vec![],
            outcomes: vec![],
            run_ns: Default::default(),
            returned: vec![next.id],
        },
        later,
    );
    assert!(prefetch_assigns(&d.take_actions(), &pw).is_empty());
    let entry = d.tasks.get(&next.id).unwrap();
    assert_eq!(entry.record.status, TaskStatus::Queued);
    assert_eq!(entry.holder, None);
    assert_eq!(entry.lost, 0);

    // `old` ends there (its outcome is stale now): the slot is free, `next` goes to it.
    let stale = success(
        &{
            let mut value = old.clone();
            value.delivery_count = 1;
            value
        },
        b"x",
    );
    d.handle(
        &pw,
        ToControlPlane::Report {
            started: vec![],
            outcomes: vec![stale],
            run_ns: Default::default(),
            returned: vec![],
        },
        later,
    );
    let again = prefetch_assigns(&d.take_actions(), &pw);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].0.id, next.id);
}

#[test]
fn every_waiter_of_a_task_is_told_its_end_once_except_one_that_left() {
    let (now, mut d, client) = with_client(config(), vec![spec("add")]);
    let (watcher, leaver) = (PeerId::named(b"watcher"), PeerId::named(b"leaver"));
    hello(&mut d, &watcher, PeerKind::Client, now);
    hello(&mut d, &leaver, PeerKind::Client, now);
    let t = task("add", Priority::Normal);
    submit(&mut d, &client, t.clone(), now);
    let ran = local_runs(&d.take_actions());
    assert_eq!(ran.len(), 1);
    // A status wait, the same submission sent again by a second client (acknowledged,
    // waited for), and a waiter that leaves before the end.
    d.handle(
        &watcher,
        ToControlPlane::Status {
            request_id: 9,
            task_id: t.id,
            wait: true,
        },
        now,
    );
    submit(&mut d, &leaver, t.clone(), now);
    submit(&mut d, &watcher, t.clone(), now);
    d.take_actions();
    d.peer_disconnected(&leaver, now);
    d.take_actions();
    own_outcome(&mut d, success(&ran[0], b"3"), now);
    let mut told: Vec<(PeerId, &'static str)> = d
        .take_actions()
        .into_iter()
        .filter_map(|a| match a {
            Action::Send {
                peer,
                msg: FromControlPlane::Result(r),
            } if r.task_id == t.id => Some((peer, "result")),
            Action::Send {
                peer,
                msg:
                    FromControlPlane::StatusReply {
                        request_id: 9,
                        record: Some(r),
                    },
            } if r.task_id == t.id && r.status == TaskStatus::Success => Some((peer, "status")),
            _ => None,
        })
        .collect();
    told.sort_by_key(|(peer, what)| (format!("{peer:?}"), *what));
    let mut expected = vec![(client, "result"), (watcher, "result"), (watcher, "status")];
    expected.sort_by_key(|(peer, what)| (format!("{peer:?}"), *what));
    assert_eq!(told, expected);
    // Nobody waits any more: a second outcome (stale) tells no one.
    own_outcome(&mut d, success(&ran[0], b"3"), now);
    assert!(results(&d.take_actions()).is_empty());
}

#[test]
fn a_task_run_again_from_the_dashboard_keeps_one_timeline_of_both_runs() {
    let mut observed = config();
    observed.observe = true;
    let (now, mut d, client) = with_client(observed, vec![spec("add")]);
    let t = task("add", Priority::Normal);
    submit(&mut d, &client, t.clone(), now);
    let first = local_runs(&d.take_actions());
    assert_eq!(first.len(), 1);
    own_outcome(&mut d, success(&first[0], b"3"), now);
    assert_eq!(results(&d.take_actions()).len(), 1);
    let steps = |d: &Dispatcher| -> Vec<&'static str> {
        let detail = d.api_task(&t.id).expect("kept");
        detail.timeline.iter().map(|s| s.event).collect()
    };
    assert_eq!(steps(&d), ["submitted", "started", "success"]);

    // Run again under its id: its trail moves to the newest place, and the second
    // run's steps land on it, not on a trail of their own.
    d.api_retry(t.id, now)
        .expect("a final task with its submission kept");
    let again = local_runs(&d.take_actions());
    assert_eq!(again.len(), 1);
    own_outcome(&mut d, failure(&again[0]), now);
    d.take_actions();
    assert_eq!(
        steps(&d),
        [
            "submitted",
            "started",
            "success",
            "submitted",
            "started",
            "failure"
        ]
    );
    assert_eq!(d.observer.recent().filter(|id| **id == t.id).count(), 1);
}
