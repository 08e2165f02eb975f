//! What a plugin logs through `log` or `tracing` reaches the host's log.
//!
//! A plugin is a `cdylib` with its own copies of `log`'s and `tracing`'s global
//! statics: the host's logger never sees what plugin code logs. When the host loads a
//! plugin it calls the root module's `install_log` with its sink and level; the SDK
//! then installs a `log` logger and a `tracing` subscriber in the plugin that send
//! each record to that sink, with the plugin's name and version and the id of the
//! task the logging thread is running.
//!
//! A plugin that installs its own `log` logger or `tracing` subscriber first keeps it
//! (installing ours then fails quietly).

use std::{
    cell::Cell,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU8, Ordering},
        Once, OnceLock,
    },
};

use abi_stable::std_types::RStr;

use crate::abi::{LogLevel, LogRecord, LogSink};

/// The host's sink, its level, and who we are: set once, by `install_log`.
struct Installed {
    sink: LogSink,
    plugin: &'static str,
    version: &'static str,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();
static MAX_LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Off as u8);
static BRIDGES: Once = Once::new();

thread_local! {
    /// The id of the task this thread is running: its bytes, valid while the call
    /// that set it runs (`None` outside a task call).
    static TASK_ID: Cell<Option<(*const u8, usize)>> = const { Cell::new(None) };
}

/// Called through the root module by the host: from now on, records at `level` or
/// more severe go to `sink`.
pub fn install_log(sink: LogSink, level: LogLevel, plugin: &'static str, version: &'static str) {
    let _ = INSTALLED.set(Installed {
        sink,
        plugin,
        version,
    });
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
    BRIDGES.call_once(|| {
        if log::set_logger(&LOG_BRIDGE).is_ok() {
            log::set_max_level(to_log_filter(level));
        }
        let _ = tracing::subscriber::set_global_default(TracingBridge);
    });
}

/// Runs `f` with `task_id` as the logging thread's task (restored even if `f` panics).
pub(crate) fn with_task<R>(task_id: &str, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<(*const u8, usize)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            TASK_ID.with(|t| t.set(self.0));
        }
    }
    let _restore = Restore(TASK_ID.with(|t| t.replace(Some((task_id.as_ptr(), task_id.len())))));
    f()
}

fn enabled(level: LogLevel) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed) && level != LogLevel::Off
}

/// Sends one record to the host, if it asked for records at this level.
fn emit(level: LogLevel, target: &str, message: &str) {
    let Some(installed) = INSTALLED.get() else {
        return;
    };
    if !enabled(level) {
        return;
    }
    let task_id = TASK_ID.with(Cell::get).map_or("", |(ptr, len)| {
        // SAFETY: `with_task` set these from a `&str` that outlives the call it wraps,
        // and restores the previous value (on return or unwind) before that borrow
        // ends; this read happens on the same thread, inside that call.
        unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(ptr, len)) }
    });
    (installed.sink.func)(&LogRecord {
        level,
        target: RStr::from_str(target),
        message: RStr::from_str(message),
        task_id: RStr::from_str(task_id),
        plugin: RStr::from_str(installed.plugin),
        plugin_version: RStr::from_str(installed.version),
    });
}

fn to_log_filter(level: LogLevel) -> log::LevelFilter {
    match level {
        LogLevel::Off => log::LevelFilter::Off,
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    }
}

fn from_log_level(level: log::Level) -> LogLevel {
    match level {
        log::Level::Error => LogLevel::Error,
        log::Level::Warn => LogLevel::Warn,
        log::Level::Info => LogLevel::Info,
        log::Level::Debug => LogLevel::Debug,
        log::Level::Trace => LogLevel::Trace,
    }
}

fn from_tracing_level(level: &tracing::Level) -> LogLevel {
    match *level {
        tracing::Level::ERROR => LogLevel::Error,
        tracing::Level::WARN => LogLevel::Warn,
        tracing::Level::INFO => LogLevel::Info,
        tracing::Level::DEBUG => LogLevel::Debug,
        _ => LogLevel::Trace,
    }
}

/// The plugin's `log` logger.
struct LogBridge;

static LOG_BRIDGE: LogBridge = LogBridge;

impl log::Log for LogBridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        enabled(from_log_level(metadata.level()))
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = from_log_level(record.level());
        if enabled(level) {
            emit(level, record.target(), &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

/// The plugin's `tracing` subscriber: events go to the host; spans are not tracked
/// (the host's own span for the task carries its id).
struct TracingBridge;

impl tracing::Subscriber for TracingBridge {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        // The level can change at each install: decide per event.
        tracing::subscriber::Interest::sometimes()
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        enabled(from_tracing_level(metadata.level()))
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let metadata = event.metadata();
        let mut text = MessageText::default();
        event.record(&mut text);
        emit(
            from_tracing_level(metadata.level()),
            metadata.target(),
            &text.finish(),
        );
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// An event's `message`, then its other fields as ` key=value`.
#[derive(Default)]
struct MessageText {
    message: String,
    fields: String,
}

impl MessageText {
    fn finish(self) -> String {
        self.message + &self.fields
    }
}

impl tracing::field::Visit for MessageText {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

    extern "C" fn sink(record: &LogRecord<'_>) {
        SEEN.lock().unwrap().push(format!(
            "{:?} {} {} task={} {}@{}",
            record.level,
            record.target.as_str(),
            record.message.as_str(),
            record.task_id.as_str(),
            record.plugin.as_str(),
            record.plugin_version.as_str()
        ));
    }

    #[test]
    fn log_and_tracing_records_reach_the_sink_with_the_task_and_the_plugin() {
        install_log(LogSink { func: sink }, LogLevel::Info, "demo", "1.2.3");
        with_task("t-1", || {
            log::warn!(target: "demo::tasks", "disk at {}%", 91);
            tracing::info!(target: "demo::tasks", rows = 3, "loaded");
            log::debug!("too verbose for the host");
            tracing::debug!("neither is this");
        });
        tracing::error!(target: "demo::bg", "outside a task");
        let seen = SEEN.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                "Warn demo::tasks disk at 91% task=t-1 demo@1.2.3".to_string(),
                "Info demo::tasks loaded rows=3 task=t-1 demo@1.2.3".to_string(),
                "Error demo::bg outside a task task= demo@1.2.3".to_string(),
            ]
        );
    }
}
