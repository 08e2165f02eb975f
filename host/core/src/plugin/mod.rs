//! Task plugins: finding them, loading them safely, and calling their tasks.
//!
//! - [`resolve`]: turns `--task-modules` words (files, directories, bare names) into
//!   plugin file paths.
//! - [`loader`]: loads one file from a private content-addressed copy, with
//!   abi_stable's layout check and our ABI and SDK version checks.
//! - [`registry`]: the set of loaded plugins and the task-name → entry-point map the
//!   dispatcher reads.
//! - [`call`]: calls one task entry point; the only place that touches the raw ABI.
//! - [`live`]: the served set of plugins, kept current as files change (hot reload).
//! - [`watch`]: the file watcher that feeds [`live`].
//!
//! Libraries are never unloaded: `dlclose` of a Rust cdylib is unsound (its
//! thread-locals and allocations may outlive it), so each loaded version stays mapped
//! for the life of the process.

pub mod abi;
pub mod call;
mod file_bytes;
pub mod live;
pub mod loader;
mod plugin_log;
pub mod registry;
pub mod resolve;
pub mod watch;

pub use call::CallContext;
/// The `fastworker-plugin-sdk` version this host loads plugins of (a plugin pins it
/// with `=`).
pub use fastworker_plugin_sdk::abi::SDK_VERSION;
pub use live::{LivePlugins, ReloadReport, SharedRegistry};
pub use loader::{LoadError, LoadedPlugin, PluginLoader, TaskInfo};
pub use registry::{PluginRegistry, RegistryError, TaskHandle};
