//! What writing and reading a message's header costs in each protocol version that
//! carries the hot messages: version 2 (JSON), version 3 (MessagePack with field
//! names) and version 4 (MessagePack with fields by position). Each iteration encodes or decodes one message of 64 entries, through the
//! protocol crate's own `encode_as` and `decode` (header and payload frames), so the
//! per-entry cost is the time per iteration over 64.
//!
//! Run it with:
//!
//! ```text
//! cargo bench -p fastworker --bench headers
//! ```
//!
//! The messages are the ones every task crosses under load: the control plane's
//! `Assigns` to a subworker, the subworker's `Report`, a client's `SubmitBatch`, and
//! the control plane's `Results` to a client.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fastworker_protocol::{
    decode, encode_as, Assignment, AttemptResult, Codec, FromControlPlane, LeaseToken, Message,
    TaskEnvelope, TaskOutcome, TaskRecord, TaskStatus, ToControlPlane, WorkerId,
};

/// Entries per message, as a busy cluster groups them.
const ENTRIES: usize = 64;

fn tasks() -> Vec<TaskEnvelope> {
    (0..ENTRIES)
        .map(|i| TaskEnvelope::new("add", Codec::Json, Bytes::from(format!("[{i},3]"))))
        .collect()
}

fn assigns() -> FromControlPlane {
    FromControlPlane::Assigns {
        assignments: tasks()
            .into_iter()
            .map(|t| Assignment::new(t, LeaseToken::new(), true))
            .collect(),
        epoch: 0,
    }
}

fn report() -> ToControlPlane {
    let tasks = tasks();
    let outcomes = tasks
        .iter()
        .map(|t| {
            let mut outcome = TaskOutcome::new(t.id, 1, LeaseToken::new(), AttemptResult::Success);
            outcome.started_ms = 1_700_000_000_000;
            outcome.completed_ms = 1_700_000_000_001;
            outcome.value = Bytes::from_static(b"8");
            outcome
        })
        .collect();
    ToControlPlane::Report {
        started: tasks.iter().map(|t| t.id).collect(),
        outcomes,
        run_ns: [("add".to_string(), 2_000)].into(),
        returned: vec![],
    }
}

fn submit_batch() -> ToControlPlane {
    ToControlPlane::SubmitBatch {
        request_id: 1,
        tasks: tasks(),
        wait: false,
    }
}

fn results() -> FromControlPlane {
    FromControlPlane::Results {
        records: tasks()
            .iter()
            .map(|t| {
                let mut record = TaskRecord::new(t.id, "add", TaskStatus::Success, Codec::Json);
                record.worker_id = Some(WorkerId::from("sw1"));
                record.attempts = 1;
                record.delivery_count = 1;
                record.submitted_ms = 1_700_000_000_000;
                record.started_ms = Some(1_700_000_000_001);
                record.completed_ms = Some(1_700_000_000_002);
                record.value = Bytes::from_static(b"8");
                record
            })
            .collect(),
    }
}

/// Benches writing and reading `msg` in versions 2, 3 and 4, as
/// `name/v{N}/{write,read}`.
fn both_ways<M: Message>(c: &mut Criterion, name: &str, msg: &M) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(ENTRIES as u64));
    for version in [2u8, 3, 4] {
        let frames = encode_as(version, msg).expect("encodes");
        group.bench_function(format!("v{version}/write"), |b| {
            b.iter(|| encode_as(version, black_box(msg)).expect("encodes"))
        });
        group.bench_function(format!("v{version}/read"), |b| {
            b.iter(|| decode::<M>(black_box(&frames)).expect("decodes"))
        });
    }
    group.finish();
}

fn headers(c: &mut Criterion) {
    both_ways(c, "assigns", &assigns());
    both_ways(c, "report", &report());
    both_ways(c, "submit_batch", &submit_batch());
    both_ways(c, "results", &results());
}

criterion_group!(benches, headers);
criterion_main!(benches);
