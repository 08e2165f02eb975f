//! The control plane's event loop without its I/O: what the dispatcher itself costs
//! per task, in one thread, so a change to it can be measured without the noise of a
//! cluster of processes on a shared machine.
//!
//! Run it with:
//!
//! ```text
//! cargo bench -p fastworker --bench dispatcher
//! ```
//!
//! Each iteration is one batch of 1,000 `add` tasks through a dispatcher with one
//! prefetching subworker (one slot, `add` measured at 2 µs, so its window is the
//! default 256): the client's `SubmitBatch`, then the subworker's `Report`s of 64
//! outcomes each, answered with more `Assigns`, until every result went out. Messages
//! are handed over as values (no encoding): the I/O stages are measured by
//! `fastworker bench`. `dashboard` is the same with the dashboard's bookkeeping on
//! (timelines, events, counts), as a control plane with its dashboard has it.

use std::{hint::black_box, time::Duration};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fastworker_host::control_plane::{
    dispatcher::{Action, Dispatcher, DispatcherConfig, Now},
    workers::MAX_PREFETCH_PER_SLOT,
};
use fastworker_protocol::{
    AttemptResult, Codec, FromControlPlane, Hello, PeerKind, Registration, TaskEnvelope,
    TaskOutcome, TaskSpec, ToControlPlane, WorkerId, WorkerSecret, PROTOCOL_VERSION,
};
use fastworker_transport::PeerId;

/// Tasks per iteration.
const BATCH: usize = 1_000;
/// Outcomes per report, as a busy subworker sends them.
const PER_REPORT: usize = 64;

fn config(observe: bool) -> DispatcherConfig {
    DispatcherConfig {
        id: "cp".into(),
        own_secret: WorkerSecret::new(),
        inactive_after: Duration::from_secs(30),
        max_deliveries: 3,
        prefetch_per_slot: MAX_PREFETCH_PER_SLOT,
        cache_size: 10_000,
        cache_ttl: Duration::from_secs(3600),
        cache_max_bytes: 256 << 20,
        max_queued: 1_000_000,
        max_queued_bytes: 1 << 30,
        unserved_timeout: Duration::from_secs(300),
        announcement: fastworker_protocol::Announcement::new("cp", "tcp://127.0.0.1:1"),
        max_payload_bytes: 1 << 20,
        max_message_bytes: 64 << 20,
        durable: false,
        observe,
    }
}

fn hello(kind: PeerKind) -> ToControlPlane {
    let mut hello = Hello::new(kind, "bench");
    hello.protocol_version = PROTOCOL_VERSION;
    ToControlPlane::Hello(hello)
}

/// A dispatcher with a client and a prefetching subworker that has run `add` before.
fn cluster(observe: bool) -> (Dispatcher, PeerId, PeerId) {
    let now = Now::current();
    let mut d = Dispatcher::new(config(observe), now);
    let client = PeerId::named(b"client");
    let worker = PeerId::named(b"worker");
    d.handle(&client, hello(PeerKind::Client), now);
    d.handle(&worker, hello(PeerKind::Subworker), now);
    let mut registration = Registration::new(WorkerId::new("sw1"), vec![TaskSpec::new("add")], 1);
    registration.prefetch = true;
    d.handle(&worker, ToControlPlane::Register(registration), now);
    d.handle(
        &worker,
        ToControlPlane::Report {
            started: vec![],
            outcomes: vec![],
            run_ns: [("add".to_string(), 2_000)].into(),
            returned: vec![],
        },
        now,
    );
    d.take_actions();
    (d, client, worker)
}

/// The outcomes the subworker owes for what `actions` assigned to it.
fn assigned(actions: &[Action], worker: &PeerId, owed: &mut Vec<TaskOutcome>) {
    for action in actions {
        if let Action::Send {
            peer,
            msg: FromControlPlane::Assigns { assignments, .. },
        } = action
        {
            if peer != worker {
                continue;
            }
            for a in assignments {
                let mut outcome = TaskOutcome::new(
                    a.task.id,
                    a.task.delivery_count,
                    a.lease,
                    AttemptResult::Success,
                );
                outcome.started_ms = 1;
                outcome.completed_ms = 2;
                outcome.value = Bytes::from_static(b"8");
                owed.push(outcome);
            }
        }
    }
}

/// Results the client was sent in `actions`.
fn results(actions: &[Action]) -> usize {
    actions
        .iter()
        .map(|a| match a {
            Action::Send {
                msg: FromControlPlane::Result(_),
                ..
            } => 1,
            Action::Send {
                msg: FromControlPlane::Results { records },
                ..
            } => records.len(),
            _ => 0,
        })
        .sum()
}

/// One batch through: submitted, assigned, reported, every result out.
fn one_batch(d: &mut Dispatcher, client: &PeerId, worker: &PeerId) {
    let now = Now::current();
    let tasks: Vec<TaskEnvelope> = (0..BATCH)
        .map(|i| {
            TaskEnvelope::new(
                "add",
                Codec::Json,
                Bytes::from(format!("[{i},1]").into_bytes()),
            )
        })
        .collect();
    d.handle(
        client,
        ToControlPlane::SubmitBatch {
            request_id: 1,
            tasks,
            wait: true,
        },
        now,
    );
    let mut owed = Vec::new();
    let mut done = 0;
    let mut rounds = 0;
    loop {
        let actions = d.take_actions();
        // What the server publishes on the event stream after each round.
        black_box(d.drain_feed().count());
        done += results(&actions);
        assigned(&actions, worker, &mut owed);
        black_box(&actions);
        if done >= BATCH {
            break;
        }
        rounds += 1;
        assert!(
            rounds < 10 * BATCH,
            "the batch did not finish: {done} results"
        );
        let report: Vec<TaskOutcome> = owed.drain(..owed.len().min(PER_REPORT)).collect();
        let started = report.iter().map(|o| o.task_id).collect();
        d.handle(
            worker,
            ToControlPlane::Report {
                started,
                outcomes: report,
                run_ns: [("add".to_string(), 2_000)].into(),
                returned: vec![],
            },
            now,
        );
    }
}

fn dispatcher(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatcher");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, observe) in [("no_dashboard", false), ("dashboard", true)] {
        let (mut d, client, worker) = cluster(observe);
        group.bench_function(name, |b| b.iter(|| one_batch(&mut d, &client, &worker)));
    }
    group.finish();
}

criterion_group!(benches, dispatcher);
criterion_main!(benches);
