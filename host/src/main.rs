//! The `fastworker` binary: parse the command line, set up logging, run the command,
//! and decide the exit code.

use std::{future::Future, io::IsTerminal, process::ExitCode};

use clap::Parser;
use fastworker_host::{
    plugin::{watch::SetupError, LoadError, RegistryError},
    HostError,
};
use tracing_subscriber::EnvFilter;

mod cli;
mod commands;
#[cfg(feature = "otlp")]
mod otlp;

// Short paths for the library crates, used throughout the commands.
use fastworker_client as client;
use fastworker_host::{control_plane, plugin};
use fastworker_protocol as protocol;
use fastworker_transport as transport;

use cli::{Cli, Command, LogLevel};

/// The process's allocator: mimalloc. The control plane's event loop allocates what
/// its transport threads free and the other way round; with glibc's allocator,
/// `malloc` and `free` were about a quarter of that loop's time under load. With
/// mimalloc the cluster bench's median went from 72,750 to 79,200 tasks/s (six
/// alternated runs each), for 2 MiB more idle RSS (README, Performance). Plugins are
/// unaffected: what crosses the stable ABI is freed by the side that allocated it.
/// `no_thp`: transparent huge pages made an idle control plane 26 MiB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What keeps span export running until the process ends (nothing without
/// `--otlp-endpoint`); the last spans are flushed when it is dropped.
struct Export {
    #[cfg(feature = "otlp")]
    _exporter: Option<otlp::Exporter>,
}

/// Logs to stderr at `level` (or as `FASTWORKER_LOG` says); with `--otlp-endpoint`,
/// every task span also goes to that collector.
fn init_logging(
    level: LogLevel,
    otlp_endpoint: Option<&str>,
    service: &'static str,
) -> anyhow::Result<Export> {
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, Layer};
    let level = match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warning => "warn",
        LogLevel::Error => "error",
    };
    let filter =
        EnvFilter::try_from_env("FASTWORKER_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_filter(filter);
    #[cfg(feature = "otlp")]
    {
        let (export, layer) = match otlp_endpoint {
            Some(endpoint) => {
                let (export, layer) = otlp::start(endpoint, service)?;
                let only_tasks = tracing_subscriber::filter::Targets::new()
                    .with_target("fastworker::task", tracing::Level::DEBUG);
                (Some(export), Some(layer.with_filter(only_tasks)))
            }
            None => (None, None),
        };
        tracing_subscriber::registry().with(fmt).with(layer).init();
        Ok(Export { _exporter: export })
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = service;
        tracing_subscriber::registry().with(fmt).init();
        match otlp_endpoint {
            Some(_) => anyhow::bail!(
                "--otlp-endpoint: this fastworker was built without OTLP export; build it with `cargo build --features otlp`"
            ),
            None => Ok(Export {}),
        }
    }
}

/// Runs a long-lived service on the multi-threaded runtime. When the service returns,
/// the process exits even if a plugin call still runs on a blocking thread (a task
/// that ignored its timeout): dropping the runtime would wait for it forever.
fn serve(fut: impl Future<Output = anyhow::Result<()>> + Send + 'static) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // On a worker thread, not this one: a task woken by a socket then runs where the
    // socket was read, and what it sends is written there too. Run on this thread
    // (`block_on`), every message crossed between threads twice more (11 context
    // switches per round trip in the control plane, 4 spawned).
    let result = runtime
        .block_on(runtime.spawn(fut))
        .unwrap_or_else(|err| Err(anyhow::anyhow!("the service stopped: {err}")));
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    result
}

/// A write past the file-size limit (`ulimit -f`) fails with EFBIG instead of killing
/// the process: the control plane then refuses new tasks and keeps the ones it has.
fn ignore_file_size_signal() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code; it
    // runs before any thread is started.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Runs a one-shot client command on a small runtime and prints its output.
fn one_shot<E: Into<anyhow::Error>>(
    fut: impl Future<Output = Result<String, E>>,
) -> anyhow::Result<()> {
    let text = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(fut)
        .map_err(Into::into)?;
    commands::emit(text.as_bytes());
    Ok(())
}

/// abi_stable's full report when a plugin's layout did not match (logged at debug).
fn layout_report(err: &anyhow::Error) -> Option<&str> {
    let registry = match err.downcast_ref::<HostError>() {
        Some(HostError::Plugins(SetupError::Load(registry))) => registry,
        _ => err.downcast_ref::<RegistryError>()?,
    };
    match registry {
        RegistryError::Load(LoadError::LayoutMismatch { report, .. }) => Some(report),
        _ => None,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _export = match init_logging(
        cli.log_level,
        cli.otlp_endpoint.as_deref(),
        cli.command.service_name(),
    ) {
        Ok(export) => export,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::List(args) => {
            commands::list::run(&args).map(|text| commands::emit(text.as_bytes()))
        }
        Command::ControlPlane(args) => {
            ignore_file_size_signal();
            commands::serve::control_plane_config(&args, cli.log_level, cli.otlp_endpoint.clone())
                .and_then(|config| {
                    serve(async move {
                        fastworker_host::control_plane::server::run(config, |ready| {
                            let mut text = format!("{}\n", commands::serve::ready_line(ready));
                            if let Some(url) = &ready.dashboard {
                                text.push_str(&format!("dashboard: {url}\n"));
                            }
                            commands::emit(text.as_bytes());
                        })
                        .await
                        .map_err(Into::into)
                    })
                })
        }
        Command::Subworker(args) => commands::serve::subworker_config(&args).and_then(|config| {
            serve(async move {
                fastworker_host::subworker::run(config)
                    .await
                    .map_err(Into::into)
            })
        }),
        Command::Submit(args) => one_shot(async move { commands::submit::run(&args).await }),
        Command::Status(args) => one_shot(async move { commands::task::status(&args).await }),
        Command::Cancel(args) => one_shot(async move { commands::task::cancel(&args).await }),
        Command::Events(args) => one_shot(async move { commands::task::events(&args).await }),
        Command::DeadLetters(args) => {
            one_shot(async move { commands::task::dead_letters(&args).await })
        }
        Command::Keygen(args) => {
            commands::keygen::run(&args).map(|text| commands::emit(text.as_bytes()))
        }
        Command::New(args) => commands::new::run(&args).map(|text| commands::emit(text.as_bytes())),
        Command::Tasks(args) => one_shot(async move { commands::cluster::tasks(&args).await }),
        Command::Queued(args) => one_shot(async move { commands::cluster::queued(&args).await }),
        Command::Bench(args) => commands::bench::run(&args),
        Command::BenchFloor(args) => commands::bench::floor::serve(&args),
        Command::Completions(args) => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut Cli::command(), "fastworker", &mut script);
            commands::emit(&script);
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(report) = layout_report(&err) {
                tracing::debug!("abi_stable layout report:\n{report}");
            }
            eprintln!("error: {err:#}");
            if err
                .downcast_ref::<commands::submit::NotFinished>()
                .is_some()
            {
                ExitCode::from(commands::submit::NotFinished::EXIT_CODE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
