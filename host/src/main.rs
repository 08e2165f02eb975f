//! The `fastworker` binary: parse the command line, set up logging, run the command,
//! and decide the exit code.

use std::process::ExitCode;

use clap::Parser;
use fastworker::{
    cli::{Cli, Command, LogLevel},
    commands,
};
use tracing_subscriber::EnvFilter;

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
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level);
    let result = match &cli.command {
        Command::List(args) => {
            commands::list::run(args, &cli.plugin_dir).map(|text| print!("{text}"))
        }
        other => {
            let name = match other {
                Command::ControlPlane(_) => "control-plane",
                Command::Subworker(_) => "subworker",
                Command::Submit(_) => "submit",
                Command::Status(_) => "status",
                Command::Cancel(_) => "cancel",
                Command::List(_) => "list",
            };
            eprintln!("fastworker {name}: not built yet");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(fastworker::plugin::RegistryError::Load(
                fastworker::plugin::LoadError::LayoutMismatch { report, .. },
            )) = err.downcast_ref()
            {
                tracing::debug!("abi_stable layout report:\n{report}");
            }
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
