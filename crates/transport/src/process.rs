//! Child processes: the two signal operations std does not offer. `tarmac up` (and so
//! `tarmac demo`) runs sidecars as children and must stop them gracefully, and must not
//! leave them behind if the parent dies hard. And, for `tarmac bench`, children started
//! without address-space randomisation.

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

/// Starts the child about to be spawned by `command` without address-space layout
/// randomisation (the personality flag survives `exec`, also through `taskset`). For
/// measuring memory only: the kernel maps a file's pages in 64 KiB windows aligned on
/// virtual addresses, so with a random load address the same binary maps more or fewer
/// of its code pages, and its RSS moved by up to 1 MiB from one start to the next.
pub fn without_address_randomisation(command: &mut std::process::Command) {
    // SAFETY: the closure runs between fork and exec and only calls personality(2), which
    // is async-signal-safe and changes only the child's own state.
    unsafe {
        command.pre_exec(|| {
            // 0xffffffff reads the current persona without changing it.
            let current = libc::personality(0xffff_ffff);
            if current == -1
                || libc::personality(current as libc::c_ulong | libc::ADDR_NO_RANDOMIZE as libc::c_ulong)
                    == -1
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// True when the process exited because of SIGTERM.
pub fn was_terminated(status: &std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(libc::SIGTERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The persona a child of `command` reports, from `/proc/self/personality` (hex).
    fn persona_of(mut command: std::process::Command) -> u64 {
        let output = command.arg("/proc/self/personality").output().expect("cat runs");
        let text = String::from_utf8(output.stdout).expect("hex digits");
        u64::from_str_radix(text.trim(), 16).expect("a hexadecimal persona")
    }

    #[test]
    fn a_child_can_be_started_without_address_randomisation() {
        let flag = libc::ADDR_NO_RANDOMIZE as u64;
        assert_eq!(persona_of(std::process::Command::new("cat")) & flag, 0, "randomised by default");
        let mut command = std::process::Command::new("cat");
        without_address_randomisation(&mut command);
        assert_eq!(persona_of(command) & flag, flag);
    }
}
