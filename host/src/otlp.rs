//! `--otlp-endpoint` (with `--features otlp`): every task span (target
//! `fastworker::task`) goes to an OpenTelemetry collector over OTLP/HTTP with JSON,
//! whatever the log level, and the W3C trace context in a task's envelope makes the
//! spans of the client, the control plane and the subworker one trace (see
//! `fastworker_client::propagation`).

use std::collections::HashMap;

use anyhow::Context as _;
use opentelemetry::{propagation::TextMapPropagator, trace::TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig as _};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider, Resource};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::protocol::TraceContext;

/// What keeps the exporter running; flushed and stopped when dropped.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(err) = self.provider.shutdown() {
            eprintln!("warning: the last spans were not exported: {err}");
        }
    }
}

/// The traces URL for `endpoint`: `/v1/traces` is added to a collector's base URL.
fn traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    if trimmed.ends_with("/v1/traces") {
        trimmed.to_string()
    } else {
        format!("{trimmed}/v1/traces")
    }
}

/// An exporter to `endpoint` for `service`, and the layer that feeds it.
pub fn start<S>(
    endpoint: &str,
    service: &'static str,
) -> anyhow::Result<(Exporter, impl tracing_subscriber::Layer<S>)>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpJson)
        .with_endpoint(traces_url(endpoint))
        .with_headers(HashMap::new())
        .build()
        .with_context(|| format!("cannot export spans to {endpoint}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    let tracer = provider.tracer("fastworker");
    fastworker_client::propagation::install(fastworker_client::propagation::Propagation {
        inject,
        link,
    });
    let layer = tracing_opentelemetry::layer().with_tracer(tracer);
    Ok((Exporter { provider }, layer))
}

fn inject(span: &tracing::Span) -> Option<TraceContext> {
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    let parent = carrier.remove("traceparent")?;
    Some(TraceContext::new(
        parent,
        carrier.remove("tracestate").unwrap_or_default(),
    ))
}

fn link(span: &tracing::Span, context: &TraceContext) {
    let mut carrier: HashMap<String, String> = HashMap::new();
    carrier.insert("traceparent".into(), context.traceparent.clone());
    if !context.tracestate.is_empty() {
        carrier.insert("tracestate".into(), context.tracestate.clone());
    }
    let parent = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(parent);
}
