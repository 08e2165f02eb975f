//! # fastworker-plugin-sdk
//!
//! The one crate a fastworker plugin author depends on. Write ordinary Rust functions
//! over serde types inside a module, put `#[fastworker_plugin_sdk::plugin]` on the
//! module, build the crate as a `cdylib`, and the `fastworker` host can load it:
//!
//! ```ignore
//! #[fastworker_plugin_sdk::plugin]
//! mod tasks {
//!     /// Adds two integers.
//!     pub fn add(x: i64, y: i64) -> i64 {
//!         x + y
//!     }
//! }
//! ```
//!
//! Every `pub fn` in the module is a task, named after the function. Its doc comment's
//! first paragraph is the task's doc. Arguments arrive as a JSON array or a bincode tuple of
//! the parameters in order; the result goes back in the caller's codec. A task may
//! return `Result<T, E>` with `E: Display`: an `Err` is a task failure with that
//! message. A panic is caught inside the plugin and comes back as an error. A task may
//! take `ctx: &Context` as its first parameter to see its id, attempt, deadline and
//! whether it was cancelled. Options go in `#[task(...)]`:
//! `max_retries`, `retry_delay`, `retry_backoff`, `retry_backoff_max`, `timeout`
//! (seconds), `priority = "high"`, `every = 30` (seconds) or `cron = "*/5 * * * *"`,
//! `repeat_count`, `repeat_until` (Unix seconds), `name = "other_name"`.
//!
//! ## Layout
//! - [`abi`]: the stable ABI (root module, task descriptors, the call signature).
//! - [`codec`]: JSON and bincode encoding, shared with the host and clients.
//! - [`Value`]: any JSON value, in both codecs.
//! - [`Context`]: what a running task may ask the host.
//! - Logging: what a task logs through [`log`] or [`tracing`] (these re-exports, or the
//!   plugin's own dependencies on them) reaches the host's log with the task's id and
//!   the plugin's name and version.

pub mod abi;
pub mod codec;
mod context;
mod value;

#[doc(hidden)]
pub mod __private {
    pub use crate::logging::install_log;
    pub use crate::runtime::*;
}
mod logging;
mod runtime;

pub use abi::{Codec, ErrorKind, Priority, TaskError};
pub use context::Context;
pub use fastworker_plugin_sdk_macros::plugin;
pub use value::Value;

#[doc(hidden)]
pub use abi_stable;
/// `log`, re-exported: what a task logs with `fastworker_plugin_sdk::log::info!` (or
/// its own `log` 0.4 dependency) reaches the host's log with the task's id.
pub use log;
/// `tracing`, re-exported: events reach the host's log like `log` records.
pub use tracing;

/// Exports `$root` (a `fn() -> PluginModuleRef`) as the library's root module, with
/// abi_stable's layout information. `#[plugin]` emits this; call it yourself only to
/// build a root module by hand (the host's own test fixtures do).
#[macro_export]
macro_rules! export_plugin_module {
    ($root:path) => {
        #[no_mangle]
        #[doc(hidden)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::abi_stable::library::LibHeader = {
            extern "C" fn __fastworker_erased_root() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader($root)
            }
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::abi::PluginModuleRef>(
                    __fastworker_erased_root,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn exported_symbol_name_matches_abi_stable() {
        // export_plugin_module! hard-codes the name abi_stable's loader looks up.
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }
}
