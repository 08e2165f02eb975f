//! `fastworker new NAME`: a plugin crate that builds with `cargo build --release` and
//! whose library the control plane serves as it is.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _};

use crate::{cli::NewArgs, plugin::SDK_VERSION};

/// Creates the crate; returns what to print (the next commands).
pub fn run(args: &NewArgs) -> anyhow::Result<String> {
    let name = crate_name(&args.name)?;
    let dir = args
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() {
        bail!(
            "{} already exists; choose another name or --path",
            dir.display()
        );
    }
    let sdk_path = args.sdk_path.clone().or_else(checkout_sdk);
    let sdk = sdk_dependency(sdk_path.as_deref())?;
    fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let files = [
        ("Cargo.toml", cargo_toml(&name, &sdk)),
        ("src/lib.rs", lib_rs(&name)),
        (".gitignore", "/target\n".to_string()),
    ];
    for (file, text) in files {
        let path = dir.join(file);
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let lib = format!("lib{}.so", name.replace('-', "_"));
    let program = super::program_name();
    let from = match &sdk_path {
        Some(path) => format!("from {}", path.display()),
        None => "from crates.io".to_string(),
    };
    Ok(format!(
        "created the plugin crate `{name}` in {dir} (fastworker-plugin-sdk ={SDK_VERSION} {from}; one task: hello)\n\
         \n\
         build it:   (cd {dir} && cargo build --release)\n\
         serve it:   {program} control-plane --task-modules {dir}/target/release/{lib}\n\
         call it:    {program} submit --task-name hello --args world\n",
        dir = dir.display(),
    ))
}

/// The SDK of the checkout this binary was built from, when it is still there: a
/// `fastworker` built from source scaffolds plugins against the same SDK without
/// `--sdk-path` (the SDK is not on crates.io yet).
fn checkout_sdk() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .join("plugin-sdk");
    sdk.join("Cargo.toml").is_file().then_some(sdk)
}

/// Names a plugin crate cannot take: Rust keywords and reserved words, the crates
/// it depends on, and names cargo refuses.
const RESERVED: &[&str] = &[
    "as",
    "async",
    "await",
    "break",
    "const",
    "continue",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "abstract",
    "become",
    "box",
    "do",
    "final",
    "macro",
    "override",
    "priv",
    "try",
    "typeof",
    "unsized",
    "virtual",
    "yield",
    "gen",
    "core",
    "std",
    "alloc",
    "proc_macro",
    "test",
    "build",
    "deps",
    "examples",
    "incremental",
    "serde",
    "fastworker",
    "fastworker_plugin_sdk",
    "abi_stable",
];

/// The crate name: letters, digits, `-` and `_`, starting with a letter.
fn crate_name(name: &str) -> anyhow::Result<String> {
    let base = Path::new(name)
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("`{name}` is not a crate name"))?;
    let valid = base.starts_with(|c: char| c.is_ascii_alphabetic())
        && base
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        bail!("`{base}` is not a crate name: use letters, digits, - and _, starting with a letter");
    }
    let lower = base.to_ascii_lowercase();
    if RESERVED.contains(&lower.replace('-', "_").as_str()) {
        bail!("`{base}` cannot name a plugin crate (a Rust keyword, or a crate it depends on): choose another name");
    }
    Ok(lower)
}

/// The SDK dependency, pinned to the version this host loads: from crates.io, or from
/// a checkout's `plugin-sdk` directory with `--sdk-path`.
fn sdk_dependency(sdk_path: Option<&Path>) -> anyhow::Result<String> {
    let Some(path) = sdk_path else {
        return Ok(format!("\"={SDK_VERSION}\""));
    };
    let manifest = path.join("Cargo.toml");
    let text = fs::read_to_string(&manifest).with_context(|| {
        format!(
            "--sdk-path {}: no Cargo.toml there (give the checkout's plugin-sdk directory)",
            path.display()
        )
    })?;
    if !text.contains("name = \"fastworker-plugin-sdk\"") {
        bail!(
            "--sdk-path {}: this is not the fastworker-plugin-sdk crate",
            path.display()
        );
    }
    let absolute =
        std::path::absolute(path).with_context(|| format!("--sdk-path {}", path.display()))?;
    let shown = absolute.display().to_string();
    if shown.contains(['"', '\\']) {
        bail!("--sdk-path {shown}: a path with quotes or backslashes is not supported");
    }
    Ok(format!(
        "{{ path = \"{shown}\", version = \"={SDK_VERSION}\" }}"
    ))
}

fn cargo_toml(name: &str, sdk: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
# A cdylib for the host to load; an rlib so that `cargo test` runs the unit tests.
crate-type = ["cdylib", "rlib"]

[dependencies]
# Pinned: a host loads plugins built against its own SDK version only.
fastworker-plugin-sdk = {sdk}
serde = {{ version = "1", features = ["derive"] }}

# Its own workspace, so it builds wherever it is created.
[workspace]
"#
    )
}

fn lib_rs(name: &str) -> String {
    format!(
        r#"//! The `{name}` fastworker plugin. Every `pub fn` in the module below is a task,
//! named after the function; the first paragraph of its doc comment (on one line) is its description.
//!
//! Build: `cargo build --release`; serve: `fastworker control-plane --task-modules
//! target/release/lib{lib}.so` (or a subworker with the same flag); call:
//! `fastworker submit --task-name hello --args world`.

#[fastworker_plugin_sdk::plugin]
pub mod tasks {{
    use serde::{{Deserialize, Serialize}};

    /// Greets `name`.
    ///
    /// Parameters and results are any serde types; a task may return
    /// `Result<T, E: Display>` to fail, and may take `ctx: &fastworker_plugin_sdk::Context`
    /// first (its id, attempt, deadline and cancellation). Options go in
    /// `#[task(max_retries = 3, timeout = 10, priority = "high")]`.
    pub fn hello(name: String) -> Greeting {{
        Greeting {{
            text: format!("hello, {{name}}"),
            length: name.chars().count(),
        }}
    }}

    /// What `hello` returns: callers get it as JSON (`{{"text": ..., "length": ...}}`).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Greeting {{
        /// The greeting.
        pub text: String,
        /// How many characters the name has.
        pub length: usize,
    }}
}}

#[cfg(test)]
mod tests {{
    use super::tasks::{{hello, Greeting}};

    #[test]
    fn hello_greets_by_name() {{
        assert_eq!(
            hello("world".to_string()),
            Greeting {{
                text: "hello, world".to_string(),
                length: 5,
            }}
        );
    }}
}}
"#,
        lib = name.replace('-', "_")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_names_are_checked() {
        assert_eq!(crate_name("my-tasks").unwrap(), "my-tasks");
        assert_eq!(crate_name("some/dir/greeter").unwrap(), "greeter");
        assert!(crate_name("9lives").is_err());
        assert!(crate_name("bad name").is_err());
        assert!(crate_name("fn").is_err());
        assert!(crate_name("fastworker-plugin-sdk").is_err());
        assert!(crate_name("serde").is_err());
    }

    #[test]
    fn the_sdk_is_pinned_to_this_hosts_version() {
        assert_eq!(sdk_dependency(None).unwrap(), format!("\"={SDK_VERSION}\""));
        let toml = cargo_toml("greeter", &sdk_dependency(None).unwrap());
        assert!(toml.contains(&format!("fastworker-plugin-sdk = \"={SDK_VERSION}\"")));
        assert!(toml.contains("crate-type = [\"cdylib\", \"rlib\"]"));
    }
}
