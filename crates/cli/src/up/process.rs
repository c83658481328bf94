//! The output of `tarmac up`'s children (apps and their sidecars), supervised by
//! `tarmac_transport::process`: their stdout and stderr multiplexed onto ours line by line
//! with a prefix.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tarmac_transport::process::{Output, ProcessError, Supervised};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

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

/// Starts `command` supervised ([`Supervised`]: its own process group, never outliving
/// `tarmac up`), its output prefixed with `prefix`. Ctrl-C in a terminal signals the
/// whole foreground process group: in a group of its own, the child hears of it only from
/// `tarmac up`, which decides the order things stop in: apps, then sidecars.
pub fn spawn(command: Command, prefix: String) -> Result<Supervised, ProcessError> {
    let mut child = Supervised::spawn(&prefix, command, Output::Piped)?;
    let (stdout, stderr) = child.take_output();
    if let Some(stdout) = stdout {
        tokio::spawn(forward_lines(stdout, prefix.clone()));
    }
    if let Some(stderr) = stderr {
        tokio::spawn(forward_lines(stderr, prefix));
    }
    Ok(child)
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
