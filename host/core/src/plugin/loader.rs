//! Loading one plugin file.
//!
//! Each file is loaded from its own content-addressed copy in a private shadow
//! directory, never from the path the user gave:
//! - overwriting a mapped `.so` in place (`cp`) crashes the process that mapped it;
//! - glibc's `dlopen` returns the handle it already has for the same path or a hard
//!   link to the same inode, so a changed file at the same path would not load.
//!
//! The copy is written to a temporary name and renamed into place, so a copy is never
//! seen half-written, even by another process sharing the shadow directory.
//!
//! The root module is read with `lib_header_from_path` + `init_root_module`, not the
//! cached `RootModule::load_from_file` (which returns the first module it ever loaded,
//! whatever file it is given later).

use std::{
    fmt, fs,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
};

use abi_stable::library::{lib_header_from_path, LibraryError};
use fastworker_plugin_sdk::abi::{
    PluginModuleRef, Priority, ScheduleKind, TaskFn, ABI_VERSION, SDK_VERSION,
};

/// Why a plugin file was refused. Each renders as one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The path does not exist.
    #[error("{path}: no such plugin file")]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// A bare module name matched no file in the plugin directory.
    #[error("plugin `{name}` not found (looked for {})", display_paths(.tried))]
    NameNotFound {
        /// The name given.
        name: String,
        /// The files looked for.
        tried: Vec<PathBuf>,
    },
    /// Reading or copying the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not a shared library at all.
    #[error("{path}: not a shared library ({reason})")]
    NotSharedLibrary {
        /// The file.
        path: PathBuf,
        /// Why not.
        reason: String,
    },
    /// A shared library that does not export a fastworker root module.
    #[error("{path}: not a fastworker plugin (it exports no fastworker root module)")]
    NotAPlugin {
        /// The file.
        path: PathBuf,
    },
    /// Built against an SDK whose version this host cannot load.
    #[error("{path}: built against fastworker-plugin-sdk {found}, incompatible with this host's SDK {expected}: rebuild the plugin with fastworker-plugin-sdk = \"={expected}\"")]
    IncompatibleSdk {
        /// The file.
        path: PathBuf,
        /// The plugin's SDK version.
        found: String,
        /// The host's SDK version.
        expected: String,
    },
    /// Built for another version of the plugin ABI.
    #[error("{path}: built for fastworker plugin ABI version {found}, this host loads ABI version {expected}")]
    IncompatibleAbi {
        /// The file.
        path: PathBuf,
        /// The plugin's ABI version.
        found: u32,
        /// The host's.
        expected: u32,
    },
    /// abi_stable's layout check failed: the types differ.
    #[error("{path}: plugin ABI layout differs from this host's ({summary}); --log-level DEBUG shows the full report")]
    LayoutMismatch {
        /// The file.
        path: PathBuf,
        /// The `Error:` lines of abi_stable's report.
        summary: String,
        /// abi_stable's full report (long).
        report: String,
    },
    /// Any other failure reported by abi_stable.
    #[error("{path}: cannot load plugin: {reason}")]
    Other {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl LoadError {
    /// Did the library get mapped before it was refused? (Libraries are never
    /// unloaded, so such a refusal costs memory like a reload does.)
    pub fn left_mapped(&self) -> bool {
        matches!(
            self,
            LoadError::NotAPlugin { .. }
                | LoadError::IncompatibleSdk { .. }
                | LoadError::IncompatibleAbi { .. }
                | LoadError::LayoutMismatch { .. }
                | LoadError::Other { .. }
        )
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What kind of periodic schedule a task declares.
#[derive(Debug, Clone, PartialEq)]
pub enum PeriodicSchedule {
    /// Every so many seconds, first at start-up.
    Interval(f64),
    /// A 5-field cron expression.
    Cron(String),
}

/// A task's periodic declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct Periodic {
    /// When it fires.
    pub schedule: PeriodicSchedule,
    /// How many runs in all, if limited.
    pub repeat_count: Option<u64>,
    /// No run after this Unix time, if limited.
    pub repeat_until_unix: Option<i64>,
}

impl fmt::Display for Periodic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schedule {
            PeriodicSchedule::Interval(secs) => write!(f, "every {secs}s")?,
            PeriodicSchedule::Cron(expr) => write!(f, "cron \"{expr}\"")?,
        }
        if let Some(n) = self.repeat_count {
            write!(f, ", {n} times")?;
        }
        if let Some(t) = self.repeat_until_unix {
            write!(f, ", until unix {t}")?;
        }
        Ok(())
    }
}

/// One task of a loaded plugin, copied out of its descriptor into owned data.
#[derive(Clone)]
pub struct TaskInfo {
    /// The name clients submit.
    pub name: String,
    /// One line of documentation.
    pub doc: String,
    /// `(x: i64, y: i64) -> i64`.
    pub signature: String,
    /// Periodic schedule, if any.
    pub periodic: Option<Periodic>,
    /// Default retries after a failure.
    pub max_retries: u32,
    /// Default first retry delay, seconds.
    pub retry_delay_secs: f64,
    /// Default backoff multiplier.
    pub retry_backoff: f64,
    /// Default cap on the retry delay, seconds.
    pub retry_backoff_max_secs: f64,
    /// Default timeout, seconds; None = none.
    pub timeout_secs: Option<f64>,
    /// Default priority.
    pub priority: Priority,
    /// The entry point in the plugin.
    pub(crate) entry: TaskFn,
}

impl fmt::Debug for TaskInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskInfo")
            .field("name", &self.name)
            .field("signature", &self.signature)
            .finish_non_exhaustive()
    }
}

/// One loaded version of one plugin file.
#[derive(Debug)]
pub struct LoadedPlugin {
    /// The plugin's own name.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// The SDK version it was built with.
    pub sdk_version: String,
    /// The file the user named (or that was found in a watched directory).
    pub source: PathBuf,
    /// The private copy actually mapped.
    pub shadow: PathBuf,
    /// blake3 of the file's content, hex.
    pub content_hash: String,
    /// Its tasks.
    pub tasks: Vec<TaskInfo>,
}

/// Loads plugin files through a private shadow directory.
pub struct PluginLoader {
    shadow_dir: PathBuf,
    remove_on_drop: bool,
}

impl PluginLoader {
    /// A loader whose shadow copies live in a fresh per-process directory (mode
    /// 0700) under `FASTWORKER_SHADOW_DIR`, or else under `fastworker-shadow-<uid>` in
    /// the system temp directory, which must belong to this user and be closed to
    /// others (another user could otherwise swap a copy before it is loaded).
    /// Directories left by processes that no longer exist are removed.
    pub fn new() -> Result<Self, LoadError> {
        let base = match std::env::var_os("FASTWORKER_SHADOW_DIR") {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                create_dir(&dir)?;
                dir
            }
            None => private_shadow_base()?,
        };
        sweep_dead_shadow_dirs(&base);
        let dir = base.join(std::process::id().to_string());
        // Our pid's directory can only be left from before an in-place restart (exec
        // keeps the pid and unmaps everything), so nothing maps those copies now.
        let _ = fs::remove_dir_all(&dir);
        create_private_dir(&dir)?;
        Ok(PluginLoader {
            shadow_dir: dir,
            remove_on_drop: true,
        })
    }

    /// A loader using `dir` for its copies, left in place when dropped.
    pub fn with_shadow_dir(dir: PathBuf) -> Result<Self, LoadError> {
        create_dir(&dir)?;
        Ok(PluginLoader {
            shadow_dir: dir,
            remove_on_drop: false,
        })
    }

    /// Where the copies go.
    pub fn shadow_dir(&self) -> &Path {
        &self.shadow_dir
    }

    /// Loads `path` as a plugin.
    pub fn load(&self, path: &Path) -> Result<LoadedPlugin, LoadError> {
        let bytes =
            super::file_bytes::FileBytes::read(path).map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => LoadError::NotFound {
                    path: path.to_path_buf(),
                },
                _ => LoadError::Io {
                    path: path.to_path_buf(),
                    source,
                },
            })?;
        self.load_bytes(path, &bytes)
    }

    /// Loads a plugin whose file at `path` holds `bytes` (already read).
    pub fn load_bytes(&self, path: &Path, bytes: &[u8]) -> Result<LoadedPlugin, LoadError> {
        check_shared_library_magic(path, bytes)?;
        check_complete(path, bytes)?;
        let content_hash = content_hash(bytes);
        let shadow = self.shadow_copy(path, bytes, &content_hash)?;
        let module = open_root_module(path, &shadow)?;

        let abi_version = module.abi_version();
        if abi_version != ABI_VERSION {
            return Err(LoadError::IncompatibleAbi {
                path: path.to_path_buf(),
                found: abi_version,
                expected: ABI_VERSION,
            });
        }
        let sdk_version = module.sdk_version().as_str().to_string();
        if !sdk_compatible(&sdk_version, SDK_VERSION) {
            return Err(LoadError::IncompatibleSdk {
                path: path.to_path_buf(),
                found: sdk_version,
                expected: SDK_VERSION.to_string(),
            });
        }
        let tasks = module.tasks().iter().map(task_info).collect();
        super::plugin_log::install(&module);
        Ok(LoadedPlugin {
            name: module.plugin_name().as_str().to_string(),
            version: module.plugin_version().as_str().to_string(),
            sdk_version,
            source: path.to_path_buf(),
            shadow,
            content_hash,
            tasks,
        })
    }

    fn shadow_copy(&self, path: &Path, bytes: &[u8], hash: &str) -> Result<PathBuf, LoadError> {
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".to_string());
        let shadow = self
            .shadow_dir
            .join(format!("{}-{}", &hash[..16], file_name));
        if shadow.is_file() {
            return Ok(shadow);
        }
        let io_err = |source| LoadError::Io {
            path: shadow.clone(),
            source,
        };
        let tmp = self.shadow_dir.join(format!(
            ".tmp-{}-{}-{}",
            std::process::id(),
            &hash[..16],
            file_name
        ));
        let mut file = fs::File::create(&tmp).map_err(io_err)?;
        file.write_all(bytes).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        drop(file);
        fs::rename(&tmp, &shadow).map_err(io_err)?;
        Ok(shadow)
    }
}

impl Drop for PluginLoader {
    fn drop(&mut self) {
        // Unlinking a mapped file is safe: the mapping keeps the inode alive.
        if self.remove_on_drop {
            let _ = fs::remove_dir_all(&self.shadow_dir);
        }
    }
}

/// `fastworker-shadow-<uid>` in the temp directory: made with mode 0700, and refused
/// if it is not a directory of this user closed to others (a symlink, another user's
/// directory, a directory others can write to).
fn private_shadow_base() -> Result<PathBuf, LoadError> {
    #[cfg(unix)]
    {
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        let uid = unsafe { libc::geteuid() };
        let base = std::env::temp_dir().join(format!("fastworker-shadow-{uid}"));
        if !base.exists() {
            // A race with another process making it is fine: it is checked below.
            let _ = create_private_dir(&base);
        }
        check_private(&base, uid)?;
        Ok(base)
    }
    #[cfg(not(unix))]
    {
        let base = std::env::temp_dir().join("fastworker-shadow");
        create_dir(&base)?;
        Ok(base)
    }
}

/// `dir` must be a directory (not a symlink) owned by `uid` that no one else can open.
#[cfg(unix)]
fn check_private(dir: &Path, uid: u32) -> Result<(), LoadError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = fs::symlink_metadata(dir).map_err(|source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
        return Err(LoadError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other(
                "refusing this shadow directory: it must be a directory of this user that no one else can open (chmod 700, or set FASTWORKER_SHADOW_DIR)",
            ),
        });
    }
    Ok(())
}

/// Creates `dir` (not its parents) with mode 0700.
fn create_private_dir(dir: &Path) -> Result<(), LoadError> {
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), LoadError> {
    fs::create_dir_all(dir).map_err(|source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// The content hash that names a shadow copy (blake3, hex).
pub fn content_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Removes `base/<pid>` directories whose process is gone (Linux only; elsewhere
/// nothing is removed).
fn sweep_dead_shadow_dirs(base: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Refuses anything that is not an ELF, PE or Mach-O file before handing it to dlopen.
fn check_shared_library_magic(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    const MAGICS: [&[u8]; 6] = [
        b"\x7fELF",
        b"MZ",
        &[0xfe, 0xed, 0xfa, 0xce],
        &[0xfe, 0xed, 0xfa, 0xcf],
        &[0xce, 0xfa, 0xed, 0xfe],
        &[0xcf, 0xfa, 0xed, 0xfe],
    ];
    if MAGICS.iter().any(|m| bytes.starts_with(m)) {
        Ok(())
    } else {
        let reason = if bytes.is_empty() {
            "the file is empty".to_string()
        } else {
            "no ELF, PE or Mach-O header".to_string()
        };
        Err(LoadError::NotSharedLibrary {
            path: path.to_path_buf(),
            reason,
        })
    }
}

/// Refuses a library whose headers point past its end (a half-written or truncated
/// file): the dynamic loader would map those pages and the process would die of SIGBUS
/// when it touched them. Every segment and section must lie inside the file.
fn check_complete(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    use object::{Object, ObjectSection, ObjectSegment};
    let refuse = |reason: String| LoadError::NotSharedLibrary {
        path: path.to_path_buf(),
        reason,
    };
    let file = object::File::parse(bytes)
        .map_err(|e| refuse(format!("unreadable headers, probably truncated: {e}")))?;
    let len = bytes.len() as u64;
    let past_end =
        |(offset, size): (u64, u64)| offset.checked_add(size).is_none_or(|end| end > len);
    for segment in file.segments() {
        if past_end(segment.file_range()) {
            return Err(refuse(format!(
                "truncated: a segment ends past the file's {len} bytes"
            )));
        }
    }
    for section in file.sections() {
        if section.file_range().is_some_and(past_end) {
            return Err(refuse(format!(
                "truncated: a section ends past the file's {len} bytes"
            )));
        }
    }
    Ok(())
}

fn open_root_module(path: &Path, shadow: &Path) -> Result<PluginModuleRef, LoadError> {
    let header = lib_header_from_path(shadow).map_err(|e| classify(path, e))?;
    header
        .init_root_module::<PluginModuleRef>()
        .map_err(|e| classify(path, e))
}

fn classify(path: &Path, err: LibraryError) -> LoadError {
    let path = path.to_path_buf();
    match err {
        LibraryError::OpenError { err, .. } => LoadError::NotSharedLibrary {
            path,
            reason: first_line(&err.to_string()),
        },
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin { path },
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadError::IncompatibleSdk {
            path,
            found: actual_version.to_string(),
            expected: expected_version.to_string(),
        },
        LibraryError::AbiInstability(report) => {
            let report = report.to_string();
            // A plugin built against another release of the SDK: abi_stable reports
            // the SDK's types as "incompatible package versions" deep in its report.
            if let Some(found) = other_sdk_version(&report) {
                return LoadError::IncompatibleSdk {
                    path,
                    found,
                    expected: SDK_VERSION.to_string(),
                };
            }
            let summary = summarize_layout_report(&report);
            LoadError::LayoutMismatch {
                path,
                summary,
                report,
            }
        }
        other => LoadError::Other {
            path,
            reason: first_line(&other.to_string()),
        },
    }
}

/// The SDK version of a plugin whose layout check failed on package versions: the
/// first `package:'fastworker-plugin-sdk' version:'V'` in abi_stable's report with a
/// `V` other than this host's.
fn other_sdk_version(report: &str) -> Option<String> {
    if !report.contains("incompatible package versions") {
        return None;
    }
    const MARK: &str = "package:'fastworker-plugin-sdk' version:'";
    report
        .match_indices(MARK)
        .filter_map(|(at, _)| {
            let rest = &report[at + MARK.len()..];
            rest.split_once('\'').map(|(version, _)| version)
        })
        .find(|version| *version != SDK_VERSION)
        .map(str::to_string)
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_string()
}

/// abi_stable's layout report runs to hundreds of lines; the useful ones start with
/// `Error:`. Keep up to three, de-duplicated.
fn summarize_layout_report(report: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    for line in report.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Error:") {
            let rest = rest.split_whitespace().collect::<Vec<_>>().join(" ");
            if !lines.contains(&rest) {
                lines.push(rest);
            }
        }
    }
    if lines.is_empty() {
        return first_line(report);
    }
    lines.truncate(3);
    lines.join("; ")
}

/// Two SDK versions are compatible when semver says a caret requirement on one
/// accepts the other: same major (>= 1), same minor for 0.x, same patch for 0.0.x.
pub fn sdk_compatible(plugin: &str, host: &str) -> bool {
    let (Ok(p), Ok(h)) = (semver::Version::parse(plugin), semver::Version::parse(host)) else {
        return false;
    };
    let bucket = |v: &semver::Version| match (v.major, v.minor) {
        (0, 0) => (0, 0, v.patch),
        (0, minor) => (0, minor, 0),
        (major, _) => (major, 0, 0),
    };
    bucket(&p) == bucket(&h)
}

fn task_info(d: &fastworker_plugin_sdk::abi::TaskDescriptor) -> TaskInfo {
    let s = &d.schedule;
    let schedule = match s.kind {
        ScheduleKind::None => None,
        ScheduleKind::Interval => Some(PeriodicSchedule::Interval(s.interval_secs)),
        ScheduleKind::Cron => Some(PeriodicSchedule::Cron(s.cron.as_str().to_string())),
    };
    let periodic = schedule.map(|schedule| Periodic {
        schedule,
        repeat_count: (s.repeat_count > 0).then_some(s.repeat_count),
        repeat_until_unix: (s.repeat_until_unix > 0).then_some(s.repeat_until_unix),
    });
    TaskInfo {
        name: d.name.as_str().to_string(),
        doc: d.doc.as_str().to_string(),
        signature: d.signature.as_str().to_string(),
        periodic,
        max_retries: d.max_retries,
        retry_delay_secs: d.retry_delay_secs,
        retry_backoff: d.retry_backoff,
        retry_backoff_max_secs: d.retry_backoff_max_secs,
        timeout_secs: (d.timeout_secs > 0.0).then_some(d.timeout_secs),
        priority: d.priority,
        entry: d.call,
    }
}

/// Shared, immutable description of a loaded plugin version.
pub type PluginRef = Arc<LoadedPlugin>;

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_shadow_directory_others_can_open_or_a_symlink_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        let uid = unsafe { libc::geteuid() };
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("shadow");
        create_private_dir(&dir).expect("made");
        check_private(&dir, uid).expect("0700 and ours: fine");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = check_private(&dir, uid).expect_err("open to others");
        assert!(err.to_string().contains("no one else can open"), "{err}");
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).expect("symlink");
        assert!(check_private(&link, uid).is_err(), "a symlink is refused");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod");
        assert!(
            check_private(&dir, uid.wrapping_add(1)).is_err(),
            "another user's"
        );
    }

    #[test]
    fn sdk_compatibility_follows_semver() {
        assert!(sdk_compatible("0.1.0", "0.1.7"));
        assert!(!sdk_compatible("0.2.0", "0.1.0"));
        assert!(sdk_compatible("1.2.0", "1.9.3"));
        assert!(!sdk_compatible("2.0.0", "1.0.0"));
        assert!(!sdk_compatible("garbage", "0.1.0"));
    }

    #[test]
    fn layout_report_is_summarized_to_error_lines() {
        let report = "noise\n  Error:incompatible type size\n Expected: 64 Found: 72\nError:too many fields\nError:too many fields\n";
        assert_eq!(
            summarize_layout_report(report),
            "incompatible type size; too many fields"
        );
    }

    #[test]
    fn truncated_library_is_refused_before_dlopen() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(check_complete(Path::new("whole"), &exe).is_ok());
        for cut in [64, 4096, exe.len() / 2, exe.len() - 1] {
            let err = check_complete(Path::new("cut.so"), &exe[..cut]).unwrap_err();
            assert!(err.to_string().contains("not a shared library"), "{err}");
        }
    }

    #[test]
    fn text_file_is_not_a_shared_library() {
        let err = check_shared_library_magic(Path::new("x.so"), b"hello").unwrap_err();
        assert!(err.to_string().contains("not a shared library"), "{err}");
    }
}
