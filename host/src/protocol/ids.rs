//! Identifiers, as newtypes so a task id is never mistaken for anything else.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A task's id: a UUID, chosen by whoever submits the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId(pub Uuid);

impl TaskId {
    /// A new random (v4) id.
    pub fn new() -> Self {
        TaskId(Uuid::new_v4())
    }

    /// Parses the usual hyphenated text form.
    pub fn parse(text: &str) -> Result<Self, uuid::Error> {
        Uuid::parse_str(text.trim()).map(TaskId)
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A worker's id: the control plane's `--worker-id` or a subworker's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkerId(pub String);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for WorkerId {
    fn from(s: &str) -> Self {
        WorkerId(s.to_string())
    }
}
