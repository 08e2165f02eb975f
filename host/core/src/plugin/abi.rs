//! The one place where the plugin ABI's own types become the protocol's and back. The
//! ABI keeps its own `#[repr]` priority, error kind and codec so that plugins built
//! against the SDK do not change layout when the protocol gains a variant.

use fastworker_plugin_sdk::abi as sdk;

use crate::protocol::{Codec, ErrorKind, Priority};

/// A plugin's declared priority, as the protocol's.
pub fn priority(priority: sdk::Priority) -> Priority {
    match priority {
        sdk::Priority::Critical => Priority::Critical,
        sdk::Priority::High => Priority::High,
        sdk::Priority::Normal => Priority::Normal,
        sdk::Priority::Low => Priority::Low,
    }
}

/// How a plugin says its task failed, as the protocol's error kind.
pub fn error_kind(kind: sdk::ErrorKind) -> ErrorKind {
    match kind {
        sdk::ErrorKind::Failed => ErrorKind::Failed,
        sdk::ErrorKind::Panicked => ErrorKind::Panicked,
        sdk::ErrorKind::BadArguments => ErrorKind::BadArguments,
        sdk::ErrorKind::EncodeFailed => ErrorKind::EncodeFailed,
        sdk::ErrorKind::Cancelled => ErrorKind::Cancelled,
        sdk::ErrorKind::TimedOut => ErrorKind::TimedOut,
    }
}

/// The ABI's codec for a task's payload codec; `None` for a codec plugins do not
/// know (one a newer protocol added).
pub fn codec(codec: Codec) -> Option<sdk::Codec> {
    match codec {
        Codec::Json => Some(sdk::Codec::Json),
        Codec::Bincode => Some(sdk::Codec::Bincode),
        _ => None,
    }
}
