//! The JSON forms of what the protocol carries, for people and scripts: a task's status
//! record (`fastworker status --json`), the body sent to a callback address, and an
//! event. Each form is a struct here, defined once, so the CLI, the control plane and
//! later the HTTP API write the same shape.
//!
//! An error has one shape everywhere: `{"kind": "failed", "message": "..."}`.

use serde::Serialize;
use serde_json::Value;

use crate::{
    messages::{Codec, Event, TaskRecord},
    task_error::TaskError,
};

/// A result value as JSON: decoded when it is JSON, else its bytes as hex; `null` when
/// there is none.
pub fn value_json(codec: Codec, value: &[u8]) -> Value {
    if value.is_empty() {
        return Value::Null;
    }
    match codec {
        Codec::Json => serde_json::from_slice(value)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(value).into_owned())),
        Codec::Bincode => Value::String(value.iter().map(|b| format!("{b:02x}")).collect()),
    }
}

/// An error as JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ErrorJson {
    /// The error kind's name, e.g. `failed`, `timed_out`.
    pub kind: &'static str,
    /// One line for people.
    pub message: String,
}

impl From<&TaskError> for ErrorJson {
    fn from(error: &TaskError) -> Self {
        ErrorJson {
            kind: error.kind.as_str(),
            message: error.message.clone(),
        }
    }
}

/// A task's record as JSON (`fastworker status --json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct StatusJson {
    /// The task's id.
    pub task_id: String,
    /// Its name.
    pub task_name: String,
    /// Its status, e.g. `success`.
    pub status: &'static str,
    /// Its value (see [`value_json`]).
    pub result: Value,
    /// Its error, if any.
    pub error: Option<ErrorJson>,
    /// The worker that ran it.
    pub worker_id: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// Deliveries to workers.
    pub delivery_count: u32,
    /// Unix ms it was submitted.
    pub submitted_at: u64,
    /// Unix ms its last attempt started.
    pub started_at: Option<u64>,
    /// Unix ms it became final.
    pub completed_at: Option<u64>,
}

impl From<&TaskRecord> for StatusJson {
    fn from(record: &TaskRecord) -> Self {
        StatusJson {
            task_id: record.task_id.to_string(),
            task_name: record.name.clone(),
            status: record.status.as_str(),
            result: value_json(record.codec, &record.value),
            error: record.error.as_ref().map(ErrorJson::from),
            worker_id: record.worker_id.as_ref().map(|w| w.0.clone()),
            attempts: record.attempts,
            delivery_count: record.delivery_count,
            submitted_at: record.submitted_ms,
            started_at: record.started_ms,
            completed_at: record.completed_ms,
        }
    }
}

/// What the control plane sends to a task's callback address once it is final.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CallbackJson {
    /// The task's id.
    pub task_id: String,
    /// Its final status.
    pub status: &'static str,
    /// Its value (see [`value_json`]).
    pub result: Value,
    /// Its error, if any.
    pub error: Option<ErrorJson>,
    /// Unix ms its last attempt started.
    pub started_at: Option<u64>,
    /// Unix ms it became final.
    pub completed_at: Option<u64>,
    /// The `data` the submitter gave with the callback.
    pub callback_data: String,
}

impl CallbackJson {
    /// The body for `record`, with the submitter's `callback_data`.
    pub fn new(record: &TaskRecord, callback_data: &str) -> Self {
        CallbackJson {
            task_id: record.task_id.to_string(),
            status: record.status.as_str(),
            result: value_json(record.codec, &record.value),
            error: record.error.as_ref().map(ErrorJson::from),
            started_at: record.started_ms,
            completed_at: record.completed_ms,
            callback_data: callback_data.to_string(),
        }
    }
}

/// An event as JSON (`fastworker events --json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct EventJson {
    /// Unix ms.
    pub at_ms: u64,
    /// Dotted kind, e.g. `plugin.reloaded`.
    pub kind: String,
    /// Who it concerns.
    pub subject: String,
    /// One line for people.
    pub message: String,
}

impl From<&Event> for EventJson {
    fn from(event: &Event) -> Self {
        EventJson {
            at_ms: event.at_ms,
            kind: event.kind.clone(),
            subject: event.subject.clone(),
            message: event.message.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, TaskId, TaskStatus};

    #[test]
    fn status_and_callback_share_the_error_shape() {
        let mut record = TaskRecord::new(
            TaskId::from_bytes([1; 16]),
            "add",
            TaskStatus::Failure,
            Codec::Json,
        );
        record.error = Some(TaskError::new(ErrorKind::Failed, "boom"));
        let status = serde_json::to_value(StatusJson::from(&record)).unwrap();
        let callback = serde_json::to_value(CallbackJson::new(&record, "d")).unwrap();
        let expected = serde_json::json!({"kind": "failed", "message": "boom"});
        assert_eq!(status["error"], expected);
        assert_eq!(callback["error"], expected);
        assert_eq!(callback["callback_data"], "d");
        assert_eq!(status["result"], Value::Null);
    }

    #[test]
    fn values_are_decoded_json_or_hex() {
        assert_eq!(value_json(Codec::Json, b"8"), serde_json::json!(8));
        assert_eq!(
            value_json(Codec::Bincode, &[1, 255]),
            serde_json::json!("01ff")
        );
        assert_eq!(value_json(Codec::Json, b""), Value::Null);
    }
}
