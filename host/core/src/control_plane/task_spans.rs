//! [`TaskSpans`]: one `tracing` span per task on the control plane, open from its
//! submission to its final status, named `task` under the target `fastworker::task`
//! with the task's id, name and trace id (from the W3C trace context it carries). Its
//! steps are logged inside it. The spans are at DEBUG level: off (and free) unless the
//! log level or a tracing layer asks for them (`--log-level debug`, or
//! `FASTWORKER_LOG=info,fastworker::task=debug`).

use tracing::{debug, Span};

use crate::protocol::{TaskEnvelope, TaskId};

/// The trace a task's spans belong to: the one its W3C context names, else one named
/// by its id (32 hex digits), so the spans of a task that came without a context
/// still share a trace id on every process. Worked out only when spans are on.
pub fn trace_id(task: &TaskEnvelope) -> String {
    match task.trace.as_ref().and_then(|t| t.trace_id()) {
        Some(id) => id.to_string(),
        None => task.id.0.simple().to_string(),
    }
}

/// The open spans, by task.
#[derive(Debug, Default)]
pub struct TaskSpans {
    open: super::TaskMap<Span>,
}

impl TaskSpans {
    /// Opens the span of a task just accepted (nothing is kept when spans are off).
    pub fn open(&mut self, task: &TaskEnvelope) {
        let span = tracing::debug_span!(
            target: "fastworker::task",
            "task",
            task_id = %task.id,
            task_name = %task.name,
            trace_id = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        if span.is_disabled() {
            return;
        }
        span.record("trace_id", tracing::field::display(trace_id(task)));
        if let Some(trace) = &task.trace {
            fastworker_client::propagation::link(&span, trace);
        }
        span.in_scope(
            || debug!(target: "fastworker::task", priority = task.priority.as_str(), "accepted"),
        );
        self.open.insert(task.id, span);
    }

    /// Logs a step of task `id` inside its span.
    pub fn step(&self, id: &TaskId, what: std::fmt::Arguments<'_>) {
        if let Some(span) = self.open.get(id) {
            span.in_scope(|| debug!(target: "fastworker::task", "{what}"));
        }
    }

    /// The W3C context of task `id`'s span, when a tracing system exports it: what
    /// its worker continues (so the worker's span is a child of this one).
    pub fn context(&self, id: &TaskId) -> Option<crate::protocol::TraceContext> {
        fastworker_client::propagation::inject(self.open.get(id)?)
    }

    /// Closes the span of a task that became final with `status`.
    pub fn close(&mut self, id: &TaskId, status: &str) {
        if let Some(span) = self.open.remove(id) {
            span.record("status", status);
            span.in_scope(|| debug!(target: "fastworker::task", "final: {status}"));
        }
    }
}
