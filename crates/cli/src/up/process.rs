//! Child processes of `tarmac up` (apps and their sidecars): each in its own process
//! group, its stdout and stderr multiplexed onto ours line by line with a prefix, stopped
//! with SIGTERM then SIGKILL, and never outliving `tarmac up`.

#![allow(unsafe_code)]

use std::io::Write as _;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

/// Width the prefixes are padded to, so that the `|` line up.
static PREFIX_WIDTH: AtomicUsize = AtomicUsize::new(6);

/// When set, the children's own output is read and dropped (`tarmac demo` shows its
/// table instead; `--verbose` shows everything).
static CHILDREN_QUIET: AtomicBool = AtomicBool::new(false);

/// Drops the children's output from now on.
pub fn quiet_children() {
    CHILDREN_QUIET.store(true, Ordering::Relaxed);
}

/// Makes room for a prefix of `width` characters (never narrows).
pub fn widen_prefix(width: usize) {
    PREFIX_WIDTH.fetch_max(width, Ordering::Relaxed);
}

/// Prints one line of output on stdout as `prefix | line`. Each line is written whole.
pub fn say(prefix: &str, line: &str) {
    let width = PREFIX_WIDTH.load(Ordering::Relaxed);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{prefix:<width$} | {line}");
    let _ = out.flush();
}

/// `tarmac up`'s own messages.
pub fn note(line: &str) {
    say("tarmac", line);
}

pub type Exit = Result<ExitStatus, String>;

pub fn describe(exit: &Exit) -> String {
    match exit {
        Ok(status) => status.to_string(),
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

#[derive(Clone, Copy)]
enum Signal {
    Terminate,
    Kill,
}

/// A running child process.
pub struct Proc {
    pub pid: u32,
    signals: mpsc::UnboundedSender<Signal>,
    exited: watch::Receiver<Option<Exit>>,
}

impl Proc {
    /// Starts `command` in a new process group, its output prefixed with `prefix`.
    pub fn spawn(mut command: Command, prefix: String) -> Result<Self, String> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Ctrl-C in a terminal signals the whole foreground process group; `tarmac up`
            // decides the order things stop in: apps, then sidecars.
            .process_group(0)
            .kill_on_drop(true);
        // If `tarmac up` dies hard, the kernel stops the child. Spawned from the runtime's
        // long-lived worker threads.
        tarmac_transport::process::terminate_with_parent(command.as_std_mut());
        let mut child = command.spawn().map_err(|e| format!("cannot start {prefix}: {e}"))?;
        let pid = child.id().expect("a child that was just spawned has a pid");
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(forward_lines(stdout, prefix.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward_lines(stderr, prefix));
        }
        let (signals, signal_rx) = mpsc::unbounded_channel();
        let (exited_tx, exited) = watch::channel(None);
        tokio::spawn(supervise(child, signal_rx, exited_tx));
        Ok(Self { pid, signals, exited })
    }

    /// Waits for the process to exit, however it does.
    pub async fn exited(&self) -> Exit {
        let mut exited = self.exited.clone();
        match exited.wait_for(Option::is_some).await {
            Ok(exit) => exit.clone().expect("waited for Some"),
            Err(_) => Err("its supervisor is gone".to_string()),
        }
    }

    pub fn exit(&self) -> Option<Exit> {
        self.exited.borrow().clone()
    }

    /// SIGTERM to its process group, SIGKILL after `grace`. Returns how it ended, or
    /// `None` when it had to be killed.
    pub async fn stop(self, grace: Duration) -> Option<Exit> {
        if let Some(exit) = self.exit() {
            return Some(exit);
        }
        let _ = self.signals.send(Signal::Terminate);
        if let Ok(exit) = tokio::time::timeout(grace, self.exited()).await {
            return Some(exit);
        }
        let _ = self.signals.send(Signal::Kill);
        let _ = self.exited().await;
        None
    }
}

/// A pipe already holding `secret`, its writing end closed: the reading end, to hand to
/// one child with [`hand_over`]. Both ends are close-on-exec here, so no other child
/// started meanwhile inherits it.
pub fn secret_pipe(secret: &[u8]) -> Result<std::os::fd::OwnedFd, String> {
    use std::io::Write as _;
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given, which has room.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("cannot create a pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just created by pipe2 and are owned by nobody else.
    let (read, write) =
        unsafe { (std::os::fd::OwnedFd::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1])) };
    // A few bytes, far below the pipe's buffer: the write cannot block.
    std::fs::File::from(write).write_all(secret).map_err(|e| format!("cannot write to a pipe: {e}"))?;
    Ok(read)
}

/// Makes `fd` descriptor `target` of the child `command` starts (and of what that child
/// execs in turn), and nothing else's.
pub fn hand_over(command: &mut Command, fd: &std::os::fd::OwnedFd, target: libc::c_int) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt as _;
    let fd = fd.as_raw_fd();
    // SAFETY: runs between fork and exec, calling only dup2 and fcntl, which are
    // async-signal-safe and change only the child's descriptor table.
    unsafe {
        command.as_std_mut().pre_exec(move || {
            // dup2 onto itself would keep close-on-exec; clear it instead.
            let result =
                if fd == target { libc::fcntl(target, libc::F_SETFD, 0) } else { libc::dup2(fd, target) };
            if result == -1 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
        });
    }
}

async fn forward_lines(stream: impl AsyncRead + Unpin, prefix: String) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) if CHILDREN_QUIET.load(Ordering::Relaxed) => {}
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                say(&prefix, text.trim_end_matches(['\n', '\r']));
            }
        }
    }
}

/// Owns the child: reaps it and signals its group. Signals go from here because only
/// here is it certain that the pid (the group's id) still names our child: it is reaped
/// inside `wait`, so between waits its pid cannot be reused.
async fn supervise(
    mut child: Child,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    exited: watch::Sender<Option<Exit>>,
) {
    let pid = child.id().and_then(|p| libc::pid_t::try_from(p).ok());
    let exit = loop {
        tokio::select! {
            status = child.wait() => break status.map_err(|e| e.to_string()),
            Some(signal) = signals.recv() => {
                let Some(pid) = pid else { continue };
                let signal = match signal {
                    Signal::Terminate => libc::SIGTERM,
                    Signal::Kill => libc::SIGKILL,
                };
                // SAFETY: kill(2) has no memory-safety preconditions. The negative pid
                // names the child's process group (it leads it: `process_group(0)`), so
                // that what the app started stops with it.
                unsafe {
                    libc::kill(-pid, signal);
                }
            }
        }
    };
    exited.send_replace(Some(exit));
}
