//! The command line as a new user meets it: what `submit` says when its wait runs
//! out, when the arguments do not fit the task, when a task fails; the ready line; the
//! usage of `subworker`; flags offered only where they mean something; `events` times.

use std::time::Duration;

use crate::{
    procs::ControlPlane,
    support::{fastworker_bin, plugin_artifact, run, Output, TestDir},
};

/// `fastworker <args>` in `dir`.
fn cli(dir: &TestDir, args: &[&str]) -> Output {
    let mut cmd = dir.fastworker();
    cmd.args(args);
    run(cmd)
}

/// `fastworker submit --control-plane-address BASE <args>`.
fn submit(dir: &TestDir, cp: &ControlPlane, args: &[&str]) -> Output {
    let mut all = vec!["submit", "--control-plane-address", cp.base.as_str()];
    all.extend_from_slice(args);
    cli(dir, &all)
}

fn mytasks_plane(dir: &TestDir) -> ControlPlane {
    let plugin = plugin_artifact("mytasks");
    ControlPlane::start(dir, &["--task-modules", plugin.to_str().unwrap()])
}

/// The one non-log stderr line of a failed command.
fn error_line(out: &Output) -> String {
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "one error line expected: {out:?}");
    lines[0].clone()
}

#[test]
fn a_wait_that_runs_out_prints_the_id_says_how_to_follow_it_and_exits_3() {
    let dir = TestDir::new();
    let cp = mytasks_plane(&dir);
    let out = submit(
        &dir,
        &cp,
        &["--task-name", "sleep_ms", "--args", "1500", "--wait", "0.3"],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let id = out.stdout.trim().to_string();
    assert!(
        fastworker_protocol::TaskId::parse(&id).is_ok(),
        "stdout is the task id: {out:?}"
    );
    let line = error_line(&out);
    assert!(
        line.contains(&format!("task {id} was accepted"))
            && line.contains(&format!(
                "status --task-id {id} --control-plane-address {}",
                cp.base
            ))
            && !line.contains("no answer from the control plane"),
        "{line}"
    );
    // The task kept its place and finishes: the suggested command shows it.
    let done = crate::procs::poll_until(Duration::from_secs(20), || {
        let out = cli(
            &dir,
            &[
                "status",
                "--control-plane-address",
                &cp.base,
                "--task-id",
                &id,
                "--json",
            ],
        );
        out.stdout.contains("\"success\"").then_some(out)
    });
    assert!(done.is_some(), "the task never finished");
}

#[test]
fn arguments_that_do_not_fit_name_the_task_its_parameters_and_the_count() {
    let dir = TestDir::new();
    let cp = mytasks_plane(&dir);
    let out = submit(&dir, &cp, &["--task-name", "sleep_ms", "--args", "1", "2"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = error_line(&out);
    assert!(
        line.ends_with("failed (bad_arguments): sleep_ms takes 1 argument (ms: u64), got 2"),
        "{line}"
    );
    let out = submit(&dir, &cp, &["--task-name", "add", "--args", "1"]);
    assert!(
        error_line(&out).ends_with("add takes 2 arguments (x: i64, y: i64), got 1"),
        "{out:?}"
    );
    // A word that starts like JSON but is not is refused here, before anything is sent.
    let out = submit(&dir, &cp, &["--task-name", "echo", "--args", "[1,2"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = error_line(&out);
    assert!(
        line.starts_with("error: --args `[1,2` starts like JSON but is not valid JSON")
            && !line.contains("rejected"),
        "{line}"
    );
}

#[test]
fn a_failure_is_said_once_without_stutter() {
    let dir = TestDir::new();
    let cp = mytasks_plane(&dir);
    let out = submit(&dir, &cp, &["--task-name", "fail", "--args", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = error_line(&out);
    assert!(
        line.starts_with("error: task ") && line.ends_with(" failed: nope"),
        "{line}"
    );
    assert!(
        !line.contains("ended") && !line.contains("rejected"),
        "{line}"
    );
}

#[test]
fn retry_backoff_max_caps_the_retry_delays() {
    let dir = TestDir::new();
    let cp = mytasks_plane(&dir);
    // Without the cap the second retry would wait 0.1 × 1000 = 100 s; with it, 0.2 s:
    // the task ends failed within the 10 s wait instead of outliving it (exit 3).
    let out = submit(
        &dir,
        &cp,
        &[
            "--task-name",
            "fail",
            "--args",
            "again",
            "--max-retries",
            "2",
            "--retry-delay",
            "0.1",
            "--retry-backoff",
            "1000",
            "--retry-backoff-max",
            "0.2",
            "--wait",
            "10",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let record: serde_json::Value =
        serde_json::from_str(out.stdout.trim()).expect("the record as JSON");
    assert_eq!(record["status"], "failure", "{record}");
    assert_eq!(record["attempts"], 3, "{record}");
}

#[test]
fn the_ready_line_suggests_the_binary_as_started_and_a_task_that_is_loaded() {
    let dir = TestDir::new();
    let bin = fastworker_bin();
    let cp = mytasks_plane(&dir);
    let ready = cp.proc.stdout();
    assert!(
        ready.contains(&format!(
            "submit with: {} submit --control-plane-address {} --task-name add --args 5 3",
            bin.display(),
            cp.base
        )),
        "{ready}"
    );
    drop(cp);

    // A plugin without `add`: one of its own tasks, with its parameters as placeholders.
    let versioned = plugin_artifact("versioned_v1");
    let cp = ControlPlane::start(&dir, &["--task-modules", versioned.to_str().unwrap()]);
    let ready = cp.proc.stdout();
    assert!(
        ready.contains("--task-name add_versioned --args 1") && !ready.contains("--task-name add "),
        "{ready}"
    );
    drop(cp);

    // No plugins: it says so instead of suggesting a task nobody serves.
    let cp = ControlPlane::start(&dir, &[]);
    let ready = cp.proc.stdout();
    assert!(ready.contains("no task is served yet"), "{ready}");
}

#[test]
fn subworker_needs_one_of_the_two_addresses_and_its_usage_says_so() {
    let dir = TestDir::new();
    let out = cli(&dir, &["subworker", "--worker-id", "sw1"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("<--control-plane-address <CONTROL_PLANE_ADDRESS>|--discovery-address <DISCOVERY_ADDRESS>>"),
        "{}",
        out.stderr
    );
}

#[test]
fn plugin_dir_is_offered_only_where_plugins_are_loaded() {
    let dir = TestDir::new();
    let out = cli(&dir, &["status", "--plugin-dir", "x", "--task-id", "1"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("unexpected argument '--plugin-dir'"),
        "{}",
        out.stderr
    );
    // Where it means something it still works, after the subcommand.
    let plugins = dir.child("elsewhere");
    std::fs::create_dir_all(&plugins).unwrap();
    dir.copy_in(&plugin_artifact("mytasks"), "elsewhere/mytasks.so");
    let out = cli(
        &dir,
        &[
            "list",
            "--plugin-dir",
            plugins.to_str().unwrap(),
            "--task-modules",
            "mytasks",
        ],
    );
    assert!(
        out.status.success() && out.stdout.contains("add"),
        "{out:?}"
    );
}

#[test]
fn events_print_local_rfc3339_times_in_text_and_milliseconds_in_json() {
    let dir = TestDir::new();
    let cp = mytasks_plane(&dir);
    let out = cli(&dir, &["events", "--control-plane-address", &cp.base]);
    assert!(out.status.success(), "{out:?}");
    let first = out.stdout_lines()[0].to_string();
    let stamp = first.split(' ').next().unwrap_or_default();
    assert!(
        chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
        "not an RFC 3339 time: {first}"
    );
    let out = cli(
        &dir,
        &["events", "--control-plane-address", &cp.base, "--json"],
    );
    let events: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert!(events[0]["at"].as_u64().is_some(), "{events}");
}

#[test]
fn help_of_every_command_ends_with_examples() {
    let dir = TestDir::new();
    for command in [
        "control-plane",
        "subworker",
        "submit",
        "list",
        "status",
        "cancel",
        "dead-letters",
        "events",
        "tasks",
        "queued",
        "keygen",
        "new",
        "completions",
        "bench",
    ] {
        let out = cli(&dir, &[command, "--help"]);
        assert!(out.status.success(), "{command}: {out:?}");
        let tail = out.stdout.rsplit("Examples:").next().unwrap_or_default();
        assert!(
            out.stdout.contains("Examples:") && tail.contains(&format!("fastworker {command}")),
            "{command} --help has no examples at its end:\n{}",
            out.stdout
        );
    }
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish() {
    let dir = TestDir::new();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef fastworker"),
        ("fish", "complete -c fastworker"),
    ] {
        let out = cli(&dir, &["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        assert!(
            out.stdout.contains(marker) && out.stdout.contains("control-plane"),
            "{shell}: {}",
            &out.stdout[..out.stdout.len().min(400)]
        );
    }
}

#[test]
fn tasks_lists_what_the_cluster_serves_with_signatures_docs_and_workers() {
    let dir = crate::procs::mytasks_dir();
    let mut cp = mytasks_plane(&dir);
    let _sw = cp.subworker(&dir, "sw1", &[]);
    let out = cli(&dir, &["tasks", "--control-plane-address", &cp.base]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout
            .contains("add(x: i64, y: i64) -> i64\n    Adds two integers.\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("served by: sw1, control-plane")
            || out.stdout.contains("served by: control-plane, sw1"),
        "{}",
        out.stdout
    );
    let out = cli(
        &dir,
        &["tasks", "--control-plane-address", &cp.base, "--json"],
    );
    let tasks: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let heartbeat = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "heartbeat")
        .expect("heartbeat is served");
    assert_eq!(heartbeat["periodic"]["every"], 30.0, "{heartbeat}");
    assert_eq!(heartbeat["signature"], "() -> u64", "{heartbeat}");
}

#[test]
fn queued_lists_waiting_tasks_in_run_order_and_purge_cancels_them() {
    let dir = TestDir::new();
    let cp = mytasks_plane(&dir);
    let base = cp.base.as_str();
    // The own subworker has one slot: a long task holds it, so the rest wait.
    let blocker = submit(
        &dir,
        &cp,
        &[
            "--task-name",
            "sleep_ms",
            "--args",
            "30000",
            "--non-blocking",
        ],
    );
    assert!(blocker.status.success(), "{blocker:?}");
    crate::procs::poll_until(Duration::from_secs(10), || {
        let out = cli(
            &dir,
            &[
                "status",
                "--control-plane-address",
                base,
                "--task-id",
                blocker.stdout.trim(),
            ],
        );
        out.stdout.contains("running").then_some(())
    })
    .expect("the blocker runs");
    let mut low = Vec::new();
    for i in 0..3 {
        let out = submit(
            &dir,
            &cp,
            &[
                "--task-name",
                "add",
                "--args",
                &i.to_string(),
                "1",
                "--priority",
                "low",
                "--non-blocking",
            ],
        );
        low.push(out.stdout.trim().to_string());
    }
    let high = submit(
        &dir,
        &cp,
        &[
            "--task-name",
            "add",
            "--args",
            "7",
            "7",
            "--priority",
            "high",
            "--non-blocking",
        ],
    );
    let later = submit(
        &dir,
        &cp,
        &[
            "--task-name",
            "echo",
            "--args",
            "later",
            "--countdown",
            "600",
            "--non-blocking",
        ],
    );

    let out = cli(&dir, &["queued", "--control-plane-address", base, "--json"]);
    let listing: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let ids: Vec<&str> = listing["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    let mut expected = vec![high.stdout.trim()];
    expected.extend(low.iter().map(String::as_str));
    expected.push(later.stdout.trim());
    assert_eq!(
        ids, expected,
        "high first, then low in submission order, then the scheduled one: {listing}"
    );
    assert_eq!(listing["total"], 5);
    assert_eq!(listing["tasks"][4]["status"], "scheduled");
    assert!(
        !ids.contains(&blocker.stdout.trim()),
        "a running task is not waiting"
    );

    // Filters: by name and priority, and a limit that still reports the total.
    let out = cli(
        &dir,
        &[
            "queued",
            "--control-plane-address",
            base,
            "--task-name",
            "add",
            "--priority",
            "low",
            "--limit",
            "2",
            "--json",
        ],
    );
    let listing: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(listing["tasks"].as_array().unwrap().len(), 2, "{listing}");
    assert_eq!(listing["total"], 3, "{listing}");

    // Purge the low `add`s: they end cancelled; the high one and the rest stay.
    let out = cli(
        &dir,
        &[
            "queued",
            "--control-plane-address",
            base,
            "--purge",
            "add",
            "--priority",
            "low",
        ],
    );
    assert!(
        out.stdout
            .contains("purged 3 waiting tasks of add at priority low: they ended cancelled"),
        "{out:?}"
    );
    for id in &low {
        let out = cli(
            &dir,
            &[
                "status",
                "--control-plane-address",
                base,
                "--task-id",
                id,
                "--json",
            ],
        );
        let record: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
        assert_eq!(record["status"], "cancelled", "{record}");
        assert_eq!(record["error"]["kind"], "cancelled", "{record}");
    }
    let out = cli(&dir, &["queued", "--control-plane-address", base]);
    assert!(
        out.stdout.contains(high.stdout.trim())
            && out.stdout.contains(later.stdout.trim())
            && out.stdout.lines().count() == 2,
        "{}",
        out.stdout
    );
    let _ = cli(
        &dir,
        &[
            "cancel",
            "--control-plane-address",
            base,
            "--task-id",
            blocker.stdout.trim(),
        ],
    );
}

#[test]
fn a_batch_whose_wait_runs_out_prints_every_id_and_exits_3() {
    let dir = TestDir::new();
    let cp = mytasks_plane(&dir);
    let batch = dir.child("slow.jsonl");
    std::fs::write(
        &batch,
        "{\"task_name\": \"sleep_ms\", \"args\": [1500]}\n{\"task_name\": \"add\", \"args\": [1, 2], \"retry_backoff_max\": 5}\n",
    )
    .unwrap();
    let out = submit(
        &dir,
        &cp,
        &["--batch", batch.to_str().unwrap(), "--wait", "0.3"],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let ids = out.stdout_lines();
    assert_eq!(ids.len(), 2, "{out:?}");
    assert!(
        ids.iter()
            .all(|id| fastworker_protocol::TaskId::parse(id).is_ok()),
        "{out:?}"
    );
    let line = error_line(&out);
    assert!(
        line.contains("2 tasks were accepted but not finished after 300ms"),
        "{line}"
    );
    // A bad line says which line of the file, once.
    std::fs::write(
        &batch,
        "{\"task_name\": \"add\", \"args\": [1, 2]}\n{oops}\n",
    )
    .unwrap();
    let out = submit(&dir, &cp, &["--batch", batch.to_str().unwrap()]);
    assert!(
        error_line(&out).starts_with("error: batch line 2, column 2: key must be a string"),
        "{out:?}"
    );
}

#[test]
fn seconds_must_be_finite_and_not_negative() {
    let dir = TestDir::new();
    for bad in ["inf", "nan", "-1"] {
        let out = cli(
            &dir,
            &[
                "submit",
                "--task-name",
                "add",
                "--args",
                "1",
                "2",
                &format!("--wait={bad}"),
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        assert!(
            out.stderr.contains("is not a number of seconds"),
            "{bad}: {}",
            out.stderr
        );
    }
}

#[test]
fn a_subworker_takes_an_address_from_its_flag_even_with_the_other_in_the_environment() {
    let dir = crate::procs::mytasks_dir();
    let mut cp = ControlPlane::start(&dir, &[]);
    let mut cmd = dir.fastworker();
    cmd.env("FASTWORKER_DISCOVERY_ADDRESS", &cp.discovery)
        .args([
            "subworker",
            "--worker-id",
            "sw1",
            "--control-plane-address",
            &cp.base,
            "--task-modules",
            "mytasks",
        ]);
    let _sw = crate::procs::Proc::spawn_command(&dir, "sw1", cmd, None);
    cp.wait_registered("sw1");
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = TestDir::new();
    let cp = mytasks_plane(&dir);
    let mut cmd = dir.fastworker();
    cmd.args([
        "submit",
        "--control-plane-address",
        &cp.base,
        "--task-name",
        "sleep_ms",
        "--args",
        "1000",
        "--wait",
        "0.2",
    ]);
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before anything is printed
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{out:?}"
    );
}
