//! Protocol compatibility: processes that speak only the previous version (version 1,
//! the frozen bincode encoding), processes of the last release (version 3, MessagePack
//! with field names) and processes that speak the current one work together in every
//! direction, and a running cluster is upgraded one process at a time without failing
//! or losing a task.
//!
//! A "previous" process is this build held on version 1 (`FASTWORKER_PROTOCOL_MAX=1`),
//! or, when `FASTWORKER_PREVIOUS_BIN` names one, a `fastworker` binary built from the
//! last commit before version 2 (`.ci/run` builds it when the history is there). A
//! process of the last release is this build held on version 3.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use fastworker_protocol::{
    self as protocol, Codec, FromControlPlane, Hello, PeerKind, TaskEnvelope, TaskId, TaskStatus,
    ToControlPlane,
};
use serde_json::json;

use crate::{
    procs::{
        connect, control_plane_args, free_address, free_port, mytasks_dir, poll_until, runtime,
        Proc, STARTUP,
    },
    support::{client_config, run, TestDir},
};

/// `FASTWORKER_PROTOCOL_MAX` for a process of the previous version or of the last
/// release, none for the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Build {
    Previous,
    LastRelease,
    Current,
}

impl Build {
    fn command(self, dir: &TestDir) -> std::process::Command {
        match (self, std::env::var_os("FASTWORKER_PREVIOUS_BIN")) {
            (Build::Current, _) => dir.fastworker(),
            (Build::LastRelease, _) => held_on(dir, 3),
            (Build::Previous, Some(binary)) => {
                // A previous release loads plugins built against its own SDK: its
                // `mytasks` was built beside its binary, and bare names find it here.
                let binary = std::path::Path::new(&binary);
                let plugins = dir.child("plugins-previous");
                if !plugins.join("mytasks.so").is_file() {
                    dir.copy_in(
                        &binary.with_file_name("libmytasks.so"),
                        "plugins-previous/mytasks.so",
                    );
                }
                let mut cmd = dir.fastworker_from(binary);
                cmd.env("FASTWORKER_PLUGIN_DIR", plugins);
                cmd
            }
            (Build::Previous, None) => held_on(dir, 1),
        }
    }
}

/// This build, held on protocol `version` (as a build of that version speaks).
fn held_on(dir: &TestDir, version: u8) -> std::process::Command {
    let mut cmd = dir.fastworker();
    cmd.env("FASTWORKER_PROTOCOL_MAX", version.to_string());
    cmd
}

struct Cluster {
    base: String,
    discovery: String,
    subworker_port: String,
}

impl Cluster {
    fn new() -> Self {
        Cluster {
            base: free_address(),
            discovery: free_address(),
            subworker_port: free_port().to_string(),
        }
    }

    fn control_plane(&self, dir: &TestDir, build: Build, name: &str, extra: &[&str]) -> Proc {
        let mut cmd = build.command(dir);
        cmd.args(control_plane_args(
            &self.base,
            &self.discovery,
            &self.subworker_port,
        ))
        .args(extra);
        let mut proc = Proc::spawn_command(dir, name, cmd, None);
        proc.wait_for(false, "ready on", STARTUP);
        proc
    }

    fn subworker(&self, dir: &TestDir, build: Build, id: &str) -> Proc {
        let mut cmd = build.command(dir);
        cmd.args([
            "subworker",
            "--worker-id",
            id,
            "--control-plane-address",
            &self.base,
            "--task-modules",
            "mytasks",
            "--concurrency",
            "4",
        ]);
        let mut proc = Proc::spawn_command(dir, id, cmd, None);
        proc.wait_for(true, "registered with the control plane", STARTUP);
        proc
    }

    /// `fastworker submit ... add 5 3` from a CLI of `build`.
    fn submit_add(&self, dir: &TestDir, build: Build) -> String {
        let mut cmd = build.command(dir);
        cmd.args([
            "submit",
            "--control-plane-address",
            &self.base,
            "--task-name",
            "add",
            "--args",
            "5",
            "3",
        ]);
        let out = run(cmd);
        assert!(out.status.success(), "submit failed: {}", out.stderr);
        out.stdout.trim().to_string()
    }
}

#[test]
fn previous_and_current_processes_work_together_in_every_direction() {
    let dir = mytasks_dir();
    let builds = [Build::Previous, Build::LastRelease, Build::Current];
    for cp_build in builds {
        for sw_build in builds {
            let at = Cluster::new();
            // No task modules: every task runs on the subworker.
            let mut cp = at.control_plane(&dir, cp_build, "cp", &[]);
            let mut sw = at.subworker(&dir, sw_build, "sw");
            for client_build in builds {
                assert_eq!(
                    at.submit_add(&dir, client_build),
                    "8",
                    "control plane {cp_build:?}, subworker {sw_build:?}, client {client_build:?}"
                );
            }
            sw.kill();
            cp.kill();
        }
    }
}

/// Says `hello` on a raw connection and returns the answer's header version and the
/// answer.
fn handshake(address: &str, frames: Vec<Bytes>) -> (u8, FromControlPlane) {
    let rt = runtime();
    rt.block_on(async {
        let mut conn =
            fastworker_transport::connect(address, Duration::from_secs(5), &client_config())
                .await
                .expect("connects");
        conn.sender.send(frames).await.expect("sent");
        let answer = tokio::time::timeout(Duration::from_secs(10), conn.receiver.recv())
            .await
            .expect("an answer in time")
            .expect("a message");
        protocol::decode_versioned::<FromControlPlane>(&answer).expect("the answer decodes")
    })
}

#[test]
fn the_handshake_agrees_on_the_newest_shared_version_or_names_both_ranges() {
    let dir = mytasks_dir();
    let at = Cluster::new();
    let mut cp = at.control_plane(&dir, Build::Current, "cp", &[]);
    let hello = |min: u8, max: Option<u8>| {
        let mut hello = Hello::new(PeerKind::Client, "probe");
        hello.protocol_version = min;
        hello.features = max
            .map(|m| vec![format!("{}{m}", protocol::PROTOCOL_MAX_FEATURE)])
            .unwrap_or_default();
        protocol::encode_as(1, &ToControlPlane::Hello(hello)).expect("encodes")
    };
    // A current peer: version 4, and the Welcome is written in it.
    match handshake(&at.base, hello(1, Some(4))) {
        (4, FromControlPlane::Welcome(w)) => assert_eq!(w.protocol_version, 4),
        other => panic!("{other:?}"),
    }
    // A version-3 build (the previous release): version 3.
    match handshake(&at.base, hello(1, Some(3))) {
        (3, FromControlPlane::Welcome(w)) => assert_eq!(w.protocol_version, 3),
        other => panic!("{other:?}"),
    }
    // A version-2 build (the Python client): version 2.
    match handshake(&at.base, hello(1, Some(2))) {
        (2, FromControlPlane::Welcome(w)) => assert_eq!(w.protocol_version, 2),
        other => panic!("{other:?}"),
    }
    // A version-1 build (no protocol-max feature): version 1.
    match handshake(&at.base, hello(1, None)) {
        (1, FromControlPlane::Welcome(w)) => assert_eq!(w.protocol_version, 1),
        other => panic!("{other:?}"),
    }
    // A future peer that dropped versions 1 to 4: refused, naming both ranges.
    match handshake(&at.base, hello(5, Some(6))) {
        (_, FromControlPlane::Refused { reason }) => {
            assert!(
                reason.contains("1 to 4") && reason.contains("5 to 6"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    // A header of version 0 (older than any release): refused, naming the version
    // required.
    let mut old = protocol::encode_as(1, &ToControlPlane::Ping { nonce: 1 }).expect("encodes");
    let mut header = old[0].to_vec();
    header[2] = 0;
    old[0] = Bytes::from(header);
    match handshake(&at.base, old) {
        (_, FromControlPlane::Refused { reason }) => assert!(
            reason.contains("version 0") && reason.contains("version 1 or later is required"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    cp.kill();
}

/// A process held on an older version names the versions it speaks when it refuses a
/// newer header, not the versions of the build it runs.
#[test]
fn a_control_plane_held_on_version_3_refuses_a_version_4_header_naming_its_own_range() {
    let dir = mytasks_dir();
    let at = Cluster::new();
    let mut cp = at.control_plane(&dir, Build::LastRelease, "cp", &[]);
    let hello = ToControlPlane::Hello(Hello::new(PeerKind::Client, "probe"));
    match handshake(&at.base, protocol::encode_as(4, &hello).expect("encodes")) {
        (_, FromControlPlane::Refused { reason }) => assert!(
            reason.contains("protocol version 4 is not supported")
                && reason.contains("versions 1 to 3;"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    cp.kill();
}

/// `add(i, 100000)`, with an id chosen here so a resubmission is the same task.
fn add(i: i64) -> TaskEnvelope {
    TaskEnvelope::new(
        "add",
        Codec::Json,
        Bytes::from(json!([i, 100_000]).to_string()),
    )
}

#[test]
fn a_cluster_is_upgraded_one_process_at_a_time_under_load_without_losing_a_task() {
    let dir = mytasks_dir();
    let at = Cluster::new();
    let data = dir.child("data");
    let data = data.to_str().expect("utf-8 path").to_string();
    let mut cp = at.control_plane(&dir, Build::Previous, "cp-old", &["--data-dir", &data]);
    let mut sw1 = at.subworker(&dir, Build::Previous, "sw1");
    let mut sw2 = at.subworker(&dir, Build::Previous, "sw2");

    // Steady load from a client of the current build: batches of 10 every 20 ms.
    // A batch whose answer is lost to a restart is sent again with the same ids
    // (submission is idempotent by id), so every task is submitted until accepted.
    let submitted: Arc<Mutex<HashMap<TaskId, i64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (submitted, stop, base) = (submitted.clone(), stop.clone(), at.base.clone());
        std::thread::spawn(move || {
            let rt = runtime();
            let client = connect(&rt, &base);
            let mut next = 0i64;
            while !stop.load(Ordering::SeqCst) {
                let batch: Vec<(i64, TaskEnvelope)> =
                    (next..next + 10).map(|i| (i, add(i))).collect();
                next += 10;
                for (i, task) in &batch {
                    submitted.lock().expect("lock").insert(task.id, *i);
                }
                let tasks: Vec<TaskEnvelope> = batch.into_iter().map(|(_, t)| t).collect();
                let deadline = Instant::now() + Duration::from_secs(60);
                while rt.block_on(client.submit_batch(tasks.clone())).is_err() {
                    assert!(Instant::now() < deadline, "a batch was never accepted");
                    std::thread::sleep(Duration::from_millis(100));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            next
        })
    };
    let pause = || std::thread::sleep(Duration::from_millis(700));
    pause();

    // Each subworker in turn: Ctrl+C (it drains and exits), then one of the current
    // build under the same id.
    for (slot, id) in [(&mut sw1, "sw1"), (&mut sw2, "sw2")] {
        slot.signal("INT");
        assert!(
            slot.wait_exit(Duration::from_secs(60)).success(),
            "{id} drained and exited 0"
        );
        *slot = at.subworker(&dir, Build::Current, id);
        pause();
    }
    // Then the control plane: Ctrl+C keeps its queue in the data directory; the
    // current build starts on the same directory and addresses.
    cp.signal("INT");
    assert!(
        cp.wait_exit(Duration::from_secs(60)).success(),
        "the old control plane exited 0"
    );
    cp = at.control_plane(&dir, Build::Current, "cp-new", &["--data-dir", &data]);
    pause();
    pause();
    stop.store(true, Ordering::SeqCst);
    let sent = load.join().expect("the load thread ran");

    // Every task submitted ends success with its own value, on the new control plane.
    let tasks: Vec<(TaskId, i64)> = submitted
        .lock()
        .expect("lock")
        .clone()
        .into_iter()
        .collect();
    assert_eq!(tasks.len() as i64, sent);
    let rt = runtime();
    let client = connect(&rt, &at.base);
    let mut failed = Vec::new();
    for (id, i) in &tasks {
        let record = poll_until(Duration::from_secs(60), || {
            rt.block_on(client.status(*id))
                .ok()
                .flatten()
                .filter(|r| r.status.is_final())
        })
        .unwrap_or_else(|| panic!("task {id} (add {i}) never finished: lost"));
        let value: Option<i64> = serde_json::from_slice(&record.value).ok();
        if record.status != TaskStatus::Success || value != Some(i + 100_000) {
            failed.push((record.status, value, *i));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} tasks failed: {failed:?}",
        failed.len(),
        tasks.len()
    );
    assert!(sent >= 100, "the load ran ({sent} tasks)");
    println!("rolling upgrade: {sent} tasks, 0 failed, 0 lost");
    for mut p in [sw1, sw2, cp] {
        p.kill();
    }
}

#[test]
fn a_client_lists_what_the_cluster_serves_with_docs_and_signatures() {
    let dir = mytasks_dir();
    for (cp_build, sw_build) in [
        (Build::Current, Build::Current),
        (Build::Current, Build::Previous),
        (Build::Previous, Build::Current),
    ] {
        let at = Cluster::new();
        let mut cp = at.control_plane(&dir, cp_build, "cp", &[]);
        let mut sw = at.subworker(&dir, sw_build, "sw");
        let rt = runtime();
        let client = connect(&rt, &at.base);
        let listed = rt.block_on(client.tasks());
        match cp_build {
            Build::Previous => assert!(
                matches!(&listed, Err(fastworker_client::ClientError::Unsupported(m)) if m.contains("version 2")),
                "{listed:?}"
            ),
            Build::LastRelease | Build::Current => {
                let tasks = listed.expect("the current control plane lists its tasks");
                let add = tasks
                    .iter()
                    .find(|t| t.spec.name == "add")
                    .expect("add is served");
                assert_eq!(add.workers, vec![fastworker_protocol::WorkerId::from("sw")]);
                if sw_build == Build::Current {
                    assert_eq!(add.spec.doc, "Adds two integers.");
                    assert!(
                        add.spec.signature.contains("i64"),
                        "{:?}",
                        add.spec.signature
                    );
                } else {
                    // A version-1 subworker's registration has no doc or signature.
                    assert_eq!(
                        (add.spec.doc.as_str(), add.spec.signature.as_str()),
                        ("", "")
                    );
                }
            }
        }
        sw.kill();
        cp.kill();
    }
}

/// A plugin built against the SDK of the previous release (0.1, before the root
/// module's `install_log` field) is refused by the current host in one line that names
/// both SDK versions and the pin to rebuild with. Needs that build: `.ci/run` builds the
/// previous release's `mytasks` beside its binary (`FASTWORKER_PREVIOUS_BIN`).
#[test]
fn a_plugin_built_with_the_previous_sdk_is_refused_naming_both_versions() {
    let Some(binary) = std::env::var_os("FASTWORKER_PREVIOUS_BIN") else {
        eprintln!("SKIPPED: FASTWORKER_PREVIOUS_BIN is not set (.ci/run sets it)");
        return;
    };
    let old_plugin = std::path::Path::new(&binary).with_file_name("libmytasks.so");
    assert!(
        old_plugin.is_file(),
        "{} is missing: build the previous release's mytasks beside its binary",
        old_plugin.display()
    );
    let dir = TestDir::new();
    dir.copy_in(&old_plugin, "plugins/mytasks.so");
    let mut list = dir.fastworker();
    list.args(["list", "--task-modules", "mytasks"]);
    let out = run(list);
    assert!(!out.status.success(), "{out:?}");
    let lines = out.stderr_lines();
    let ours = fastworker_plugin_sdk::abi::SDK_VERSION;
    assert!(
        lines.len() == 1
            && lines[0].contains("built against fastworker-plugin-sdk 0.1.0")
            && lines[0].contains(&format!("this host's SDK {ours}"))
            && lines[0].contains(&format!("fastworker-plugin-sdk = \"={ours}\"")),
        "{lines:?}"
    );
}
