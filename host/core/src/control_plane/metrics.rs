//! `/metrics`: the control plane's counters and gauges in the Prometheus text
//! exposition format (version 0.0.4). Label values are bounded: task names are the
//! served ones (others count as `_unknown`, see [`super::observe`]), worker ids are
//! the registered subworkers.

use std::fmt::Write;

use super::observe::{Histogram, Observer, BUCKETS_SECS};
use crate::protocol::api::{ApiCache, ApiWorker, PriorityDepths};

/// What the dispatcher contributes (see `Dispatcher::metrics_input`).
pub struct MetricsInput<'a> {
    /// Totals, histograms, reloads.
    pub observer: &'a Observer,
    /// Due tasks waiting, by priority.
    pub queued: PriorityDepths,
    /// Waiting for a countdown or eta.
    pub scheduled: u64,
    /// Waiting to retry.
    pub retrying: u64,
    /// Held by a worker.
    pub running: u64,
    /// The subworkers.
    pub workers: Vec<ApiWorker>,
    /// The result cache.
    pub cache: ApiCache,
    /// Dead letters kept.
    pub dead_letters: u64,
    /// Payload bytes of held tasks.
    pub held_payload_bytes: u64,
    /// Task names served now.
    pub served: u64,
}

/// What the server adds: its sockets' counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerCounts {
    /// Connections refused or closed for misbehaving, on every endpoint.
    pub rejected_connections: u64,
    /// Whether new tasks are taken.
    pub accepting: bool,
    /// Seconds since the start.
    pub uptime_secs: u64,
}

/// A label value, escaped as the format asks (backslash, quote, newline).
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    header(out, name, "histogram", help);
    let mut cumulative = 0;
    for (bound, n) in BUCKETS_SECS.iter().zip(h.buckets.iter()) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", h.sum);
    let _ = writeln!(out, "{name}_count {}", h.count);
}

/// A gauge with one sample per subworker, labelled `worker`.
fn per_worker(
    out: &mut String,
    name: &str,
    help: &str,
    workers: &[ApiWorker],
    value: impl Fn(&ApiWorker) -> u64,
) {
    header(out, name, "gauge", help);
    for w in workers {
        let _ = writeln!(
            out,
            "{name}{{worker=\"{}\"}} {}",
            label(&w.worker_id),
            value(w)
        );
    }
}

/// The whole exposition.
pub fn render(input: &MetricsInput<'_>, server: ServerCounts) -> String {
    let mut out = String::with_capacity(4096);
    let o = input.observer;
    gauge(
        &mut out,
        "fastworker_accepting",
        "1 while the control plane takes new tasks.",
        u64::from(server.accepting),
    );
    gauge(
        &mut out,
        "fastworker_uptime_seconds",
        "Seconds since the control plane started.",
        server.uptime_secs,
    );
    counter(
        &mut out,
        "fastworker_tasks_submitted_total",
        "Tasks accepted.",
        o.totals().submitted,
    );
    header(
        &mut out,
        "fastworker_tasks_total",
        "counter",
        "Tasks that ended success, failure or cancelled, and attempts retried, by task name (names no worker serves count as _unknown).",
    );
    let mut names: Vec<_> = o.by_name().collect();
    names.sort_by(|a, b| a.0.cmp(b.0));
    for (name, counts) in names {
        for (status, n) in ["success", "failure", "cancelled", "retrying"]
            .iter()
            .zip(counts.iter())
        {
            let _ = writeln!(
                out,
                "fastworker_tasks_total{{name=\"{}\",status=\"{status}\"}} {n}",
                label(name)
            );
        }
    }
    header(
        &mut out,
        "fastworker_queue_depth",
        "gauge",
        "Due tasks waiting for a worker, by priority.",
    );
    for (priority, n) in [
        ("critical", input.queued.critical),
        ("high", input.queued.high),
        ("normal", input.queued.normal),
        ("low", input.queued.low),
    ] {
        let _ = writeln!(out, "fastworker_queue_depth{{priority=\"{priority}\"}} {n}");
    }
    gauge(
        &mut out,
        "fastworker_tasks_scheduled",
        "Tasks waiting for their countdown or eta.",
        input.scheduled,
    );
    gauge(
        &mut out,
        "fastworker_tasks_retrying",
        "Tasks waiting to retry.",
        input.retrying,
    );
    gauge(
        &mut out,
        "fastworker_tasks_running",
        "Tasks held by a worker.",
        input.running,
    );
    gauge(
        &mut out,
        "fastworker_held_payload_bytes",
        "Payload bytes of the tasks held (waiting or running).",
        input.held_payload_bytes,
    );
    histogram(
        &mut out,
        "fastworker_task_wait_seconds",
        "Time from due to handed to a worker.",
        o.wait(),
    );
    histogram(
        &mut out,
        "fastworker_task_run_seconds",
        "Time an attempt ran, as its worker timed it, for tasks that became final.",
        o.run(),
    );
    header(
        &mut out,
        "fastworker_workers",
        "gauge",
        "Subworkers, by status.",
    );
    for status in ["active", "draining", "restarting", "inactive"] {
        let n = input.workers.iter().filter(|w| w.status == status).count();
        let _ = writeln!(out, "fastworker_workers{{status=\"{status}\"}} {n}");
    }
    per_worker(
        &mut out,
        "fastworker_worker_running",
        "Tasks each subworker holds.",
        &input.workers,
        |w| w.running,
    );
    per_worker(
        &mut out,
        "fastworker_worker_slots",
        "Slots (--concurrency) of each subworker.",
        &input.workers,
        |w| w.slots,
    );
    gauge(
        &mut out,
        "fastworker_served_tasks",
        "Task names some worker serves.",
        input.served,
    );
    let c = &input.cache;
    gauge(
        &mut out,
        "fastworker_cache_entries",
        "Results kept.",
        c.entries,
    );
    gauge(
        &mut out,
        "fastworker_cache_bytes",
        "Bytes of results kept.",
        c.bytes,
    );
    gauge(
        &mut out,
        "fastworker_cache_max_bytes",
        "The cache's byte budget.",
        c.max_bytes,
    );
    counter(
        &mut out,
        "fastworker_cache_hits_total",
        "Result lookups that found one.",
        c.hits,
    );
    counter(
        &mut out,
        "fastworker_cache_misses_total",
        "Result lookups that found none.",
        c.misses,
    );
    counter(
        &mut out,
        "fastworker_cache_evictions_total",
        "Results dropped for room or because they expired.",
        c.evictions,
    );
    gauge(
        &mut out,
        "fastworker_dead_letters",
        "Dead letters kept.",
        input.dead_letters,
    );
    counter(
        &mut out,
        "fastworker_plugin_reloads_total",
        "Plugin reloads reported by subworkers.",
        o.reloads(),
    );
    counter(
        &mut out,
        "fastworker_rejected_connections_total",
        "Connections refused or closed for misbehaving (full, no key, bad handshake, protocol violation).",
        server.rejected_connections,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn an_empty_control_plane_renders_every_family_once() {
        let observer = Observer::new(true);
        let input = MetricsInput {
            observer: &observer,
            queued: PriorityDepths::default(),
            scheduled: 0,
            retrying: 0,
            running: 0,
            workers: Vec::new(),
            cache: ApiCache::default(),
            dead_letters: 0,
            held_payload_bytes: 0,
            served: 0,
        };
        let text = render(&input, ServerCounts::default());
        let types: Vec<_> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut unique = types.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(types.len(), unique.len(), "{text}");
        assert!(text.contains("fastworker_task_wait_seconds_bucket{le=\"+Inf\"} 0"));
    }
}
