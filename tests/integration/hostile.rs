//! Hostile peers, the way an attacker on the same network would try them: raw bytes on
//! every port a control plane and a subworker listen on, floods of idle connections,
//! and a hostile server that our clients, subworkers and callback senders connect to.
//! Afterwards every process must still be running and answering correctly.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use bytes::Bytes;
use fastworker::{
    client::Client,
    protocol::{Codec, TaskEnvelope},
};
use serde_json::json;

use crate::{
    procs::{free_address, mytasks_dir, runtime, ControlPlane, Proc, STARTUP},
    support::TestDir,
};

/// A ZMTP 3.0 greeting with the NULL mechanism, as any ZeroMQ peer sends it.
pub fn zmtp_greeting() -> Vec<u8> {
    let mut g = vec![0u8; 64];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[11] = 0;
    g[12..16].copy_from_slice(b"NULL");
    g
}

/// The 73-byte bomb: a greeting, then one long frame header declaring 2^62 bytes.
pub fn bomb() -> Vec<u8> {
    let mut b = zmtp_greeting();
    b.push(0x02);
    b.extend_from_slice(&(1u64 << 62).to_be_bytes());
    assert_eq!(b.len(), 73);
    b
}

/// A READY command for a DEALER, as the second thing a peer sends.
pub fn ready_dealer() -> Vec<u8> {
    let mut body = vec![5u8];
    body.extend_from_slice(b"READY");
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend_from_slice(&6u32.to_be_bytes());
    body.extend_from_slice(b"DEALER");
    let mut frame = vec![0x04, body.len() as u8];
    frame.extend(body);
    frame
}

/// Everything the corpus sends, each on a fresh connection.
pub fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let greeting = zmtp_greeting();
    let with = |tail: &[u8]| {
        let mut v = greeting.clone();
        v.extend_from_slice(tail);
        v
    };
    let after_ready = |tail: &[u8]| {
        let mut v = greeting.clone();
        v.extend(ready_dealer());
        v.extend_from_slice(tail);
        v
    };
    let mut long_declared = vec![0x02];
    long_declared.extend_from_slice(&(200u64 << 20).to_be_bytes());
    let mut max_declared = vec![0x02];
    max_declared.extend_from_slice(&u64::MAX.to_be_bytes());
    let mut long_command = vec![0x06];
    long_command.extend_from_slice(&(1u64 << 40).to_be_bytes());
    vec![
        ("the 73-byte bomb", bomb()),
        (
            "bomb after READY",
            after_ready(&long_declared[..1])
                .into_iter()
                .chain((1u64 << 62).to_be_bytes())
                .collect(),
        ),
        ("200 MiB declared after READY", after_ready(&long_declared)),
        ("u64::MAX declared after READY", after_ready(&max_declared)),
        ("huge command frame", with(&long_command)),
        (
            "garbage after the greeting",
            with(&[0xde, 0xad, 0xbe, 0xef, 0x13, 0x37, 0x00, 0xff]),
        ),
        (
            "garbage instead of a greeting",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("truncated greeting", greeting[..30].to_vec()),
        ("truncated frame", after_ready(&[0x01, 0x10, b'a', b'b'])),
        (
            "random bytes",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
    ]
}

/// Sends `bytes` to `addr` on a fresh connection, reads for a moment, closes.
pub fn throw(addr: &str, bytes: &[u8]) {
    let addr: SocketAddr = addr
        .trim_start_matches("tcp://")
        .parse()
        .expect("a tcp://ip:port address");
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return;
    };
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = stream.write_all(bytes);
    let mut sink = [0u8; 4096];
    let _ = stream.read(&mut sink);
}

/// `add 5 3` through a fresh client: `Some(8)` when the cluster still answers.
pub fn add_works(base: &str) -> bool {
    let rt = runtime();
    rt.block_on(async {
        let Ok(client) = Client::connect(base, Duration::from_secs(10)).await else {
            return false;
        };
        let task = TaskEnvelope::new("add", Codec::Json, Bytes::from(json!([5, 3]).to_string()));
        match client.submit(task, Duration::from_secs(20)).await {
            Ok(record) => &record.value[..] == b"8",
            Err(_) => false,
        }
    })
}

fn alive(proc: &mut Proc) -> bool {
    proc.try_exit().is_none()
}

/// A control plane with mytasks and one subworker whose status endpoint is known.
fn cluster(dir: &TestDir) -> (ControlPlane, Proc, String) {
    let mut cp = ControlPlane::start(dir, &["--task-modules", "mytasks"]);
    let status = free_address();
    let args: Vec<String> = [
        "subworker",
        "--worker-id",
        "sw1",
        "--control-plane-address",
        &cp.base,
        "--base-address",
        &status,
        "--task-modules",
        "mytasks",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut sw = Proc::spawn(dir, "sw1", &args);
    sw.wait_for(true, "registered with the control plane", STARTUP);
    cp.wait_registered("sw1");
    (cp, sw, status)
}

#[test]
fn the_corpus_on_every_port_crashes_nothing() {
    let dir = mytasks_dir();
    let (mut cp, mut sw, status) = cluster(&dir);
    let ports = [
        ("base", cp.base.clone()),
        ("discovery", cp.discovery.clone()),
        ("subworker port", cp.subworker_endpoint.clone()),
        ("subworker status", status.clone()),
    ];
    for (port, addr) in &ports {
        for (what, bytes) in corpus() {
            throw(addr, &bytes);
            assert!(
                alive(&mut cp.proc),
                "the control plane died from `{what}` on its {port}:\n{}",
                cp.proc.describe()
            );
            assert!(
                alive(&mut sw),
                "the subworker died from `{what}` on the {port}:\n{}",
                sw.describe()
            );
        }
    }
    let started = Instant::now();
    assert!(add_works(&cp.base), "add 5 3 failed after the corpus");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(alive(&mut cp.proc) && alive(&mut sw));
}
