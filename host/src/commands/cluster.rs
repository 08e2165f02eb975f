//! `fastworker tasks` (what a running cluster serves) and `fastworker queued` (what
//! waits to run, and purging it).

use std::fmt::Write as _;

use super::{connect::connect, render};
use crate::{
    cli::{QueuedArgs, TasksArgs},
    protocol::{
        json::{QueuedJson, ServedTaskJson},
        QueueFilter,
    },
};

/// `tasks`: one block a task, or a JSON array.
pub async fn tasks(args: &TasksArgs) -> anyhow::Result<String> {
    let client = connect(&args.connect).await?;
    let tasks = client.tasks().await?;
    let tasks: Vec<ServedTaskJson> = tasks.iter().map(ServedTaskJson::from).collect();
    if args.connect.json {
        return Ok(format!("{}\n", serde_json::to_string(&tasks)?));
    }
    if tasks.is_empty() {
        return Ok(
            "no tasks are served: no subworker (or own subworker) has registered any\n".into(),
        );
    }
    let mut out = String::new();
    for task in &tasks {
        let title = if task.signature.is_empty() {
            task.name.clone()
        } else if task.signature.starts_with(&task.name) {
            task.signature.clone()
        } else {
            format!("{}{}", task.name, task.signature)
        };
        let _ = writeln!(out, "{title}");
        if !task.doc.is_empty() {
            let _ = writeln!(out, "    {}", task.doc);
        }
        let timeout = task
            .timeout
            .map_or("none".to_string(), |t| format!("{t} s"));
        let _ = writeln!(
            out,
            "    defaults: priority {}, timeout {timeout}, retries {} (delay {} s, backoff x{}, at most {} s)",
            task.priority, task.max_retries, task.retry_delay, task.retry_backoff, task.retry_backoff_max
        );
        if let Some(periodic) = &task.periodic {
            let _ = writeln!(out, "    periodic: {}", schedule_text(periodic));
        }
        let _ = writeln!(out, "    served by: {}", task.workers.join(", "));
    }
    Ok(out)
}

/// `queued`: the waiting tasks in the order they would run, or `--purge NAME`.
pub async fn queued(args: &QueuedArgs) -> anyhow::Result<String> {
    let client = connect(&args.connect).await?;
    let mut filter = QueueFilter::all();
    filter.priority = args.priority.map(Into::into);
    if let Some(name) = &args.purge {
        filter.name = Some(name.clone());
        let (total, ids) = client.purge(filter).await?;
        if args.connect.json {
            let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
            return Ok(format!(
                "{}\n",
                serde_json::json!({"purged": total, "task_ids": ids})
            ));
        }
        let scope = match args.priority {
            Some(p) => format!(
                "{name} at priority {}",
                crate::protocol::Priority::from(p).as_str()
            ),
            None => name.clone(),
        };
        return Ok(match total {
            0 => format!("no waiting task of {scope} to purge\n"),
            1 => format!("purged 1 waiting task of {scope}: it ended cancelled\n"),
            n => format!("purged {n} waiting tasks of {scope}: they ended cancelled\n"),
        });
    }
    filter.name = args.task_name.clone();
    filter.limit = args.limit;
    let (tasks, total) = client.queued(filter).await?;
    let tasks: Vec<QueuedJson> = tasks.iter().map(QueuedJson::from).collect();
    if args.connect.json {
        return Ok(format!(
            "{}\n",
            serde_json::json!({"total": total, "tasks": tasks})
        ));
    }
    if tasks.is_empty() {
        return Ok("no tasks are waiting\n".into());
    }
    let mut out = String::new();
    for task in &tasks {
        let when = task
            .not_before
            .map(|ms| format!(" not before {}", render::local_time(ms)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{} {} {} {}{when} (attempts {})",
            task.task_id, task.task_name, task.status, task.priority, task.attempts
        );
    }
    if total > tasks.len() as u64 {
        let _ = writeln!(
            out,
            "... {} of {total} shown (--limit {}, at most 10000)",
            tasks.len(),
            args.limit
        );
    }
    Ok(out)
}

/// A periodic schedule for people: `every 30 s`, `cron */5 * * * *`, with its limits.
fn schedule_text(schedule: &serde_json::Value) -> String {
    let mut text = match (schedule["every"].as_f64(), schedule["cron"].as_str()) {
        (Some(every), _) => format!("every {every} s"),
        (None, Some(cron)) => format!("cron {cron}"),
        (None, None) => "yes".to_string(),
    };
    if let Some(count) = schedule["repeat_count"].as_u64() {
        let _ = write!(text, ", {count} runs at most");
    }
    if let Some(until) = schedule["repeat_until"].as_i64() {
        let _ = write!(
            text,
            ", until {}",
            render::local_time((until.max(0) as u64) * 1000)
        );
    }
    text
}
