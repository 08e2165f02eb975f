//! The control plane: accepts tasks, queues them by priority, hands them to
//! subworkers (its own `--task-modules` run in a child subworker it supervises), caches
//! results, tracks subworker health.
//!
//! - [`dispatcher`]: the state machine (no I/O).
//! - [`queue`], [`delay_queue`], [`dead_letters`], [`workers`], [`result_cache`],
//!   [`retry`], [`periodic`], [`events`], [`observe`]: its parts, each a plain state machine with
//!   its own tests.
//! - [`store`] and [`commit`]: `--data-dir` (the durable state and the group commit).
//! - [`own_worker`]: the child process that runs the control plane's own plugins.
//! - [`http`]: the dashboard, the JSON API, the event stream and `/metrics`.
//! - [`server`]: the event loop that connects the state machine to sockets, the own
//!   subworker, timers and signals.

pub mod commit;
pub mod dead_letters;
pub mod delay_queue;
pub mod dispatcher;
pub mod events;
pub mod http;
pub mod metrics;
pub mod names;
pub mod observe;
pub mod own_worker;
mod peer_terms;
pub mod periodic;
pub mod queue;
pub mod result_cache;
pub mod retry;
pub mod server;
pub mod store;
pub mod task_spans;
pub mod timeline;
pub mod wire;
pub mod workers;

pub use crate::fast_map::{FastMap, FastSet};
pub(crate) use crate::fast_map::{TaskMap, TaskSet};

/// A task spec for tests: no retries, 1 s first delay, x2 backoff, 10 s cap.
#[cfg(test)]
pub(crate) fn test_spec(name: &str) -> crate::protocol::TaskSpec {
    {
        let mut value = crate::protocol::TaskSpec::new(name);
        value.max_retries = 0;
        value.retry_delay_secs = 1.0;
        value.retry_backoff = 2.0;
        value.retry_backoff_max_secs = 10.0;
        value.timeout_secs = None;
        value.periodic = None;
        value.priority = crate::protocol::Priority::Normal;
        value
    }
}
