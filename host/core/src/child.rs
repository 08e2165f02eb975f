//! Child processes that do not outlive their parent.

use std::process::Command;

/// Set in the environment of a child started by [`dies_with_parent`]: its parent's pid.
const PARENT_ENV: &str = "FASTWORKER_DIES_WITH_PARENT";

/// Makes the child `cmd` starts die (SIGKILL) when the thread that starts it exits:
/// the parent's end, even by SIGKILL, leaves no child behind. Linux only (elsewhere
/// this does nothing). Start the child from a thread that lives as long as the child
/// should: the main thread, or one that supervises it.
pub fn dies_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    cmd.env(PARENT_ENV, parent.to_string());
    die_with(cmd, parent);
}

/// Keeps a process started by [`dies_with_parent`] dying with its parent once it
/// replaces itself with `cmd` (`exec`, as a subworker restarting in place does): the
/// parent-death signal belongs to the thread that set it, and a process that execs
/// from another thread (a runtime worker) would run on as an orphan after its parent
/// died. Sets it again, on the thread that execs, just before the exec. Linux only.
pub fn still_dies_with_parent(cmd: &mut Command) {
    if let Some(parent) = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
    {
        die_with(cmd, parent);
    }
}

/// Before `cmd` execs (in a forked child, or in this process for `exec`), asks for
/// SIGKILL when `parent` dies, and refuses to go on if it is gone already.
fn die_with(cmd: &mut Command, parent: u32) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork (if any) and exec only async-signal-safe calls run
        // here: prctl(2) and getppid(2), no allocation and no locks.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(std::io::Error::other("the parent process is gone"));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (cmd, parent);
}
