//! [`PluginRegistry`]: the loaded plugins and the map from task name to entry point.
//!
//! It is a plain value, cheap to clone (maps of `Arc`s): a reload builds a new
//! registry and swaps it in, while calls already running keep their [`TaskHandle`]
//! (and so the old version's code, which stays mapped).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use tracing::warn;

use super::{
    loader::{LoadError, LoadedPlugin, PeriodicSchedule, PluginLoader, TaskInfo},
    resolve::{plugin_files_in, resolve_word, ModuleSource},
};

/// A plugin refused by the registry itself.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Two plugin files export the same task name.
    #[error("{path}: task `{task}` is already exported by plugin {other_plugin} ({other_path})")]
    DuplicateTask {
        /// The file refused.
        path: PathBuf,
        /// The task name.
        task: String,
        /// The plugin that already has it.
        other_plugin: String,
        /// That plugin's file.
        other_path: PathBuf,
    },
    /// The file did not load.
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// One task of one loaded plugin version.
#[derive(Clone)]
pub struct TaskHandle {
    plugin: Arc<LoadedPlugin>,
    index: usize,
}

impl TaskHandle {
    /// The task's description and entry point.
    pub fn info(&self) -> &TaskInfo {
        &self.plugin.tasks[self.index]
    }

    /// The plugin version it belongs to.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }
}

/// The loaded plugins, keyed by their canonical source path.
#[derive(Clone, Default)]
pub struct PluginRegistry {
    plugins: BTreeMap<PathBuf, Arc<LoadedPlugin>>,
    tasks: crate::fast_map::FastMap<String, TaskHandle>,
}

/// The key a source file is known by: its canonical path when it exists, else its
/// canonical directory joined with its name (a removed file reached through a
/// symlinked directory must still match the key it was loaded under).
pub fn source_key(path: &Path) -> PathBuf {
    if let Ok(canonical) = std::fs::canonicalize(path) {
        return canonical;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            std::fs::canonicalize(parent)
                .map(|dir| dir.join(name))
                .unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
}

impl PluginRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `plugin`, replacing any earlier version loaded from the same file.
    /// Refused when another file already exports one of its task names. Returns the
    /// version it replaced.
    pub fn insert(
        &mut self,
        plugin: LoadedPlugin,
    ) -> Result<Option<Arc<LoadedPlugin>>, RegistryError> {
        let key = source_key(&plugin.source);
        for task in &plugin.tasks {
            if let Some(existing) = self.tasks.get(&task.name) {
                if source_key(&existing.plugin.source) != key {
                    return Err(RegistryError::DuplicateTask {
                        path: plugin.source.clone(),
                        task: task.name.clone(),
                        other_plugin: existing.plugin.name.clone(),
                        other_path: existing.plugin.source.clone(),
                    });
                }
            }
        }
        let replaced = self.remove_source(&key);
        let plugin = Arc::new(plugin);
        for (index, task) in plugin.tasks.iter().enumerate() {
            self.tasks.insert(
                task.name.clone(),
                TaskHandle {
                    plugin: plugin.clone(),
                    index,
                },
            );
        }
        self.plugins.insert(key, plugin);
        Ok(replaced)
    }

    /// Removes the plugin loaded from `source` and its tasks.
    pub fn remove_source(&mut self, source: &Path) -> Option<Arc<LoadedPlugin>> {
        let key = source_key(source);
        let removed = self
            .plugins
            .remove(&key)
            .or_else(|| self.plugins.remove(source))?;
        self.tasks
            .retain(|_, handle| !Arc::ptr_eq(&handle.plugin, &removed));
        Some(removed)
    }

    /// The task served under `name`.
    pub fn task(&self, name: &str) -> Option<&TaskHandle> {
        self.tasks.get(name)
    }

    /// Every task name, sorted.
    pub fn task_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tasks.keys().cloned().collect();
        names.sort();
        names
    }

    /// Every task, sorted by name.
    pub fn tasks(&self) -> Vec<&TaskHandle> {
        let mut tasks: Vec<&TaskHandle> = self.tasks.values().collect();
        tasks.sort_by(|a, b| a.info().name.cmp(&b.info().name));
        tasks
    }

    /// The loaded plugins, by source path.
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<LoadedPlugin>> {
        self.plugins.values()
    }

    /// The plugins loaded, as a host reports them to the control plane (sorted by
    /// name).
    pub fn plugin_infos(&self) -> Vec<crate::protocol::PluginInfo> {
        let mut infos: Vec<_> = self
            .plugins()
            .map(|p| {
                crate::protocol::PluginInfo::new(
                    p.name.clone(),
                    p.version.clone(),
                    super::live::short_build(&p.content_hash),
                    p.source.display().to_string(),
                    p.tasks.iter().map(|t| t.name.clone()).collect(),
                )
            })
            .collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        infos
    }

    /// What this registry serves, as a host announces it to the control plane.
    pub fn task_specs(&self) -> Vec<crate::protocol::TaskSpec> {
        self.tasks()
            .into_iter()
            .map(|t| {
                let info = t.info();
                let mut spec = crate::protocol::TaskSpec::new(info.name.clone());
                spec.max_retries = info.max_retries;
                spec.retry_delay_secs = info.retry_delay_secs;
                spec.retry_backoff = info.retry_backoff;
                spec.retry_backoff_max_secs = info.retry_backoff_max_secs;
                spec.timeout_secs = info.timeout_secs;
                spec.periodic = info.periodic.as_ref().map(|p| {
                    let mut periodic = match &p.schedule {
                        PeriodicSchedule::Interval(secs) => {
                            crate::protocol::PeriodicSpec::interval(*secs)
                        }
                        PeriodicSchedule::Cron(expr) => {
                            crate::protocol::PeriodicSpec::cron(expr.clone())
                        }
                    };
                    periodic.repeat_count = p.repeat_count;
                    periodic.repeat_until_unix = p.repeat_until_unix;
                    periodic
                });
                spec.priority = super::abi::priority(info.priority);
                spec.doc = info.doc.clone();
                spec.signature = info.signature.clone();
                spec
            })
            .collect()
    }

    /// The plugin loaded from `source`, if any.
    pub fn plugin_at(&self, source: &Path) -> Option<&Arc<LoadedPlugin>> {
        self.plugins.get(&source_key(source))
    }
}

/// What `--task-modules` loaded: the registry, the directories to watch, and the
/// files in those directories that were skipped (each with its one-line reason).
pub struct LoadedModules {
    /// The tasks.
    pub registry: PluginRegistry,
    /// Every source named: files and directories.
    pub sources: Vec<ModuleSource>,
    /// Files found in directories that did not load.
    pub skipped: Vec<RegistryError>,
}

/// Loads every `--task-modules` word. A file named explicitly must load, or this
/// fails with its reason; a bad file found in a directory is skipped with a warning.
pub fn load_modules(
    loader: &PluginLoader,
    words: &[String],
    plugin_dir: &Path,
) -> Result<LoadedModules, RegistryError> {
    let mut registry = PluginRegistry::new();
    let mut sources = Vec::new();
    let mut skipped = Vec::new();
    for word in words {
        let source = resolve_word(word, plugin_dir)?;
        match &source {
            ModuleSource::File(path) => {
                registry.insert(loader.load(path)?)?;
            }
            ModuleSource::Directory(dir) => {
                for path in plugin_files_in(dir)? {
                    let loaded = loader
                        .load(&path)
                        .map_err(RegistryError::from)
                        .and_then(|plugin| registry.insert(plugin));
                    if let Err(err) = loaded {
                        warn!("skipping plugin: {err}");
                        skipped.push(err);
                    }
                }
            }
        }
        sources.push(source);
    }
    Ok(LoadedModules {
        registry,
        sources,
        skipped,
    })
}
