//! `fastworker submit`: one task, by name, with arguments parsed as the original does.

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use super::{connect::connect, render};
use crate::{
    cli::{PriorityArg, SubmitArgs},
    client::ClientError,
    protocol::{now_ms, Codec, Priority, TaskEnvelope},
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

/// Builds the envelope `args` describe.
pub fn envelope(args: &SubmitArgs) -> TaskEnvelope {
    let values: Vec<Value> = args.args.iter().map(|w| parse_arg(w)).collect();
    let payload = Bytes::from(Value::Array(values).to_string());
    let mut task = TaskEnvelope::new(args.task_name.clone(), Codec::Json, payload);
    task.priority = args.priority.into();
    if let Some(secs) = args.countdown {
        task.not_before_ms = now_ms() + (secs.max(0.0) * 1000.0) as u64;
    }
    task
}

/// Runs the command; returns what to print.
pub async fn run(args: &SubmitArgs) -> Result<String, ClientError> {
    let client = connect(&args.connect).await?;
    let task = envelope(args);
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
    let wait = Duration::from_secs_f64(args.wait.max(0.0))
        + Duration::from_secs_f64(args.countdown.unwrap_or(0.0).max(0.0));
    let record = client.submit(task, wait).await?;
    Ok(if args.connect.json {
        format!("{}\n", render::record_json(&record))
    } else {
        format!("{}\n", render::value_json(&record))
    })
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
}
