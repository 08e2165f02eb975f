//! # fastworker-host
//!
//! The host library behind the `fastworker` binary: the control plane, the subworker
//! and what they share. It is configured by plain structs with `Duration`s
//! ([`control_plane::ControlPlaneConfig`], [`subworker::SubworkerConfig`]) and never
//! sees a command line: that is the binary's job.
//!
//! ## Layout
//! Contracts live in other crates: the wire protocol in `fastworker-protocol`, the
//! plugin ABI in `fastworker-plugin-sdk`, the sockets in `fastworker-transport`.
//! Here:
//! - [`plugin`]: finding, loading, watching and calling task plugins, and the one
//!   place the ABI's priority and error kind become the protocol's ([`plugin::abi`]).
//! - [`executor`]: runs tasks on this host against the current plugins.
//! - [`probe`]: the answer-only endpoints (discovery, a subworker's status).
//! - [`shutdown`]: the stop signal every long-lived loop selects on.
//! - [`control_plane`]: the dispatcher state machine, its store and its event loop.
//! - [`subworker`]: the subworker's loop.
//! - [`error`]: why a control plane or subworker could not start or stopped.

pub mod child;
pub mod control_plane;
pub mod error;
pub mod executor;
pub mod fast_map;
pub mod plugin;
pub mod probe;
pub mod shutdown;
pub mod subworker;

pub use error::HostError;

// Short paths for the contract crates, used throughout.
use fastworker_protocol as protocol;
use fastworker_protocol::task_error;
use fastworker_transport as transport;
use fastworker_transport::log_limit;
