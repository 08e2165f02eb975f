//! `fastworker status` and `fastworker cancel`.

use anyhow::anyhow;

use super::{connect::connect, render};
use crate::{
    cli::{DeadLetterArgs, EventArgs, TaskIdArgs},
    protocol::{CancelOutcome, TaskId},
};

fn parse_id(text: &str) -> anyhow::Result<TaskId> {
    TaskId::parse(text).map_err(|e| anyhow!("`{text}` is not a task id: {e}"))
}

fn not_found(id: TaskId) -> anyhow::Error {
    anyhow!("task {id} is not known (never submitted, or its result expired)")
}

/// `status`: the task's record.
pub async fn status(args: &TaskIdArgs) -> anyhow::Result<String> {
    let id = parse_id(&args.task_id)?;
    let client = connect(&args.connect).await?;
    let record = client.status(id).await?.ok_or_else(|| not_found(id))?;
    Ok(if args.connect.json {
        format!("{}\n", render::record_json(&record))
    } else {
        render::record_text(&record)
    })
}

/// `cancel`: cancels the task and says what happened.
pub async fn cancel(args: &TaskIdArgs) -> anyhow::Result<String> {
    let id = parse_id(&args.task_id)?;
    let client = connect(&args.connect).await?;
    let outcome = client.cancel(id).await?;
    let (word, text) = match outcome {
        CancelOutcome::Cancelled => ("cancelled", format!("task {id} cancelled before it ran")),
        CancelOutcome::Signalled => (
            "signalled",
            format!("task {id} is with its worker (running, or prefetched and about to start); the worker was told to stop it"),
        ),
        CancelOutcome::AlreadyFinished(status) => (
            "already_finished",
            format!("task {id} had already finished: {}", status.as_str()),
        ),
        CancelOutcome::NotFound => return Err(not_found(id)),
        other => ("unknown", format!("task {id}: {other:?}")),
    };
    Ok(if args.connect.json {
        format!(
            "{}\n",
            serde_json::json!({"task_id": id.to_string(), "outcome": word})
        )
    } else {
        format!("{text}\n")
    })
}

/// `dead-letters`: lists them, or replays one.
pub async fn dead_letters(args: &DeadLetterArgs) -> anyhow::Result<String> {
    let client = connect(&args.connect).await?;
    if let Some(text) = &args.replay {
        let id = parse_id(text)?;
        client.replay(id).await?;
        return Ok(if args.connect.json {
            format!(
                "{}\n",
                serde_json::json!({"task_id": id.to_string(), "outcome": "queued"})
            )
        } else {
            format!("task {id} queued again\n")
        });
    }
    let records = client.dead_letters().await?;
    if args.connect.json {
        let list: Vec<_> = records.iter().map(render::record_json).collect();
        return Ok(format!("{}\n", serde_json::Value::Array(list)));
    }
    if records.is_empty() {
        return Ok("no dead letters\n".to_string());
    }
    Ok(records
        .iter()
        .map(|r| {
            format!(
                "{} {} deliveries={} {}\n",
                r.task_id,
                r.name,
                r.delivery_count,
                r.error.as_ref().map(|e| e.message.as_str()).unwrap_or("")
            )
        })
        .collect())
}

/// `events`: the control plane's recent events, oldest first.
pub async fn events(args: &EventArgs) -> anyhow::Result<String> {
    let client = connect(&args.connect).await?;
    let events = client.events().await?;
    if args.connect.json {
        let list: Vec<_> = events
            .iter()
            .map(|e| {
                serde_json::json!({
                    "at": e.at_ms,
                    "kind": e.kind,
                    "subject": e.subject,
                    "message": e.message,
                })
            })
            .collect();
        return Ok(format!("{}\n", serde_json::Value::Array(list)));
    }
    if events.is_empty() {
        return Ok("no events\n".to_string());
    }
    Ok(events
        .iter()
        .map(|e| {
            format!(
                "{} {} {}: {}\n",
                render::local_time(e.at_ms),
                e.kind,
                e.subject,
                e.message
            )
        })
        .collect())
}
