//! Where plugin log records land: the host's own `tracing` log, each with the task id,
//! the plugin's name and version, and the record's target.
//!
//! A plugin has its own copies of `log` and `tracing` (it is a separate `cdylib`), so
//! the SDK forwards what it logs through the root module's `install_log`, which the
//! loader calls with [`receive`] for every plugin it loads (every plugin this host
//! loads has it: it came with SDK 0.2).

use fastworker_plugin_sdk::abi::{LogLevel, LogRecord, LogSink, PluginModuleRef};
use tracing::level_filters::LevelFilter;

/// Hands the plugin behind `module` the host's sink and current level.
pub(crate) fn install(module: &PluginModuleRef) {
    if let Some(install) = module.install_log() {
        install(LogSink { func: receive }, current_level());
    }
}

/// The most verbose level the host's subscriber logs.
fn current_level() -> LogLevel {
    match LevelFilter::current() {
        LevelFilter::OFF => LogLevel::Off,
        LevelFilter::ERROR => LogLevel::Error,
        LevelFilter::WARN => LogLevel::Warn,
        LevelFilter::INFO => LogLevel::Info,
        LevelFilter::DEBUG => LogLevel::Debug,
        _ => LogLevel::Trace,
    }
}

/// One record from a plugin, logged as the host's own event.
extern "C" fn receive(record: &LogRecord<'_>) {
    let (task, plugin, version, from, message) = (
        record.task_id.as_str(),
        record.plugin.as_str(),
        record.plugin_version.as_str(),
        record.target.as_str(),
        record.message.as_str(),
    );
    macro_rules! event {
        ($level:expr) => {
            tracing::event!(
                $level,
                task = %task,
                plugin = %plugin,
                version = %version,
                from = %from,
                "{message}"
            )
        };
    }
    match record.level {
        LogLevel::Off => {}
        LogLevel::Error => event!(tracing::Level::ERROR),
        LogLevel::Warn => event!(tracing::Level::WARN),
        LogLevel::Info => event!(tracing::Level::INFO),
        LogLevel::Debug => event!(tracing::Level::DEBUG),
        LogLevel::Trace => event!(tracing::Level::TRACE),
    }
}
