//! [`shutdown_signal`]: Ctrl+C (SIGINT) or SIGTERM, as a future any loop can select on.
//! What a stop then means is each program's own documented sequence (see
//! `control_plane::server` and `subworker`).

use tracing::warn;

/// Resolves when the process is asked to stop.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                warn!("cannot install signal handlers; only Ctrl+C is handled");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Resolves when the process is asked to stop, like [`shutdown_signal`], for a loop
/// that polls it on every turn: the signals are awaited on a task of their own
/// (started here, on the current runtime), and the receiver's poll is one atomic load.
/// Polling the two signal streams on every turn of the control plane's loop was about
/// 1 % of its time on a round trip (`perf`).
pub fn stop_requested() -> tokio::sync::oneshot::Receiver<()> {
    let (requested, stop) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = requested.send(());
    });
    stop
}
