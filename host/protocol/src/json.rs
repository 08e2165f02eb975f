//! The JSON forms of what the protocol carries, for people and scripts: a task's status
//! record (`fastworker status --json`), the body sent to a callback address, and an
//! event. Each form is a struct here, defined once, so the CLI, the control plane and
//! later the HTTP API write the same shape.
//!
//! An error has one shape everywhere: `{"kind": "failed", "message": "..."}`.

use serde::Serialize;
use serde_json::Value;

use crate::{
    messages::{Codec, Event, QueuedTask, ServedTask, TaskRecord},
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
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
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
    /// Set (true) only in a preview ([`StatusJson::preview`]) whose result or error
    /// was cut; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
}

impl StatusJson {
    /// `record` for a list: a result over `max_bytes` becomes the text of its first
    /// `max_bytes` bytes followed by `…` (not decoded), an error message is cut the
    /// same way, and `truncated` says so. The whole record is one request away.
    pub fn preview(record: &TaskRecord, max_bytes: usize) -> Self {
        let long_value = record.value.len() > max_bytes;
        let long_error = record
            .error
            .as_ref()
            .is_some_and(|e| e.message.len() > max_bytes);
        if !long_value && !long_error {
            return StatusJson::from(record);
        }
        let mut short = record.clone();
        short.value = bytes::Bytes::new();
        if let Some(error) = &mut short.error {
            error.message = crate::for_people(&error.message, max_bytes);
        }
        let mut json = StatusJson::from(&short);
        if long_value {
            let head = &record.value[..max_bytes];
            json.result = Value::String(format!("{}…", String::from_utf8_lossy(head)));
        } else {
            json.result = value_json(record.codec, &record.value);
        }
        json.truncated = Some(true);
        json
    }
}

impl From<&TaskRecord> for StatusJson {
    fn from(record: &TaskRecord) -> Self {
        StatusJson {
            task_id: record.task_id.to_string(),
            task_name: record.name.clone(),
            status: record.status.as_str(),
            result: value_json(record.codec, &record.value),
            error: record.error.as_ref().map(ErrorJson::from),
            worker_id: record.worker_id.as_ref().map(|w| w.to_string()),
            attempts: record.attempts,
            delivery_count: record.delivery_count,
            submitted_at: record.submitted_ms,
            started_at: record.started_ms,
            completed_at: record.completed_ms,
            truncated: None,
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

/// A task a cluster serves, as JSON (`fastworker tasks --json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ServedTaskJson {
    /// Its name.
    pub name: String,
    /// Its signature, e.g. `(x: i64, y: i64) -> i64` ("" when unknown).
    pub signature: String,
    /// The first paragraph of its doc comment, on one line.
    pub doc: String,
    /// The workers that serve it, by id.
    pub workers: Vec<String>,
    /// Default retries after a failure.
    pub max_retries: u32,
    /// Default first retry delay, seconds.
    pub retry_delay: f64,
    /// Default backoff multiplier.
    pub retry_backoff: f64,
    /// Default cap on a retry delay, seconds.
    pub retry_backoff_max: f64,
    /// Default timeout of one attempt, seconds (`null`: none).
    pub timeout: Option<f64>,
    /// Its priority (what periodic runs are queued at).
    pub priority: &'static str,
    /// Its periodic schedule: `{"every": 30}` or `{"cron": "*/5 * * * *"}`, else `null`.
    pub periodic: Option<Value>,
}

impl From<&ServedTask> for ServedTaskJson {
    fn from(task: &ServedTask) -> Self {
        let spec = &task.spec;
        let periodic = spec.periodic.as_ref().map(|p| {
            let mut schedule = serde_json::Map::new();
            if let Some(every) = p.interval_secs {
                schedule.insert("every".into(), every.into());
            }
            if let Some(cron) = &p.cron {
                schedule.insert("cron".into(), cron.clone().into());
            }
            if let Some(count) = p.repeat_count {
                schedule.insert("repeat_count".into(), count.into());
            }
            if let Some(until) = p.repeat_until_unix {
                schedule.insert("repeat_until".into(), until.into());
            }
            Value::Object(schedule)
        });
        ServedTaskJson {
            name: spec.name.clone(),
            signature: spec.signature.clone(),
            doc: spec.doc.clone(),
            workers: task.workers.iter().map(|w| w.to_string()).collect(),
            max_retries: spec.max_retries,
            retry_delay: spec.retry_delay_secs,
            retry_backoff: spec.retry_backoff,
            retry_backoff_max: spec.retry_backoff_max_secs,
            timeout: spec.timeout_secs,
            priority: spec.priority.as_str(),
            periodic,
        }
    }
}

/// A waiting task as JSON (`fastworker queued --json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct QueuedJson {
    /// Its id.
    pub task_id: String,
    /// Its name.
    pub task_name: String,
    /// `queued`, `scheduled` or `retrying`.
    pub status: &'static str,
    /// Its priority.
    pub priority: &'static str,
    /// Unix ms before which it does not run (`null`: as soon as a worker is free).
    pub not_before: Option<u64>,
    /// Unix ms it was submitted.
    pub submitted_at: u64,
    /// Attempts made so far.
    pub attempts: u32,
}

impl From<&QueuedTask> for QueuedJson {
    fn from(task: &QueuedTask) -> Self {
        QueuedJson {
            task_id: task.record.task_id.to_string(),
            task_name: task.record.name.clone(),
            status: task.record.status.as_str(),
            priority: task.priority.as_str(),
            not_before: (task.not_before_ms > 0).then_some(task.not_before_ms),
            submitted_at: task.record.submitted_ms,
            attempts: task.record.attempts,
        }
    }
}
