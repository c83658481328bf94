//! Child processes, for `tarmac up` (apps and their sidecars, and so `tarmac demo`) and for
//! the benchmark (proxies, its upstream): [`Supervised`] starts a child in a process group
//! of its own, its output in a log file or piped to the caller, never outliving this
//! process; waits until it is ready; tells when and how it exited (with its log's last
//! lines); and stops it with SIGTERM, then SIGKILL after a grace period. Beside it: the
//! child's death with its parent, children without address-space randomisation or
//! pinned to a core (for measurements), and a secret handed to one child through a pipe.

#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{ChildStderr, ChildStdout};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long a child whose [`Supervised`] was dropped may drain before it is killed.
pub const DROP_GRACE: Duration = Duration::from_secs(3);
/// Lines of a child's log shown when it fails.
const LOG_TAIL_LINES: usize = 15;

/// How a child ended, or why its end could not be read.
pub type Exit = Result<ExitStatus, WaitError>;

/// Why a child's end could not be read. Cloneable, as every waiter gets its own copy.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WaitError {
    #[error("{0}")]
    Wait(#[source] Arc<std::io::Error>),
    #[error("its supervisor is gone")]
    SupervisorGone,
}

pub fn describe(exit: &Exit) -> String {
    match exit {
        Ok(status) => status.to_string(),
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

/// What went wrong with a child, naming it (and its program or log file); a failure after
/// it started carries the last lines of its log, which are what tells why.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot create {}: {source}", path.display())]
    CreateLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open {}: {source}", path.display())]
    OpenLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {name} ({program}): {source}")]
    Start {
        name: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited: {}.\n{log_tail}", describe(.exit))]
    Exited { name: String, exit: Exit, log_tail: String },
    #[error("{name} exited while starting: {}.\n{log_tail}", describe(.exit))]
    ExitedWhileStarting { name: String, exit: Exit, log_tail: String },
    #[error("{name} was not ready within {timeout:?}.\n{log_tail}")]
    NotReady { name: String, timeout: Duration, log_tail: String },
    #[error("cannot create a pipe: {0}")]
    Pipe(#[source] std::io::Error),
    #[error("cannot write to a pipe: {0}")]
    PipeWrite(#[source] std::io::Error),
}

/// Where a child's stdout and stderr go.
pub enum Output {
    /// Both into this file, created afresh.
    Log(PathBuf),
    /// Pipes, for the caller to take with [`Supervised::take_output`].
    Piped,
}

/// How to tell that a child is ready to serve.
pub enum Readiness {
    /// `GET /ready` on this (admin) address answers 2xx.
    AdminReady(SocketAddr),
    /// This address accepts TCP connections.
    Accepts(SocketAddr),
}

impl Readiness {
    /// Asks once.
    pub async fn probe(&self) -> bool {
        match self {
            Self::AdminReady(admin) => get_ready(*admin).await,
            Self::Accepts(addr) => {
                tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr))
                    .await
                    .is_ok_and(|connected| connected.is_ok())
            }
        }
    }
}

/// `GET /ready` over a fresh connection: whether the status is 2xx. Written out here
/// rather than with an HTTP client, which this crate does not otherwise need.
async fn get_ready(admin: SocketAddr) -> bool {
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await?;
        let request = format!("GET /ready HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head)
    };
    match tokio::time::timeout(Duration::from_secs(1), ask).await {
        // `HTTP/1.1 2xx`
        Ok(Ok(head)) => head.starts_with(b"HTTP/1.") && head[9] == b'2',
        _ => false,
    }
}

/// A command for `program`, through `taskset -c CORE` when `core` is given (taskset execs
/// the program: the child's pid is the program's, and its threads stay on the core).
pub fn command(program: impl AsRef<OsStr>, core: Option<usize>) -> tokio::process::Command {
    match core {
        Some(core) => {
            let mut command = tokio::process::Command::new("taskset");
            command.arg("-c").arg(core.to_string()).arg(program);
            command
        }
        None => tokio::process::Command::new(program),
    }
}

#[derive(Clone, Copy)]
enum Signal {
    Terminate,
    Kill,
}

/// A running child process and the task that reaps it.
///
/// Dropping it stops the child in the background (SIGTERM, SIGKILL after [`DROP_GRACE`]);
/// call [`Supervised::stop`] to wait for that. Spawn from within a tokio runtime, and from
/// a long-lived thread (see [`terminate_with_parent`]).
pub struct Supervised {
    name: String,
    pid: u32,
    log: Option<PathBuf>,
    signals: mpsc::UnboundedSender<Signal>,
    exited: watch::Receiver<Option<Exit>>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
}

impl Supervised {
    /// Starts `command` in a new process group (so that a terminal's Ctrl-C reaches only
    /// us, and signals reach whatever the child starts), stdin closed, output as `output`
    /// says, SIGTERMed by the kernel if this process dies. `name` names it in errors.
    pub fn spawn(
        name: &str,
        mut command: tokio::process::Command,
        output: Output,
    ) -> Result<Self, ProcessError> {
        let log = match output {
            Output::Log(path) => {
                let file = match std::fs::File::create(&path) {
                    Ok(file) => file,
                    Err(source) => return Err(ProcessError::CreateLog { path, source }),
                };
                let for_stderr = match file.try_clone() {
                    Ok(file) => file,
                    Err(source) => return Err(ProcessError::OpenLog { path, source }),
                };
                command.stdout(file).stderr(for_stderr);
                Some(path)
            }
            Output::Piped => {
                command.stdout(Stdio::piped()).stderr(Stdio::piped());
                None
            }
        };
        command.stdin(Stdio::null()).process_group(0).kill_on_drop(true);
        terminate_with_parent(command.as_std_mut());
        let mut child = command.spawn().map_err(|source| ProcessError::Start {
            name: name.to_string(),
            program: command.as_std().get_program().to_string_lossy().into_owned(),
            source,
        })?;
        let pid = child.id().expect("a child that was just spawned has a pid");
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let (signals, signal_rx) = mpsc::unbounded_channel();
        let (exited_tx, exited) = watch::channel(None);
        tokio::spawn(supervise(child, signal_rx, exited_tx));
        Ok(Self { name: name.to_string(), pid, log, signals, exited, stdout, stderr })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The child's stdout and stderr, with [`Output::Piped`] (once).
    pub fn take_output(&mut self) -> (Option<ChildStdout>, Option<ChildStderr>) {
        (self.stdout.take(), self.stderr.take())
    }

    /// How it exited, if it did.
    pub fn exit(&self) -> Option<Exit> {
        self.exited.borrow().clone()
    }

    /// Waits for the process to exit, however it does.
    pub async fn exited(&self) -> Exit {
        let mut exited = self.exited.clone();
        match exited.wait_for(Option::is_some).await {
            Ok(exit) => exit.clone().expect("waited for Some"),
            Err(_) => Err(WaitError::SupervisorGone),
        }
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

    /// When it has exited: that it did and how, with the last lines of its log.
    pub fn failure(&self) -> Option<ProcessError> {
        let exit = self.exit()?;
        Some(ProcessError::Exited { name: self.name.clone(), exit, log_tail: self.log_tail() })
    }

    /// Waits until `readiness` holds, failing with its log if it exits first or takes
    /// longer than `timeout`.
    pub async fn wait_ready(&self, readiness: &Readiness, timeout: Duration) -> Result<(), ProcessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.exit() {
                return Err(ProcessError::ExitedWhileStarting {
                    name: self.name.clone(),
                    exit,
                    log_tail: self.log_tail(),
                });
            }
            if readiness.probe().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ProcessError::NotReady {
                    name: self.name.clone(),
                    timeout,
                    log_tail: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of its log file (nothing for piped output).
    fn log_tail(&self) -> String {
        let Some(path) = &self.log else { return String::new() };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let mut tail = format!("Last lines of its log ({}):\n", path.display());
        for line in &all[all.len().saturating_sub(LOG_TAIL_LINES)..] {
            let _ = writeln!(tail, "    {line}");
        }
        tail
    }
}

/// Owns the child: reaps it and signals its group. Signals go from here because only
/// here is it certain that the pid (the group's id) still names our child: it is reaped
/// inside `wait`, so between waits its pid cannot be reused. When its [`Supervised`] is
/// dropped, it stops the child itself.
async fn supervise(
    mut child: tokio::process::Child,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    exited: watch::Sender<Option<Exit>>,
) {
    let pid = child.id().and_then(|p| libc::pid_t::try_from(p).ok());
    let signal_group = |signal: Signal| {
        let Some(pid) = pid else { return };
        let signal = match signal {
            Signal::Terminate => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        };
        // SAFETY: kill(2) has no memory-safety preconditions. The negative pid names the
        // child's process group (it leads it: `process_group(0)`), so that what the child
        // started stops with it.
        unsafe {
            libc::kill(-pid, signal);
        }
    };
    let exit = loop {
        tokio::select! {
            status = child.wait() => break status.map_err(|e| WaitError::Wait(Arc::new(e))),
            signal = signals.recv() => match signal {
                Some(signal) => signal_group(signal),
                None => {
                    signal_group(Signal::Terminate);
                    let status = match tokio::time::timeout(DROP_GRACE, child.wait()).await {
                        Ok(status) => status,
                        Err(_) => {
                            signal_group(Signal::Kill);
                            child.wait().await
                        }
                    };
                    break status.map_err(|e| WaitError::Wait(Arc::new(e)));
                }
            },
        }
    };
    exited.send_replace(Some(exit));
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

/// A pipe already holding `secret`, its writing end closed: the reading end, to hand to
/// one child with [`hand_over`]. Both ends are close-on-exec here, so no other child
/// started meanwhile inherits it.
pub fn secret_pipe(secret: &[u8]) -> Result<std::os::fd::OwnedFd, ProcessError> {
    use std::io::Write as _;
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given, which has room.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(ProcessError::Pipe(std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just created by pipe2 and are owned by nobody else.
    let (read, write) =
        unsafe { (std::os::fd::OwnedFd::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1])) };
    // A few bytes, far below the pipe's buffer: the write cannot block.
    std::fs::File::from(write).write_all(secret).map_err(ProcessError::PipeWrite)?;
    Ok(read)
}

/// Makes `fd` descriptor `target` of the child `command` starts (and of what that child
/// execs in turn), and nothing else's.
pub fn hand_over(command: &mut std::process::Command, fd: &std::os::fd::OwnedFd, target: libc::c_int) {
    use std::os::fd::AsRawFd;
    let fd = fd.as_raw_fd();
    // SAFETY: runs between fork and exec, calling only dup2 and fcntl, which are
    // async-signal-safe and change only the child's descriptor table.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec; clear it instead.
            let result =
                if fd == target { libc::fcntl(target, libc::F_SETFD, 0) } else { libc::dup2(fd, target) };
            if result == -1 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
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

    fn sh(script: &str) -> tokio::process::Command {
        let mut command = command("sh", None);
        command.arg("-c").arg(script);
        command
    }

    fn alive(pid: u32) -> bool {
        // A zombie has exited: only a reaped process leaves /proc, so read its state.
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
    }

    async fn until(mut condition: impl FnMut() -> bool) {
        for _ in 0..500 {
            if condition() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the condition never held");
    }

    #[tokio::test]
    async fn stop_ends_a_child_with_sigterm() {
        let child = Supervised::spawn("sleeper", sh("exec sleep 30"), Output::Piped).unwrap();
        let exit = child.stop(Duration::from_secs(10)).await.expect("it stopped by itself");
        assert!(was_terminated(&exit.unwrap()));
    }

    #[tokio::test]
    async fn a_child_that_ignores_sigterm_is_killed_after_the_grace() {
        // Ready once the trap is set, so that SIGTERM cannot arrive before it.
        let dir = std::env::temp_dir().join(format!("tarmac-process-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let flag = dir.join("trapped");
        let script = format!("trap '' TERM; touch {}; while :; do sleep 1; done", flag.display());
        let child = Supervised::spawn("stubborn", sh(&script), Output::Piped).unwrap();
        until(|| flag.exists()).await;
        let pid = child.pid();
        assert!(child.stop(Duration::from_millis(300)).await.is_none(), "it had to be killed");
        assert!(!alive(pid));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn stopping_a_child_stops_its_process_group() {
        let mut child = Supervised::spawn("parent", sh("sleep 30 & echo $!; wait"), Output::Piped).unwrap();
        let (stdout, _) = child.take_output();
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut tokio::io::BufReader::new(stdout.unwrap()), &mut line)
            .await
            .unwrap();
        let grandchild: u32 = line.trim().parse().expect("the background sleep's pid");
        assert!(alive(grandchild));
        child.stop(Duration::from_secs(10)).await;
        until(|| !alive(grandchild)).await;
    }

    #[tokio::test]
    async fn a_dropped_child_is_stopped() {
        let child = Supervised::spawn("dropped", sh("exec sleep 30"), Output::Piped).unwrap();
        let pid = child.pid();
        drop(child);
        until(|| !alive(pid)).await;
    }

    #[tokio::test]
    async fn a_child_that_exits_while_starting_is_reported_with_its_log() {
        let dir = std::env::temp_dir().join(format!("tarmac-process-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("failing.log");
        let child =
            Supervised::spawn("failing", sh("echo 'cannot bind'; exit 3"), Output::Log(log.clone())).unwrap();
        let never = Readiness::Accepts(SocketAddr::from(([127, 0, 0, 1], 1)));
        let err = child.wait_ready(&never, Duration::from_secs(60)).await.unwrap_err().to_string();
        assert!(err.starts_with("failing exited while starting: exit status: 3."), "{err}");
        assert!(err.contains("    cannot bind"), "{err}");
        assert!(child.failure().unwrap().to_string().contains("cannot bind"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Answers one request on `listener` with `status`.
    async fn answer_once(listener: &tokio::net::TcpListener, status: &str) {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request).await.unwrap();
        let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
        stream.write_all(response.as_bytes()).await.unwrap();
    }

    #[tokio::test]
    async fn readiness_is_an_accepting_port_or_a_2xx_ready() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(Readiness::Accepts(addr).probe().await);
        // That probe's connection, waiting in the backlog.
        listener.accept().await.unwrap();
        let ready = Readiness::AdminReady(addr);
        let ((), starting) = tokio::join!(answer_once(&listener, "503 Service Unavailable"), ready.probe());
        assert!(!starting);
        let ((), serving) = tokio::join!(answer_once(&listener, "200 OK"), ready.probe());
        assert!(serving);
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
