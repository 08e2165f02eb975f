//! `fastworker new`: a plugin crate that builds with `cargo build --release` and whose
//! library the control plane serves as it is; and a plugin built against another
//! release of the SDK, refused in one line that names both versions.
//!
//! These run cargo on crates outside this workspace. They share one target directory
//! (`target/scaffold`, release profile) so the SDK's dependencies build once.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    procs::ControlPlane,
    support::{heavy, run, Output, TestDir},
};

/// The workspace root (this test's package is `host/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// `cargo <args>` in `dir` with the shared target directory; fails the test after 15
/// minutes (a cold release build of the SDK's dependencies takes one or two).
fn cargo(dir: &Path, args: &[&str]) -> std::process::Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", repo().join("target/scaffold"))
        .env("CARGO_TERM_COLOR", "never")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cargo starts");
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if child.try_wait().expect("cargo can be waited for").is_some() {
            return child.wait_with_output().expect("cargo's output");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cargo {args:?} in {} took over 15 minutes", dir.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn check(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fastworker(dir: &TestDir, args: &[&str]) -> Output {
    let mut cmd = dir.fastworker();
    cmd.args(args);
    run(cmd)
}

#[test]
fn a_new_plugin_builds_tests_and_is_served_as_it_is() {
    let _heavy = heavy();
    let dir = TestDir::new();
    let sdk = repo().join("plugin-sdk");
    let out = fastworker(
        &dir,
        &["new", "greeter", "--sdk-path", sdk.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains("cargo build --release"),
        "{}",
        out.stdout
    );
    let crate_dir = dir.child("greeter");
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains(&format!(
            "version = \"={}\"",
            fastworker_plugin_sdk::abi::SDK_VERSION
        )),
        "the SDK is pinned with =: {manifest}"
    );
    // A second `new` never overwrites.
    let again = fastworker(&dir, &["new", "greeter"]);
    assert!(
        !again.status.success() && again.stderr.contains("already exists"),
        "{again:?}"
    );

    check(
        "cargo build --release",
        &cargo(&crate_dir, &["build", "--release"]),
    );
    check(
        "cargo test --release",
        &cargo(&crate_dir, &["test", "--release"]),
    );

    let library = repo().join("target/scaffold/release/libgreeter.so");
    let cp = ControlPlane::start(&dir, &["--task-modules", library.to_str().unwrap()]);
    assert!(
        cp.proc.stdout().contains("--task-name hello --args text"),
        "{}",
        cp.proc.stdout()
    );
    let out = fastworker(
        &dir,
        &[
            "submit",
            "--control-plane-address",
            &cp.base,
            "--task-name",
            "hello",
            "--args",
            "world",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let value: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"text": "hello, world", "length": 5})
    );
}

#[test]
fn a_plugin_built_against_another_sdk_release_is_refused_naming_both_versions() {
    let _heavy = heavy();
    let dir = TestDir::new();
    // A copy of the SDK (and the protocol crate it uses) released as 0.99.0.
    let copy = dir.child("sdk-copy");
    for (from, to) in [
        ("plugin-sdk", "plugin-sdk"),
        ("host/protocol", "host/protocol"),
    ] {
        copy_tree(&repo().join(from), &copy.join(to));
    }
    let ours = fastworker_plugin_sdk::abi::SDK_VERSION;
    for manifest in ["plugin-sdk/Cargo.toml", "plugin-sdk/macros/Cargo.toml"] {
        let path = copy.join(manifest);
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text
            .replacen(&format!("version = \"{ours}\""), "version = \"0.99.0\"", 1)
            .replace(
                &format!(
                    "fastworker-plugin-sdk-macros = {{ path = \"macros\", version = \"={ours}\" }}"
                ),
                "fastworker-plugin-sdk-macros = { path = \"macros\", version = \"=0.99.0\" }",
            );
        std::fs::write(&path, text).unwrap();
    }
    let out = fastworker(
        &dir,
        &[
            "new",
            "other",
            "--path",
            dir.child("other").to_str().unwrap(),
            "--sdk-path",
            repo().join("plugin-sdk").to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    // Point the new crate at the copy.
    let manifest = dir.child("other/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let pinned = format!(
        "{{ path = \"{}\", version = \"={}\" }}",
        repo().join("plugin-sdk").display(),
        fastworker_plugin_sdk::abi::SDK_VERSION
    );
    assert!(text.contains(&pinned), "{text}");
    let text = text.replace(
        &pinned,
        &format!("{{ path = \"{}\" }}", copy.join("plugin-sdk").display()),
    );
    std::fs::write(&manifest, text).unwrap();
    check(
        "cargo build --release",
        &cargo(&dir.child("other"), &["build", "--release"]),
    );

    let library = repo().join("target/scaffold/release/libother.so");
    let out = fastworker(&dir, &["list", "--task-modules", library.to_str().unwrap()]);
    assert!(!out.status.success(), "{out:?}");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "one line: {lines:?}");
    assert!(
        lines[0].contains("built against fastworker-plugin-sdk 0.99.0")
            && lines[0].contains(&format!(
                "this host's SDK {}",
                fastworker_plugin_sdk::abi::SDK_VERSION
            ))
            && !lines[0].contains("incompatible package versions")
            && !lines[0].contains("DEBUG"),
        "{}",
        lines[0]
    );
}

/// Copies `from` to `to` (files and directories), leaving out `target`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "target" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}
