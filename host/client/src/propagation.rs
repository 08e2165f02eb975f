//! How a task's W3C trace context joins `tracing` spans to a tracing system. The
//! library knows no tracing system: a program that exports spans (the `fastworker`
//! binary built with `--features otlp`, or an application with its own
//! OpenTelemetry setup) installs [`Propagation`] once, and then
//!
//! - the client puts the context of a task's span into the task's envelope
//!   ([`inject`]), so the trace the caller is in continues on the other processes;
//! - the control plane and the subworker make a task's span a child of the context
//!   the task carries ([`link`]).
//!
//! Without it nothing is added to a task: its spans on every process carry its id as
//! the field `trace_id`.

use std::sync::OnceLock;

use crate::protocol::TraceContext;

/// The two directions of propagation.
#[derive(Debug, Clone, Copy)]
pub struct Propagation {
    /// The W3C context of `span`, if the tracing system knows it.
    pub inject: fn(&tracing::Span) -> Option<TraceContext>,
    /// Makes `span` a child of `context`.
    pub link: fn(&tracing::Span, &TraceContext),
}

static INSTALLED: OnceLock<Propagation> = OnceLock::new();

/// Installs `propagation` for this process; false if one was installed before (the
/// first stays).
pub fn install(propagation: Propagation) -> bool {
    INSTALLED.set(propagation).is_ok()
}

/// The W3C context of `span`, when a tracing system is installed and the span is
/// enabled.
pub fn inject(span: &tracing::Span) -> Option<TraceContext> {
    let propagation = INSTALLED.get()?;
    if span.is_disabled() {
        return None;
    }
    (propagation.inject)(span).filter(|t| t.trace_id().is_some())
}

/// Makes `span` a child of `context`, when a tracing system is installed.
pub fn link(span: &tracing::Span, context: &TraceContext) {
    if let Some(propagation) = INSTALLED.get() {
        if !span.is_disabled() && context.trace_id().is_some() {
            (propagation.link)(span, context);
        }
    }
}
