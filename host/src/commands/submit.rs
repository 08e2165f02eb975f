//! `fastworker submit`: one task by name with arguments parsed as the original does,
//! or a batch of tasks from a file of JSON lines.

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use anyhow::{anyhow, bail};

use super::{connect::connect, render};
use crate::{
    cli::{PriorityArg, SubmitArgs},
    client::ClientError,
    protocol::{now_ms, Callback, Codec, Priority, RetryOverride, TaskEnvelope},
};

/// One `--args` word as a JSON value: a bool, an int, a float, `null`, a JSON array,
/// object or quoted string, else the word as a string. A word that starts like JSON
/// (`[`, `{`, `"`) must be valid JSON: a typo is an error, not silently a string.
pub fn parse_arg(word: &str) -> anyhow::Result<Value> {
    match word.to_ascii_lowercase().as_str() {
        "true" => return Ok(Value::Bool(true)),
        "false" => return Ok(Value::Bool(false)),
        _ => {}
    }
    if let Ok(i) = word.parse::<i64>() {
        return Ok(Value::from(i));
    }
    if let Ok(f) = word.parse::<f64>() {
        if f.is_finite() {
            return Ok(Value::from(f));
        }
    }
    if word.starts_with(['[', '{', '"']) || word == "null" {
        return serde_json::from_str(word).map_err(|e| {
            anyhow!("--args `{word}` starts like JSON but is not valid JSON ({e}); quote it for your shell as a JSON string ('\"{word}\"') if it is text")
        });
    }
    Ok(Value::String(word.to_string()))
}

impl From<PriorityArg> for Priority {
    fn from(p: PriorityArg) -> Self {
        match p {
            PriorityArg::Critical => Priority::Critical,
            PriorityArg::High => Priority::High,
            PriorityArg::Normal => Priority::Normal,
            PriorityArg::Low => Priority::Low,
        }
    }
}

/// Parses `--eta`: RFC 3339, or Unix seconds. Returns Unix ms.
pub fn parse_eta(text: &str) -> anyhow::Result<u64> {
    if let Ok(secs) = text.trim().parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok((secs * 1000.0) as u64);
        }
    }
    let time = humantime::parse_rfc3339_weak(text.trim())
        .map_err(|e| anyhow!("--eta `{text}` is neither RFC 3339 nor Unix seconds: {e}"))?;
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| anyhow!("--eta `{text}` is before 1970"))?;
    Ok(since.as_millis() as u64)
}

/// Builds the envelope for one task named `name` with JSON `args`, applying the
/// per-submission options of `args`.
fn build(name: &str, values: Vec<Value>, opts: &SubmitArgs) -> anyhow::Result<TaskEnvelope> {
    let payload = Bytes::from(Value::Array(values).to_string());
    let mut task = TaskEnvelope::new(name, Codec::Json, payload);
    task.priority = opts.priority.into();
    if let Some(secs) = opts.countdown {
        // Counted by the control plane from when it accepts the task.
        task.countdown_ms = (secs.max(0.0) * 1000.0) as u64;
    }
    if let Some(eta) = &opts.eta {
        task.not_before_ms = parse_eta(eta)?;
    }
    task.timeout_secs = opts.timeout;
    let mut retry = RetryOverride::default();
    retry.max_retries = opts.max_retries;
    retry.delay_secs = opts.retry_delay;
    retry.backoff = opts.retry_backoff;
    retry.backoff_max_secs = opts.retry_backoff_max;
    retry.jitter = opts.retry_jitter.then_some(true);
    task.retry = retry;
    task.callback = opts.callback_address.as_ref().map(|address| {
        Box::new(Callback::new(
            address.clone(),
            opts.callback_data.clone().unwrap_or_default(),
        ))
    });
    Ok(task)
}

/// Builds the envelope `args` describe.
pub fn envelope(args: &SubmitArgs) -> anyhow::Result<TaskEnvelope> {
    let name = args
        .task_name
        .as_deref()
        .ok_or_else(|| anyhow!("--task-name is required"))?;
    let values = args
        .args
        .iter()
        .map(|w| parse_arg(w))
        .collect::<anyhow::Result<_>>()?;
    build(name, values, args)
}

/// One line of a `--batch` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLine {
    task_name: String,
    #[serde(default)]
    args: Vec<Value>,
    priority: Option<PriorityArg>,
    countdown: Option<f64>,
    eta: Option<String>,
    max_retries: Option<u32>,
    retry_delay: Option<f64>,
    retry_backoff: Option<f64>,
    retry_backoff_max: Option<f64>,
    retry_jitter: Option<bool>,
    timeout: Option<f64>,
}

impl<'de> Deserialize<'de> for PriorityArg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.to_ascii_lowercase().as_str() {
            "critical" => Ok(PriorityArg::Critical),
            "high" => Ok(PriorityArg::High),
            "normal" => Ok(PriorityArg::Normal),
            "low" => Ok(PriorityArg::Low),
            other => Err(serde::de::Error::custom(format!(
                "unknown priority `{other}` (critical, high, normal, low)"
            ))),
        }
    }
}

/// Reads a `--batch` file: one JSON object a line; blank lines and `#` comments skipped.
pub fn batch_envelopes(text: &str, defaults: &SubmitArgs) -> anyhow::Result<Vec<TaskEnvelope>> {
    let mut tasks = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let item: BatchLine = serde_json::from_str(line).map_err(|e| {
            // serde counts lines within the one JSON text: say the file's line instead.
            let text = e.to_string();
            let reason = text
                .rsplit_once(" at line ")
                .map_or(text.as_str(), |(reason, _)| reason);
            anyhow!("batch line {}, column {}: {reason}", n + 1, e.column())
        })?;
        let mut opts = defaults.clone();
        if let Some(p) = item.priority {
            opts.priority = p;
        }
        if item.countdown.is_some() {
            opts.countdown = item.countdown;
            opts.eta = None;
        }
        if item.eta.is_some() {
            opts.eta = item.eta;
            opts.countdown = None;
        }
        opts.max_retries = item.max_retries.or(opts.max_retries);
        opts.retry_delay = item.retry_delay.or(opts.retry_delay);
        opts.retry_backoff = item.retry_backoff.or(opts.retry_backoff);
        opts.retry_backoff_max = item.retry_backoff_max.or(opts.retry_backoff_max);
        opts.retry_jitter = item.retry_jitter.unwrap_or(opts.retry_jitter);
        opts.timeout = item.timeout.or(opts.timeout);
        tasks.push(build(&item.task_name, item.args, &opts)?);
    }
    if tasks.is_empty() {
        bail!("the batch file holds no tasks");
    }
    Ok(tasks)
}

/// Runs the command; returns what to print.
pub async fn run(args: &SubmitArgs) -> anyhow::Result<String> {
    let tasks = match &args.batch {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
            batch_envelopes(&text, args)?
        }
        None => vec![envelope(args)?],
    };
    let client = connect(&args.connect).await?;
    let delay = tasks
        .iter()
        .map(|t| t.not_before_ms.saturating_sub(now_ms()).max(t.countdown_ms))
        .max()
        .unwrap_or(0);
    let wait = Duration::from_secs_f64(args.wait) + Duration::from_millis(delay);
    if args.batch.is_some() {
        if args.non_blocking {
            let ids = client.submit_batch(tasks).await?;
            return Ok(ids.iter().map(|id| format!("{id}\n")).collect());
        }
        let ids: Vec<_> = tasks.iter().map(|t| t.id).collect();
        let records = match client.submit_batch_wait(tasks, wait).await {
            Err(ClientError::NotFinal { waited, .. }) => {
                // Accepted, all of them: they keep their places. Their ids go to
                // stdout for scripts.
                let lines: String = ids.iter().map(|id| format!("{id}\n")).collect();
                super::emit(lines.as_bytes());
                return Err(not_finished(args, ids, waited).into());
            }
            other => other?,
        };
        let mut out = String::new();
        let mut failed = 0;
        for record in &records {
            if record.status != crate::protocol::TaskStatus::Success {
                failed += 1;
            }
            if args.connect.json {
                out.push_str(&format!("{}\n", render::record_json(record)));
            } else {
                out.push_str(&format!(
                    "{} {} {}\n",
                    record.task_id,
                    record.status.as_str(),
                    match &record.error {
                        Some(e) => e.to_string(),
                        None => render::value_json(record).to_string(),
                    }
                ));
            }
        }
        if failed > 0 {
            super::emit(out.as_bytes());
            bail!("{failed} of {} tasks did not succeed", records.len());
        }
        return Ok(out);
    }
    let task = tasks.into_iter().next().expect("one task");
    if args.non_blocking {
        let id = client.delay(task).await?;
        return Ok(if args.connect.json {
            format!(
                "{}\n",
                serde_json::json!({"task_id": id.to_string(), "status": "queued"})
            )
        } else {
            format!("{id}\n")
        });
    }
    let record = match client.submit_record(task, wait).await {
        Err(ClientError::NotFinal { id, waited }) => {
            // Accepted: the task keeps its place. Its id goes to stdout for scripts.
            let line = if args.connect.json {
                serde_json::json!({"task_id": id.to_string(), "status": "accepted", "finished": false})
                    .to_string()
            } else {
                id.to_string()
            };
            super::emit(format!("{line}\n").as_bytes());
            return Err(not_finished(args, vec![id], waited).into());
        }
        other => other?,
    };
    if args.connect.json {
        // Scripts get the record on stdout whatever the outcome; the exit code and
        // the error line on stderr still say when it failed.
        super::emit(format!("{}\n", render::record_json(&record)).as_bytes());
        crate::client::into_success(record)?;
        return Ok(String::new());
    }
    let record = crate::client::into_success(record)?;
    Ok(format!("{}\n", render::value_json(&record)))
}

/// `submit` waited its `--wait` and its tasks (accepted) are not all final yet: the
/// exit code says so ([`NotFinished::EXIT_CODE`]).
#[derive(Debug, thiserror::Error)]
#[error("{what} accepted but not finished after {}; {it} keeps running. Follow it with: {follow}", humantime::format_duration(*.waited), what = self.what(), it = if self.ids.len() == 1 { "it" } else { "each" })]
pub struct NotFinished {
    /// The tasks.
    pub ids: Vec<crate::protocol::TaskId>,
    /// How long `submit` waited.
    pub waited: Duration,
    /// The command that follows the first.
    pub follow: String,
}

impl NotFinished {
    /// The exit code of a `submit` whose tasks are accepted but not finished.
    pub const EXIT_CODE: u8 = 3;

    fn what(&self) -> String {
        match self.ids.as_slice() {
            [id] => format!("task {id} was"),
            ids => format!("{} tasks were", ids.len()),
        }
    }
}

/// What to say when the wait ran out: with the command that follows the (first) task,
/// on the same control plane as this `submit` reached.
fn not_finished(
    args: &SubmitArgs,
    ids: Vec<crate::protocol::TaskId>,
    waited: Duration,
) -> NotFinished {
    let first = ids.first().map(|id| id.to_string()).unwrap_or_default();
    let mut follow = format!("{} status --task-id {first}", super::program_name());
    match &args.connect.control_plane_address {
        Some(address) => follow.push_str(&format!(" --control-plane-address {address}")),
        None if args.connect.discovery_address != crate::cli::DEFAULT_DISCOVERY => {
            follow.push_str(&format!(
                " --discovery-address {}",
                args.connect.discovery_address
            ));
        }
        None => {}
    }
    NotFinished {
        ids,
        waited,
        follow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_parse_like_the_original() {
        let arg = |w: &str| parse_arg(w).unwrap();
        assert_eq!(arg("5"), Value::from(5));
        assert_eq!(arg("-3"), Value::from(-3));
        assert_eq!(arg("2.5"), Value::from(2.5));
        assert_eq!(arg("True"), Value::Bool(true));
        assert_eq!(arg("hello"), Value::from("hello"));
        assert_eq!(arg("[1,2]"), serde_json::json!([1, 2]));
        assert_eq!(arg("{\"a\":1}"), serde_json::json!({"a": 1}));
        assert_eq!(arg("null"), Value::Null);
        assert_eq!(arg("nan"), Value::from("nan"));
        let err = parse_arg("[oops").unwrap_err().to_string();
        assert!(
            err.contains("`[oops` starts like JSON but is not valid JSON"),
            "{err}"
        );
        assert!(parse_arg("{\"a\":").is_err());
    }

    #[test]
    fn eta_takes_rfc3339_or_unix_seconds() {
        assert_eq!(parse_eta("1700000000").unwrap(), 1_700_000_000_000);
        assert_eq!(
            parse_eta("2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        assert!(parse_eta("tomorrow").is_err());
    }
}
