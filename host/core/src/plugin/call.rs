//! Calling a task's entry point. The only code that builds the raw ABI context.

use std::sync::{atomic::AtomicBool, Arc};

use abi_stable::std_types::{RResult, RSlice, RStr};
use fastworker_plugin_sdk::abi::{Codec, TaskContext};

use super::loader::TaskInfo;
use crate::task_error::TaskError;

/// What the host tells a task about its run.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// The task id.
    pub task_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Unix milliseconds past which the task has timed out; 0 = none.
    pub deadline_unix_ms: u64,
    /// Set to cancel the running task.
    pub cancelled: Arc<AtomicBool>,
}

/// Runs the task on the calling thread. Blocking: call it off the async runtime.
pub fn call_task(
    task: &TaskInfo,
    ctx: &CallContext,
    codec: Codec,
    payload: &[u8],
) -> Result<Vec<u8>, TaskError> {
    let raw = TaskContext {
        task_id: RStr::from_str(&ctx.task_id),
        attempt: ctx.attempt,
        deadline_unix_ms: ctx.deadline_unix_ms,
        cancelled: &ctx.cancelled,
    };
    match (task.entry)(&raw, codec, RSlice::from_slice(payload)) {
        RResult::ROk(bytes) => Ok(bytes.into_vec()),
        RResult::RErr(err) => Err(TaskError::new(
            super::abi::error_kind(err.kind),
            err.message.into_string(),
        )),
    }
}
