//! [`TaskError`]: why a task did not succeed, in the form that crosses the wire and
//! lands in results. Plugin errors map onto it; so do the host's own (unknown task,
//! lost worker, timeout).

use std::fmt;

use serde::{Deserialize, Serialize};

/// What kind of failure a task met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The task returned an error.
    Failed,
    /// The task panicked (caught inside the plugin).
    Panicked,
    /// The payload did not decode into the task's parameters.
    BadArguments,
    /// The task's result did not encode.
    EncodeFailed,
    /// The task was cancelled.
    Cancelled,
    /// The task ran past its timeout.
    TimedOut,
    /// No loaded plugin serves that task name.
    UnknownTask,
    /// The worker running it went away too often.
    WorkerLost,
    /// The request was refused (malformed, shutting down, ...).
    Rejected,
    /// Something went wrong inside fastworker itself.
    Internal,
}

impl ErrorKind {
    /// The snake_case name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Failed => "failed",
            ErrorKind::Panicked => "panicked",
            ErrorKind::BadArguments => "bad_arguments",
            ErrorKind::EncodeFailed => "encode_failed",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::TimedOut => "timed_out",
            ErrorKind::UnknownTask => "unknown_task",
            ErrorKind::WorkerLost => "worker_lost",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Internal => "internal",
        }
    }
}

/// A task failure: its kind and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub struct TaskError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// One line for people.
    pub message: String,
}

impl TaskError {
    /// A new error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        TaskError {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}
