//! The command line: every subcommand and flag, with the original's defaults and
//! `FASTWORKER_*` environment variables (a flag beats its variable).

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::transport::{
    auth::{ClusterKey, KeyError},
    TransportConfig,
};

/// fastworker: a brokerless distributed task host.
#[derive(Debug, Parser)]
#[command(name = "fastworker", version, about, long_about = None, after_help = examples::TOP)]
pub struct Cli {
    /// How much to log: DEBUG, INFO, WARNING or ERROR.
    #[arg(long, global = true, env = "FASTWORKER_LOG_LEVEL", default_value = "INFO", value_parser = parse_log_level)]
    pub log_level: LogLevel,

    /// Export each task's spans to this OpenTelemetry collector (OTLP over HTTP/JSON,
    /// e.g. http://127.0.0.1:4318). Needs a binary built with `--features otlp`.
    #[arg(
        long,
        global = true,
        env = "FASTWORKER_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    pub otlp_endpoint: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Command {
    /// The name spans are exported under: `fastworker-<command>`.
    pub fn service_name(&self) -> &'static str {
        match self {
            Command::ControlPlane(_) => "fastworker-control-plane",
            Command::Subworker(_) => "fastworker-subworker",
            Command::Submit(_) => "fastworker-submit",
            Command::Bench(_) => "fastworker-bench",
            _ => "fastworker",
        }
    }
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

impl LogLevel {
    /// As `--log-level` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "DEBUG",
            LogLevel::Info => "INFO",
            LogLevel::Warning => "WARNING",
            LogLevel::Error => "ERROR",
        }
    }
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

/// The subcommands. Each `--help` ends with examples.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane: accept tasks, queue them by priority, dispatch them to subworkers.
    #[command(after_help = examples::CONTROL_PLANE)]
    ControlPlane(ControlPlaneArgs),
    /// Run a subworker: register with the control plane and run the tasks it hands out.
    #[command(after_help = examples::SUBWORKER)]
    Subworker(SubworkerArgs),
    /// Submit a task and (by default) wait for its result.
    #[command(after_help = examples::SUBMIT)]
    Submit(SubmitArgs),
    /// List the tasks the given plugins serve.
    #[command(after_help = examples::LIST)]
    List(ListArgs),
    /// Show a task's status and result.
    #[command(after_help = examples::STATUS)]
    Status(TaskIdArgs),
    /// Cancel a task.
    #[command(after_help = examples::CANCEL)]
    Cancel(TaskIdArgs),
    /// List dead-lettered tasks (their workers kept dying), or replay one.
    #[command(after_help = examples::DEAD_LETTERS)]
    DeadLetters(DeadLetterArgs),
    /// Show the control plane's recent events: plugin reloads (ok or rejected, with
    /// plugin and versions), subworkers registering, restarting, lost.
    #[command(after_help = examples::EVENTS)]
    Events(EventArgs),
    /// List the tasks a running cluster serves: signatures, docs, defaults, workers.
    #[command(after_help = examples::TASKS)]
    Tasks(TasksArgs),
    /// List the tasks waiting to run (queued, scheduled, retrying), or purge them.
    #[command(after_help = examples::QUEUED)]
    Queued(QueuedArgs),
    /// Write a new random cluster key to FILE (mode 0600), for --auth-key-file.
    #[command(after_help = examples::KEYGEN)]
    Keygen(KeygenArgs),
    /// Create a plugin crate NAME with one task, ready for `cargo build --release`.
    #[command(after_help = examples::NEW)]
    New(NewArgs),
    /// Print shell completions for bash, zsh or fish.
    #[command(after_help = examples::COMPLETIONS)]
    Completions(CompletionsArgs),
    /// Measure a cluster started here (throughput, round trips, CPU and memory per
    /// process) against the ZeroMQ floor (a bare echo and a three-process relay).
    #[command(after_help = examples::BENCH)]
    Bench(BenchArgs),
    /// One process of the bench's ZeroMQ floor (started by `fastworker bench`).
    #[command(hide = true)]
    BenchFloor(BenchFloorArgs),
}

/// The examples at the end of each command's `--help`.
mod examples {
    pub const TOP: &str = "Examples:
  fastworker control-plane --task-modules mytasks --data-dir fastworker-data
  fastworker subworker --worker-id sw1 --control-plane-address tcp://127.0.0.1:5555 --task-modules mytasks
  fastworker submit --task-name add --args 5 3
  fastworker tasks
  fastworker new greeter

Each command's --help ends with its own examples.";
    pub const CONTROL_PLANE: &str = "Examples:
  fastworker control-plane --task-modules mytasks --data-dir fastworker-data
  fastworker control-plane --base-address tcp://0.0.0.0:5555 --auth-key-file cluster.key
  fastworker control-plane --no-gui --concurrency 4 --task-modules ./plugins";
    pub const SUBWORKER: &str = "Examples:
  fastworker subworker --worker-id sw1 --control-plane-address tcp://127.0.0.1:5555 \\
      --base-address tcp://127.0.0.1:5561 --task-modules mytasks
  fastworker subworker --worker-id sw2 --discovery-address tcp://127.0.0.1:5550 --task-modules ./plugins --concurrency 8";
    pub const SUBMIT: &str = "Examples:
  fastworker submit --task-name add --args 5 3
  fastworker submit --task-name echo --args '{\"a\": [1, 2]}' --json
  fastworker submit --task-name sleep_ms --args 5000 --priority high --non-blocking
  fastworker submit --task-name add --args 1 2 --countdown 60 --max-retries 3 --retry-delay 5
  fastworker submit --batch tasks.jsonl";
    pub const LIST: &str = "Examples:
  fastworker list --task-modules mytasks
  fastworker list --task-modules ./plugins --tree
  fastworker list --task-modules mytasks --list-periodic";
    pub const STATUS: &str = "Examples:
  fastworker status --task-id 7f1c9c1e-2b1a-4f65-9a57-1d0c2f3e4b5a
  fastworker status --task-id 7f1c9c1e-2b1a-4f65-9a57-1d0c2f3e4b5a --json";
    pub const CANCEL: &str = "Examples:
  fastworker cancel --task-id 7f1c9c1e-2b1a-4f65-9a57-1d0c2f3e4b5a";
    pub const DEAD_LETTERS: &str = "Examples:
  fastworker dead-letters
  fastworker dead-letters --replay 7f1c9c1e-2b1a-4f65-9a57-1d0c2f3e4b5a";
    pub const EVENTS: &str = "Examples:
  fastworker events
  fastworker events --json --control-plane-address tcp://127.0.0.1:5555";
    pub const TASKS: &str = "Examples:
  fastworker tasks
  fastworker tasks --json";
    pub const QUEUED: &str = "Examples:
  fastworker queued
  fastworker queued --task-name sleep_ms --priority low --limit 20
  fastworker queued --purge sleep_ms";
    pub const KEYGEN: &str = "Examples:
  fastworker keygen cluster.key";
    pub const NEW: &str = "Examples:
  fastworker new greeter && (cd greeter && cargo build --release)
  fastworker new greeter --sdk-path ../fastworker/plugin-sdk";
    pub const BENCH: &str = "Examples:
  fastworker bench
  fastworker bench --quick --json
  fastworker bench --plugin target/release/libmytasks.so --tasks 50000";
    pub const COMPLETIONS: &str = "Examples:
  fastworker completions bash > /etc/bash_completion.d/fastworker
  fastworker completions zsh > \"${fpath[1]}/_fastworker\"
  fastworker completions fish > ~/.config/fish/completions/fastworker.fish";
}

/// `fastworker bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Print one JSON object instead of the markdown table.
    #[arg(long)]
    pub json: bool,
    /// Tasks per throughput measurement.
    #[arg(long, default_value_t = 20_000)]
    pub tasks: usize,
    /// Sequential round trips per latency measurement.
    #[arg(long, default_value_t = 2_000)]
    pub round_trips: usize,
    /// Throughput measurements per case, each of --tasks tasks: the median is reported
    /// (one run of a fifth of a second swings by a third on a shared machine).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
    /// Only the main case (control plane + 1 subworker) and the floor.
    #[arg(long)]
    pub quick: bool,
    /// The plugin with the `add` and `echo` tasks (default: libmytasks next to this
    /// binary, else ./plugins/mytasks.so).
    #[arg(long, value_name = "FILE")]
    pub plugin: Option<PathBuf>,
}

/// A process of the bench's floor.
#[derive(Debug, Clone, Args)]
pub struct BenchFloorArgs {
    /// `echo` (a ROUTER that sends every message back), or `relay` (a ROUTER in front,
    /// a DEALER behind, forwarding both ways).
    #[arg(value_parser = ["echo", "relay"])]
    pub role: String,
    /// Where it binds (echo), or its front (relay).
    #[arg(long)]
    pub bind: String,
    /// The relay's back: the echo it connects to.
    #[arg(long)]
    pub connect: Option<String>,
}

/// `fastworker completions`.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `fastworker tasks`.
#[derive(Debug, Clone, Args)]
pub struct TasksArgs {
    /// Where the control plane is.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `fastworker queued`.
#[derive(Debug, Clone, Args)]
pub struct QueuedArgs {
    /// Only tasks of this name.
    #[arg(long)]
    pub task_name: Option<String>,
    /// Only tasks of this priority.
    #[arg(long, value_enum, ignore_case = true)]
    pub priority: Option<PriorityArg>,
    /// Show at most this many, 1 to 10000 (the total is always shown).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
    /// Cancel every waiting task of this name (with --priority: of that priority
    /// only) instead of listing; running tasks are left alone.
    #[arg(long, value_name = "TASK_NAME", conflicts_with = "task_name")]
    pub purge: Option<String>,
    /// Where the control plane is.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `fastworker new`.
#[derive(Debug, Clone, Args)]
pub struct NewArgs {
    /// The crate's name (letters, digits, - and _); also its directory unless --path.
    pub name: String,
    /// Where to create it (default: ./NAME); must not exist.
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,
    /// Depend on the SDK in this directory (a fastworker checkout's plugin-sdk)
    /// instead of crates.io; still pinned to this host's version.
    #[arg(long, value_name = "DIR")]
    pub sdk_path: Option<PathBuf>,
}

/// Where bare `--task-modules` names are looked up: the commands that load plugins
/// take it.
#[derive(Debug, Clone, Args)]
pub struct PluginDirArgs {
    /// Where bare `--task-modules` names are looked up (`mytasks` → mytasks.so or libmytasks.so).
    #[arg(long, env = "FASTWORKER_PLUGIN_DIR", default_value = "./plugins")]
    pub plugin_dir: PathBuf,
}

/// `fastworker keygen`.
#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// Where to write the key; an existing file is never overwritten.
    pub file: PathBuf,
}

/// The cluster key and the message limits: every command that talks to other
/// fastworker processes takes them. The key may also come from the
/// `FASTWORKER_AUTH_KEY` environment variable (64 hex digits; two, comma-separated,
/// during a rotation), never from the command line, where `ps` would show it.
#[derive(Debug, Clone, Args)]
pub struct SecurityArgs {
    /// File with the cluster key (`fastworker keygen FILE` makes one). With a key,
    /// only peers that know it get in, and every message is sealed.
    #[arg(long, env = "FASTWORKER_AUTH_KEY_FILE", value_name = "FILE")]
    pub auth_key_file: Option<PathBuf>,
    /// The longest message accepted from a peer (all its frames), e.g. 80MiB; a peer
    /// that declares more is disconnected.
    #[arg(long, env = "FASTWORKER_MAX_MESSAGE_SIZE", default_value = "80MiB", value_parser = parse_size)]
    pub max_message_size: u64,
    /// The largest task payload or result accepted, e.g. 64MiB.
    #[arg(long, env = "FASTWORKER_MAX_PAYLOAD_SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub max_payload_size: u64,
}

/// How a process that listens treats incoming connections.
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// Connections accepted at once (lowered at start when the descriptor limit
    /// cannot hold that many).
    #[arg(long, env = "FASTWORKER_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Seconds a new connection has to finish its handshake (and, with a key, prove
    /// it) before it is closed.
    #[arg(long, default_value_t = 5.0)]
    pub handshake_timeout: f64,
    /// Listen on a non-loopback address without a cluster key (anyone who can reach
    /// the port can then submit, read, cancel and register).
    #[arg(long)]
    pub insecure: bool,
}

/// Parses `80MiB`, `64MB`, `1GiB`, `512KiB`, or plain bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size (e.g. 80MiB or 1048576)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("`{text}`: unknown unit (use B, KiB, MiB or GiB)")),
    };
    n.checked_mul(mult)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("`{text}` is out of range"))
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

/// Where a control plane announces itself unless told otherwise.
pub const DEFAULT_DISCOVERY: &str = "tcp://127.0.0.1:5550";

/// Parses seconds: a finite number, 0 or more.
pub fn parse_secs(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(secs) if (0.0..=1e9).contains(&secs) => Ok(secs),
        _ => Err(format!(
            "`{text}` is not a number of seconds (0 or more, e.g. 2.5)"
        )),
    }
}

/// Where a client finds the control plane.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// The control plane's discovery address; used when --control-plane-address is not given.
    #[arg(long, env = "FASTWORKER_DISCOVERY_ADDRESS", default_value = DEFAULT_DISCOVERY)]
    pub discovery_address: String,
    /// The control plane's address (skips discovery).
    #[arg(long, env = "FASTWORKER_CONTROL_PLANE_ADDRESS")]
    pub control_plane_address: Option<String>,
    /// Seconds to wait for the control plane before giving up.
    #[arg(long, default_value_t = 5.0, value_parser = parse_secs)]
    pub connect_timeout: f64,
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// The cluster key and limits.
    #[command(flatten)]
    pub security: SecurityArgs,
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
    /// Bytes the result cache may hold (values, names, errors), e.g. 256MiB; the least
    /// recently read results go first.
    #[arg(long, env = "FASTWORKER_RESULT_CACHE_MAX_BYTES", default_value = "256MiB", value_parser = parse_size)]
    pub result_cache_max_bytes: u64,
    /// Tasks held at most (queued, scheduled, retrying or running); past it,
    /// submissions are refused with `queue full`.
    #[arg(long, env = "FASTWORKER_MAX_QUEUED", default_value_t = 1_000_000)]
    pub max_queued: usize,
    /// Payload bytes held at most, e.g. 1GiB; past it, submissions are refused with
    /// `queue full`.
    #[arg(long, env = "FASTWORKER_MAX_QUEUED_BYTES", default_value = "1GiB", value_parser = parse_size)]
    pub max_queued_bytes: u64,
    /// Seconds tasks may wait for a worker that serves their name (after the last one
    /// left) before they fail saying so.
    #[arg(long, env = "FASTWORKER_UNSERVED_TIMEOUT", default_value_t = 300.0)]
    pub unserved_timeout: f64,
    /// Keep accepted tasks, results, dead letters, periodic schedules and subworker
    /// identities in this directory (an embedded database), so a restart resumes them.
    #[arg(long, env = "FASTWORKER_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Plugin files, directories or bare names that the control plane's own subworker
    /// (a child process it supervises) runs when no other subworker can.
    #[arg(long, num_args = 1..)]
    pub task_modules: Vec<String>,
    /// Where bare names are looked up.
    #[command(flatten)]
    pub plugins: PluginDirArgs,
    /// Do not serve the dashboard, the HTTP API or /metrics.
    #[arg(long)]
    pub no_gui: bool,
    /// Serve the dashboard (FASTWORKER_GUI_ENABLED=false is --no-gui).
    #[arg(
        long,
        env = "FASTWORKER_GUI_ENABLED",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
        hide = true
    )]
    pub gui_enabled: bool,
    /// Dashboard host.
    #[arg(long, env = "FASTWORKER_GUI_HOST", default_value = "127.0.0.1")]
    pub gui_host: String,
    /// Dashboard port (0 picks a free one and prints it; a busy port is an error).
    #[arg(long, env = "FASTWORKER_GUI_PORT", default_value_t = 8080)]
    pub gui_port: u16,
    /// The origin allowed to call the HTTP API from a browser page (`*` for any).
    #[arg(long, env = "FASTWORKER_GUI_CORS_ORIGIN", value_name = "ORIGIN")]
    pub gui_cors_origin: Option<String>,
    /// How many tasks the control plane's own subworker runs at once.
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
    /// The most tasks per slot a subworker is handed when it runs them quickly (up to
    /// 1 ms of their measured run time per slot), so it never waits a round trip
    /// between two short tasks; long tasks are never handed out ahead. 1 turns
    /// prefetching off.
    #[arg(long, env = "FASTWORKER_PREFETCH", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub prefetch: u32,
    /// After this many reloads of its own plugins, the control plane's own subworker
    /// drains and restarts in place (old versions stay mapped until then).
    #[arg(long, env = "FASTWORKER_MAX_RELOADS", default_value_t = 64)]
    pub max_reloads: u64,
    /// Seconds a task in the control plane's own subworker may ignore its timeout
    /// before that child drains and restarts in place to free the thread.
    #[arg(long, default_value_t = 10.0)]
    pub hung_task_grace: f64,
    /// The cluster key and limits.
    #[command(flatten)]
    pub security: SecurityArgs,
    /// Connection limits.
    #[command(flatten)]
    pub listen: ListenArgs,
}

/// `fastworker subworker`.
#[derive(Debug, Clone, Args)]
#[command(group(
    clap::ArgGroup::new("control_plane")
        .required(true)
        .multiple(true)
        .args(["control_plane_address", "discovery_address"])
))]
pub struct SubworkerArgs {
    /// Unique subworker identifier.
    #[arg(long, env = "FASTWORKER_WORKER_ID")]
    pub worker_id: String,
    /// Address of the control plane (or give --discovery-address; with both, this one).
    #[arg(long, env = "FASTWORKER_CONTROL_PLANE_ADDRESS")]
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
    /// Where bare names are looked up.
    #[command(flatten)]
    pub plugins: PluginDirArgs,
    /// How many tasks this subworker runs at once.
    #[arg(long, env = "FASTWORKER_WORKER_CONCURRENCY", default_value_t = 1)]
    pub concurrency: u32,
    /// Microseconds: a task whose recent calls averaged under this runs on the async
    /// runtime's own threads, one at a time, instead of being handed to a call thread
    /// (a hand-off costs more than such a call). 0 turns this off.
    #[arg(long, env = "FASTWORKER_INLINE_BELOW_US", default_value_t = 20)]
    pub inline_below_us: u64,
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
    /// Seconds every slot may be on the same tasks while prefetched tasks wait behind
    /// them before those are handed back to the control plane (to run elsewhere).
    #[arg(long, default_value_t = 0.05)]
    pub handback_after: f64,
    /// Seconds a stop (Ctrl+C, SIGTERM) waits for running tasks before handing them
    /// back to the control plane and exiting; a second Ctrl+C exits at once.
    #[arg(long, env = "FASTWORKER_SHUTDOWN_GRACE", default_value_t = 30.0)]
    pub shutdown_grace: f64,
    /// The cluster key and limits.
    #[command(flatten)]
    pub security: SecurityArgs,
    /// Connection limits (for the status endpoint at --base-address).
    #[command(flatten)]
    pub listen: ListenArgs,
}

/// Task priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PriorityArg {
    /// First.
    Critical,
    /// Second.
    High,
    /// Third.
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
    /// Arguments: each is a bool, an int, a float, `null`, JSON when it starts with
    /// `[`, `{` or `"` (then it must parse), else a string.
    #[arg(long, num_args = 0.., allow_negative_numbers = true)]
    pub args: Vec<String>,
    /// Priority.
    #[arg(long, value_enum, ignore_case = true, default_value = "normal")]
    pub priority: PriorityArg,
    /// Print the task id and return without waiting.
    #[arg(long)]
    pub non_blocking: bool,
    /// Run no sooner than this many seconds from now.
    #[arg(long, conflicts_with = "eta", value_parser = parse_secs)]
    pub countdown: Option<f64>,
    /// Run no sooner than this time: RFC 3339 (`2026-11-27T18:00:00Z`) or Unix seconds.
    #[arg(long)]
    pub eta: Option<String>,
    /// Retries after a failure (default: the task's own, else 0).
    #[arg(long)]
    pub max_retries: Option<u32>,
    /// Seconds before the first retry (default: the task's own, else 60).
    #[arg(long, value_parser = parse_secs)]
    pub retry_delay: Option<f64>,
    /// Multiplier for each later retry delay (default: the task's own, else 2).
    #[arg(long)]
    pub retry_backoff: Option<f64>,
    /// Seconds no retry delay may exceed (default: the task's own, else 3600).
    #[arg(long, value_parser = parse_secs)]
    pub retry_backoff_max: Option<f64>,
    /// Randomize each retry delay by up to ±25%.
    #[arg(long)]
    pub retry_jitter: bool,
    /// Seconds one attempt may run (default: the task's own, else none).
    #[arg(long, value_parser = parse_secs)]
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
    /// Seconds to wait for the result; when they run out the task keeps running, and
    /// `submit` prints its id and exits 3.
    #[arg(long, default_value_t = 300.0, value_parser = parse_secs)]
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
    /// Where bare names are looked up.
    #[command(flatten)]
    pub plugins: PluginDirArgs,
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

impl SecurityArgs {
    /// The cluster key: from --auth-key-file, else from `FASTWORKER_AUTH_KEY`, else none.
    pub fn cluster_key(&self) -> Result<Option<ClusterKey>, KeyError> {
        if let Some(path) = &self.auth_key_file {
            return ClusterKey::load(path).map(Some);
        }
        match std::env::var("FASTWORKER_AUTH_KEY") {
            Ok(text) if !text.trim().is_empty() => ClusterKey::parse(&text)
                .map(Some)
                .map_err(|e| KeyError::Format(format!("FASTWORKER_AUTH_KEY: {e}"))),
            _ => Ok(None),
        }
    }

    /// What the transport enforces, for a process that only connects.
    pub fn transport_config(&self) -> Result<TransportConfig, KeyError> {
        Ok(TransportConfig::default()
            .with_max_message_bytes(self.max_message_size)
            .with_key(self.cluster_key()?))
    }

    /// What the transport enforces, for a process that also listens on `addresses`:
    /// refuses a non-loopback address without a key unless --insecure.
    pub fn listen_config(
        &self,
        listen: &ListenArgs,
        addresses: &[&str],
    ) -> Result<TransportConfig, String> {
        let mut config = self.transport_config().map_err(|e| e.to_string())?;
        if config.key.is_none() && !listen.insecure {
            if let Some(open) = addresses.iter().find(|a| !is_loopback_endpoint(a)) {
                return Err(format!(
                    "refusing to listen on {open} without a cluster key: anyone who can reach it could submit, read, cancel and register. Give --auth-key-file (make a key with `fastworker keygen FILE`), or --insecure on a network you trust"
                ));
            }
        }
        config.max_connections = listen.max_connections.max(1);
        config.handshake_timeout =
            Duration::from_secs_f64(listen.handshake_timeout.clamp(0.05, 3600.0));
        Ok(config)
    }
}

/// Is `endpoint` (`tcp://host:port`) on the loopback interface?
pub fn is_loopback_endpoint(endpoint: &str) -> bool {
    let host = endpoint
        .strip_prefix("tcp://")
        .and_then(|rest| rest.rsplit_once(':'))
        .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'));
    match host {
        Some("localhost") => true,
        Some(h) => h
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}
