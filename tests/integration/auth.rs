//! The cluster key, end to end on real processes: `fastworker keygen`, a control plane
//! and a subworker with `--auth-key-file`, the CLI with the file or `FASTWORKER_AUTH_KEY`;
//! and everyone without the key (the CLI, the library client, a raw connection, a
//! subworker) refused at every port, able neither to submit, read, cancel nor register.

use std::{path::PathBuf, time::Duration};

use bytes::Bytes;
use fastworker_client::{Client, ClientError};
use fastworker_protocol::{
    self as protocol, Codec, FromControlPlane, Hello, PeerKind, Registration, TaskEnvelope, TaskId,
    ToControlPlane, WorkerId, PROTOCOL_VERSION,
};
use fastworker_transport::{self as transport, auth::ClusterKey, TransportConfig, TransportError};
use serde_json::json;

use crate::{
    procs::{free_address, free_port, mytasks_dir, runtime, ControlPlane, Proc, STARTUP},
    support::{run, TestDir},
};

fn keygen(dir: &TestDir, name: &str) -> PathBuf {
    let mut cmd = dir.fastworker();
    cmd.args(["keygen", name]);
    let out = run(cmd);
    assert!(out.status.success(), "keygen: {out:?}");
    let path = dir.path().join(name);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key file is private");
    }
    path
}

fn keyed(path: &std::path::Path) -> TransportConfig {
    TransportConfig::default().with_key(Some(ClusterKey::load(path).expect("the key loads")))
}

fn submit(dir: &TestDir, cp: &ControlPlane, extra: &[&str]) -> crate::support::Output {
    let mut cmd = dir.fastworker();
    cmd.args([
        "submit",
        "--control-plane-address",
        &cp.base,
        "--connect-timeout",
        "5",
        "--task-name",
        "add",
        "--args",
        "5",
        "3",
    ])
    .args(extra);
    run(cmd)
}

/// A control plane with the key in `key.txt`, mytasks, and subworker sw1 with the key.
fn keyed_cluster(dir: &TestDir) -> (PathBuf, ControlPlane, Proc) {
    let key = keygen(dir, "key.txt");
    let key_arg = key.display().to_string();
    let mut cp = ControlPlane::start(
        dir,
        &["--task-modules", "mytasks", "--auth-key-file", &key_arg],
    );
    let sw = cp.subworker(dir, "sw1", &["--auth-key-file", &key_arg]);
    (key, cp, sw)
}

#[test]
fn keygen_never_overwrites_a_key() {
    let dir = TestDir::new().without_suite_key();
    let path = keygen(&dir, "k");
    let before = std::fs::read_to_string(&path).expect("read");
    let mut cmd = dir.fastworker();
    cmd.args(["keygen", "k"]);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("never overwritten"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), before);
    assert!(ClusterKey::parse(&before).is_ok());
}

#[test]
fn with_a_key_its_holders_work_and_nobody_else_gets_in() {
    let dir = mytasks_dir().without_suite_key();
    let (key, mut cp, mut sw) = keyed_cluster(&dir);
    let key_arg = key.display().to_string();

    // The workers page's commands, with the key: by file and by environment.
    let out = submit(&dir, &cp, &["--auth-key-file", &key_arg]);
    assert_eq!(out.stdout_lines(), ["8"], "{out:?}");
    let key_text: String = std::fs::read_to_string(&key)
        .expect("key")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect();
    let mut cmd = dir.fastworker();
    cmd.env("FASTWORKER_AUTH_KEY", &key_text).args([
        "submit",
        "--discovery-address",
        &cp.discovery,
        "--task-name",
        "add",
        "--args",
        "5",
        "3",
    ]);
    let out = run(cmd);
    assert_eq!(out.stdout_lines(), ["8"], "discovery with the key: {out:?}");

    // Without the key: the CLI is refused, saying why, at the base and discovery ports.
    let out = submit(&dir, &cp, &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("cluster key"), "{out:?}");
    let mut cmd = dir.fastworker();
    cmd.args([
        "submit",
        "--discovery-address",
        &cp.discovery,
        "--task-name",
        "add",
        "--args",
        "1",
        "2",
    ]);
    let out = run(cmd);
    assert_eq!(
        out.status.code(),
        Some(1),
        "discovery without the key: {out:?}"
    );

    let rt = runtime();
    // The library client without a key, and with a wrong one.
    let refused = rt.block_on(Client::connect(&cp.base, Duration::from_secs(5)));
    assert!(
        matches!(&refused, Err(ClientError::Refused(reason)) if reason.contains("cluster key")),
        "{:?}",
        refused.err()
    );
    let wrong = TransportConfig::default().with_key(Some(
        ClusterKey::parse(&ClusterKey::generate()).expect("key"),
    ));
    let refused = rt.block_on(Client::connect_with(
        &cp.base,
        Duration::from_secs(5),
        &wrong,
    ));
    assert!(
        matches!(&refused, Err(ClientError::Transport(TransportError::Refused(r))) if r.contains("wrong cluster key")),
        "{:?}",
        refused.err()
    );

    // A task of the key holder, and a stranger who knows its id.
    let client = rt
        .block_on(Client::connect_with(
            &cp.base,
            Duration::from_secs(5),
            &keyed(&key),
        ))
        .expect("the key holder connects");
    let task = TaskEnvelope::new(
        "sleep_ms",
        Codec::Json,
        Bytes::from(json!([600]).to_string()),
    );
    let id = rt.block_on(client.delay(task)).expect("accepted");
    for (what, msg) in stranger_requests(id) {
        let reply = rt.block_on(async {
            let mut conn = transport::connect(
                &cp.base,
                Duration::from_secs(5),
                &TransportConfig::default(),
            )
            .await
            .expect("a TCP connection is still accepted");
            conn.sender
                .send(protocol::encode(&msg).expect("encodes"))
                .await
                .expect("send");
            let first = tokio::time::timeout(Duration::from_secs(5), conn.receiver.recv())
                .await
                .expect("an answer")
                .expect("a message");
            // Then the connection is closed: nothing more arrives.
            let after = tokio::time::timeout(Duration::from_secs(3), conn.receiver.recv()).await;
            (
                protocol::decode::<FromControlPlane>(&first).expect("decodes"),
                after,
            )
        });
        assert!(
            matches!(&reply.0, FromControlPlane::Refused { reason } if reason.contains("cluster key")),
            "{what}: {:?}",
            reply.0
        );
        assert!(
            !matches!(reply.1, Ok(Ok(_))),
            "{what}: the connection stays quiet or closes after the refusal"
        );
    }
    let record = rt
        .block_on(client.result(id, Duration::from_secs(20)))
        .expect("answer")
        .expect("known");
    assert_eq!(
        record.status,
        fastworker_protocol::TaskStatus::Success,
        "the stranger's cancel did nothing: {record:?}"
    );
    assert!(
        !cp.proc.stderr().contains("worker=evil"),
        "the stranger never registered:\n{}",
        cp.proc.stderr()
    );

    // A subworker without the key is refused and says so.
    let args: Vec<String> = [
        "subworker",
        "--worker-id",
        "keyless",
        "--control-plane-address",
        &cp.base,
        "--task-modules",
        "mytasks",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut keyless = Proc::spawn(&dir, "keyless", &args);
    let status = keyless.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    assert!(
        keyless.stderr().contains("cluster key"),
        "{}",
        keyless.describe()
    );

    // The subworker's own status endpoint asks for the key too.
    assert!(sw.try_exit().is_none());
    assert!(cp.proc.try_exit().is_none());
    let out = submit(&dir, &cp, &["--auth-key-file", &key_arg]);
    assert_eq!(out.stdout_lines(), ["8"]);
}

/// What a stranger without the key tries: submit, read, cancel, register.
fn stranger_requests(id: TaskId) -> Vec<(&'static str, ToControlPlane)> {
    vec![
        (
            "hello",
            ToControlPlane::Hello({
                let mut value = Hello::new(PeerKind::Client, "evil");
                value.protocol_version = PROTOCOL_VERSION;
                value.features = vec![];
                value
            }),
        ),
        (
            "submit",
            ToControlPlane::Submit {
                request_id: 1,
                task: TaskEnvelope::new("add", Codec::Json, Bytes::from_static(b"[1,1]")),
                wait: true,
            },
        ),
        (
            "status",
            ToControlPlane::Status {
                request_id: 2,
                task_id: id,
                wait: false,
            },
        ),
        (
            "cancel",
            ToControlPlane::Cancel {
                request_id: 3,
                task_id: id,
            },
        ),
        (
            "register",
            ToControlPlane::Register({
                let mut value = Registration::new(WorkerId::new("evil"), vec![], 64);
                value.address = None;
                value.pid = 1;
                value.secret = None;
                value.running = vec![];
                value
            }),
        ),
    ]
}

#[test]
fn a_key_holder_cannot_take_over_another_subworkers_id() {
    let dir = mytasks_dir().without_suite_key();
    let (key, mut cp, mut sw) = keyed_cluster(&dir);
    let rt = runtime();
    let reply = rt.block_on(async {
        let mut conn = transport::connect(&cp.base, Duration::from_secs(5), &keyed(&key))
            .await
            .expect("connects with the key");
        for msg in [
            ToControlPlane::Hello({
                let mut value = Hello::new(PeerKind::Subworker, "sw1");
                value.protocol_version = PROTOCOL_VERSION;
                value.features = vec![];
                value
            }),
            ToControlPlane::Register({
                let mut value = Registration::new(WorkerId::new("sw1"), vec![], 64);
                value.address = None;
                value.pid = sw.pid();
                value.secret = None;
                value.running = vec![];
                value
            }),
        ] {
            conn.sender
                .send(protocol::encode(&msg).expect("encodes"))
                .await
                .expect("send");
        }
        loop {
            let frames = tokio::time::timeout(Duration::from_secs(5), conn.receiver.recv())
                .await
                .expect("an answer")
                .expect("a message");
            match protocol::decode::<FromControlPlane>(&frames).expect("decodes") {
                FromControlPlane::Welcome(_) => continue,
                other => break other,
            }
        }
    });
    match reply {
        FromControlPlane::Refused { reason } => {
            assert!(reason.contains("in use"), "{reason}");
            assert!(
                !reason.contains("pid") && !reason.contains(&sw.pid().to_string()),
                "{reason}"
            );
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    let out = submit(&dir, &cp, &["--auth-key-file", &key.display().to_string()]);
    assert_eq!(out.stdout_lines(), ["8"]);
    assert!(sw.try_exit().is_none() && cp.proc.try_exit().is_none());
}

#[test]
fn two_keys_during_a_rotation_and_a_keyed_client_against_a_keyless_server() {
    let dir = mytasks_dir().without_suite_key();
    let old = ClusterKey::generate();
    let new = ClusterKey::generate();
    let both = dir.child("both.txt");
    std::fs::write(&both, format!("{old}{new}")).expect("write");
    let only_new = dir.child("new.txt");
    std::fs::write(&only_new, &new).expect("write");
    let only_old = dir.child("old.txt");
    std::fs::write(&only_old, &old).expect("write");
    let cp = ControlPlane::start(
        &dir,
        &[
            "--task-modules",
            "mytasks",
            "--auth-key-file",
            &both.display().to_string(),
        ],
    );
    for key in [&only_old, &only_new] {
        let out = submit(&dir, &cp, &["--auth-key-file", &key.display().to_string()]);
        assert_eq!(out.stdout_lines(), ["8"], "{}: {out:?}", key.display());
    }
    let plain = ControlPlane::start(&dir, &["--task-modules", "mytasks"]);
    let out = submit(
        &dir,
        &plain,
        &["--auth-key-file", &only_new.display().to_string()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("no cluster key"), "{out:?}");
}

#[test]
fn a_non_loopback_address_needs_a_key_or_insecure() {
    let dir = mytasks_dir().without_suite_key();
    let port = free_port();
    let args = |extra: &[&str]| {
        let mut cmd = dir.fastworker();
        cmd.args([
            "control-plane",
            "--no-gui",
            "--base-address",
            &format!("tcp://0.0.0.0:{port}"),
            "--discovery-address",
            &free_address(),
            "--subworker-port",
            "0",
        ])
        .args(extra);
        cmd
    };
    let out = run(args(&[]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("refusing to listen on tcp://0.0.0.0"),
        "{out:?}"
    );
    assert!(out.stderr.contains("--insecure"), "{out:?}");
    let mut insecure = Proc::spawn_command(&dir, "insecure", args(&["--insecure"]), None);
    insecure.wait_for(false, "ready on", STARTUP);
    insecure.kill();
}
