//! Resolving `--task-modules` words into plugin files.
//!
//! A word is a plugin file (`./plugins/mytasks.so`), a directory (every plugin file in
//! it), or a bare name (`mytasks`), looked up as `mytasks.so` then `libmytasks.so`
//! (with the platform's suffix) in the plugin directory.

use std::path::{Path, PathBuf};

use super::loader::LoadError;

/// The suffix of a shared library on this platform, without the dot.
pub const PLUGIN_SUFFIX: &str = std::env::consts::DLL_EXTENSION;

/// Is `path` named like a plugin file (`.so`, `.dll`, `.dylib`)?
pub fn has_plugin_suffix(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("so" | "dll" | "dylib")
    )
}

/// What one `--task-modules` word names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleSource {
    /// One plugin file.
    File(PathBuf),
    /// A directory: every plugin file in it, and any dropped there later.
    Directory(PathBuf),
}

/// Resolves one word. A bare name must exist in `plugin_dir`.
pub fn resolve_word(word: &str, plugin_dir: &Path) -> Result<ModuleSource, LoadError> {
    let as_path = Path::new(word);
    if as_path.is_dir() {
        return Ok(ModuleSource::Directory(as_path.to_path_buf()));
    }
    if as_path.is_file() {
        return Ok(ModuleSource::File(as_path.to_path_buf()));
    }
    let looks_like_path = word.contains('/') || word.contains('\\') || has_plugin_suffix(as_path);
    if looks_like_path {
        return Err(LoadError::NotFound {
            path: as_path.to_path_buf(),
        });
    }
    let candidates = [
        plugin_dir.join(format!("{word}.{PLUGIN_SUFFIX}")),
        plugin_dir.join(format!("lib{word}.{PLUGIN_SUFFIX}")),
    ];
    candidates
        .iter()
        .find(|c| c.is_file())
        .map(|c| ModuleSource::File(c.clone()))
        .ok_or_else(|| LoadError::NameNotFound {
            name: word.to_string(),
            tried: candidates.to_vec(),
        })
}

/// The plugin files in `dir`, sorted by name.
pub fn plugin_files_in(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && has_plugin_suffix(p))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_name_finds_plain_then_lib_prefixed() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join(format!("libfoo.{PLUGIN_SUFFIX}"));
        std::fs::write(&lib, b"x").unwrap();
        assert_eq!(
            resolve_word("foo", dir.path()).unwrap(),
            ModuleSource::File(lib)
        );
        let plain = dir.path().join(format!("foo.{PLUGIN_SUFFIX}"));
        std::fs::write(&plain, b"x").unwrap();
        assert_eq!(
            resolve_word("foo", dir.path()).unwrap(),
            ModuleSource::File(plain)
        );
    }

    #[test]
    fn missing_name_says_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_word("nothere", dir.path()).unwrap_err().to_string();
        assert!(err.contains("nothere"), "{err}");
        assert!(
            err.contains(&format!("libnothere.{PLUGIN_SUFFIX}")),
            "{err}"
        );
    }

    #[test]
    fn directory_lists_only_plugin_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.so"), b"x").unwrap();
        std::fs::write(dir.path().join("a.dll"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let files = plugin_files_in(dir.path()).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["a.dll", "b.so"]);
    }
}
