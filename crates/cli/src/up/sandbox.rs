//! `tarmac sandbox` (hidden): how `tarmac up --transparent` starts an app or a sidecar
//! inside its replica's network namespace with far less than root.
//!
//! `ip netns exec NS tarmac sandbox --uid U --hide DIR ... -- PROGRAM ARGS...` runs as root
//! just long enough to: enter a mount namespace of its own (so what it mounts is seen by
//! nobody else), cover every `--hide` directory with an empty read-only tmpfs (the CA's
//! keys, the other replicas' sidecar configurations), drop every capability from the
//! bounding set, take uid and gid `U` with no supplementary groups, clear the remaining
//! capability sets, set `no_new_privs` (no setuid binary or file capability can give
//! anything back), and ask for SIGKILL when `tarmac up` dies (the kernel forgets that
//! request when the uid changes, which is why it is made here, after the change). Then it
//! becomes PROGRAM. Anything that fails stops it before PROGRAM runs: a process is never
//! started with more than it was meant to have.

// Unsafe: the libc calls that drop privileges (setresuid(2), setgroups(2), capset(2),
// prctl(2)) and make a private mount namespace (unshare(2), mount(2)); std has none of them.
#![allow(unsafe_code)]

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status when the sandbox could not be set up (PROGRAM never ran), as a shell
/// reports a command found but not runnable.
const EXIT_NOT_STARTED: u8 = 126;

/// Run PROGRAM as an unprivileged uid, with directories hidden (used by `tarmac up
/// --transparent`; needs root).
#[derive(clap::Args, Debug)]
pub struct SandboxArgs {
    /// The uid, and gid, PROGRAM runs as (not 0).
    #[arg(long)]
    pub uid: u32,
    /// A directory PROGRAM must not see: covered by an empty read-only tmpfs. Absent
    /// directories are skipped.
    #[arg(long)]
    pub hide: Vec<PathBuf>,
    /// PROGRAM and its arguments.
    #[arg(required = true, last = true)]
    pub command: Vec<OsString>,
}

/// Why PROGRAM was not started: a step of the sandbox's setup that failed, or the exec.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("--uid 0 would keep root")]
    Root,
    #[error("{} contains a NUL byte", .0.display())]
    NulInPath(PathBuf),
    /// A system call of the setup; `step` says which.
    #[error("{step}: {source}")]
    Step {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the parent exited while the sandbox was being set up")]
    ParentExited,
    #[error("cannot run {program}: {source}")]
    Exec {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

pub fn run(args: SandboxArgs) -> ExitCode {
    let error = match enter(&args) {
        Ok(()) => {
            // exec only returns on failure.
            let source = std::process::Command::new(&args.command[0]).args(&args.command[1..]).exec();
            SandboxError::Exec { program: args.command[0].to_string_lossy().into_owned(), source }
        }
        Err(e) => e,
    };
    eprintln!("tarmac sandbox: {error}");
    ExitCode::from(EXIT_NOT_STARTED)
}

/// Everything but the exec. Order matters: mounts and the bounding set need root, so they
/// come before the uid changes; the death signal must come after it.
fn enter(args: &SandboxArgs) -> Result<(), SandboxError> {
    if args.uid == 0 {
        return Err(SandboxError::Root);
    }
    // SAFETY (every block below): plain system calls on this process's own state, with
    // pointers to values that outlive the call; none has memory-safety preconditions.
    let parent = unsafe { libc::getppid() };
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) }, "unshare(CLONE_NEWNS)")?;
    // Without this, a mount made here could propagate back to the host's namespace.
    let root = CString::new("/").expect("no NUL");
    check(
        unsafe {
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        },
        "making / private in the new mount namespace",
    )?;
    for dir in &args.hide {
        if !dir.is_dir() {
            continue;
        }
        let target =
            CString::new(dir.as_os_str().as_bytes()).map_err(|_| SandboxError::NulInPath(dir.clone()))?;
        let source = CString::new("tarmac-hidden").expect("no NUL");
        let fstype = CString::new("tmpfs").expect("no NUL");
        let options = CString::new("size=4k,mode=0").expect("no NUL");
        check(
            unsafe {
                libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    fstype.as_ptr(),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    options.as_ptr().cast(),
                )
            },
            &format!("hiding {}", dir.display()),
        )?;
    }
    // The bounding set limits what any later exec could gain; emptied while CAP_SETPCAP
    // is still held.
    for cap in 0..=last_capability() {
        check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) }, "dropping the bounding set")?;
    }
    let id = args.uid;
    check(unsafe { libc::setgroups(0, std::ptr::null()) }, "clearing supplementary groups")?;
    check(unsafe { libc::setresgid(id, id, id) }, &format!("setresgid({id})"))?;
    check(unsafe { libc::setresuid(id, id, id) }, &format!("setresuid({id})"))?;
    // Leaving uid 0 cleared the permitted and effective sets; the inheritable and ambient
    // ones survive it, so they are cleared too.
    check(
        unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) },
        "clearing ambient capabilities",
    )?;
    clear_capabilities()?;
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }, "setting no_new_privs")?;
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) }, "PR_SET_PDEATHSIG")?;
    // `tarmac up` may have died before the request above: then nothing would ever come.
    if unsafe { libc::getppid() } != parent {
        return Err(SandboxError::ParentExited);
    }
    Ok(())
}

fn check(result: libc::c_int, what: &str) -> Result<(), SandboxError> {
    if result == 0 { Ok(()) } else { Err(failed(what)) }
}

/// The error of the system call that just failed.
fn failed(step: &str) -> SandboxError {
    SandboxError::Step { step: step.to_string(), source: std::io::Error::last_os_error() }
}

/// The highest capability number this kernel knows.
fn last_capability() -> libc::c_ulong {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Empties the effective, permitted and inheritable sets (capset(2), version 3).
fn clear_capabilities() -> Result<(), SandboxError> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: capset reads one header and two data structs (version 3), both alive here.
    let result = unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) };
    if result == 0 { Ok(()) } else { Err(failed("clearing capabilities")) }
}
