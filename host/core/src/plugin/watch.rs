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
/// its reports sent to `reports`. Once the watch is on, every source is looked at
/// again: a file replaced after `live` was loaded and before the watch began raised no
/// event the watch could see (a subworker restarting in place while a build replaced
/// its plugin served the old build until the next change).
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
    let catch_up_reports = reports.clone();
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
        apply_and_report(&handler_live, &reports, |live| live.apply_changes(&paths));
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
    apply_and_report(
        &live,
        &catch_up_reports,
        LivePlugins::apply_changes_since_load,
    );
    Ok(PluginWatcher {
        _debouncer: debouncer,
    })
}

/// Applies `change` to the plugins (on the caller's thread) and sends its reports.
fn apply_and_report(
    live: &Mutex<LivePlugins>,
    reports: &mpsc::UnboundedSender<ReloadReport>,
    change: impl FnOnce(&mut LivePlugins) -> Vec<ReloadReport>,
) {
    let applied = change(&mut live.lock().unwrap_or_else(|e| e.into_inner()));
    for report in applied {
        let _ = reports.send(report);
    }
}

/// A host's plugins, loaded and (unless turned off) watched.
pub struct WatchedPlugins {
    /// The live set (the watcher applies changes to it).
    pub live: Arc<Mutex<LivePlugins>>,
    /// The registry executors read.
    pub registry: super::SharedRegistry,
    /// What each change did, as it happens.
    pub reports: mpsc::UnboundedReceiver<ReloadReport>,
    /// Keeps the watch alive (None with `--no-watch` or no modules).
    _watcher: Option<PluginWatcher>,
}

impl WatchedPlugins {
    /// Reloads (and mapped refusals) so far.
    pub fn reloads(&self) -> u64 {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reloads()
    }
}

/// Loading or watching the plugins failed at start-up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A plugin did not load.
    #[error(transparent)]
    Load(#[from] super::RegistryError),
    /// The watch could not be set up.
    #[error(transparent)]
    Watch(#[from] WatchError),
    /// The shadow directory could not be made.
    #[error(transparent)]
    Shadow(#[from] super::LoadError),
}

/// Loads `--task-modules` and, when `watch_files`, watches them for changes.
pub fn load_and_watch(
    words: &[String],
    plugin_dir: &std::path::Path,
    watch_files: bool,
) -> Result<WatchedPlugins, SetupError> {
    let live = LivePlugins::load(super::PluginLoader::new()?, words, plugin_dir)?;
    let registry = live.shared();
    let live = Arc::new(Mutex::new(live));
    let (report_tx, reports) = mpsc::unbounded_channel();
    let watcher = if watch_files && !words.is_empty() {
        Some(watch(live.clone(), report_tx)?)
    } else {
        None
    };
    Ok(WatchedPlugins {
        live,
        registry,
        reports,
        _watcher: watcher,
    })
}
