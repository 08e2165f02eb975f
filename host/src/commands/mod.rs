//! One module per subcommand: each turns parsed arguments into work and output.

pub mod bench;
pub mod cluster;
pub mod connect;
pub mod keygen;
pub mod list;
pub mod new;
pub mod render;
pub mod serve;
pub mod submit;
pub mod task;

/// The binary as the user started it, for commands we suggest: its path when it was
/// started by one (`target/debug/fastworker`), else the bare name found on the PATH.
pub fn program_name() -> String {
    std::env::args_os()
        .next()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.contains(std::path::MAIN_SEPARATOR))
        .unwrap_or_else(|| "fastworker".to_string())
}

/// Writes a command's output to stdout. A reader that went away (`| head`) ends the
/// output quietly instead of a panic.
pub fn emit(bytes: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes).and_then(|()| out.flush());
}
