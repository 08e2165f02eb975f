//! [`Context`]: what a running task may ask the host.

use std::{
    sync::atomic::Ordering,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::abi::TaskContext;

/// The view a task has of its own run. Take `ctx: &Context` as the first parameter of a
/// task to receive it; it is not part of the task's arguments.
pub struct Context<'a> {
    raw: &'a TaskContext<'a>,
}

impl<'a> Context<'a> {
    /// Wraps the raw ABI context (the generated code does this).
    pub fn new(raw: &'a TaskContext<'a>) -> Self {
        Context { raw }
    }

    /// The task's id.
    pub fn task_id(&self) -> &str {
        self.raw.task_id.as_str()
    }

    /// 1 for the first attempt, 2 for the first retry, ...
    pub fn attempt(&self) -> u32 {
        self.raw.attempt
    }

    /// The moment past which the task has timed out, if it has a timeout.
    pub fn deadline(&self) -> Option<SystemTime> {
        match self.raw.deadline_unix_ms {
            0 => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// True once the host has cancelled this task or its deadline has passed: a
    /// long-running task should poll this and return early.
    pub fn is_cancelled(&self) -> bool {
        self.raw.cancelled.load(Ordering::Relaxed)
            || self.deadline().is_some_and(|d| SystemTime::now() >= d)
    }
}
