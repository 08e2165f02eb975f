//! `fastworker submit`: one task by name with arguments parsed as the original does,
//! or a batch of tasks from a file of JSON lines.

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::{connect::connect, render};
use crate::{
    cli::{PriorityArg, SubmitArgs},
    client::ClientError,
    protocol::{now_ms, Callback, Codec, Priority, RetryOverride, TaskEnvelope},
    task_error::{ErrorKind, TaskError},
};

/// One `--args` word as a JSON value: a bool, an int, a float, a JSON array, object
/// or quoted string, else the word as a string.
pub fn parse_arg(word: &str) -> Value {
    match word.to_ascii_lowercase().as_str() {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = word.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(f) = word.parse::<f64>() {
        if f.is_finite() {
            return Value::from(f);
        }
    }
    if word.starts_with(['[', '{', '"']) || word == "null" {
        if let Ok(v) = serde_json::from_str(word) {
            return v;
        }
    }
    Value::String(word.to_string())
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

fn usage(message: String) -> ClientError {
    ClientError::Rejected(TaskError::new(ErrorKind::Rejected, message))
}

/// Parses `--eta`: RFC 3339, or Unix seconds. Returns Unix ms.
pub fn parse_eta(text: &str) -> Result<u64, ClientError> {
    if let Ok(secs) = text.trim().parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok((secs * 1000.0) as u64);
        }
    }
    let time = humantime::parse_rfc3339_weak(text.trim()).map_err(|e| {
        usage(format!(
            "--eta `{text}` is neither RFC 3339 nor Unix seconds: {e}"
        ))
    })?;
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| usage(format!("--eta `{text}` is before 1970")))?;
    Ok(since.as_millis() as u64)
}

/// Builds the envelope for one task named `name` with JSON `args`, applying the
/// per-submission options of `args`.
fn build(name: &str, values: Vec<Value>, opts: &SubmitArgs) -> Result<TaskEnvelope, ClientError> {
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
    retry.jitter = opts.retry_jitter.then_some(true);
    task.retry = retry;
    task.callback = opts.callback_address.as_ref().map(|address| {
        Callback::new(
            address.clone(),
            opts.callback_data.clone().unwrap_or_default(),
        )
    });
    Ok(task)
}

/// Builds the envelope `args` describe.
pub fn envelope(args: &SubmitArgs) -> Result<TaskEnvelope, ClientError> {
    let name = args
        .task_name
        .as_deref()
        .ok_or_else(|| usage("--task-name is required".into()))?;
    build(name, args.args.iter().map(|w| parse_arg(w)).collect(), args)
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
pub fn batch_envelopes(
    text: &str,
    defaults: &SubmitArgs,
) -> Result<Vec<TaskEnvelope>, ClientError> {
    let mut tasks = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let item: BatchLine =
            serde_json::from_str(line).map_err(|e| usage(format!("batch line {}: {e}", n + 1)))?;
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
        opts.timeout = item.timeout.or(opts.timeout);
        tasks.push(build(&item.task_name, item.args, &opts)?);
    }
    if tasks.is_empty() {
        return Err(usage("the batch file holds no tasks".into()));
    }
    Ok(tasks)
}

/// Runs the command; returns what to print.
pub async fn run(args: &SubmitArgs) -> Result<String, ClientError> {
    let tasks = match &args.batch {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
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
    let wait = Duration::from_secs_f64(args.wait.max(0.0)) + Duration::from_millis(delay);
    if args.batch.is_some() {
        if args.non_blocking {
            let ids = client.submit_batch(tasks).await?;
            return Ok(ids.iter().map(|id| format!("{id}\n")).collect());
        }
        let records = client.submit_batch_wait(tasks, wait).await?;
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
            print!("{out}");
            return Err(usage(format!(
                "{failed} of {} tasks did not succeed",
                records.len()
            )));
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
    let record = client.submit_record(task, wait).await?;
    if args.connect.json {
        // Scripts get the record on stdout whatever the outcome; the exit code and
        // the error line on stderr still say when it failed.
        println!("{}", render::record_json(&record));
        crate::client::into_success(record)?;
        return Ok(String::new());
    }
    let record = crate::client::into_success(record)?;
    Ok(format!("{}\n", render::value_json(&record)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_parse_like_the_original() {
        assert_eq!(parse_arg("5"), Value::from(5));
        assert_eq!(parse_arg("-3"), Value::from(-3));
        assert_eq!(parse_arg("2.5"), Value::from(2.5));
        assert_eq!(parse_arg("True"), Value::Bool(true));
        assert_eq!(parse_arg("hello"), Value::from("hello"));
        assert_eq!(parse_arg("[1,2]"), serde_json::json!([1, 2]));
        assert_eq!(parse_arg("{\"a\":1}"), serde_json::json!({"a": 1}));
        assert_eq!(parse_arg("nan"), Value::from("nan"));
        assert_eq!(parse_arg("[oops"), Value::from("[oops"));
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
