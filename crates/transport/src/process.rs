//! Child processes: the two signal operations std does not offer. `tarmac up` (and so
//! `tarmac demo`) runs sidecars as children and must stop them gracefully, and must not
//! leave them behind if the parent dies hard.

#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;

/// Sends SIGTERM to `pid`: a graceful stop, where `Child::kill` sends SIGKILL.
pub fn terminate(pid: u32) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, libc::SIGTERM) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Arranges for the child about to be spawned by `command` to receive SIGTERM when the
/// thread that spawns it exits, including when this process is killed outright, which
/// `kill_on_drop` cannot cover. Spawn from a long-lived thread.
pub fn terminate_with_parent(command: &mut std::process::Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is
    // async-signal-safe and changes only the child's own state.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// True when the process exited because of SIGTERM.
pub fn was_terminated(status: &std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(libc::SIGTERM)
}
