//! The command line: every subcommand and flag, with the original's defaults and
//! `FASTWORKER_*` environment variables (a flag beats its variable).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// fastworker: a brokerless distributed task host.
#[derive(Debug, Parser)]
#[command(name = "fastworker", version, about, long_about = None)]
pub struct Cli {
    /// How much to log: DEBUG, INFO, WARNING or ERROR.
    #[arg(long, global = true, env = "FASTWORKER_LOG_LEVEL", default_value = "INFO", value_parser = parse_log_level)]
    pub log_level: LogLevel,

    /// Where bare `--task-modules` names are looked up (`mytasks` → mytasks.so or libmytasks.so).
    #[arg(
        long,
        global = true,
        env = "FASTWORKER_PLUGIN_DIR",
        default_value = "./plugins"
    )]
    pub plugin_dir: PathBuf,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log verbosity, with the original's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Everything, including abi_stable's full layout reports.
    Debug,
    /// The default.
    Info,
    /// Problems only.
    Warning,
    /// Errors only.
    Error,
}

fn parse_log_level(s: &str) -> Result<LogLevel, String> {
    match s.to_ascii_uppercase().as_str() {
        "DEBUG" | "TRACE" => Ok(LogLevel::Debug),
        "INFO" => Ok(LogLevel::Info),
        "WARNING" | "WARN" => Ok(LogLevel::Warning),
        "ERROR" | "CRITICAL" => Ok(LogLevel::Error),
        other => Err(format!(
            "unknown log level `{other}` (DEBUG, INFO, WARNING, ERROR)"
        )),
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane: accept tasks, queue them by priority, dispatch them to subworkers.
    ControlPlane(ControlPlaneArgs),
    /// Run a subworker: register with the control plane and run the tasks it hands out.
    Subworker(SubworkerArgs),
    /// Submit a task and (by default) wait for its result.
    Submit(SubmitArgs),
    /// List the tasks the given plugins serve.
    List(ListArgs),
    /// Show a task's status and result.
    Status(TaskIdArgs),
    /// Cancel a task.
    Cancel(TaskIdArgs),
    /// List dead-lettered tasks (their workers kept dying), or replay one.
    DeadLetters(DeadLetterArgs),
    /// Show the control plane's recent events: plugin reloads (ok or rejected, with
    /// plugin and versions), subworkers registering, restarting, lost.
    Events(EventArgs),
}

/// `fastworker events`.
#[derive(Debug, Clone, Args)]
pub struct EventArgs {
    /// Where the control plane is.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `fastworker dead-letters`.
#[derive(Debug, Clone, Args)]
pub struct DeadLetterArgs {
    /// Queue this dead-lettered task again instead of listing.
    #[arg(long, value_name = "TASK_ID")]
    pub replay: Option<String>,
    /// Where the control plane is.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Where a client finds the control plane.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// The control plane's discovery address; used when --control-plane-address is not given.
    #[arg(
        long,
        env = "FASTWORKER_DISCOVERY_ADDRESS",
        default_value = "tcp://127.0.0.1:5550"
    )]
    pub discovery_address: String,
    /// The control plane's address (skips discovery).
    #[arg(long, env = "FASTWORKER_CONTROL_PLANE_ADDRESS")]
    pub control_plane_address: Option<String>,
    /// Seconds to wait for the control plane before giving up.
    #[arg(long, default_value_t = 5.0)]
    pub connect_timeout: f64,
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `fastworker control-plane`.
#[derive(Debug, Clone, Args)]
pub struct ControlPlaneArgs {
    /// This control plane's id.
    #[arg(long, env = "FASTWORKER_WORKER_ID", default_value = "control-plane")]
    pub worker_id: String,
    /// Where clients and subworkers connect.
    #[arg(
        long,
        env = "FASTWORKER_BASE_ADDRESS",
        default_value = "tcp://127.0.0.1:5555"
    )]
    pub base_address: String,
    /// Where the control plane announces its endpoints.
    #[arg(
        long,
        env = "FASTWORKER_DISCOVERY_ADDRESS",
        default_value = "tcp://127.0.0.1:5550"
    )]
    pub discovery_address: String,
    /// A second port on the base address's host, for subworkers only (0 = none).
    #[arg(long, env = "FASTWORKER_SUBWORKER_PORT", default_value_t = 5560)]
    pub subworker_port: u16,
    /// How many results the cache keeps.
    #[arg(long, env = "FASTWORKER_RESULT_CACHE_SIZE", default_value_t = 10_000)]
    pub result_cache_size: u64,
    /// Seconds a result stays in the cache.
    #[arg(long, env = "FASTWORKER_RESULT_CACHE_TTL", default_value_t = 3600)]
    pub result_cache_ttl: u64,
    /// Plugin files, directories or bare names, for running tasks here.
    #[arg(long, num_args = 1..)]
    pub task_modules: Vec<String>,
    /// Do not serve the dashboard.
    #[arg(long)]
    pub no_gui: bool,
    /// Dashboard host.
    #[arg(long, env = "FASTWORKER_GUI_HOST", default_value = "127.0.0.1")]
    pub gui_host: String,
    /// Dashboard port.
    #[arg(long, env = "FASTWORKER_GUI_PORT", default_value_t = 8080)]
    pub gui_port: u16,
    /// How many tasks the control plane runs at once itself.
    #[arg(long, env = "FASTWORKER_WORKER_CONCURRENCY", default_value_t = 1)]
    pub concurrency: u32,
    /// Seconds without a message after which a subworker is inactive.
    #[arg(long, env = "FASTWORKER_INACTIVE_AFTER", default_value_t = 30.0)]
    pub inactive_after: f64,
    /// Seconds to wait for in-flight tasks at shutdown.
    #[arg(long, default_value_t = 30.0)]
    pub shutdown_grace: f64,
    /// Do not watch --task-modules for changes (no hot reload).
    #[arg(long, env = "FASTWORKER_NO_WATCH")]
    pub no_watch: bool,
    /// Deliveries after which a task whose worker keeps getting lost is dead-lettered.
    #[arg(long, env = "FASTWORKER_MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: u32,
    /// After this many reloads of its own plugins the control plane stops watching them
    /// (old versions stay mapped; it cannot restart in place without losing its queue).
    #[arg(long, env = "FASTWORKER_MAX_RELOADS", default_value_t = 64)]
    pub max_reloads: u64,
}

/// `fastworker subworker`.
#[derive(Debug, Clone, Args)]
pub struct SubworkerArgs {
    /// Unique subworker identifier.
    #[arg(long, env = "FASTWORKER_WORKER_ID")]
    pub worker_id: String,
    /// Address of the control plane.
    #[arg(
        long,
        env = "FASTWORKER_CONTROL_PLANE_ADDRESS",
        required_unless_present = "discovery_address"
    )]
    pub control_plane_address: Option<String>,
    /// Base address for this subworker: it answers status queries there.
    #[arg(long, env = "FASTWORKER_BASE_ADDRESS")]
    pub base_address: Option<String>,
    /// Discovery address (used when --control-plane-address is not given).
    #[arg(long, env = "FASTWORKER_DISCOVERY_ADDRESS")]
    pub discovery_address: Option<String>,
    /// Task modules to load.
    #[arg(long, num_args = 1..)]
    pub task_modules: Vec<String>,
    /// How many tasks this subworker runs at once.
    #[arg(long, env = "FASTWORKER_WORKER_CONCURRENCY", default_value_t = 1)]
    pub concurrency: u32,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 1.0)]
    pub heartbeat_interval: f64,
    /// Do not watch --task-modules for changes (no hot reload).
    #[arg(long, env = "FASTWORKER_NO_WATCH")]
    pub no_watch: bool,
    /// After this many plugin reloads, drain and restart in place (old versions stay
    /// mapped until the process restarts).
    #[arg(long, env = "FASTWORKER_MAX_RELOADS", default_value_t = 64)]
    pub max_reloads: u64,
    /// Seconds a task may run past its timeout, ignoring its cancelled context, before
    /// this subworker drains and restarts in place to free the stuck thread.
    #[arg(long, default_value_t = 10.0)]
    pub hung_task_grace: f64,
}

/// Task priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PriorityArg {
    /// First.
    Critical,
    /// Second.
    High,
    /// Third (the default).
    Normal,
    /// Last.
    Low,
}

/// `fastworker submit`.
#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// The task to run.
    #[arg(long, required_unless_present = "batch")]
    pub task_name: Option<String>,
    /// Arguments: each is a bool, an int, a float, a JSON value, else a string.
    #[arg(long, num_args = 0.., allow_negative_numbers = true)]
    pub args: Vec<String>,
    /// Priority.
    #[arg(long, value_enum, ignore_case = true, default_value = "normal")]
    pub priority: PriorityArg,
    /// Print the task id and return without waiting.
    #[arg(long)]
    pub non_blocking: bool,
    /// Run no sooner than this many seconds from now.
    #[arg(long, conflicts_with = "eta")]
    pub countdown: Option<f64>,
    /// Run no sooner than this time: RFC 3339 (`2026-11-27T18:00:00Z`) or Unix seconds.
    #[arg(long)]
    pub eta: Option<String>,
    /// Retries after a failure (default: the task's own, else 0).
    #[arg(long)]
    pub max_retries: Option<u32>,
    /// Seconds before the first retry (default: the task's own, else 60).
    #[arg(long)]
    pub retry_delay: Option<f64>,
    /// Multiplier for each later retry delay (default: the task's own, else 2).
    #[arg(long)]
    pub retry_backoff: Option<f64>,
    /// Randomize each retry delay by up to ±25%.
    #[arg(long)]
    pub retry_jitter: bool,
    /// Seconds one attempt may run (default: the task's own, else none).
    #[arg(long)]
    pub timeout: Option<f64>,
    /// When the task ends, send its result to this ZeroMQ address (a DEALER connects
    /// and sends one JSON frame).
    #[arg(long)]
    pub callback_address: Option<String>,
    /// Text sent back with the callback.
    #[arg(long, requires = "callback_address")]
    pub callback_data: Option<String>,
    /// Submit every task in this file of JSON lines (`{"task_name": "add", "args": [1, 2],
    /// "priority": "high", "countdown": 5}`), all in one message: all accepted or none.
    #[arg(long, value_name = "FILE", conflicts_with = "task_name")]
    pub batch: Option<std::path::PathBuf>,
    /// Seconds to wait for the result before giving up (the task keeps its place).
    #[arg(long, default_value_t = 300.0)]
    pub wait: f64,
    /// Where the control plane is.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `fastworker list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Plugin files, directories or bare names.
    #[arg(long, num_args = 1.., required = true)]
    pub task_modules: Vec<String>,
    /// Show only periodic tasks, with their schedules.
    #[arg(long)]
    pub list_periodic: bool,
    /// Group tasks by plugin.
    #[arg(long)]
    pub tree: bool,
}

/// `status` and `cancel`.
#[derive(Debug, Clone, Args)]
pub struct TaskIdArgs {
    /// The task id.
    #[arg(long)]
    pub task_id: String,
    /// Where the control plane is.
    #[command(flatten)]
    pub connect: ConnectArgs,
}
