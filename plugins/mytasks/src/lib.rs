//! The example fastworker plugin. Later tests rely on these task names.

#[fastworker_plugin_sdk::plugin]
pub mod tasks {
    use fastworker_plugin_sdk::{Context, Value};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    /// Adds two integers.
    pub fn add(x: i64, y: i64) -> i64 {
        x.wrapping_add(y)
    }

    /// Returns its argument unchanged (any JSON value).
    pub fn echo(value: Value) -> Value {
        value
    }

    /// Sleeps `ms` milliseconds (stopping early if cancelled) and returns `ms`.
    pub fn sleep_ms(ctx: &Context, ms: u64) -> Result<u64, String> {
        let until = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < until {
            if ctx.is_cancelled() {
                return Err("cancelled while sleeping".to_string());
            }
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(5)));
        }
        Ok(ms)
    }

    /// Notes when it started, sleeps `us` microseconds, and returns that start in
    /// nanoseconds since the Unix epoch (tests and `fastworker bench` order the starts
    /// of tasks by it).
    pub fn stamp(us: u64) -> u64 {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        if us > 0 {
            std::thread::sleep(Duration::from_micros(us));
        }
        started
    }

    /// Sleeps `ms` milliseconds ignoring cancellation and timeouts (a misbehaving task,
    /// for testing how hosts cope with one).
    pub fn hang_ms(ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }

    /// Always fails with `message`.
    pub fn fail(message: String) -> Result<(), String> {
        Err(message)
    }

    /// Always panics with `message`.
    pub fn panic(message: String) -> i64 {
        panic!("{message}")
    }

    /// Logs `message` through `tracing` and `log` (both reach the host's log with the
    /// task id) and returns it.
    pub fn log_message(message: String) -> String {
        fastworker_plugin_sdk::tracing::info!(length = message.len(), "tracing says: {message}");
        fastworker_plugin_sdk::log::warn!("log says: {message}");
        message
    }

    /// Runs every 30 seconds; returns the Unix time it ran at.
    #[task(every = 30)]
    pub fn heartbeat() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}
