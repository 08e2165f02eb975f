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

// Short paths for the library crates, used throughout the commands.
use fastworker_client as client;
use fastworker_host::{control_plane, plugin};
use fastworker_protocol as protocol;
use fastworker_transport as transport;

use cli::{Cli, Command, LogLevel};

fn init_logging(level: LogLevel) {
    let level = match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warning => "warn",
        LogLevel::Error => "error",
    };
    let filter =
        EnvFilter::try_from_env("FASTWORKER_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// Runs a long-lived service on the multi-threaded runtime. When the service returns,
/// the process exits even if a plugin call still runs on a blocking thread (a task
/// that ignored its timeout): dropping the runtime would wait for it forever.
fn serve(fut: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(fut);
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
    init_logging(cli.log_level);
    let result = match cli.command {
        Command::List(args) => {
            commands::list::run(&args).map(|text| commands::emit(text.as_bytes()))
        }
        Command::ControlPlane(args) => {
            ignore_file_size_signal();
            commands::serve::control_plane_config(&args, cli.log_level).and_then(|config| {
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
        Command::Completions(args) => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut Cli::command(), "fastworker", &mut script);
            commands::emit(&script);
            Ok(())
        }
    };
    transport::relay::remove_private_dir();
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
