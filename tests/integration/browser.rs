//! The dashboard page in a real headless Chromium, driven through ChromeDriver's
//! WebDriver protocol (Debian's `chromium` and `chromium-driver`, which `.ci/run`
//! installs): the page loads without console errors, a submitted task appears and
//! turns to success live, the cancel button cancels a scheduled task, and a plugin
//! reload shows up in the plugins view. Without Chromium these tests say so and pass,
//! unless `FASTWORKER_REQUIRE_BROWSER=1` (set by `.ci/run`) makes that a failure.
//!
//! Screenshots of the overview and of a task's view are written to
//! `target/dashboard-screenshots/` (the ones in `docs/` come from there).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use base64::Engine;
use bytes::Bytes;
use fastworker_protocol::{Codec, TaskEnvelope};
use serde_json::{json, Value};

use crate::{
    dashboard::{self, Dashboard},
    http::request,
    procs::{connect, free_port, mytasks_dir, poll_until, runtime},
    support::{plugin_artifact, suite_key, TestDir},
};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const WAIT: Duration = Duration::from_secs(30);
/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Whether Chromium is here; without it a test returns early (or fails when
/// `FASTWORKER_REQUIRE_BROWSER=1`).
fn browser_available(test: &str) -> bool {
    let here = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !here {
        assert!(
            std::env::var("FASTWORKER_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "{test}: FASTWORKER_REQUIRE_BROWSER=1 but {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)"
        );
        eprintln!("SKIPPED {test}: no {CHROMIUM} / {CHROMEDRIVER} (apt-get install chromium chromium-driver)");
    }
    here
}

/// Processes this test started, killed when dropped: Chromium (with every process it
/// started: it leads its own process group) and ChromeDriver.
struct Started {
    chromium: Option<Child>,
    driver: Option<Child>,
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(mut driver) = self.driver.take() {
            let _ = driver.kill();
            let _ = driver.wait();
        }
        if let Some(mut chromium) = self.chromium.take() {
            // SAFETY: kill(2) on the process group Chromium leads (it was started with
            // process_group(0), so its pid is the group id); no memory is touched.
            unsafe {
                libc::kill(-(chromium.id() as i32), libc::SIGKILL);
            }
            let _ = chromium.wait();
        }
    }
}

/// Headless Chromium started by the test, and a ChromeDriver session attached to it;
/// all of it ends when dropped.
struct Browser {
    url: String,
    session: String,
    _started: Started,
}

impl Browser {
    /// Starts ChromeDriver on a free port and a headless Chromium session whose
    /// profile lives in `dir`.
    fn start(dir: &TestDir) -> Browser {
        use std::os::unix::process::CommandExt;
        let mut started = Started {
            chromium: None,
            driver: None,
        };
        let debug_port = free_port();
        let profile = dir.child("chromium-profile");
        started.chromium = Some(
            Command::new(CHROMIUM)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-quic",
                    "--no-first-run",
                    "--window-size=1280,900",
                    "--remote-debugging-address=127.0.0.1",
                    &format!("--remote-debugging-port={debug_port}"),
                    &format!("--user-data-dir={}", profile.display()),
                    "about:blank",
                ])
                .process_group(0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromium starts"),
        );
        let port = free_port();
        started.driver = Some(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts"),
        );
        let url = format!("http://127.0.0.1:{port}");
        for (what, port) in [("chromium", debug_port), ("chromedriver", port)] {
            let up = poll_until(WAIT, || {
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .ok()
                    .map(|_| ())
            });
            assert!(up.is_some(), "{what} did not listen on {port}");
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "debuggerAddress": format!("127.0.0.1:{debug_port}"),
            }
        }}});
        let response = request(
            &format!("{url}/session"),
            "POST",
            &[],
            Some(&caps.to_string()),
        );
        let session = response.json()["value"]["sessionId"]
            .as_str()
            .map(str::to_string);
        match session {
            Some(session) => Browser {
                url,
                session,
                _started: started,
            },
            None => panic!(
                "no WebDriver session: {} {}",
                response.status, response.body
            ),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.url, self.session);
        let body = body.map(|b| b.to_string());
        let response = request(&url, method, &[], body.as_deref());
        let value = response.json();
        assert!(
            response.status < 300,
            "WebDriver {method} {path}: {} {value}",
            response.status
        );
        value["value"].clone()
    }

    fn open(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    fn script(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// The text of the first element `css` selects (`None`: there is none).
    fn text(&self, css: &str) -> Option<String> {
        self.script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : null;",
            json!([css]),
        )
        .as_str()
        .map(str::to_string)
    }

    /// Waits until the first element `css` selects has text for which `ok` holds.
    fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        poll_until(WAIT, || self.text(css).filter(|t| ok(t))).unwrap_or_else(|| {
            panic!(
                "{css}: never {what} (now {:?}); console: {:?}",
                self.text(css),
                self.console()
            )
        })
    }

    fn click(&self, css: &str) {
        let found = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        let id = found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("{css}: no element ({found})"))
            .to_string();
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    /// The browser's console entries since the last call.
    fn console(&self) -> Vec<Value> {
        let url = format!("{}/session/{}/se/log", self.url, self.session);
        let response = request(
            &url,
            "POST",
            &[],
            Some(&json!({"type": "browser"}).to_string()),
        );
        response.json()["value"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn screenshot(&self, name: &str) -> PathBuf {
        let data = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().expect("base64"))
            .expect("a PNG");
        let dir = crate::support::profile_dir()
            .parent()
            .map(|p| p.join("dashboard-screenshots"))
            .expect("the target directory");
        fs::create_dir_all(&dir).expect("a screenshot directory");
        let path = dir.join(name);
        fs::write(&path, png).expect("the screenshot is written");
        path
    }
}

/// The page's URL, with the suite's key handed to it the way a person would (the
/// token form keeps it in session storage).
fn open_dashboard(browser: &Browser, d: &Dashboard, route: &str) {
    browser.open(&d.url);
    if let Some(key) = suite_key() {
        browser.script(
            "sessionStorage.setItem('fastworker-token', arguments[0]);",
            json!([key]),
        );
    }
    // A fresh load, so the page starts with the token. Without it, the first load's
    // requests were refused (401, in the console): those entries are dropped here.
    browser.open("about:blank");
    browser.console();
    browser.open(&format!("{}#/{route}", d.url));
}

fn no_console_errors(browser: &Browser) {
    let bad: Vec<Value> = browser
        .console()
        .into_iter()
        .filter(|e| matches!(e["level"].as_str(), Some("SEVERE") | Some("WARNING")))
        .collect();
    assert!(bad.is_empty(), "console errors: {bad:#?}");
}

fn task(name: &str, args: Value) -> TaskEnvelope {
    TaskEnvelope::new(name, Codec::Json, Bytes::from(args.to_string()))
}

#[test]
fn the_page_loads_cleanly_and_a_submitted_task_turns_to_success_live() {
    if !browser_available("the_page_loads_cleanly") {
        return;
    }
    let dir = mytasks_dir();
    let mut d = dashboard::start(&dir, &["--task-modules", "mytasks"], &[]);
    let _sw = d.cp.subworker(&dir, "sw1", &[]);
    let browser = Browser::start(&dir);
    open_dashboard(&browser, &d, "");
    browser.wait_text("[data-stat=\"active-workers\"]", "2 workers", |t| t == "2");
    let rt = runtime();
    let client = connect(&rt, &d.cp.base);
    // Tasks over a few seconds, so the throughput chart has points to draw.
    for i in 0..60 {
        rt.block_on(client.submit(task("add", json!([i, i])), WAIT))
            .expect("add");
        std::thread::sleep(Duration::from_millis(50));
    }
    browser.wait_text("[data-stat=\"success-total\"]", "counted", |t| {
        t.parse::<u64>().is_ok_and(|n| n >= 60)
    });
    poll_until(WAIT, || {
        let drawn = browser.script(
            "return document.querySelectorAll('svg#chart-throughput path').length;",
            json!([]),
        );
        (drawn.as_u64() > Some(0)).then_some(())
    })
    .expect("the throughput chart draws its samples");
    no_console_errors(&browser);
    browser.screenshot("overview.png");
    // The console check sees what the page logs (so it can fail).
    browser.script("console.error('probe from the test');", json!([]));
    let seen = browser.console();
    assert!(
        seen.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("probe from the test"))),
        "{seen:?}"
    );

    // The tasks view, live: a task submitted now appears and turns to success
    // without a reload (a marker set on the page survives).
    browser.open(&format!("{}#/tasks", d.url));
    poll_until(WAIT, || {
        (browser.script("return document.body.dataset.live;", json!([])) == "sse").then_some(())
    })
    .expect("the event stream connects");
    browser.script("window.__sameDocument = 42;", json!([]));
    let id = rt
        .block_on(client.delay(task("sleep_ms", json!([1_500]))))
        .expect("accepted");
    let row = format!("tr[data-task-id=\"{id}\"] td.status");
    browser.wait_text(&row, "shown as running", |t| {
        t == "running" || t == "queued"
    });
    browser.wait_text(&row, "success", |t| t == "success");
    assert_eq!(
        browser.script("return window.__sameDocument;", json!([])),
        42,
        "the page was not reloaded"
    );

    // One task's view: its timeline.
    browser.open(&format!("{}#/tasks/{id}", d.url));
    browser.wait_text("[data-view-root=\"task\"] .status", "success", |t| {
        t == "success"
    });
    let steps = browser.script(
        "return [...document.querySelectorAll('ol#timeline > li')].map(li => li.dataset.step);",
        json!([]),
    );
    assert_eq!(steps, json!(["submitted", "started", "success"]));
    browser.screenshot("task.png");
    no_console_errors(&browser);
}

#[test]
fn the_cancel_button_cancels_a_scheduled_task() {
    if !browser_available("the_cancel_button") {
        return;
    }
    let dir = mytasks_dir();
    let d = dashboard::start(&dir, &["--task-modules", "mytasks"], &[]);
    let browser = Browser::start(&dir);
    let rt = runtime();
    let client = connect(&rt, &d.cp.base);
    let mut later = task("add", json!([1, 2]));
    later.countdown_ms = 120_000;
    let id = rt.block_on(client.delay(later)).expect("accepted");
    open_dashboard(&browser, &d, "tasks");
    let row = format!("tr[data-task-id=\"{id}\"]");
    browser.wait_text(&format!("{row} td.status"), "scheduled", |t| {
        t == "scheduled"
    });
    browser.click(&format!("{row} button[data-action=\"cancel\"]"));
    browser.wait_text(&format!("{row} td.status"), "cancelled", |t| {
        t == "cancelled"
    });
    let record = rt
        .block_on(client.status(id))
        .expect("status")
        .expect("a record");
    assert_eq!(record.status.as_str(), "cancelled");
    no_console_errors(&browser);
}

#[test]
fn a_plugin_reload_shows_up_in_the_plugins_view() {
    if !browser_available("a_plugin_reload") {
        return;
    }
    let dir = TestDir::new();
    dir.copy_in(&plugin_artifact("versioned_v1"), "plugins/versioned.so");
    let d = dashboard::start(&dir, &["--task-modules", "./plugins/versioned.so"], &[]);
    let browser = Browser::start(&dir);
    open_dashboard(&browser, &d, "plugins");
    let cell = "tr[data-plugin=\"versioned\"] td.version";
    browser.wait_text(cell, "1.0.0", |t| t == "1.0.0");

    // A new build, renamed onto the file as a deploy would.
    let temp = dir.child("plugins/.versioned.tmp");
    fs::copy(plugin_artifact("versioned_v2"), &temp).expect("copy v2");
    fs::rename(&temp, dir.child("plugins/versioned.so")).expect("rename v2");
    browser.wait_text(cell, "2.0.0", |t| t == "2.0.0");
    browser.wait_text(
        "ul#plugin-history > li[data-kind=\"reloaded\"]",
        "a reload listed",
        |t| t.contains("1.0.0") && t.contains("2.0.0"),
    );
    let api = request(
        &format!("{}api/plugins", d.url),
        "GET",
        &suite_key()
            .map(|k| format!("Bearer {k}"))
            .as_deref()
            .map(|b| vec![("Authorization", b)])
            .unwrap_or_default(),
        None,
    )
    .json();
    assert_eq!(api["history"][0]["kind"], "reloaded", "{api}");
    assert_eq!(api["history"][0]["new_version"], "2.0.0");
    no_console_errors(&browser);
}
