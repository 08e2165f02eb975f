//! `fastworker list`: the tasks a set of plugins serves.

use std::fmt::Write as _;

use chrono::TimeZone;

use crate::{
    cli::ListArgs,
    control_plane::periodic::{next_cron, parse_cron},
    plugin::loader::{Periodic, PeriodicSchedule},
    plugin::{registry::load_modules, PluginLoader, PluginRegistry, TaskHandle},
    protocol::now_ms,
};

/// When a periodic task fires next, as people read it.
fn next_fire(periodic: &Periodic) -> String {
    match &periodic.schedule {
        PeriodicSchedule::Interval(_) => "when the control plane starts, then on schedule".into(),
        PeriodicSchedule::Cron(expr) => match parse_cron(expr) {
            Ok(cron) => next_cron(&cron, now_ms())
                .and_then(|ms| chrono::Local.timestamp_millis_opt(ms as i64).single())
                .map(|t| t.format("%Y-%m-%d %H:%M %Z").to_string())
                .unwrap_or_else(|| "never".into()),
            Err(err) => format!("never ({err})"),
        },
    }
}

/// Loads the plugins and renders the listing.
pub fn run(args: &ListArgs) -> anyhow::Result<String> {
    let plugin_dir = args.plugins.plugin_dir.as_path();
    let loader = PluginLoader::new()?;
    let loaded = load_modules(&loader, &args.task_modules, plugin_dir)?;
    Ok(render(&loaded.registry, args))
}

fn wanted(task: &TaskHandle, args: &ListArgs) -> bool {
    !args.list_periodic || task.info().periodic.is_some()
}

fn describe(task: &TaskHandle, with_plugin: bool) -> String {
    let info = task.info();
    let mut line = format!("{} {}", info.name, info.signature);
    if let Some(periodic) = &info.periodic {
        let _ = write!(line, "  [{periodic}; next: {}]", next_fire(periodic));
    }
    if with_plugin {
        let plugin = task.plugin();
        let _ = write!(line, "  ({} {})", plugin.name, plugin.version);
    }
    if !info.doc.is_empty() {
        let _ = write!(line, "  — {}", info.doc);
    }
    line
}

/// The listing as text: one task a line, or grouped by plugin with `--tree`.
pub fn render(registry: &PluginRegistry, args: &ListArgs) -> String {
    let mut out = String::new();
    if args.tree {
        for plugin in registry.plugins() {
            let tasks: Vec<&TaskHandle> = registry
                .tasks()
                .into_iter()
                .filter(|t| std::sync::Arc::ptr_eq(t.plugin(), plugin) && wanted(t, args))
                .collect();
            if tasks.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "{} {} ({})",
                plugin.name,
                plugin.version,
                plugin.source.display()
            );
            for (i, task) in tasks.iter().enumerate() {
                let branch = if i + 1 == tasks.len() {
                    "└──"
                } else {
                    "├──"
                };
                let _ = writeln!(out, "{branch} {}", describe(task, false));
            }
        }
    } else {
        for task in registry.tasks().into_iter().filter(|t| wanted(t, args)) {
            let _ = writeln!(out, "{}", describe(task, true));
        }
    }
    if out.is_empty() {
        out.push_str(if args.list_periodic {
            "no periodic tasks\n"
        } else {
            "no tasks\n"
        });
    }
    out
}
