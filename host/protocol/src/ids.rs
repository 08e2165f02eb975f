//! Identifiers, as newtypes so a task id is never mistaken for anything else.

use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A task's id: a UUID, chosen by whoever submits the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskId(pub Uuid);

impl TaskId {
    /// A new random (v4) id, from the thread's CSPRNG (`rand`'s, seeded by the OS):
    /// `Uuid::new_v4` asks the kernel for every id, a system call per task. As with
    /// `uuid`'s `fast-rng`, a process that forks without exec after making ids must
    /// call `rand::rng().reseed()` in the child, or the child repeats the parent's
    /// next ids (nothing in fastworker forks without exec).
    pub fn new() -> Self {
        TaskId(uuid::Builder::from_random_bytes(rand::random()).into_uuid())
    }

    /// The id with these 16 bytes (the bytes of its UUID).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        TaskId(Uuid::from_bytes(bytes))
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

/// A worker's id: the control plane's `--worker-id` or a subworker's. Shared, not
/// copied: the control plane keeps it with every task a worker holds and every result
/// it returned, so a clone is a count, not an allocation. On the wire it is a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(Arc<str>);

impl WorkerId {
    /// The worker called `id`.
    pub fn new(id: impl AsRef<str>) -> Self {
        WorkerId(Arc::from(id.as_ref()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as a shared string (a count more, no copy).
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for WorkerId {
    fn from(s: &str) -> Self {
        WorkerId::new(s)
    }
}

/// Compares two byte strings in time that depends only on their length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The control plane's unguessable token for one assignment of a task to a worker:
/// an outcome, or a reconnecting worker's claim to be running the task, counts only
/// with the token of the current assignment.
#[derive(Clone, Copy, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LeaseToken(pub [u8; 16]);

impl LeaseToken {
    /// The token with these bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        LeaseToken(bytes)
    }

    /// A fresh random token.
    pub fn new() -> Self {
        LeaseToken(rand::random())
    }
}

impl Default for LeaseToken {
    fn default() -> Self {
        Self::new()
    }
}

impl std::hash::Hash for WorkerSecret {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl std::hash::Hash for LeaseToken {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for LeaseToken {
    fn eq(&self, other: &Self) -> bool {
        constant_time_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Enough to tell two apart in a log, not enough to forge one.
        write!(f, "LeaseToken({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

/// The secret a control plane gives a subworker when it first registers: a later
/// registration under the same worker id (a reconnect, a restart in place) must show
/// it, so nobody else can take that id over.
#[derive(Clone, Copy, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkerSecret(pub [u8; 32]);

impl WorkerSecret {
    /// The secret with these bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        WorkerSecret(bytes)
    }

    /// A fresh random secret.
    pub fn new() -> Self {
        WorkerSecret(rand::random())
    }

    /// As hex (to hand to the next process across a restart in place).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// From hex.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).ok()?;
        Some(WorkerSecret(bytes))
    }
}

impl Default for WorkerSecret {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for WorkerSecret {
    fn eq(&self, other: &Self) -> bool {
        constant_time_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for WorkerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkerSecret(not shown)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_task_ids_are_random_version_4_uuids() {
        let ids: std::collections::HashSet<TaskId> = (0..10_000).map(|_| TaskId::new()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(100) {
            assert_eq!(id.0.get_version(), Some(uuid::Version::Random));
            assert_eq!(id.0.get_variant(), uuid::Variant::RFC4122);
        }
    }
}
