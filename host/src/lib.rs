//! # fastworker
//!
//! A brokerless distributed task host. This crate is the `fastworker` binary's library.
//!
//! ## Layout
//! - [`cli`]: the command line, flags and environment variables.
//! - [`plugin`]: finding, loading and calling task plugins (the stable ABI lives in
//!   `fastworker-plugin-sdk`).
//! - [`task_error`]: the error a task ends with, as it crosses the wire.
//! - [`commands`]: one module per subcommand.

pub mod cli;
pub mod client;
pub mod commands;
pub mod control_plane;
pub mod executor;
pub mod plugin;
pub mod protocol;
pub mod shutdown;
pub mod subworker;
pub mod task_error;
pub mod transport;
