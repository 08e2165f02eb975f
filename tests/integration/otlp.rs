//! `--otlp-endpoint` with a binary built with `--features otlp` (`.ci/run` builds one
//! into `target/otlp` and names it in `FASTWORKER_OTLP_BIN`): a task submitted by the
//! CLI is one trace across the CLI, the control plane and its subworker, exported to a
//! collector (a small OTLP/HTTP receiver in this test) as JSON. Without that binary the
//! test says so and passes, unless `FASTWORKER_REQUIRE_OTLP=1`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::{
    procs::{control_plane_args, free_address, mytasks_dir, poll_until, Proc, STARTUP},
    support::run,
};

/// An OTLP/HTTP receiver on a free port: keeps every request body; stops when dropped.
struct Collector {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers the requests of one connection (keep-alive) until it closes or `stop`.
fn serve(stream: std::net::TcpStream, bodies: &Mutex<Vec<Value>>, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    while !stop.load(Ordering::SeqCst) {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) => continue,
        }
        let mut length = 0usize;
        for _ in 0..100 {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.trim().eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(json) = serde_json::from_slice(&body) {
            bodies.lock().unwrap_or_else(|e| e.into_inner()).push(json);
        }
        let answer =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

impl Collector {
    fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
        listener.set_nonblocking(true).expect("non-blocking");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (bodies.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut connections = Vec::new();
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let (b, s) = (b.clone(), s.clone());
                        connections.push(thread::spawn(move || serve(stream, &b, &s)));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
            for connection in connections {
                let _ = connection.join();
            }
        });
        Collector {
            url,
            bodies,
            stop,
            thread: Some(thread),
        }
    }

    /// Every span received: (service, trace id, span id, parent span id, task id).
    fn spans(&self) -> Vec<(String, String, String, String, String)> {
        let bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        let mut spans = Vec::new();
        for body in bodies.iter() {
            for resource in body["resourceSpans"].as_array().into_iter().flatten() {
                let service = resource["resource"]["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["key"] == "service.name")
                    .and_then(|a| a["value"]["stringValue"].as_str())
                    .unwrap_or("")
                    .to_string();
                for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                    for span in scope["spans"].as_array().into_iter().flatten() {
                        let task = span["attributes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .find(|a| a["key"] == "task_id")
                            .and_then(|a| a["value"]["stringValue"].as_str())
                            .unwrap_or("")
                            .to_string();
                        let text = |v: &Value| v.as_str().unwrap_or("").to_string();
                        spans.push((
                            service.clone(),
                            text(&span["traceId"]),
                            text(&span["spanId"]),
                            text(&span["parentSpanId"]),
                            task,
                        ));
                    }
                }
            }
        }
        spans
    }
}

fn otlp_binary() -> Option<PathBuf> {
    match std::env::var_os("FASTWORKER_OTLP_BIN") {
        Some(path) => Some(PathBuf::from(path)),
        None => {
            assert!(
                std::env::var("FASTWORKER_REQUIRE_OTLP").as_deref() != Ok("1"),
                "FASTWORKER_REQUIRE_OTLP=1 but FASTWORKER_OTLP_BIN is not set"
            );
            eprintln!("SKIPPED the OTLP test: set FASTWORKER_OTLP_BIN to a fastworker built with --features otlp");
            None
        }
    }
}

#[test]
fn a_task_is_one_trace_across_the_cli_the_control_plane_and_the_subworker() {
    let Some(binary) = otlp_binary() else {
        return;
    };
    let collector = Collector::start();
    let dir = mytasks_dir();
    let base = free_address();
    let mut args = control_plane_args(&base, &free_address(), "0");
    args.extend(
        [
            "--task-modules",
            "mytasks",
            "--otlp-endpoint",
            &collector.url,
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let mut cmd = dir.fastworker_from(&binary);
    cmd.args(&args);
    let mut cp = Proc::spawn_command(&dir, "control-plane", cmd, None);
    cp.wait_for(false, "ready on", STARTUP);

    let mut submit = dir.fastworker_from(&binary);
    submit.args([
        "--otlp-endpoint",
        &collector.url,
        "submit",
        "--control-plane-address",
        &base,
        "--task-name",
        "add",
        "--args",
        "2",
        "40",
        "--json",
    ]);
    let out = run(submit);
    assert!(out.status.success(), "{out:?}");
    let record: Value = serde_json::from_str(out.stdout.trim()).expect("a JSON record");
    let task = record["task_id"].as_str().expect("an id").to_string();

    // Stopping the control plane flushes its spans and its subworker's.
    cp.signal("TERM");
    cp.wait_exit(STARTUP);
    let spans = poll_until(Duration::from_secs(20), || {
        let spans: Vec<_> = collector
            .spans()
            .into_iter()
            .filter(|s| s.4 == task)
            .collect();
        (spans.len() >= 3).then_some(spans)
    })
    .unwrap_or_else(|| panic!("spans of {task}: {:?}", collector.spans()));
    let by = |service: &str| {
        spans
            .iter()
            .find(|s| s.0 == service)
            .unwrap_or_else(|| panic!("no span from {service}: {spans:?}"))
            .clone()
    };
    let (client, control_plane, subworker) = (
        by("fastworker-submit"),
        by("fastworker-control-plane"),
        by("fastworker-subworker"),
    );
    assert_eq!(control_plane.1, client.1, "one trace: {spans:?}");
    assert_eq!(subworker.1, client.1, "one trace: {spans:?}");
    assert_eq!(
        control_plane.3, client.2,
        "the control plane's span is the client's child"
    );
    assert_eq!(
        subworker.3, control_plane.2,
        "the subworker's span is the control plane's child"
    );
}
