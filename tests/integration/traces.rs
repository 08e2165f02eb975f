//! A task's `tracing` span on every process it touches: the client's W3C trace
//! context travels in the envelope's `trace` field, and the control plane and the
//! subworker open their `task` spans with its trace id (logged with
//! `FASTWORKER_LOG=...,fastworker::task=debug`). A task submitted without one (the
//! CLI) gets a trace named by its id.

use std::time::Duration;

use bytes::Bytes;
use fastworker_protocol::{Codec, TaskEnvelope, TraceContext};

use crate::procs::{connect, mytasks_dir, poll_until, runtime, ControlPlane};

const TASK_SPANS: &str = "info,fastworker::task=debug";

#[test]
fn a_clients_trace_continues_on_the_control_plane_and_the_subworker() {
    let dir = mytasks_dir();
    // The control plane's own spans, and a subworker's, both asked for by the filter.
    let mut cp = ControlPlane::start_with(&dir, &[], &[("FASTWORKER_LOG", TASK_SPANS)]);
    let sw = cp.subworker_with_env(&dir, "sw1", &[], &[("FASTWORKER_LOG", TASK_SPANS)]);
    let rt = runtime();
    let client = connect(&rt, &cp.base);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut task = TaskEnvelope::new("add", Codec::Json, Bytes::from_static(b"[20, 22]"));
    task.trace = Some(Box::new(TraceContext::new(
        format!("00-{trace_id}-00f067aa0ba902b7-01"),
        "vendor=x",
    )));
    let id = task.id;
    let record = rt
        .block_on(client.submit(task, Duration::from_secs(30)))
        .expect("add succeeds");
    assert_eq!(record.worker_id.as_ref().map(|w| w.as_str()), Some("sw1"));
    let span = format!("task{{task_id={id} task_name=add");
    let traced = format!("trace_id={trace_id}");
    let on_cp = poll_until(Duration::from_secs(10), || {
        let log = cp.proc.stderr();
        log.lines()
            .any(|l| l.contains(&span) && l.contains(&traced) && l.contains("final: success"))
            .then_some(())
    });
    assert!(on_cp.is_some(), "control plane: {}", cp.proc.stderr());
    let on_sw = sw
        .stderr()
        .lines()
        .any(|l| l.contains(&span) && l.contains(&traced) && l.contains("done: success"));
    assert!(on_sw, "subworker: {}", sw.stderr());

    // Without a trace context of its own (or with a malformed one), a task's trace is
    // named by its id.
    let mut task = TaskEnvelope::new("add", Codec::Json, Bytes::from_static(b"[1, 1]"));
    task.trace = Some(Box::new(TraceContext::new("garbage", "")));
    let id = task.id;
    rt.block_on(client.submit(task, Duration::from_secs(30)))
        .expect("add succeeds");
    let own = format!("trace_id={}", id.0.simple());
    let found = poll_until(Duration::from_secs(10), || {
        sw.stderr().contains(&own).then_some(())
    });
    assert!(found.is_some(), "subworker: {}", sw.stderr());
}
