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

/// The largest secret [`read_inherited`] accepts.
const INHERITED_MAX: usize = 4096;

/// Reads descriptor `fd`, inherited from the parent (a pipe holding a secret such as a
/// bootstrap token), to its end, then closes it so that nothing started later inherits it.
/// `fd` must be one the configuration says was handed over for this: it is taken over.
pub fn read_inherited(fd: i32) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    if fd < 3 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is stdin, stdout or stderr, not a handed-over pipe"),
        ));
    }
    // SAFETY: fcntl(F_GETFD) only asks whether `fd` is open; it changes nothing.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("descriptor {fd} was not inherited: {e}")));
    }
    // SAFETY: `fd` is open (checked above) and, by the caller's contract, was handed to
    // this process for this read alone: nothing else in the process owns or closes it.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut secret = Vec::new();
    file.take(INHERITED_MAX as u64 + 1).read_to_end(&mut secret)?;
    if secret.len() > INHERITED_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("descriptor {fd} holds more than {INHERITED_MAX} bytes"),
        ));
    }
    Ok(secret)
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
