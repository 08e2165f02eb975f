//! The file watcher: `notify` with `notify-debouncer-full` (it keeps event kinds and
//! merges temp-file + rename into one event on the final name).
//!
//! Each plugin file is watched through its parent directory, not by itself: `cargo
//! build` replaces its output by unlink + hard link, `mv` renames onto it, and a watch
//! on the old inode would miss both. Access events (our own reads of the file, to hash
//! and copy it) are dropped here; [`LivePlugins`] also skips files whose content did not
//! change.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use notify::{EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use tokio::sync::mpsc;
use tracing::warn;

use super::{
    live::{LivePlugins, ReloadReport},
    resolve::ModuleSource,
};

/// How long the watcher waits for a burst of events on one file to end.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Keeps the watch alive; dropping it stops watching.
pub struct PluginWatcher {
    _debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
}

/// A watch could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path}: {reason}")]
pub struct WatchError {
    path: PathBuf,
    reason: String,
}

/// Watches every source of `live`; each change is applied on the watcher's thread and
/// its reports sent to `reports`.
pub fn watch(
    live: Arc<Mutex<LivePlugins>>,
    reports: mpsc::UnboundedSender<ReloadReport>,
) -> Result<PluginWatcher, WatchError> {
    let dirs: BTreeSet<PathBuf> = {
        let guard = live.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .sources()
            .iter()
            .map(|source| match source {
                ModuleSource::Directory(dir) => dir.clone(),
                ModuleSource::File(file) => match file.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                },
            })
            .collect()
    };
    let handler_live = live.clone();
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
        let events = match result {
            Ok(events) => events,
            Err(errors) => {
                for err in errors {
                    warn!("file watcher: {err}");
                }
                return;
            }
        };
        let paths: Vec<PathBuf> = events
            .iter()
            .filter(|e| !matches!(e.event.kind, EventKind::Access(_)))
            .flat_map(|e| e.event.paths.iter().cloned())
            .collect();
        if paths.is_empty() {
            return;
        }
        let applied = handler_live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply_changes(&paths);
        for report in applied {
            let _ = reports.send(report);
        }
    })
    .map_err(|e| WatchError {
        path: PathBuf::new(),
        reason: e.to_string(),
    })?;
    for dir in dirs {
        debouncer
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| WatchError {
                path: dir.clone(),
                reason: e.to_string(),
            })?;
    }
    Ok(PluginWatcher {
        _debouncer: debouncer,
    })
}
