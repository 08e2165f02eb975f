//! Support code for what `#[plugin]` generates. Not a public API: names may change.

use std::{
    any::Any,
    cell::{Cell, RefCell},
    panic::{self, AssertUnwindSafe},
    sync::Once,
};

use abi_stable::std_types::{RResult, RSlice, RVec};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    abi::{Codec, ErrorKind, TaskContext, TaskError},
    codec,
    context::Context,
};

thread_local! {
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

/// A plugin carries its own copy of std, so the host's panic hook never sees its panics.
/// This hook keeps panics inside task calls quiet (they come back as errors, which the
/// host logs) and remembers where they happened; other panics print as usual.
fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if IN_TASK.with(Cell::get) {
                let location = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()));
                PANIC_LOCATION.with(|p| *p.borrow_mut() = location);
            } else {
                previous(info);
            }
        }));
    });
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    };
    match PANIC_LOCATION.with(|p| p.borrow_mut().take()) {
        Some(location) => format!("task panicked at {location}: {text}"),
        None => format!("task panicked: {text}"),
    }
}

/// Runs one task body, turning a panic into a [`TaskError`] so nothing unwinds over
/// the ABI.
pub fn invoke<F>(
    raw: &TaskContext<'_>,
    codec: Codec,
    payload: RSlice<'_, u8>,
    body: F,
) -> RResult<RVec<u8>, TaskError>
where
    F: FnOnce(&Context<'_>, Codec, &[u8]) -> Result<Vec<u8>, TaskError>,
{
    install_panic_hook();
    let ctx = Context::new(raw);
    IN_TASK.with(|f| f.set(true));
    let outcome = crate::logging::with_task(raw.task_id.as_str(), || {
        panic::catch_unwind(AssertUnwindSafe(|| body(&ctx, codec, payload.as_slice())))
    });
    IN_TASK.with(|f| f.set(false));
    match outcome {
        Ok(Ok(bytes)) => RResult::ROk(RVec::from(bytes)),
        Ok(Err(err)) => RResult::RErr(classify_gave_up(&ctx, err)),
        Err(payload) => RResult::RErr(TaskError::new(ErrorKind::Panicked, panic_message(payload))),
    }
}

/// A task that returns an error after its context said stop gave up because of that:
/// report it as what it is (timed out, or cancelled), not as an ordinary failure.
fn classify_gave_up(ctx: &Context<'_>, err: TaskError) -> TaskError {
    if err.kind != ErrorKind::Failed || !ctx.is_cancelled() {
        return err;
    }
    let past_deadline = ctx
        .deadline()
        .is_some_and(|d| std::time::SystemTime::now() >= d);
    let kind = if past_deadline {
        ErrorKind::TimedOut
    } else {
        ErrorKind::Cancelled
    };
    TaskError {
        kind,
        message: err.message,
    }
}

/// What a task takes, for the message when its arguments do not decode:
/// `sleep_ms takes 1 argument (ms: u64), got 2`.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// The task's name.
    pub task: &'static str,
    /// Its parameters as written, e.g. `ms: u64` (no `Context`).
    pub list: &'static str,
    /// How many.
    pub count: usize,
}

impl Params {
    fn bad_arguments(
        &self,
        codec: Codec,
        payload: &[u8],
        err: impl std::fmt::Display,
    ) -> TaskError {
        let plural = if self.count == 1 { "" } else { "s" };
        let message = match (codec, json_array_len(payload)) {
            (Codec::Json, Some(got)) if got != self.count => match self.count {
                0 => format!("{} takes no arguments, got {got}", self.task),
                n => format!(
                    "{} takes {n} argument{plural} ({}), got {got}",
                    self.task, self.list
                ),
            },
            _ => format!(
                "the arguments of {}({}) do not decode: {err}",
                self.task, self.list
            ),
        };
        TaskError::new(ErrorKind::BadArguments, message)
    }
}

/// The length of a JSON array payload (`None` if it is not one).
fn json_array_len(payload: &[u8]) -> Option<usize> {
    serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(payload)
        .ok()
        .map(|items| items.len())
}

/// Decodes the argument tuple of a task.
pub fn decode_args<T: DeserializeOwned>(
    codec: Codec,
    payload: &[u8],
    params: &Params,
) -> Result<T, TaskError> {
    codec::decode(codec, payload).map_err(|e| params.bad_arguments(codec, payload, e))
}

/// Decodes the (empty) arguments of a task with no parameters.
pub fn decode_no_args(codec: Codec, payload: &[u8], params: &Params) -> Result<(), TaskError> {
    codec::decode_no_args(codec, payload).map_err(|e| params.bad_arguments(codec, payload, e))
}

/// Encodes a task's result in the caller's codec.
pub fn encode_output<T: Serialize + ?Sized>(codec: Codec, value: &T) -> Result<Vec<u8>, TaskError> {
    codec::encode(codec, value).map_err(|e| {
        TaskError::new(
            ErrorKind::EncodeFailed,
            format!("result does not encode: {e}"),
        )
    })
}

/// Turns the `Err` of a task returning `Result<T, E: Display>` into a task failure.
pub fn task_failed<E: std::fmt::Display>(err: E) -> TaskError {
    TaskError::new(ErrorKind::Failed, err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLEEP: Params = Params {
        task: "sleep_ms",
        list: "ms: u64",
        count: 1,
    };

    #[test]
    fn a_wrong_argument_count_names_the_task_its_parameters_and_the_count() {
        let err = decode_args::<(u64,)>(Codec::Json, b"[1,2]", &SLEEP).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadArguments);
        assert_eq!(err.message, "sleep_ms takes 1 argument (ms: u64), got 2");
        let add = Params {
            task: "add",
            list: "x: i64, y: i64",
            count: 2,
        };
        let err = decode_args::<(i64, i64)>(Codec::Json, b"[1]", &add).unwrap_err();
        assert_eq!(err.message, "add takes 2 arguments (x: i64, y: i64), got 1");
        let none = Params {
            task: "heartbeat",
            list: "",
            count: 0,
        };
        let err = decode_no_args(Codec::Json, b"[1,2]", &none).unwrap_err();
        assert_eq!(err.message, "heartbeat takes no arguments, got 2");
    }

    #[test]
    fn a_wrong_type_says_which_task_and_why() {
        let err = decode_args::<(u64,)>(Codec::Json, br#"["soon"]"#, &SLEEP).unwrap_err();
        assert!(
            err.message
                .starts_with("the arguments of sleep_ms(ms: u64) do not decode:"),
            "{}",
            err.message
        );
        assert_eq!(
            decode_args::<(u64,)>(Codec::Json, b"[7]", &SLEEP).unwrap(),
            (7,)
        );
    }
}
