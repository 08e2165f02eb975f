//! [`LivePlugins`]: the plugins a host serves, kept current as their files change.
//!
//! It remembers every source named on `--task-modules` (files and directories), the
//! registry every executor reads ([`SharedRegistry`]), and what each plugin file looked
//! like when it was loaded (inode, size, mtime, content hash). When the watcher reports
//! that paths changed, [`LivePlugins::apply_changes`] decides per file:
//! - unchanged metadata, or changed metadata but the same content hash → nothing (this
//!   is what stops a host from reloading forever on its own reads of a watched file);
//! - new content → load it as a new version from a fresh shadow copy and swap the
//!   registry; calls already running keep the old version's code;
//! - gone → retire its tasks;
//! - anything that does not load (half-written, not a plugin, incompatible SDK, a task
//!   name another file exports) → rejected with one line; the previous version serves on.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use arc_swap::ArcSwap;

use crate::protocol::PluginEvent;

use super::{
    loader::{content_hash, LoadError, PluginLoader},
    registry::{load_modules, source_key, PluginRegistry, RegistryError},
    resolve::{has_plugin_suffix, plugin_files_in, ModuleSource},
};

/// The registry every executor reads; a reload swaps in a new one.
pub type SharedRegistry = Arc<ArcSwap<PluginRegistry>>;

/// What a change to one file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadReport {
    /// A new version (or a new plugin) now serves.
    Loaded {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        plugin: String,
        /// The version it replaced, if any.
        old_version: Option<String>,
        /// The version now serving.
        new_version: String,
        /// The first 8 hex digits of the replaced file's content hash (blake3), if any:
        /// a rebuild that kept the crate version still shows as a new build.
        old_build: Option<String>,
        /// The same for the file now serving.
        new_build: String,
        /// Its task names.
        tasks: Vec<String>,
    },
    /// The file is gone; its tasks are retired.
    Retired {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        plugin: String,
        /// The version retired.
        version: String,
        /// The task names no longer served.
        tasks: Vec<String>,
    },
    /// The file did not load; whatever served before still serves.
    Rejected {
        /// The file.
        path: PathBuf,
        /// The one-line reason.
        reason: String,
    },
}

/// The first 8 hex digits of a content hash: enough to tell two builds apart in a log.
pub fn short_build(hash: &str) -> String {
    hash.chars().take(8).collect()
}

impl ReloadReport {
    /// Logs the report for host `host`: a warning when the file was rejected.
    pub fn log(&self, host: &str) {
        if matches!(self, ReloadReport::Rejected { .. }) {
            tracing::warn!(worker = %host, "{self}");
        } else {
            tracing::info!(worker = %host, "{self}");
        }
    }

    /// Did the set of tasks or their code change?
    pub fn changed_tasks(&self) -> bool {
        !matches!(self, ReloadReport::Rejected { .. })
    }
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadReport::Loaded {
                path,
                plugin,
                old_version,
                new_version,
                old_build,
                new_build,
                tasks,
            } => match (old_version, old_build) {
                (Some(old_version), Some(old_build)) => write!(
                    f,
                    "plugin {plugin} reloaded from {}: {old_version} -> {new_version} (build {old_build} -> {new_build}; tasks: {})",
                    path.display(),
                    tasks.join(", ")
                ),
                _ => write!(
                    f,
                    "plugin {plugin} reloaded from {}: new, {new_version} (build {new_build}; tasks: {})",
                    path.display(),
                    tasks.join(", ")
                ),
            },
            ReloadReport::Retired {
                path,
                plugin,
                version,
                tasks,
            } => write!(
                f,
                "plugin {plugin} {version} retired: {} was removed (tasks no longer served: {})",
                path.display(),
                tasks.join(", ")
            ),
            ReloadReport::Rejected { path, reason } => {
                write!(
                    f,
                    "reload of {} rejected, previous version keeps serving: {reason}",
                    path.display()
                )
            }
        }
    }
}

/// The report as the protocol carries it to the control plane's event stream.
impl From<&ReloadReport> for PluginEvent {
    fn from(report: &ReloadReport) -> Self {
        let message = report.to_string();
        match report {
            ReloadReport::Loaded {
                path,
                plugin,
                old_version,
                new_version,
                old_build,
                new_build,
                tasks,
            } => {
                let mut event = PluginEvent::new(
                    "reloaded",
                    plugin.clone(),
                    path.display().to_string(),
                    message,
                );
                event.old_version = old_version.clone();
                event.new_version = Some(new_version.clone());
                event.old_build = old_build.clone();
                event.new_build = Some(new_build.clone());
                event.tasks = tasks.clone();
                event
            }
            ReloadReport::Retired {
                path,
                plugin,
                version,
                ..
            } => {
                let mut event = PluginEvent::new(
                    "retired",
                    plugin.clone(),
                    path.display().to_string(),
                    message,
                );
                event.old_version = Some(version.clone());
                event
            }
            ReloadReport::Rejected { path, .. } => {
                PluginEvent::new("rejected", "", path.display().to_string(), message)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(FileStamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    })
}

#[derive(Debug, Clone)]
struct Known {
    stamp: Option<FileStamp>,
    hash: String,
}

/// The live plugin set of one host.
pub struct LivePlugins {
    loader: PluginLoader,
    sources: Vec<ModuleSource>,
    shared: SharedRegistry,
    known: HashMap<PathBuf, Known>,
    reloads: u64,
}

impl LivePlugins {
    /// Loads every `--task-modules` word (see [`load_modules`]).
    pub fn load(
        loader: PluginLoader,
        words: &[String],
        plugin_dir: &Path,
    ) -> Result<Self, RegistryError> {
        let loaded = load_modules(&loader, words, plugin_dir)?;
        let mut known = HashMap::new();
        for plugin in loaded.registry.plugins() {
            known.insert(
                source_key(&plugin.source),
                Known {
                    stamp: stamp(&plugin.source),
                    hash: plugin.content_hash.clone(),
                },
            );
        }
        Ok(LivePlugins {
            loader,
            sources: loaded.sources,
            shared: Arc::new(ArcSwap::from_pointee(loaded.registry)),
            known,
            reloads: 0,
        })
    }

    /// The registry executors read.
    pub fn shared(&self) -> SharedRegistry {
        self.shared.clone()
    }

    /// The sources named on the command line.
    pub fn sources(&self) -> &[ModuleSource] {
        &self.sources
    }

    /// How many libraries were mapped since start by reloads (new versions, and
    /// refused files that got as far as being mapped).
    pub fn reloads(&self) -> u64 {
        self.reloads
    }

    /// Is `path` a file this host serves or would pick up?
    fn is_relevant(&self, path: &Path) -> bool {
        let key = source_key(path);
        self.sources.iter().any(|source| match source {
            ModuleSource::File(file) => source_key(file) == key,
            ModuleSource::Directory(dir) => {
                has_plugin_suffix(path)
                    && path
                        .parent()
                        .is_some_and(|parent| source_key(parent) == source_key(dir))
            }
        })
    }

    /// Reacts to whatever changed in the sources since they were loaded: every file
    /// named, and every plugin file of every directory (a file whose content is the
    /// same is skipped, as for any change). For a watch that starts after the load:
    /// what changed in between raised no event it could see.
    pub fn apply_changes_since_load(&mut self) -> Vec<ReloadReport> {
        let mut paths = Vec::new();
        for source in &self.sources {
            match source {
                ModuleSource::File(file) => paths.push(file.clone()),
                ModuleSource::Directory(dir) => match plugin_files_in(dir) {
                    Ok(files) => paths.extend(files),
                    Err(err) => tracing::warn!("{err}"),
                },
            }
        }
        self.apply_changes(&paths)
    }

    /// Reacts to changes of `paths` (any order, duplicates fine).
    pub fn apply_changes(&mut self, paths: &[PathBuf]) -> Vec<ReloadReport> {
        let mut seen = Vec::new();
        let mut reports = Vec::new();
        for path in paths {
            if seen.contains(path) || !self.is_relevant(path) {
                continue;
            }
            seen.push(path.clone());
            if let Some(report) = self.apply_one(path) {
                reports.push(report);
            }
        }
        reports
    }

    fn apply_one(&mut self, path: &Path) -> Option<ReloadReport> {
        let key = source_key(path);
        let current = self.shared.load_full();
        if !path.exists() {
            self.known.remove(&key);
            let plugin = current.plugin_at(path)?.clone();
            let mut next = (*current).clone();
            next.remove_source(path);
            self.shared.store(Arc::new(next));
            return Some(ReloadReport::Retired {
                path: path.to_path_buf(),
                plugin: plugin.name.clone(),
                version: plugin.version.clone(),
                tasks: plugin.tasks.iter().map(|t| t.name.clone()).collect(),
            });
        }
        let new_stamp = stamp(path);
        if let Some(known) = self.known.get(&key) {
            if known.stamp.is_some() && known.stamp == new_stamp {
                return None;
            }
        }
        let bytes = match super::file_bytes::FileBytes::read(path) {
            Ok(b) => b,
            Err(err) => {
                return Some(ReloadReport::Rejected {
                    path: path.to_path_buf(),
                    reason: LoadError::Io {
                        path: path.to_path_buf(),
                        source: err,
                    }
                    .to_string(),
                })
            }
        };
        let hash = content_hash(&bytes);
        if let Some(known) = self.known.get_mut(&key) {
            if known.hash == hash {
                known.stamp = new_stamp;
                return None;
            }
        }
        let old = current.plugin_at(path);
        let old_version = old.map(|p| p.version.clone());
        let old_build = old.map(|p| short_build(&p.content_hash));
        let new_build = short_build(&hash);
        let loaded = self
            .loader
            .load_bytes(path, &bytes)
            .map_err(RegistryError::from)
            .and_then(|plugin| {
                let mut next = (*current).clone();
                let name = plugin.name.clone();
                let version = plugin.version.clone();
                let tasks: Vec<String> = plugin.tasks.iter().map(|t| t.name.clone()).collect();
                next.insert(plugin)?;
                Ok((next, name, version, tasks))
            });
        match loaded {
            Ok((next, plugin, new_version, tasks)) => {
                self.shared.store(Arc::new(next));
                self.known.insert(
                    key,
                    Known {
                        stamp: new_stamp,
                        hash,
                    },
                );
                self.reloads += 1;
                Some(ReloadReport::Loaded {
                    path: path.to_path_buf(),
                    plugin,
                    old_version,
                    new_version,
                    old_build,
                    new_build,
                    tasks,
                })
            }
            Err(err) => {
                // A refused library that was mapped stays mapped: it counts towards
                // --max-reloads like a successful reload.
                let mapped = match &err {
                    RegistryError::Load(load) => load.left_mapped(),
                    RegistryError::DuplicateTask { .. } => true,
                };
                if mapped {
                    self.reloads += 1;
                }
                // Remember the bad content so the same bytes are not retried on every
                // event; new bytes are tried again.
                if let Some(known) = self.known.get_mut(&key) {
                    known.stamp = new_stamp;
                }
                Some(ReloadReport::Rejected {
                    path: path.to_path_buf(),
                    reason: err.to_string(),
                })
            }
        }
    }
}
