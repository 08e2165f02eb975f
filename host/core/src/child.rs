//! Child processes that do not outlive their parent.

use std::process::Command;

/// Makes the child `cmd` starts die (SIGKILL) when the thread that starts it exits:
/// the parent's end, even by SIGKILL, leaves no child behind. Linux only (elsewhere
/// this does nothing). Start the child from a thread that lives as long as the child
/// should: the main thread, or one that supervises it.
pub fn dies_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id();
        // SAFETY: between fork and exec only async-signal-safe calls run here:
        // prctl(2) and getppid(2), no allocation and no locks.
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
    let _ = cmd;
}
