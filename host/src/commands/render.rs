//! Turning task records into what people and scripts read.

use serde_json::{json, Value};

use crate::protocol::{Codec, TaskRecord};

/// The record's value as JSON: decoded when it is JSON, else its bytes as hex.
pub fn value_json(record: &TaskRecord) -> Value {
    if record.value.is_empty() {
        return Value::Null;
    }
    match record.codec {
        Codec::Json => serde_json::from_slice(&record.value)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&record.value).into_owned())),
        Codec::Bincode => Value::String(
            record
                .value
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        ),
    }
}

/// The whole record as a JSON object.
pub fn record_json(record: &TaskRecord) -> Value {
    json!({
        "task_id": record.task_id.to_string(),
        "task_name": record.name,
        "status": record.status.as_str(),
        "result": value_json(record),
        "error": record.error.as_ref().map(|e| json!({"kind": e.kind.as_str(), "message": e.message})),
        "worker_id": record.worker_id.as_ref().map(|w| w.0.clone()),
        "attempts": record.attempts,
        "delivery_count": record.delivery_count,
        "submitted_at": record.submitted_ms,
        "started_at": record.started_ms,
        "completed_at": record.completed_ms,
    })
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
