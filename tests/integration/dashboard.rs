//! The control plane's HTTP side against real processes: the JSON API, cancel, retry
//! and replay, `/metrics` read by a Prometheus text-format parser and checked against
//! what was submitted, the event stream (live, resumed with `Last-Event-ID`, lagged),
//! bearer tokens, CORS, and the port flags. The page itself is tested in Chromium
//! (`browser.rs`).

use std::time::Duration;

use bytes::Bytes;
use fastworker_protocol::{Codec, Priority, TaskEnvelope};
use serde_json::{json, Value};

use crate::{
    http::{request, Response, SseStream},
    procs::{
        connect, control_plane_args, free_address, free_port, mytasks_dir, poll_until, runtime,
        ControlPlane, Proc, STARTUP,
    },
    support::{suite_key, TestDir},
};

const WAIT: Duration = Duration::from_secs(30);

/// A control plane with its dashboard on a free port.
pub struct Dashboard {
    /// The control plane.
    pub cp: ControlPlane,
    /// `http://127.0.0.1:PORT/`.
    pub url: String,
}

/// Starts `control-plane --gui-port 0 <extra>` in `dir` with `env`, and reads the
/// dashboard's address off its output.
pub fn start(dir: &TestDir, extra: &[&str], env: &[(&str, &str)]) -> Dashboard {
    let base = free_address();
    let discovery = free_address();
    let subworker_port = free_port();
    let mut args: Vec<String> = control_plane_args(&base, &discovery, &subworker_port.to_string())
        .into_iter()
        .filter(|a| a != "--no-gui")
        .collect();
    args.extend(["--gui-port", "0"].iter().map(|s| s.to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut cmd = dir.fastworker();
    cmd.args(&args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut proc = Proc::spawn_command(dir, "control-plane", cmd, None);
    proc.wait_for(false, "dashboard: ", STARTUP);
    let url = proc
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("dashboard: ").map(str::to_string))
        .expect("a dashboard line");
    Dashboard {
        cp: ControlPlane {
            proc,
            base,
            discovery,
            subworker_endpoint: format!("tcp://127.0.0.1:{subworker_port}"),
        },
        url,
    }
}

/// The bearer header the suite's key asks for (none without one).
fn auth() -> Vec<(String, String)> {
    suite_key()
        .map(|k| vec![("Authorization".to_string(), format!("Bearer {k}"))])
        .unwrap_or_default()
}

fn headers(extra: &[(String, String)]) -> Vec<(&str, &str)> {
    extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn get(d: &Dashboard, path: &str) -> Response {
    let auth = auth();
    request(&format!("{}{path}", d.url), "GET", &headers(&auth), None)
}

fn post(d: &Dashboard, path: &str) -> Response {
    let auth = auth();
    request(&format!("{}{path}", d.url), "POST", &headers(&auth), None)
}

pub(crate) fn get_json(d: &Dashboard, path: &str) -> Value {
    let response = get(d, path);
    assert_eq!(response.status, 200, "{path}: {}", response.body);
    response.json()
}

/// The `event` of each step of a task's timeline (from `/api/tasks/{id}`).
fn steps(task: &Value) -> Vec<&str> {
    task["timeline"]
        .as_array()
        .expect("a timeline")
        .iter()
        .filter_map(|s| s["event"].as_str())
        .collect()
}

fn task(name: &str, args: Value) -> TaskEnvelope {
    TaskEnvelope::new(name, Codec::Json, Bytes::from(args.to_string()))
}

/// The value of the sample `metric` with exactly `labels`, from a parsed scrape.
fn sample(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found = scrape.samples.iter().find(|s| {
        s.metric == metric
            && labels.len() == s.labels.len()
            && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
    });
    match found.map(|s| &s.value) {
        Some(prometheus_parse::Value::Counter(v))
        | Some(prometheus_parse::Value::Gauge(v))
        | Some(prometheus_parse::Value::Untyped(v)) => *v,
        other => panic!("{metric} {labels:?}: {other:?}"),
    }
}

fn scrape(d: &Dashboard) -> prometheus_parse::Scrape {
    let response = get(d, "metrics");
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        response.headers
    );
    let lines = response.body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("the exposition parses")
}

#[test]
fn the_api_shows_workers_tasks_timelines_and_metrics_count_what_was_submitted() {
    let dir = mytasks_dir();
    let mut d = start(&dir, &["--task-modules", "mytasks"], &[]);
    let _sw = d.cp.subworker(&dir, "sw1", &["--concurrency", "2"]);

    let rt = runtime();
    let client = connect(&rt, &d.cp.base);
    let (adds, fails) = (12, 3);
    let mut add_ids = Vec::new();
    for i in 0..adds {
        let record = rt
            .block_on(client.submit(task("add", json!([i, 1])), WAIT))
            .expect("add succeeds");
        add_ids.push(record.task_id);
    }
    for _ in 0..fails {
        let record = rt
            .block_on(client.submit_record(task("fail", json!(["nope"])), WAIT))
            .expect("a record");
        assert_eq!(record.status.as_str(), "failure");
    }

    let status = get_json(&d, "api/status");
    assert_eq!(status["control_plane_id"], "control-plane");
    assert_eq!(status["accepting"], true);
    assert!(status["active_workers"].as_u64() >= Some(2), "{status}");
    assert!(
        status["totals"]["success"].as_u64() >= Some(adds),
        "{status}"
    );
    assert_eq!(status["totals"]["failure"], fails);

    let workers = get_json(&d, "api/workers");
    let sw = workers
        .as_array()
        .and_then(|w| w.iter().find(|w| w["worker_id"] == "sw1"))
        .unwrap_or_else(|| panic!("sw1 in {workers}"));
    assert_eq!(sw["status"], "active");
    assert_eq!(sw["slots"], 2);
    assert_eq!(sw["own"], false);
    let plugin = &sw["plugins"][0];
    assert_eq!(plugin["name"], "mytasks");
    assert_eq!(plugin["version"], "0.1.0");
    assert_eq!(plugin["build"].as_str().map(str::len), Some(8), "{plugin}");

    let failures = get_json(&d, "api/tasks?status=failure&name=fail");
    assert_eq!(failures["total"], fails, "{failures}");
    assert_eq!(failures["tasks"][0]["error"]["message"], "nope");
    let page = get_json(&d, "api/tasks?name=add&limit=5&offset=2");
    assert_eq!(page["total"], adds);
    assert_eq!(page["tasks"].as_array().map(Vec::len), Some(5));
    // Newest first: the third newest add is the 10th submitted (args [9, 1]).
    assert_eq!(page["tasks"][0]["result"], 10, "{page}");

    let id = add_ids[0];
    let one = get_json(&d, &format!("api/tasks/{id}"));
    assert_eq!(one["status"], "success");
    assert_eq!(one["result"], 1);
    assert_eq!(one["priority"], "normal");
    assert_eq!(one["retryable"], true);
    let steps = steps(&one);
    assert_eq!(steps, ["submitted", "started", "success"], "{one}");
    assert!(one["timeline"][1]["worker_id"].is_string());

    let plugins = get_json(&d, "api/plugins");
    let names: Vec<_> = plugins["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .map(|p| (p["worker_id"].as_str(), p["name"].as_str()))
        .collect();
    assert!(names.contains(&(Some("sw1"), Some("mytasks"))), "{plugins}");
    assert!(names.contains(&(Some("control-plane"), Some("mytasks"))));

    let cache = get_json(&d, "api/cache");
    assert!(cache["entries"].as_u64() >= Some(adds + fails), "{cache}");
    assert_eq!(cache["capacity"], 10_000);

    // /metrics, parsed, agrees with what was submitted.
    let metrics = scrape(&d);
    let count = |name: &str, status: &str| {
        sample(
            &metrics,
            "fastworker_tasks_total",
            &[("name", name), ("status", status)],
        )
    };
    assert_eq!(count("add", "success"), adds as f64);
    assert_eq!(count("add", "failure"), 0.0);
    assert_eq!(count("fail", "failure"), fails as f64);
    for priority in ["critical", "high", "normal", "low"] {
        assert_eq!(
            sample(
                &metrics,
                "fastworker_queue_depth",
                &[("priority", priority)]
            ),
            0.0
        );
    }
    assert_eq!(
        sample(&metrics, "fastworker_worker_slots", &[("worker", "sw1")]),
        2.0
    );
    assert_eq!(
        sample(&metrics, "fastworker_workers", &[("status", "active")]),
        2.0
    );
    let run = metrics
        .samples
        .iter()
        .find(|s| s.metric == "fastworker_task_run_seconds")
        .map(|s| s.value.clone());
    match run {
        Some(prometheus_parse::Value::Histogram(buckets)) => {
            let total = buckets.last().map_or(0.0, |b| b.count);
            assert!(total >= (adds + fails) as f64, "{buckets:?}");
        }
        other => panic!("run time histogram: {other:?}"),
    }
    assert!(sample(&metrics, "fastworker_cache_entries", &[]) >= (adds + fails) as f64);
    assert_eq!(sample(&metrics, "fastworker_accepting", &[]), 1.0);

    // Health.
    assert_eq!(get(&d, "healthz").status, 200);
    assert_eq!(get(&d, "readyz").status, 200);
    assert_eq!(get(&d, "api/nothing-here").status, 404);
    assert_eq!(get(&d, "api/tasks/not-an-id").status, 400);
    assert_eq!(
        get(
            &d,
            &format!("api/tasks/{}", fastworker_protocol::TaskId::new())
        )
        .status,
        404
    );
}

#[test]
fn queues_cancel_retry_and_replay_through_the_api() {
    let dir = mytasks_dir();
    let d = start(&dir, &["--task-modules", "mytasks"], &[]);
    let rt = runtime();
    let client = connect(&rt, &d.cp.base);

    // A long task holds the only slot; more wait at two priorities, one scheduled.
    let hold = rt
        .block_on(client.delay(task("sleep_ms", json!([3_000]))))
        .expect("accepted");
    let mut critical = task("add", json!([1, 1]));
    critical.priority = Priority::Critical;
    let mut low = task("add", json!([2, 2]));
    low.priority = Priority::Low;
    let mut later = task("add", json!([3, 3]));
    later.countdown_ms = 60_000;
    let ids = rt
        .block_on(client.submit_batch(vec![critical, low, later]))
        .expect("accepted");
    let (critical_id, scheduled_id) = (ids[0], ids[2]);
    let queues = poll_until(WAIT, || {
        let q = get_json(&d, "api/queues");
        (q["running"] == 1).then_some(q)
    })
    .expect("the long task runs");
    assert_eq!(queues["queued"]["critical"], 1, "{queues}");
    assert_eq!(queues["queued"]["low"], 1);
    assert_eq!(queues["scheduled"], 1);
    let metrics = scrape(&d);
    assert_eq!(
        sample(
            &metrics,
            "fastworker_queue_depth",
            &[("priority", "critical")]
        ),
        1.0
    );
    assert_eq!(sample(&metrics, "fastworker_tasks_scheduled", &[]), 1.0);

    // Retrying what has not finished is a conflict.
    let conflict = post(&d, &format!("api/tasks/{hold}/retry"));
    assert_eq!(conflict.status, 409, "{}", conflict.body);
    assert!(conflict.json()["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("not final")));

    // Cancel the scheduled one: it never runs.
    let cancelled = post(&d, &format!("api/tasks/{scheduled_id}/cancel"));
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.json()["outcome"], "cancelled");
    let record = rt
        .block_on(client.status(scheduled_id))
        .expect("status")
        .expect("a record");
    assert_eq!(record.status.as_str(), "cancelled");
    assert_eq!(
        post(&d, &format!("api/tasks/{scheduled_id}/cancel")).status,
        409,
        "cancelling a final task"
    );

    // Retry a final one: it runs again under its id and succeeds.
    let done = rt
        .block_on(client.result(critical_id, WAIT))
        .expect("the critical task finishes")
        .expect("a record");
    assert_eq!(done.status.as_str(), "success");
    let retried = post(&d, &format!("api/tasks/{critical_id}/retry"));
    assert_eq!(retried.status, 200, "{}", retried.body);
    assert_eq!(retried.json()["outcome"], "queued");
    let again = poll_until(WAIT, || {
        let t = get_json(&d, &format!("api/tasks/{critical_id}"));
        let steps = t["timeline"].as_array().map_or(0, Vec::len);
        (t["status"] == "success" && steps >= 6).then_some(t)
    })
    .expect("the retried task runs again");
    let steps = steps(&again);
    assert_eq!(
        steps,
        [
            "submitted",
            "started",
            "success",
            "submitted",
            "started",
            "success"
        ]
    );
    let unknown = fastworker_protocol::TaskId::new();
    assert_eq!(post(&d, &format!("api/tasks/{unknown}/retry")).status, 404);
    assert_eq!(post(&d, &format!("api/tasks/{unknown}/cancel")).status, 404);
    assert_eq!(
        post(&d, &format!("api/dead-letters/{unknown}/replay")).status,
        404
    );
    assert_eq!(get_json(&d, "api/dead-letters"), json!([]));
}

#[test]
fn the_event_stream_is_live_resumable_and_says_when_a_reader_lagged() {
    let dir = mytasks_dir();
    let d = start(&dir, &["--task-modules", "mytasks"], &[]);
    let rt = runtime();
    let client = connect(&rt, &d.cp.base);
    let auth = auth();
    let url = format!("{}api/events", d.url);
    let mut stream = SseStream::open(&url, &headers(&auth));
    assert_eq!(stream.status, 200);

    let record = rt
        .block_on(client.submit(task("add", json!([2, 3])), WAIT))
        .expect("add");
    let id = record.task_id.to_string();
    let mut seen: Vec<String> = Vec::new();
    let mut last_id = 0;
    for _ in 0..100 {
        let Some(event) = stream.next(WAIT) else {
            break;
        };
        let data: Value = serde_json::from_str(&event.data).expect("JSON data");
        assert_eq!(data["type"], event.event.as_str());
        assert_eq!(Some(data["id"].as_u64().unwrap_or(0)), event.id);
        last_id = event.id.unwrap_or(0);
        if data["task_id"] == id.as_str() {
            seen.push(event.event.clone());
            if event.event == "task.success" {
                break;
            }
        }
    }
    assert_eq!(seen, ["task.queued", "task.started", "task.success"]);
    drop(stream);

    // Events published while nobody read come back after Last-Event-ID, in order.
    let second = rt
        .block_on(client.submit(task("add", json!([4, 4])), WAIT))
        .expect("add");
    let last = last_id.to_string();
    let mut resumed_headers = auth.clone();
    resumed_headers.push(("Last-Event-ID".to_string(), last));
    let mut stream = SseStream::open(&url, &headers(&resumed_headers));
    let first = stream.next(WAIT).expect("an event");
    assert_eq!(first.id, Some(last_id + 1), "no gap, no repeat: {first:?}");
    let mut kinds = vec![first];
    while kinds.len() < 20 {
        match stream.next(Duration::from_millis(500)) {
            Some(event) => kinds.push(event),
            None => break,
        }
    }
    let second_id = second.task_id.to_string();
    let of_second: Vec<&str> = kinds
        .iter()
        .filter(|e| e.data.contains(&second_id))
        .map(|e| e.event.as_str())
        .collect();
    assert_eq!(of_second, ["task.queued", "task.started", "task.success"]);
    let ids: Vec<u64> = kinds.iter().filter_map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");

    // A reader that resumes from further back than the stream keeps is told how many
    // it missed, then gets what is kept.
    let batch: Vec<_> = (0..400).map(|i| task("add", json!([i, 0]))).collect();
    rt.block_on(client.submit_batch_wait(batch, WAIT))
        .expect("a batch");
    let mut old = auth.clone();
    old.push(("Last-Event-ID".to_string(), "1".to_string()));
    let mut stream = SseStream::open(&url, &headers(&old));
    let lagged = stream.next(WAIT).expect("an event");
    assert_eq!(lagged.event, "lagged", "{lagged:?}");
    let missed: Value = serde_json::from_str(&lagged.data).expect("JSON");
    assert!(missed["missed"].as_u64() > Some(0), "{missed}");
    let next = stream.next(WAIT).expect("an event after the lag");
    assert!(next.id > Some(2), "{next:?}");
}

#[test]
fn an_api_key_guards_writes_a_cluster_key_guards_everything_and_cors_is_honoured() {
    let dir = mytasks_dir();
    let d = start(
        &dir,
        &["--task-modules", "mytasks"],
        &[
            ("FASTWORKER_GUI_API_KEY", "let-me-write"),
            ("FASTWORKER_GUI_CORS_ORIGIN", "http://ui.example.test"),
        ],
    );
    let unknown = fastworker_protocol::TaskId::new();
    let path = format!("{}api/tasks/{unknown}/cancel", d.url);
    let mut base = auth();
    let without = request(&path, "POST", &headers(&base), None);
    assert_eq!(without.status, 401, "{}", without.body);
    assert!(without.header("www-authenticate").is_some());
    let wrong = request(&path, "POST", &[("Authorization", "Bearer nope")], None);
    assert_eq!(wrong.status, 401);
    let right = request(
        &path,
        "POST",
        &[("Authorization", "Bearer let-me-write")],
        None,
    );
    assert_eq!(
        right.status, 404,
        "authorized; no such task: {}",
        right.body
    );
    // Reads need no token without a cluster key (with the suite's key they need one).
    let status = request(
        &format!("{}api/status", d.url),
        "GET",
        &headers(&base),
        None,
    );
    assert_eq!(status.status, 200);
    // CORS: the configured origin is allowed, with the headers the page sends.
    base.push(("Origin".to_string(), "http://ui.example.test".to_string()));
    let cors = request(
        &format!("{}api/status", d.url),
        "GET",
        &headers(&base),
        None,
    );
    assert_eq!(
        cors.header("access-control-allow-origin"),
        Some("http://ui.example.test")
    );
    let preflight = request(
        &format!("{}api/status", d.url),
        "OPTIONS",
        &[
            ("Origin", "http://ui.example.test"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "authorization"),
        ],
        None,
    );
    assert!(preflight.status < 300, "{preflight:?}");
    assert!(preflight
        .header("access-control-allow-headers")
        .is_some_and(|h| h.contains("authorization")));
    drop(d);

    // With a cluster key, every read needs it (or the API key) as a bearer token; the
    // page shell and the probes stay open.
    let dir = mytasks_dir().without_suite_key();
    let key = fastworker_transport::auth::ClusterKey::generate_hex();
    let d = start(&dir, &[], &[("FASTWORKER_AUTH_KEY", key.as_str())]);
    for path in ["api/status", "api/tasks", "metrics", "api/events"] {
        let url = format!("{}{path}", d.url);
        if path == "api/events" {
            assert_eq!(SseStream::open(&url, &[]).status, 401);
            let bearer = format!("Bearer {key}");
            assert_eq!(
                SseStream::open(&url, &[("Authorization", bearer.as_str())]).status,
                200
            );
            continue;
        }
        assert_eq!(request(&url, "GET", &[], None).status, 401, "{path}");
        let other = format!("Bearer {}", "ab".repeat(32));
        assert_eq!(
            request(&url, "GET", &[("Authorization", other.as_str())], None).status,
            401
        );
        let bearer = format!("Bearer {key}");
        let ok = request(&url, "GET", &[("Authorization", bearer.as_str())], None);
        assert_eq!(ok.status, 200, "{path}: {}", ok.body);
    }
    for open in ["", "assets/app.js", "healthz", "readyz"] {
        let url = format!("{}{open}", d.url);
        assert_eq!(request(&url, "GET", &[], None).status, 200, "{open}");
    }
}

#[test]
fn the_port_flags_a_busy_port_and_no_gui() {
    // A busy port is a start-up error that says so.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = holder.local_addr().expect("an address").port().to_string();
    let dir = TestDir::new();
    let mut args = control_plane_args(&free_address(), &free_address(), "0");
    args.retain(|a| a != "--no-gui");
    args.extend(["--gui-port".to_string(), port.clone()]);
    let mut busy = Proc::spawn(&dir, "busy", &args);
    let status = busy.wait_exit(STARTUP);
    assert!(!status.success());
    let err = busy.stderr();
    assert!(
        err.contains(&format!("the dashboard cannot listen on 127.0.0.1:{port}"))
            && err.contains("--gui-port"),
        "{err}"
    );

    // --no-gui, or FASTWORKER_GUI_ENABLED=false: nothing listens, no dashboard line.
    let mut env_off = dir.fastworker();
    let mut off_args = control_plane_args(&free_address(), &free_address(), "0");
    off_args.retain(|a| a != "--no-gui");
    env_off
        .args(&off_args)
        .env("FASTWORKER_GUI_ENABLED", "false");
    let mut off = Proc::spawn_command(&dir, "off", env_off, None);
    off.wait_for(false, "ready on", STARTUP);
    assert!(!off.stdout().contains("dashboard:"), "{}", off.stdout());
    let mut flag = Proc::spawn(
        &dir,
        "flag",
        &control_plane_args(&free_address(), &free_address(), "0"),
    );
    flag.wait_for(false, "ready on", STARTUP);
    assert!(!flag.stdout().contains("dashboard:"));
}

#[test]
fn floods_and_garbage_on_the_dashboard_port_never_stop_dispatch() {
    let _heavy = crate::support::heavy();
    let dir = mytasks_dir();
    let mut d = start(&dir, &["--task-modules", "mytasks"], &[]);
    let address = d
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();

    // Garbage instead of a request: an error answer, and the process lives on.
    for garbage in [&b"\x00\xff\x13garbage\r\n\r\n"[..], &[b'A'; 70_000][..]] {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&address).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .expect("a timeout");
        let _ = stream.write_all(garbage);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 4"), "{text}");
    }

    // More silent connections than the dashboard holds: tasks keep flowing meanwhile,
    // and the API answers again once the silent ones are dropped (10 s).
    let silent: Vec<_> = (0..300)
        .filter_map(|_| std::net::TcpStream::connect(&address).ok())
        .collect();
    assert!(silent.len() >= 256, "{} connected", silent.len());
    let rt = runtime();
    let client = connect(&rt, &d.cp.base);
    for i in 0..20 {
        let record = rt
            .block_on(client.submit(task("add", json!([i, 1])), WAIT))
            .expect("dispatch goes on during the flood");
        let value: Value = serde_json::from_slice(&record.value).expect("a JSON value");
        assert_eq!(value, json!(i + 1));
    }
    let status = get(&d, "api/status");
    assert_eq!(status.status, 200, "{}", status.body);
    assert_eq!(
        status.json()["totals"]["success"].as_u64().map(|n| n >= 20),
        Some(true)
    );
    drop(silent);
    assert!(d.cp.proc.try_exit().is_none(), "{}", d.cp.proc.describe());
}

#[test]
fn other_sites_cannot_use_the_dashboard_and_bad_filters_are_refused() {
    let dir = mytasks_dir();
    let d = start(&dir, &["--task-modules", "mytasks"], &[]);
    let auth = auth();
    let h = headers(&auth);
    // A DNS-rebinding name for 127.0.0.1 is refused.
    let mut rebound = h.clone();
    rebound.push(("Host", "rebind.attacker.example:8080"));
    let answer = request(&format!("{}api/status", d.url), "GET", &rebound, None);
    assert_eq!(answer.status, 403, "{}", answer.body);
    // A write from another site's page is refused; from the dashboard's own page or
    // from a program (no Origin) it goes through.
    let unknown = fastworker_protocol::TaskId::new();
    let path = format!("{}api/tasks/{unknown}/cancel", d.url);
    let mut foreign = h.clone();
    foreign.push(("Origin", "http://evil.example"));
    assert_eq!(request(&path, "POST", &foreign, None).status, 403);
    let own_origin = d.url.trim_end_matches('/').to_string();
    let mut own = h.clone();
    own.push(("Origin", own_origin.as_str()));
    assert_eq!(request(&path, "POST", &own, None).status, 404);
    assert_eq!(request(&path, "POST", &h, None).status, 404);
    // The page may not be framed.
    let page = request(&d.url, "GET", &h, None);
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert!(page
        .header("content-security-policy")
        .is_some_and(|c| c.contains("frame-ancestors 'none'")));
    // Filters that match nothing by mistake are errors.
    for bad in [
        "api/tasks?status=bogus",
        "api/tasks?status=SUCCESS",
        "api/tasks?limit=x",
    ] {
        assert_eq!(get(&d, bad).status, 400, "{bad}");
    }
}

#[test]
fn a_dashboard_other_machines_reach_needs_a_cluster_key() {
    let dir = TestDir::new().without_suite_key();
    let mut args = control_plane_args(&free_address(), &free_address(), "0");
    args.retain(|a| a != "--no-gui");
    args.extend(["--gui-host", "0.0.0.0", "--gui-port", "0"].map(String::from));
    let mut open = Proc::spawn(&dir, "open", &args);
    assert!(!open.wait_exit(STARTUP).success());
    assert!(
        open.stderr()
            .contains("refusing to serve the dashboard on 0.0.0.0 without a cluster key"),
        "{}",
        open.stderr()
    );
    // With --insecure it serves, and prints an address that works from here.
    args.push("--insecure".into());
    let mut insecure = Proc::spawn(&dir, "insecure", &args);
    insecure.wait_for(false, "dashboard: http://127.0.0.1:", STARTUP);
}

#[test]
fn a_restart_on_the_data_directory_keeps_the_task_list() {
    let dir = mytasks_dir();
    let data = dir.child("data");
    let data = data.to_string_lossy().to_string();
    let d = start(
        &dir,
        &["--task-modules", "mytasks", "--data-dir", &data],
        &[],
    );
    let rt = runtime();
    let client = connect(&rt, &d.cp.base);
    let record = rt
        .block_on(client.submit(task("add", json!([40, 2])), WAIT))
        .expect("add");
    drop(client);
    drop(d);
    let d = start(
        &dir,
        &["--task-modules", "mytasks", "--data-dir", &data],
        &[],
    );
    let id = record.task_id.to_string();
    let listed = get_json(&d, "api/tasks?name=add");
    assert_eq!(listed["tasks"][0]["task_id"], id.as_str(), "{listed}");
    let one = get_json(&d, &format!("api/tasks/{id}"));
    assert_eq!(one["result"], 42);
    // Its submission was not kept across the restart: a retry says so.
    let retry = post(&d, &format!("api/tasks/{id}/retry"));
    assert_eq!(retry.status, 410, "{}", retry.body);
}

#[test]
fn a_dead_letter_is_listed_and_replayed_through_the_api() {
    let dir = mytasks_dir();
    // No task modules: only subworkers run tasks; one lost delivery dead-letters.
    let mut d = start(&dir, &["--max-deliveries", "1"], &[]);
    let mut sw1 = d.cp.subworker(&dir, "sw1", &[]);
    let rt = runtime();
    let client = connect(&rt, &d.cp.base);
    let id = rt
        .block_on(client.delay(task("sleep_ms", json!([2_000]))))
        .expect("accepted");
    poll_until(WAIT, || {
        let t = get_json(&d, &format!("api/tasks/{id}"));
        (t["status"] == "running").then_some(())
    })
    .expect("it runs on sw1");
    sw1.kill();
    let listed = poll_until(WAIT, || {
        let letters = get_json(&d, "api/dead-letters");
        (letters.as_array().map(Vec::len) == Some(1)).then_some(letters)
    })
    .expect("it is dead-lettered");
    assert_eq!(listed[0]["task_id"], id.to_string().as_str(), "{listed}");
    assert_eq!(listed[0]["error"]["kind"], "worker_lost");

    let _sw2 = d.cp.subworker(&dir, "sw2", &[]);
    let replayed = post(&d, &format!("api/dead-letters/{id}/replay"));
    assert_eq!(replayed.status, 200, "{}", replayed.body);
    assert_eq!(replayed.json()["outcome"], "queued");
    let done = poll_until(WAIT, || {
        let t = get_json(&d, &format!("api/tasks/{id}"));
        (t["status"] == "success").then_some(t)
    })
    .expect("the replayed task succeeds");
    assert_eq!(done["worker_id"], "sw2", "{done}");
    assert_eq!(done["result"], 2_000);
    assert_eq!(get_json(&d, "api/dead-letters"), json!([]));
    let events = steps(&done);
    assert_eq!(
        events,
        [
            "submitted",
            "started",
            "failure",
            "submitted",
            "started",
            "success"
        ],
        "{done}"
    );
}
