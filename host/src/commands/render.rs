//! Turning task records into what people and scripts read.

use serde_json::Value;

use crate::protocol::{json::StatusJson, TaskRecord};

/// The record's value as JSON: decoded when it is JSON, else its bytes as hex.
pub fn value_json(record: &TaskRecord) -> Value {
    crate::protocol::json::value_json(record.codec, &record.value)
}

/// Unix milliseconds as a local RFC 3339 time with milliseconds
/// (`2026-12-04T18:21:57.123+00:00`); out-of-range values as the number.
pub fn local_time(at_ms: u64) -> String {
    use chrono::TimeZone;
    i64::try_from(at_ms)
        .ok()
        .and_then(|ms| chrono::Local.timestamp_millis_opt(ms).single())
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, false))
        .unwrap_or_else(|| at_ms.to_string())
}

/// The whole record as a JSON object.
pub fn record_json(record: &TaskRecord) -> Value {
    serde_json::to_value(StatusJson::from(record)).unwrap_or(Value::Null)
}

/// The record for people, one field a line.
pub fn record_text(record: &TaskRecord) -> String {
    let mut out = format!("task {}: {}\n", record.task_id, record.status.as_str());
    out.push_str(&format!("  name: {}\n", record.name));
    if !record.value.is_empty() {
        out.push_str(&format!("  result: {}\n", value_json(record)));
    }
    if let Some(e) = &record.error {
        if !record.status.is_final() && e.message.starts_with("waiting:") {
            // A queued task that nobody can run says why it waits.
            out.push_str(&format!("  {}\n", e.message));
        } else {
            out.push_str(&format!("  error: {e}\n"));
        }
    }
    if let Some(w) = &record.worker_id {
        out.push_str(&format!("  worker: {w}\n"));
    }
    out.push_str(&format!(
        "  attempts: {}, deliveries: {}\n",
        record.attempts, record.delivery_count
    ));
    out
}
