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
use fastworker_client::Client;
use fastworker_protocol::{Codec, TaskEnvelope};
use serde_json::json;

use crate::{
    procs::{free_address, mytasks_dir, runtime, ControlPlane, Proc, STARTUP},
    support::{client_config, TestDir},
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

/// A READY command for a socket of `socket_type` (`DEALER`, `ROUTER`), as the second
/// thing a peer sends.
pub fn ready(socket_type: &[u8; 6]) -> Vec<u8> {
    let mut body = vec![5u8];
    body.extend_from_slice(b"READY");
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend_from_slice(&6u32.to_be_bytes());
    body.extend_from_slice(socket_type);
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
        v.extend(ready(b"DEALER"));
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
        let Ok(client) =
            Client::connect_with(base, Duration::from_secs(10), &client_config()).await
        else {
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

/// Opens `n` TCP connections to `addr` that say nothing.
fn idle_connections(addr: &str, n: usize) -> Vec<TcpStream> {
    let addr: SocketAddr = addr.trim_start_matches("tcp://").parse().expect("ip:port");
    (0..n)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
        .collect()
}

/// How many of `streams` the other side has closed (a read sees EOF or a reset).
fn closed_by_peer(streams: &mut [TcpStream]) -> usize {
    streams
        .iter_mut()
        .filter(|s| {
            let s: &TcpStream = s;
            let mut s = s;
            let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
            let mut b = [0u8; 64];
            loop {
                match s.read(&mut b) {
                    Ok(0) => return true,
                    // The server's greeting arrives first; keep reading.
                    Ok(_) => continue,
                    Err(e) => {
                        return !matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        )
                    }
                }
            }
        })
        .count()
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}

#[test]
fn two_thousand_idle_connections_neither_stop_service_nor_stay_open() {
    let _heavy = crate::support::heavy();
    let _ = rlimit::increase_nofile_limit(8192);
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(
        &dir,
        &["--task-modules", "mytasks", "--handshake-timeout", "2"],
    );
    let mut idle = idle_connections(&cp.base, 2000);
    assert!(idle.len() >= 1900, "only {} connections opened", idle.len());
    assert!(
        add_works(&cp.base),
        "add 5 3 with 2,000 idle connections open"
    );
    // Past the handshake timeout the control plane has closed them all.
    let closed = crate::procs::poll_until(Duration::from_secs(15), || {
        let n = closed_by_peer(&mut idle);
        (n == idle.len()).then_some(n)
    });
    assert!(
        closed.is_some(),
        "idle connections still open after the handshake timeout: {} of {} closed",
        closed_by_peer(&mut idle),
        idle.len()
    );
    assert!(
        cp.proc
            .stderr()
            .contains("did not finish its handshake within"),
        "the closes are logged:\n{}",
        cp.proc.describe()
    );
    assert!(add_works(&cp.base));
    assert!(alive(&mut cp.proc));
}

#[test]
fn out_of_descriptors_it_backs_off_warns_and_recovers() {
    let _heavy = crate::support::heavy();
    let _ = rlimit::increase_nofile_limit(8192);
    let dir = mytasks_dir();
    let base = free_address();
    let discovery = free_address();
    // The control plane under a hard limit of 1,024 descriptors, with more connections
    // than that thrown at it, and --max-connections above what fits.
    let mut proc = {
        let mut cmd = dir.fastworker();
        cmd.args(crate::procs::control_plane_args(&base, &discovery, "0"))
            .args([
                "--task-modules",
                "mytasks",
                "--handshake-timeout",
                "5",
                "--max-connections",
                "4096",
            ]);
        crate::procs::Proc::spawn_command(&dir, "cp-limited", cmd, Some(1024))
    };
    proc.wait_for(false, "ready on", STARTUP);
    assert!(
        proc.stderr().contains("lowered to"),
        "--max-connections is lowered to what the limit holds:\n{}",
        proc.describe()
    );
    // A connection holds one descriptor: 768 fit beside the reserve. Idle ones, each
    // held until the handshake timeout (5 s), are opened 250 at a time until the
    // control plane refuses one: 1,500 were always enough when it is alone, but twice
    // in a full test run they were not (why is not known; the count says how many it
    // took). At most 3,000, within 10 s.
    let mut idle = Vec::new();
    let opening = Instant::now();
    while !proc.stderr().contains("refusing a connection")
        && idle.len() < 3000
        && opening.elapsed() < Duration::from_secs(10)
    {
        idle.extend(idle_connections(&base, 250));
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "{} idle connections open after {:.1?}",
        idle.len(),
        opening.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_seconds(proc.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(proc.pid()) - before;
    let opened = idle.len();
    eprintln!("CPU seconds used in 2 s with {opened} connections under a 1,024 limit: {used:.2}");
    assert!(
        used < 0.6,
        "the control plane used {used:.2} CPU seconds in 2 s with {opened} idle connections (spinning?)"
    );
    assert!(
        proc.stderr().contains("refusing a connection"),
        "the refusals are logged ({opened} idle connections opened):\n{}",
        proc.describe()
    );
    // The idle ones are closed after the handshake timeout; service comes back while
    // the attacker still holds its sockets.
    let served =
        crate::procs::poll_until(Duration::from_secs(20), || add_works(&base).then_some(()));
    assert!(
        served.is_some(),
        "no service after the idle connections timed out\n{}",
        proc.describe()
    );
    drop(idle);
    assert!(proc.try_exit().is_none());
}

/// A hostile server on a free port that answers every connection with `bytes` (after
/// reading what the peer sends first), for as long as the returned guard lives.
struct HostileServer {
    address: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostileServer {
    fn start(bytes: Vec<u8>) -> HostileServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = format!("tcp://{}", listener.local_addr().expect("addr"));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stopping.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                        let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
                        let mut sink = [0u8; 256];
                        let _ = s.read(&mut sink);
                        let _ = s.write_all(&bytes);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        HostileServer {
            address,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a hostile server sends back: the corpus, plus a well-formed ROUTER greeting
/// and READY followed by the bomb (so the check after the handshake is reached too).
fn server_corpus() -> Vec<(&'static str, Vec<u8>)> {
    let mut ready_router = zmtp_greeting();
    ready_router.extend(ready(b"ROUTER"));
    ready_router.push(0x02);
    ready_router.extend_from_slice(&(1u64 << 62).to_be_bytes());
    let mut all = corpus();
    all.push(("bomb after a ROUTER's READY", ready_router));
    all
}

#[test]
fn clients_subworkers_and_callbacks_survive_a_hostile_server() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &["--task-modules", "mytasks"]);
    let rt = runtime();
    for (what, bytes) in server_corpus() {
        let hostile = HostileServer::start(bytes);
        // The library client in this very process: an abort here fails the test run.
        let result = rt.block_on(Client::connect(&hostile.address, Duration::from_secs(2)));
        assert!(
            result.is_err(),
            "{what}: a hostile server is not a control plane"
        );
        // The CLI: a clean error, not an abort.
        let mut cmd = dir.fastworker();
        cmd.args([
            "submit",
            "--control-plane-address",
            &hostile.address,
            "--connect-timeout",
            "2",
            "--task-name",
            "add",
            "--args",
            "5",
            "3",
        ]);
        let out = crate::support::run(cmd);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: submit exits 1, not a crash\n{out:?}"
        );
        // A subworker pointed at it keeps retrying instead of dying.
        let args: Vec<String> = [
            "subworker",
            "--worker-id",
            "victim",
            "--control-plane-address",
            &hostile.address,
            "--task-modules",
            "mytasks",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut sw = Proc::spawn(&dir, "victim", &args);
        std::thread::sleep(Duration::from_millis(700));
        assert!(
            alive(&mut sw),
            "{what}: the subworker died\n{}",
            sw.describe()
        );
        sw.kill();
        // The control plane delivering a callback to it.
        let task = {
            let mut t =
                TaskEnvelope::new("add", Codec::Json, Bytes::from(json!([1, 2]).to_string()));
            t.callback = Some(Box::new(fastworker_protocol::Callback::new(
                hostile.address.clone(),
                "x",
            )));
            t
        };
        let ok = rt.block_on(async {
            let client = Client::connect_with(&cp.base, Duration::from_secs(10), &client_config())
                .await
                .ok()?;
            client.submit(task, Duration::from_secs(20)).await.ok()
        });
        assert!(
            ok.is_some(),
            "{what}: a task with a hostile callback address still runs"
        );
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            alive(&mut cp.proc),
            "{what}: the control plane died delivering a callback\n{}",
            cp.proc.describe()
        );
    }
    assert!(add_works(&cp.base));
}

#[test]
fn documented_limits_are_applied_and_named() {
    let _heavy = crate::support::heavy();
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &[]);
    let _sw = cp.subworker(&dir, "small", &["--max-payload-size", "1KiB"]);
    let rt = runtime();
    rt.block_on(async {
        let client = Client::connect_with(&cp.base, Duration::from_secs(10), &client_config())
            .await
            .expect("connects");
        // A header over 16 MiB: Rejected naming the limit.
        let mut conn =
            fastworker_transport::connect(&cp.base, Duration::from_secs(5), &client_config())
                .await
                .expect("connects");
        // Say hello first: before its first message a connection may send at most 1 MiB.
        let hello = fastworker_protocol::encode(&fastworker_protocol::ToControlPlane::Hello({
            let mut value =
                fastworker_protocol::Hello::new(fastworker_protocol::PeerKind::Client, "limits");
            value.protocol_version = fastworker_protocol::PROTOCOL_VERSION;
            value.features = vec![];
            value
        }))
        .expect("encodes");
        conn.sender.send(hello).await.expect("sent");
        let welcome = tokio::time::timeout(Duration::from_secs(10), conn.receiver.recv())
            .await
            .expect("an answer")
            .expect("a message");
        assert!(matches!(
            fastworker_protocol::decode::<fastworker_protocol::FromControlPlane>(&welcome),
            Ok(fastworker_protocol::FromControlPlane::Welcome(_))
        ));
        // (Our own encoder refuses to make one, so it is made by hand.)
        let mut header = b"FW\x01".to_vec();
        header.resize(17 << 20, 0);
        let hello = vec![Bytes::from(header)];
        conn.sender.send(hello).await.expect("sent");
        let reply = tokio::time::timeout(Duration::from_secs(10), conn.receiver.recv())
            .await
            .expect("an answer")
            .expect("a message");
        match fastworker_protocol::decode::<fastworker_protocol::FromControlPlane>(&reply) {
            Ok(fastworker_protocol::FromControlPlane::Rejected { error, .. }) => {
                assert!(error.message.contains("16777216"), "{error}")
            }
            other => panic!("a 17 MiB header: expected Rejected, got {other:?}"),
        }

        // A 65 MiB payload: Rejected naming --max-payload-size.
        let big = TaskEnvelope::new("echo", Codec::Json, Bytes::from(vec![b' '; 65 << 20]));
        match client.delay(big).await {
            Err(fastworker_client::ClientError::Rejected(e)) => {
                assert!(e.message.contains("--max-payload-size"), "{e}")
            }
            other => panic!("a 65 MiB payload: expected Rejected, got {other:?}"),
        }
        // 100 MiB: over one message; the client refuses before sending.
        let huge = TaskEnvelope::new("echo", Codec::Json, Bytes::from(vec![b' '; 100 << 20]));
        match client.delay(huge).await {
            Err(fastworker_client::ClientError::TooLarge { limit, .. }) => {
                assert_eq!(limit, 80 << 20)
            }
            other => panic!("a 100 MiB payload: expected TooLarge, got {other:?}"),
        }
        // A peer that sends 100 MiB anyway is disconnected, and nobody else notices.
        let mut rogue =
            fastworker_transport::connect(&cp.base, Duration::from_secs(5), &client_config())
                .await
                .expect("connects");
        let _ = rogue
            .sender
            .send(vec![Bytes::from(vec![0u8; 100 << 20])])
            .await;
        let answer = tokio::time::timeout(Duration::from_secs(5), rogue.receiver.recv()).await;
        assert!(!matches!(answer, Ok(Ok(_))), "no answer to a 100 MiB frame");

        // A result over the subworker's --max-payload-size ends the task as a failure.
        let task = TaskEnvelope::new(
            "echo",
            Codec::Json,
            Bytes::from(json!(["y".repeat(4096)]).to_string()),
        );
        match client.submit(task, Duration::from_secs(20)).await {
            Err(fastworker_client::ClientError::TaskFailed { error, .. }) => {
                assert!(error.message.contains("--max-payload-size"), "{error}")
            }
            other => panic!("an oversized result: expected a failure, got {other:?}"),
        }
        // And the small ones still work.
        let ok = TaskEnvelope::new("add", Codec::Json, Bytes::from_static(b"[5,3]"));
        let record = client
            .submit(ok, Duration::from_secs(20))
            .await
            .expect("add works");
        assert_eq!(&record.value[..], b"8");
    });
    assert!(
        cp.proc.stderr().contains("closed a connection: a frame of"),
        "the disconnect is logged:\n{}",
        cp.proc.stderr()
    );
    assert!(alive(&mut cp.proc));
}

#[test]
fn before_its_first_message_a_connection_may_send_only_a_little() {
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &["--task-modules", "mytasks"]);
    // Greeting, READY, then a frame header declaring 2 MiB: over the 1 MiB a connection
    // may send before its first message was accepted (with a key: before it proved
    // the key), however large --max-message-size is.
    let mut bytes = zmtp_greeting();
    bytes.extend(ready(b"DEALER"));
    bytes.push(0x02);
    bytes.extend_from_slice(&(2u64 << 20).to_be_bytes());
    throw(&cp.base, &bytes);
    let logged = crate::procs::poll_until(Duration::from_secs(5), || {
        cp.proc
            .stderr()
            .contains("a frame of 2097152 bytes was declared; a message may have at most 1048576")
            .then_some(())
    });
    assert!(logged.is_some(), "{}", cp.proc.describe());
    assert!(add_works(&cp.base));
    assert!(alive(&mut cp.proc));
}

#[test]
fn a_subworker_whose_connection_keeps_dropping_backs_off() {
    // A server that finishes the ZMTP handshake as a ROUTER, then hangs up.
    let mut router = zmtp_greeting();
    router.extend(ready(b"ROUTER"));
    let hostile = HostileServer::start(router);
    let dir = mytasks_dir().without_suite_key();
    let args: Vec<String> = [
        "subworker",
        "--worker-id",
        "patient",
        "--control-plane-address",
        &hostile.address,
        "--task-modules",
        "mytasks",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut sw = Proc::spawn(&dir, "patient", &args);
    std::thread::sleep(Duration::from_secs(3));
    let attempts = sw
        .stderr()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .count();
    assert!(alive(&mut sw), "{}", sw.describe());
    assert!(
        attempts <= 20,
        "{attempts} warnings in 3 s: reconnecting without backoff\n{}",
        sw.describe()
    );
    sw.kill();
}

/// A raw connection to the control plane at `base` that said `Hello` as client `name`
/// (in the oldest version, as every client greets), with the cluster key when the
/// suite has one.
async fn hello_connection(base: &str, name: &str) -> fastworker_transport::Connection {
    use fastworker_protocol::{self as protocol, Hello, PeerKind, ToControlPlane};

    let mut conn = fastworker_transport::connect(base, Duration::from_secs(10), &client_config())
        .await
        .expect("connects");
    let hello = ToControlPlane::Hello(Hello::new(PeerKind::Client, name.to_string()));
    let hello = protocol::encode_as(protocol::MIN_PROTOCOL_VERSION, &hello).expect("encodes");
    conn.sender.send(hello).await.expect("hello");
    conn
}

/// Asks for the task list `times` times on `sender` (about a kilobyte answered for
/// a dozen bytes asked), as fast as the socket takes it; stops at the first failed send.
async fn ask_for_the_task_list(sender: &mut fastworker_transport::ConnectionSender, times: u64) {
    use fastworker_protocol::{self as protocol, ToControlPlane};

    for request_id in 1..=times {
        let ask = protocol::encode_as(
            protocol::PROTOCOL_VERSION,
            &ToControlPlane::Tasks { request_id },
        )
        .expect("encodes");
        if sender.send(ask).await.is_err() {
            break;
        }
    }
}

/// Peers that stop reading while the control plane has answers for them hold up no
/// one else: each has its own writer, whose socket fills and, after SEND_TIMEOUT
/// without progress, is closed. (With one writer for all, each such peer stopped every
/// send for 2 s.)
#[test]
fn peers_that_stop_reading_hold_up_no_one_else() {
    let _heavy = crate::support::heavy();
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &["--task-modules", "mytasks"]);
    let rt = runtime();
    // Three peers ask for the task list 20,000 times each (more answers than the
    // sockets hold) and never read an answer.
    let stallers: Vec<_> = (0..3)
        .map(|i| {
            rt.block_on(async {
                let mut conn = hello_connection(&cp.base, &format!("staller-{i}")).await;
                ask_for_the_task_list(&mut conn.sender, 20_000).await;
                conn
            })
        })
        .collect();
    // Round trips of another client meanwhile: each within a second, not behind 2 s
    // per stalled peer.
    let started = Instant::now();
    for _ in 0..20 {
        assert!(add_works(&cp.base), "{}", cp.proc.describe());
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "20 round trips took {took:?} beside peers that stopped reading\n{}",
        cp.proc.describe()
    );
    // The stalled peers are closed once their sends made no progress for 2 s.
    let closed = crate::procs::poll_until(Duration::from_secs(20), || {
        cp.proc
            .stderr()
            .contains("closed a connection that read nothing for")
            .then_some(())
    });
    assert!(closed.is_some(), "{}", cp.proc.describe());
    drop(stallers);
    assert!(add_works(&cp.base));
    assert!(alive(&mut cp.proc));
}

/// A peer that reads, but far more slowly than it asks, cannot make the control plane
/// queue answers for it without end: past MAX_QUEUED_PER_PEER waiting messages it is
/// disconnected (its writer never stalls for SEND_TIMEOUT: each read lets a write
/// move).
#[test]
fn a_peer_that_reads_too_slowly_for_what_it_asks_is_disconnected() {
    let _heavy = crate::support::heavy();
    let dir = mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &["--task-modules", "mytasks"]);
    let rt = runtime();
    let closed = rt.block_on(async {
        let conn = hello_connection(&cp.base, "slow-reader").await;
        let (mut sender, mut receiver) = (conn.sender, conn.receiver);
        // About 5,000 answers a second read (enough for the control plane's writes to
        // keep moving), while asking as fast as the socket takes it.
        let reading = async {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut read = 0u64;
            while Instant::now() < deadline {
                if receiver.recv().await.is_err() {
                    return true;
                }
                read += 1;
                if read.is_multiple_of(5) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            false
        };
        let asking = async {
            let times = fastworker_transport::MAX_QUEUED_PER_PEER as u64 * 2;
            ask_for_the_task_list(&mut sender, times).await;
            std::future::pending::<()>().await
        };
        tokio::select! {
            closed = reading => closed,
            () = asking => false,
        }
    });
    assert!(
        closed,
        "the slow reader was never disconnected\n{}",
        cp.proc.describe()
    );
    assert!(
        cp.proc.stderr().contains("read too slowly"),
        "{}",
        cp.proc.describe()
    );
    assert!(add_works(&cp.base));
    assert!(alive(&mut cp.proc));
}
