//! Protocol version 1, frozen: the first authenticated version, a header of bincode 1
//! in its standard form. Peers built before version 2 speak only this, so the
//! encoding here must never change (the `v1_*` snapshots pin every message).
//!
//! Most types are shared with the current version unchanged. A type that changed
//! after version 1 has a frozen copy here with the fields it had then, and every
//! message that contains it has one too:
//! - [`TaskSpec`](crate::TaskSpec) gained `doc` and `signature` in version 2, so
//!   `Registration` and `ToControlPlane` (its `Register` and `TasksChanged`) are copied.
//!
//! [`FromControlPlane`](crate::FromControlPlane)'s version-1 variants have not changed,
//! and the ones added since (`TaskList`, `QueuedList`, `Purged`, `Results`) are last, so version 1
//! encodes the others as they are and refuses the new variants. Whoever changes a type used here adds its frozen copy first.

use bincode::Options;
use serde::{Deserialize, Serialize};

use crate::{
    frames::{ProtocolError, MAX_HEADER_BYTES},
    messages::{
        FromControlPlane, Hello, PeriodicSpec, PluginEvent, Priority, Registration, RunningClaim,
        TaskEnvelope, TaskOutcome, TaskSpec, ToControlPlane,
    },
    TaskId, WorkerId, WorkerSecret,
};

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(MAX_HEADER_BYTES)
}

/// A version-1 header body: bincode of `value`.
pub(crate) fn serialize<T: Serialize>(value: &T) -> Result<Vec<u8>, ProtocolError> {
    options()
        .serialize(value)
        .map_err(|e| ProtocolError::Encode(e.to_string()))
}

/// A `T` from a version-1 header body (no trailing bytes allowed).
pub(crate) fn deserialize<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ProtocolError> {
    options()
        .deserialize(body)
        .map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// `TaskSpec` as it was in version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TaskSpecV1 {
    name: String,
    max_retries: u32,
    retry_delay_secs: f64,
    retry_backoff: f64,
    retry_backoff_max_secs: f64,
    timeout_secs: Option<f64>,
    periodic: Option<PeriodicSpec>,
    priority: Priority,
}

impl From<&TaskSpec> for TaskSpecV1 {
    fn from(s: &TaskSpec) -> Self {
        TaskSpecV1 {
            name: s.name.clone(),
            max_retries: s.max_retries,
            retry_delay_secs: s.retry_delay_secs,
            retry_backoff: s.retry_backoff,
            retry_backoff_max_secs: s.retry_backoff_max_secs,
            timeout_secs: s.timeout_secs,
            periodic: s.periodic.clone(),
            priority: s.priority,
        }
    }
}

impl From<TaskSpecV1> for TaskSpec {
    fn from(s: TaskSpecV1) -> Self {
        let mut spec = TaskSpec::new(s.name);
        spec.max_retries = s.max_retries;
        spec.retry_delay_secs = s.retry_delay_secs;
        spec.retry_backoff = s.retry_backoff;
        spec.retry_backoff_max_secs = s.retry_backoff_max_secs;
        spec.timeout_secs = s.timeout_secs;
        spec.periodic = s.periodic;
        spec.priority = s.priority;
        spec
    }
}

/// `Registration` as it was in version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RegistrationV1 {
    worker_id: WorkerId,
    tasks: Vec<TaskSpecV1>,
    concurrency: u32,
    address: Option<String>,
    pid: u32,
    secret: Option<WorkerSecret>,
    running: Vec<RunningClaim>,
}

/// `PluginEvent` as it was in version 1 (without builds and tasks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PluginEventV1 {
    kind: String,
    plugin: String,
    path: String,
    old_version: Option<String>,
    new_version: Option<String>,
    message: String,
}

/// `ToControlPlane` as it was in version 1 (same variants, same order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum ToControlPlaneV1 {
    Hello(Hello),
    Submit {
        request_id: u64,
        task: TaskEnvelope,
        wait: bool,
    },
    SubmitBatch {
        request_id: u64,
        tasks: Vec<TaskEnvelope>,
        wait: bool,
    },
    Status {
        request_id: u64,
        task_id: TaskId,
        wait: bool,
    },
    Cancel {
        request_id: u64,
        task_id: TaskId,
    },
    Register(RegistrationV1),
    Heartbeat {
        running: u32,
        free_slots: u32,
    },
    Outcome(TaskOutcome),
    TasksChanged {
        tasks: Vec<TaskSpecV1>,
    },
    Draining,
    Unregister,
    Ping {
        nonce: u64,
    },
    Discover,
    PluginEvent(PluginEventV1),
    DeadLetters {
        request_id: u64,
    },
    Replay {
        request_id: u64,
        task_id: TaskId,
    },
    Restarting,
    Events {
        request_id: u64,
    },
}

fn specs_v1(tasks: &[TaskSpec]) -> Vec<TaskSpecV1> {
    tasks.iter().map(TaskSpecV1::from).collect()
}

fn specs(tasks: Vec<TaskSpecV1>) -> Vec<TaskSpec> {
    tasks.into_iter().map(TaskSpec::from).collect()
}

/// A message as version 1 has it, or `None` when version 1 has no such message.
fn to_v1(msg: &ToControlPlane) -> Option<ToControlPlaneV1> {
    use ToControlPlane as M;
    use ToControlPlaneV1 as V;
    Some(match msg.clone() {
        M::Hello(h) => V::Hello(h),
        M::Submit {
            request_id,
            task,
            wait,
        } => V::Submit {
            request_id,
            task,
            wait,
        },
        M::SubmitBatch {
            request_id,
            tasks,
            wait,
        } => V::SubmitBatch {
            request_id,
            tasks,
            wait,
        },
        M::Status {
            request_id,
            task_id,
            wait,
        } => V::Status {
            request_id,
            task_id,
            wait,
        },
        M::Cancel {
            request_id,
            task_id,
        } => V::Cancel {
            request_id,
            task_id,
        },
        M::Register(r) => V::Register(RegistrationV1 {
            worker_id: r.worker_id,
            tasks: specs_v1(&r.tasks),
            concurrency: r.concurrency,
            address: r.address,
            pid: r.pid,
            secret: r.secret,
            running: r.running,
        }),
        M::Heartbeat {
            running,
            free_slots,
        } => V::Heartbeat {
            running,
            free_slots,
        },
        M::Outcome(o) => V::Outcome(o),
        M::TasksChanged { tasks } => V::TasksChanged {
            tasks: specs_v1(&tasks),
        },
        M::Draining => V::Draining,
        M::Unregister => V::Unregister,
        M::Ping { nonce } => V::Ping { nonce },
        M::Discover => V::Discover,
        M::PluginEvent(e) => V::PluginEvent(PluginEventV1 {
            kind: e.kind,
            plugin: e.plugin,
            path: e.path,
            old_version: e.old_version,
            new_version: e.new_version,
            message: e.message,
        }),
        M::DeadLetters { request_id } => V::DeadLetters { request_id },
        M::Replay {
            request_id,
            task_id,
        } => V::Replay {
            request_id,
            task_id,
        },
        M::Restarting => V::Restarting,
        M::Events { request_id } => V::Events { request_id },
        M::Tasks { .. }
        | M::Queued { .. }
        | M::Purge { .. }
        | M::Outcomes { .. }
        | M::Report { .. } => return None,
    })
}

fn from_v1(msg: ToControlPlaneV1) -> ToControlPlane {
    use ToControlPlane as M;
    use ToControlPlaneV1 as V;
    match msg {
        V::Hello(h) => M::Hello(h),
        V::Submit {
            request_id,
            task,
            wait,
        } => M::Submit {
            request_id,
            task,
            wait,
        },
        V::SubmitBatch {
            request_id,
            tasks,
            wait,
        } => M::SubmitBatch {
            request_id,
            tasks,
            wait,
        },
        V::Status {
            request_id,
            task_id,
            wait,
        } => M::Status {
            request_id,
            task_id,
            wait,
        },
        V::Cancel {
            request_id,
            task_id,
        } => M::Cancel {
            request_id,
            task_id,
        },
        V::Register(r) => {
            let mut registration = Registration::new(r.worker_id, specs(r.tasks), r.concurrency);
            registration.address = r.address;
            registration.pid = r.pid;
            registration.secret = r.secret;
            registration.running = r.running;
            M::Register(registration)
        }
        V::Heartbeat {
            running,
            free_slots,
        } => M::Heartbeat {
            running,
            free_slots,
        },
        V::Outcome(o) => M::Outcome(o),
        V::TasksChanged { tasks } => M::TasksChanged {
            tasks: specs(tasks),
        },
        V::Draining => M::Draining,
        V::Unregister => M::Unregister,
        V::Ping { nonce } => M::Ping { nonce },
        V::Discover => M::Discover,
        V::PluginEvent(e) => {
            let mut event = PluginEvent::new(e.kind, e.plugin, e.path, e.message);
            event.old_version = e.old_version;
            event.new_version = e.new_version;
            M::PluginEvent(event)
        }
        V::DeadLetters { request_id } => M::DeadLetters { request_id },
        V::Replay {
            request_id,
            task_id,
        } => M::Replay {
            request_id,
            task_id,
        },
        V::Restarting => M::Restarting,
        V::Events { request_id } => M::Events { request_id },
    }
}

/// How a message direction is written in version 1.
pub trait V1: Sized {
    /// The version-1 header body of `self`.
    fn encode_v1(&self) -> Result<Vec<u8>, ProtocolError>;
    /// A message from a version-1 header body.
    fn decode_v1(body: &[u8]) -> Result<Self, ProtocolError>;
}

impl V1 for ToControlPlane {
    fn encode_v1(&self) -> Result<Vec<u8>, ProtocolError> {
        let old = to_v1(self).ok_or_else(|| {
            ProtocolError::Encode("protocol version 1 has no such message".into())
        })?;
        serialize(&old)
    }

    fn decode_v1(body: &[u8]) -> Result<Self, ProtocolError> {
        deserialize::<ToControlPlaneV1>(body).map(from_v1)
    }
}

/// Whether version 1 has this message: the variants added since are at the end of
/// the enum, so the earlier ones keep their version-1 tags.
fn in_v1(msg: &FromControlPlane) -> bool {
    !matches!(
        msg,
        FromControlPlane::TaskList { .. }
            | FromControlPlane::QueuedList { .. }
            | FromControlPlane::Purged { .. }
            | FromControlPlane::Results { .. }
            | FromControlPlane::Assigns { .. }
    )
}

impl V1 for FromControlPlane {
    fn encode_v1(&self) -> Result<Vec<u8>, ProtocolError> {
        if !in_v1(self) {
            return Err(ProtocolError::Encode(
                "protocol version 1 has no such message".into(),
            ));
        }
        serialize(self)
    }

    fn decode_v1(body: &[u8]) -> Result<Self, ProtocolError> {
        let msg: FromControlPlane = deserialize(body)?;
        if !in_v1(&msg) {
            return Err(ProtocolError::Malformed(
                "a message protocol version 1 does not have".into(),
            ));
        }
        Ok(msg)
    }
}
