//! Plugins through the real loader and the real ABI, with plugins built by cargo.
//!
//! - calls: every `mytasks` task in both codecs, bad payloads, panics in a loop;
//! - versions: a second build of a plugin loads beside the first, both stay callable;
//! - refusals: wrong ABI, old SDK, a text file, a library that is no plugin, a
//!   duplicate task name: each is one short `error:` line from the real binary;
//! - `fastworker list` in its seed, path and directory forms, `--tree`,
//!   `--list-periodic`, and `--help`.
//!
//! The plugins come from `target/<profile>/`; `cargo build --workspace` builds them.

use std::{
    fs,
    sync::atomic::Ordering,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use fastworker_host::plugin::{
    call::call_task, CallContext, LoadError, PluginLoader, PluginRegistry, TaskHandle,
};
use fastworker_plugin_sdk::{
    abi::{ABI_VERSION, SDK_VERSION},
    codec, Codec, Value,
};
use fastworker_protocol::task_error::{ErrorKind, TaskError};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::json;

use crate::support::{plugin_artifact, run, Output, TestDir};

const CODECS: [Codec; 2] = [Codec::Json, Codec::Bincode];

/// A registry holding a fresh load of `libmytasks.so`, with its shadow copy in `dir`.
fn load_mytasks(dir: &TestDir) -> PluginRegistry {
    let loader = PluginLoader::with_shadow_dir(dir.shadow_dir()).expect("shadow dir");
    let plugin = loader
        .load(&plugin_artifact("mytasks"))
        .expect("mytasks loads");
    let mut registry = PluginRegistry::new();
    assert!(registry.insert(plugin).expect("no conflicts").is_none());
    registry
}

fn task<'a>(registry: &'a PluginRegistry, name: &str) -> &'a TaskHandle {
    registry
        .task(name)
        .unwrap_or_else(|| panic!("no task `{name}`; have {:?}", registry.task_names()))
}

/// Sends already-encoded bytes to `handle` and returns the raw result bytes.
fn call_raw(
    handle: &TaskHandle,
    ctx: &CallContext,
    codec: Codec,
    payload: &[u8],
) -> Result<Vec<u8>, TaskError> {
    call_task(handle.info(), ctx, codec, payload)
}

/// Encodes `args` with `codec`, calls `handle`, decodes the result.
fn call_with<A: Serialize, R: DeserializeOwned>(
    handle: &TaskHandle,
    ctx: &CallContext,
    codec: Codec,
    args: &A,
) -> Result<R, TaskError> {
    let payload = codec::encode(codec, args).expect("arguments encode");
    let bytes = call_raw(handle, ctx, codec, &payload)?;
    Ok(codec::decode(codec, &bytes)
        .unwrap_or_else(|e| panic!("result of `{}` does not decode: {e}", handle.info().name)))
}

fn call<A: Serialize, R: DeserializeOwned>(
    registry: &PluginRegistry,
    name: &str,
    codec: Codec,
    args: &A,
) -> Result<R, TaskError> {
    call_with(task(registry, name), &CallContext::default(), codec, args)
}

fn add(registry: &PluginRegistry, codec: Codec, x: i64, y: i64) -> i64 {
    call(registry, "add", codec, &(x, y)).expect("add succeeds")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

// ---- calls through the ABI -------------------------------------------------------

#[test]
fn add_round_trips_in_both_codecs() {
    let dir = TestDir::new();
    let registry = load_mytasks(&dir);
    for codec in CODECS {
        assert_eq!(add(&registry, codec, 5, 3), 8, "{codec:?}");
        assert_eq!(add(&registry, codec, -7, 2), -5, "{codec:?}");
        assert_eq!(add(&registry, codec, i64::MAX, 1), i64::MIN, "{codec:?}");
    }
    // The JSON form on the wire is what a client sends by hand.
    let bytes = call_raw(
        task(&registry, "add"),
        &CallContext::default(),
        Codec::Json,
        b"[40, 2]",
    )
    .expect("add succeeds");
    assert_eq!(bytes, b"42");
}

#[test]
fn echo_round_trips_nested_json_in_both_codecs() {
    let dir = TestDir::new();
    let registry = load_mytasks(&dir);
    let value = json!({
        "int": -12,
        "big": 9_007_199_254_740_993u64,
        "floats": [2.5, -0.125, 0.1, 1e-300, 1.7976931348623157e308],
        "strings": ["", "plain", "ünïcödé ✓", "quote \" backslash \\ newline \n"],
        "null": null,
        "bools": [true, false],
        "nested": {"a": [{"b": [null, {"c": 3.25}]}], "empty": {}, "list": []},
    });
    for codec in CODECS {
        let back: Value = call(&registry, "echo", codec, &(Value(value.clone()),))
            .unwrap_or_else(|e| panic!("echo fails in {codec:?}: {e}"));
        assert_eq!(back.0, value, "{codec:?}");
        let scalar: Value = call(&registry, "echo", codec, &(Value(json!(null)),)).unwrap();
        assert_eq!(scalar.0, json!(null), "{codec:?}");
    }
}

#[test]
fn sleep_ms_sleeps_and_sees_cancellation_through_the_context() {
    let dir = TestDir::new();
    let registry = load_mytasks(&dir);
    let sleep = task(&registry, "sleep_ms");
    for codec in CODECS {
        let started = Instant::now();
        let slept: u64 = call_with(sleep, &CallContext::default(), codec, &(30u64,)).unwrap();
        assert_eq!(slept, 30, "{codec:?}");
        assert!(started.elapsed() >= Duration::from_millis(30), "{codec:?}");

        // A cancelled context makes a 60 s sleep return at once with its error, which
        // the SDK reports as `cancelled` (it gave up because it was told to).
        let ctx = CallContext::default();
        ctx.cancelled.store(true, Ordering::Relaxed);
        let started = Instant::now();
        let err = call_with::<_, u64>(sleep, &ctx, codec, &(60_000u64,)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "{codec:?}");
        assert_eq!(err.kind, ErrorKind::Cancelled, "{codec:?}: {err}");
        assert_eq!(err.message, "cancelled while sleeping", "{codec:?}");
    }
}

#[test]
fn fail_comes_back_as_failed_with_its_message() {
    let dir = TestDir::new();
    let registry = load_mytasks(&dir);
    for codec in CODECS {
        let err = call::<_, ()>(&registry, "fail", codec, &("disk on fire",)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Failed, "{codec:?}: {err}");
        assert_eq!(err.message, "disk on fire", "{codec:?}");
    }
}

#[test]
fn panic_comes_back_as_panicked_with_its_message() {
    let dir = TestDir::new();
    let registry = load_mytasks(&dir);
    for codec in CODECS {
        let err = call::<_, i64>(&registry, "panic", codec, &("kaboom",)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Panicked, "{codec:?}: {err}");
        assert!(err.message.contains("kaboom"), "{codec:?}: {err}");
    }
}

#[test]
fn heartbeat_takes_no_arguments_and_returns_the_time() {
    let dir = TestDir::new();
    let registry = load_mytasks(&dir);
    let heartbeat = task(&registry, "heartbeat");
    for codec in CODECS {
        let before = unix_now();
        let ran_at: u64 = call(&registry, "heartbeat", codec, &()).unwrap();
        let after = unix_now();
        assert!((before..=after).contains(&ran_at), "{codec:?}: {ran_at}");
    }
    // A client may also send nothing, or an empty JSON array.
    for payload in [&b""[..], b"[]", b"null"] {
        let bytes = call_raw(heartbeat, &CallContext::default(), Codec::Json, payload)
            .unwrap_or_else(|e| panic!("{payload:?}: {e}"));
        let ran_at: u64 = serde_json::from_slice(&bytes).unwrap();
        assert!(ran_at >= unix_now() - 60);
    }
}

#[test]
fn undecodable_payload_is_bad_arguments_and_the_host_keeps_working() {
    let dir = TestDir::new();
    let registry = load_mytasks(&dir);
    let cases: [(&str, Codec, &[u8]); 8] = [
        ("add", Codec::Json, b"[1]"),
        ("add", Codec::Json, b"[1, \"two\"]"),
        ("add", Codec::Json, b"{\"x\": 1"),
        ("add", Codec::Json, b""),
        ("add", Codec::Bincode, &[1, 2, 3]),
        ("add", Codec::Bincode, b""),
        ("heartbeat", Codec::Json, b"[1]"),
        // A bincode string that is not JSON, where echo wants a JSON value.
        (
            "echo",
            Codec::Bincode,
            &[4, 0, 0, 0, 0, 0, 0, 0, b'{', b'n', b'o', b'!'],
        ),
    ];
    for (name, codec, payload) in cases {
        let err = call_raw(
            task(&registry, name),
            &CallContext::default(),
            codec,
            payload,
        )
        .expect_err(&format!("{name} {codec:?} {payload:?} must fail"));
        assert_eq!(
            err.kind,
            ErrorKind::BadArguments,
            "{name} {codec:?} {payload:?}: {err}"
        );
        assert!(!err.message.is_empty());
        for codec in CODECS {
            assert_eq!(add(&registry, codec, 2, 2), 4, "after {name} {payload:?}");
        }
    }
}

#[test]
fn a_panicking_task_fails_1000_times_in_a_row_and_add_still_works() {
    let dir = TestDir::new();
    let registry = load_mytasks(&dir);
    let panic = task(&registry, "panic");
    let ctx = CallContext::default();
    for i in 0..1000 {
        let codec = CODECS[i % 2];
        let err = call_with::<_, i64>(panic, &ctx, codec, &(format!("panic #{i}"),)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Panicked, "call {i}: {err}");
        assert!(
            err.message.contains(&format!("panic #{i}")),
            "call {i}: {err}"
        );
    }
    for codec in CODECS {
        assert_eq!(add(&registry, codec, 1000, 1), 1001);
    }
}

// ---- a second build of the same plugin -------------------------------------------

fn version_of(handle: &TaskHandle) -> String {
    call_with(handle, &CallContext::default(), Codec::Json, &()).expect("version succeeds")
}

#[test]
fn a_second_build_loads_beside_the_first_and_both_stay_callable() {
    let dir = TestDir::new();
    let watched = dir.copy_in(&plugin_artifact("versioned_v1"), "plugins/versioned.so");
    let loader = PluginLoader::with_shadow_dir(dir.shadow_dir()).unwrap();
    let mut registry = PluginRegistry::new();

    let v1 = loader.load(&watched).expect("v1 loads");
    assert_eq!(
        (v1.name.as_str(), v1.version.as_str()),
        ("versioned", "1.0.0")
    );
    let v1_shadow = v1.shadow.clone();
    assert!(registry.insert(v1).unwrap().is_none());
    let v1_version = task(&registry, "version").clone();
    let v1_add = task(&registry, "add_versioned").clone();
    assert_eq!(version_of(&v1_version), "1.0.0");

    // A new build lands at the same path as a new file, the way a deploy would.
    let staged = dir.copy_in(
        &plugin_artifact("versioned_v2"),
        "plugins/.versioned.so.new",
    );
    fs::rename(&staged, &watched).unwrap();

    let v2 = loader.load(&watched).expect("v2 loads");
    assert_eq!(
        (v2.name.as_str(), v2.version.as_str()),
        ("versioned", "2.0.0")
    );
    assert_ne!(v2.shadow, v1_shadow, "each build gets its own shadow copy");
    let replaced = registry
        .insert(v2)
        .expect("same file, so no conflict")
        .expect("v1 is replaced");
    assert_eq!(replaced.version, "1.0.0");
    assert_eq!(registry.plugins().count(), 1);

    let v2_version = task(&registry, "version").clone();
    let v2_add = task(&registry, "add_versioned").clone();
    assert_eq!(v2_version.plugin().version, "2.0.0");
    // Interleaved: the old handles run v1's code, the new ones v2's.
    for _ in 0..3 {
        assert_eq!(version_of(&v2_version), "2.0.0");
        assert_eq!(version_of(&v1_version), "1.0.0");
        for codec in CODECS {
            let old: String = call_with(&v1_add, &CallContext::default(), codec, &(7i64,)).unwrap();
            let new: String = call_with(&v2_add, &CallContext::default(), codec, &(7i64,)).unwrap();
            assert_eq!((old.as_str(), new.as_str()), ("7@1.0.0", "7@2.0.0"));
        }
    }
}

// ---- refusals ----------------------------------------------------------------------

#[test]
fn loader_reports_each_bad_file_as_its_own_error() {
    let dir = TestDir::new();
    let loader = PluginLoader::with_shadow_dir(dir.shadow_dir()).unwrap();

    match loader.load(&plugin_artifact("bad_abi")) {
        Err(LoadError::IncompatibleAbi {
            found, expected, ..
        }) => assert_eq!((found, expected), (ABI_VERSION + 1, ABI_VERSION)),
        other => panic!("bad_abi: {other:?}"),
    }
    match loader.load(&plugin_artifact("old_sdk")) {
        Err(LoadError::IncompatibleSdk {
            found, expected, ..
        }) => assert_eq!((found.as_str(), expected.as_str()), ("0.0.1", SDK_VERSION)),
        other => panic!("old_sdk: {other:?}"),
    }
    let text = dir.child("x.so");
    fs::write(&text, "this is text\n").unwrap();
    assert!(
        matches!(loader.load(&text), Err(LoadError::NotSharedLibrary { .. })),
        "x.so"
    );
    assert!(
        matches!(
            loader.load(&plugin_artifact("not_a_plugin")),
            Err(LoadError::NotAPlugin { .. })
        ),
        "not_a_plugin"
    );
    // After all that, a good plugin still loads and runs.
    let mut registry = PluginRegistry::new();
    registry
        .insert(loader.load(&plugin_artifact("mytasks")).unwrap())
        .unwrap();
    assert_eq!(add(&registry, Codec::Bincode, 20, 22), 42);
}

/// Asserts `output` is a failure whose only non-log stderr line is a short `error:`
/// line naming `file` and containing every one of `reasons`.
fn assert_refused(output: &Output, file: &str, reasons: &[&str]) -> String {
    assert!(!output.status.success(), "must fail: {output:?}");
    assert!(
        output.stdout.is_empty(),
        "nothing on stdout: {:?}",
        output.stdout
    );
    let lines = output.stderr_lines();
    assert_eq!(lines.len(), 1, "one line on stderr: {lines:#?}");
    let line = lines[0].clone();
    assert!(line.starts_with("error: "), "{line}");
    assert!(line.contains(file), "names {file}: {line}");
    for reason in reasons {
        assert!(line.contains(reason), "says {reason:?}: {line}");
    }
    assert!(line.len() < 300, "short ({} chars): {line}", line.len());
    line
}

/// Copies the library `lib_name` into a fresh directory as `file` and runs
/// `fastworker list --task-modules ./file` there.
fn list_single_file(lib_name: &str, file: &str) -> Output {
    let dir = TestDir::new();
    dir.copy_in(&plugin_artifact(lib_name), file);
    let mut cmd = dir.fastworker();
    cmd.args(["list", "--task-modules", &format!("./{file}")]);
    run(cmd)
}

#[test]
fn plugin_built_for_another_abi_version_is_refused_in_one_line() {
    let output = list_single_file("bad_abi", "bad_abi.so");
    assert_refused(
        &output,
        "bad_abi.so",
        &[
            &format!("ABI version {}", ABI_VERSION + 1),
            &format!("ABI version {ABI_VERSION}"),
        ],
    );
}

#[test]
fn plugin_built_against_an_incompatible_sdk_is_refused_in_one_line() {
    let output = list_single_file("old_sdk", "old_sdk.so");
    assert_refused(
        &output,
        "old_sdk.so",
        &["0.0.1", SDK_VERSION, "incompatible"],
    );
}

#[test]
fn text_file_named_like_a_plugin_is_refused_in_one_line() {
    let dir = TestDir::new();
    fs::write(dir.child("x.so"), "not a library, just text\n").unwrap();
    let mut cmd = dir.fastworker();
    cmd.args(["list", "--task-modules", "x.so"]);
    assert_refused(&run(cmd), "x.so", &["not a shared library"]);
}

#[test]
fn library_without_a_fastworker_export_is_refused_in_one_line() {
    let output = list_single_file("not_a_plugin", "not_a_plugin.so");
    assert_refused(&output, "not_a_plugin.so", &["not a fastworker plugin"]);
}

#[test]
fn duplicate_task_name_across_two_plugin_files_is_refused_naming_the_task() {
    let dir = TestDir::new();
    let mytasks = plugin_artifact("mytasks");
    dir.copy_in(&mytasks, "plugins/mytasks.so");
    dir.copy_in(&mytasks, "plugins/mytasks_copy.so");
    let mut cmd = dir.fastworker();
    cmd.args([
        "list",
        "--task-modules",
        "plugins/mytasks.so",
        "plugins/mytasks_copy.so",
    ]);
    let line = assert_refused(&run(cmd), "mytasks_copy.so", &["task `add`"]);
    assert!(
        line.contains("plugins/mytasks.so"),
        "names the other file: {line}"
    );
}

// ---- fastworker list -----------------------------------------------------------------

const MYTASKS_TASKS: [&str; 9] = [
    "add",
    "echo",
    "fail",
    "hang_ms",
    "heartbeat",
    "log_message",
    "panic",
    "sleep_ms",
    "stamp",
];

/// A fresh directory holding `plugins/mytasks.so`, as the README's set-up makes.
fn seeded_dir() -> TestDir {
    let dir = TestDir::new();
    dir.copy_in(&plugin_artifact("mytasks"), "plugins/mytasks.so");
    dir
}

fn list(dir: &TestDir, args: &[&str]) -> Output {
    let mut cmd = dir.fastworker();
    cmd.arg("list").args(args);
    let output = run(cmd);
    assert!(output.status.success(), "{args:?} fails: {output:?}");
    assert!(
        output.stderr_lines().is_empty(),
        "{args:?}: stderr {:?}",
        output.stderr
    );
    output
}

/// Asserts the flat listing has one line per mytasks task, each starting with its name.
fn assert_lists_mytasks(output: &Output) {
    let lines = output.stdout_lines();
    assert_eq!(lines.len(), MYTASKS_TASKS.len(), "{lines:#?}");
    for (line, name) in lines.iter().zip(MYTASKS_TASKS) {
        assert!(line.starts_with(&format!("{name} (")), "{line}");
        assert!(line.contains("(mytasks 0.1.0)"), "{line}");
    }
    assert!(
        lines[0].starts_with("add (x: i64, y: i64) -> i64"),
        "{}",
        lines[0]
    );
}

#[test]
fn list_finds_a_bare_name_in_the_plugins_directory() {
    let dir = seeded_dir();
    assert_lists_mytasks(&list(&dir, &["--task-modules", "mytasks"]));
}

#[test]
fn list_takes_a_path_to_a_plugin_file() {
    let dir = seeded_dir();
    assert_lists_mytasks(&list(&dir, &["--task-modules", "./plugins/mytasks.so"]));
}

#[test]
fn list_takes_a_directory_and_ignores_files_that_are_not_plugins() {
    let dir = seeded_dir();
    fs::write(dir.child("plugins/notes.txt"), "not a plugin").unwrap();
    assert_lists_mytasks(&list(&dir, &["--task-modules", "plugins"]));
}

#[test]
fn list_bare_name_missing_says_where_it_looked() {
    let dir = seeded_dir();
    let mut cmd = dir.fastworker();
    cmd.args(["list", "--task-modules", "othertasks"]);
    assert_refused(&run(cmd), "othertasks", &["not found", "othertasks.so"]);
}

#[test]
fn list_tree_groups_tasks_under_the_plugin_name_and_version() {
    let dir = seeded_dir();
    let output = list(&dir, &["--task-modules", "mytasks", "--tree"]);
    let lines = output.stdout_lines();
    assert_eq!(lines.len(), 1 + MYTASKS_TASKS.len(), "{lines:#?}");
    assert!(lines[0].starts_with("mytasks 0.1.0 "), "{}", lines[0]);
    assert!(lines[0].contains("mytasks.so"), "{}", lines[0]);
    for (line, name) in lines[1..].iter().zip(MYTASKS_TASKS) {
        let branch = if Some(&name) == MYTASKS_TASKS.last() {
            "└── "
        } else {
            "├── "
        };
        assert!(
            line.starts_with(&format!("{branch}{name} (")),
            "{line:?} under {name}"
        );
    }
}

#[test]
fn list_periodic_shows_only_heartbeat_with_its_interval() {
    let dir = seeded_dir();
    let output = list(&dir, &["--task-modules", "mytasks", "--list-periodic"]);
    let lines = output.stdout_lines();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].starts_with("heartbeat "), "{}", lines[0]);
    assert!(lines[0].contains("every 30s"), "{}", lines[0]);
}

#[test]
fn help_lists_every_subcommand() {
    let dir = TestDir::new();
    let mut cmd = dir.fastworker();
    cmd.arg("--help");
    let output = run(cmd);
    assert!(output.status.success(), "{output:?}");
    for name in [
        "control-plane",
        "subworker",
        "submit",
        "list",
        "status",
        "cancel",
    ] {
        assert!(
            output
                .stdout
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "`{name}` missing from --help:\n{}",
            output.stdout
        );
    }
}

#[test]
fn what_a_plugin_logs_reaches_the_hosts_log_with_the_task_the_plugin_and_its_version() {
    let dir = crate::procs::mytasks_dir();
    let mut cp = crate::procs::ControlPlane::start(&dir, &[]);
    let mut sw = cp.subworker(&dir, "sw1", &[]);
    let mut cmd = dir.fastworker();
    cmd.args([
        "submit",
        "--control-plane-address",
        &cp.base,
        "--task-name",
        "log_message",
        "--args",
        "hello from the plugin",
        "--json",
    ]);
    let out = run(cmd);
    assert!(out.status.success(), "{out:?}");
    let record: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let task = record["task_id"].as_str().unwrap().to_string();
    let context = format!("task={task} plugin=mytasks version=0.1.0 from=mytasks::tasks");
    // `tracing::info!` with a field, and `log::warn!`, each one line on the subworker.
    sw.wait_for_line(
        true,
        &[
            "INFO",
            "tracing says: hello from the plugin length=21",
            &context,
        ],
        Duration::from_secs(10),
    );
    sw.wait_for_line(
        true,
        &["WARN", "log says: hello from the plugin", &context],
        Duration::from_secs(10),
    );
    // At --log-level WARNING the info record is not sent at all; the warning is.
    drop(sw);
    let mut quiet = {
        let args: Vec<String> = [
            "--log-level",
            "WARNING",
            "subworker",
            "--worker-id",
            "sw2",
            "--control-plane-address",
            &cp.base,
            "--task-modules",
            "mytasks",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        crate::procs::Proc::spawn(&dir, "sw2", &args)
    };
    cp.wait_registered("sw2");
    let mut cmd = dir.fastworker();
    cmd.args([
        "submit",
        "--control-plane-address",
        &cp.base,
        "--task-name",
        "log_message",
        "--args",
        "quiet please",
    ]);
    assert!(run(cmd).status.success());
    quiet.wait_for_line(
        true,
        &["WARN", "log says: quiet please"],
        Duration::from_secs(10),
    );
    assert!(
        !quiet.stderr().contains("tracing says: quiet please"),
        "{}",
        quiet.stderr()
    );
}
