//! # fastworker
//!
//! A brokerless distributed task host. This crate is the `fastworker` binary's library.
//!
//! ## Layout
//! Contracts first (no I/O), then the parts that do I/O, then the programs:
//! - [`protocol`]: the wire messages and their framing (data only).
//! - [`task_error`]: the error a task ends with, as it crosses the wire.
//! - [`plugin`]: finding, loading, watching and calling task plugins (the stable ABI
//!   itself lives in `fastworker-plugin-sdk`).
//! - [`transport`]: ZeroMQ sockets behind a small interface (frames in, frames out).
//! - [`executor`]: runs tasks on this host against the current plugins.
//! - [`probe`]: the answer-only endpoints (discovery, a subworker's status).
//! - [`shutdown`]: the stop signal every long-lived loop selects on.
//! - [`log_limit`]: one log line per interval for repeated trouble.
//! - [`control_plane`]: the dispatcher state machine and its event loop.
//! - [`subworker`]: the subworker's loop.
//! - [`client`]: the async Rust client and discovery.
//! - [`cli`], [`commands`]: the command line and one module per subcommand.

pub mod cli;
pub mod client;
pub mod commands;
pub mod control_plane;
pub mod executor;
pub mod log_limit;
pub mod plugin;
pub mod probe;
pub mod protocol;
pub mod shutdown;
pub mod subworker;
pub mod task_error;
pub mod transport;
