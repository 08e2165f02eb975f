//! Why a control plane or a subworker could not start, or stopped. Each message is
//! complete on its own (it names what failed and why), so the binary prints it as is.

use fastworker_transport::TransportError;

use crate::plugin::watch::SetupError;

/// Why [`control_plane::run`](crate::control_plane::server::run) or
/// [`subworker::run`](crate::subworker::run) returned an error.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A socket could not be bound or connected.
    #[error("{context}: {error}")]
    Transport {
        /// What was being done.
        context: String,
        /// What went wrong.
        error: TransportError,
    },
    /// The task modules could not be loaded.
    #[error(transparent)]
    Plugins(#[from] SetupError),
    /// The data directory could not be opened or read.
    #[error("{0}")]
    Store(String),
    /// The control plane refused this subworker for good.
    #[error("refused by the control plane: {0}")]
    Refused(String),
    /// Something the process depends on went away (a socket closed, the own
    /// subworker failed at start).
    #[error("{0}")]
    Stopped(String),
    /// The dashboard's HTTP endpoint could not be bound.
    #[error("{0}")]
    Dashboard(String),
    /// A thread the process needs could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    /// A subworker could not replace itself with a fresh copy.
    #[error("cannot restart in place: {0}")]
    Restart(String),
}

impl HostError {
    /// A transport error while doing `context`.
    pub fn transport(context: impl Into<String>, error: TransportError) -> Self {
        HostError::Transport {
            context: context.into(),
            error,
        }
    }
}
