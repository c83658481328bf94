//! Who else can change what `tarmac up` is about to run.
//!
//! A Workload is a command line, so whoever can write the configuration directory, one of
//! its files, or one of the directories above it (and so swap the directory for another)
//! chooses what `up` runs, and as whom: as root with `--transparent`. Trusted writers are
//! root and the user running `up`; a group counts when it is root's or the user's own.
//! A sticky directory such as /tmp is fine above the configuration: there others cannot
//! rename what they do not own.

// Unsafe: geteuid(2) and getegid(2), the user and group running `up` (trusted writers);
// std has neither.
#![allow(unsafe_code)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Write permission for the group and for others, and the sticky bit.
const GROUP_WRITE: u32 = 0o020;
const OTHER_WRITE: u32 = 0o002;
const STICKY: u32 = 0o1000;

/// Every way someone other than root or this user can change `dir` (absolute) or the
/// configuration files in it; empty when nobody can.
pub fn loosely_held(dir: &Path) -> Vec<String> {
    // SAFETY: geteuid(2) and getegid(2) have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let trusted = Trusted { uid, gid };
    let mut problems = Vec::new();
    for ancestor in dir.ancestors().skip(1) {
        if let Ok(meta) = std::fs::metadata(ancestor) {
            trusted.check(ancestor, &meta, true, &mut problems);
        }
    }
    walk(dir, &trusted, &mut problems);
    problems
}

struct Trusted {
    uid: u32,
    gid: u32,
}

impl Trusted {
    fn check(&self, path: &Path, meta: &std::fs::Metadata, above: bool, problems: &mut Vec<String>) {
        let mode = meta.mode();
        let path = path.display();
        if meta.uid() != 0 && meta.uid() != self.uid {
            problems.push(format!("{path} is owned by uid {}", meta.uid()));
        }
        // Above the configuration, a sticky directory only lets others add names.
        if above && mode & STICKY != 0 && meta.uid() == 0 {
            return;
        }
        if mode & OTHER_WRITE != 0 {
            problems.push(format!("{path} is writable by every user (mode {:o})", mode & 0o7777));
        }
        if mode & GROUP_WRITE != 0 && meta.gid() != 0 && meta.gid() != self.gid {
            problems.push(format!("{path} is writable by group {} (mode {:o})", meta.gid(), mode & 0o7777));
        }
    }
}

/// The directory and everything the files store reads in it (hidden names are skipped
/// by the store, and here).
fn walk(dir: &Path, trusted: &Trusted, problems: &mut Vec<String>) {
    let Ok(meta) = std::fs::metadata(dir) else { return };
    trusted.check(dir, &meta, false, problems);
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Followed, as the store follows them: what counts is what is read.
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_dir() {
            walk(&path, trusted, problems);
        } else {
            trusted.check(&path, &meta, false, problems);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_directory_or_file_others_can_write_is_reported() {
        let base = std::env::temp_dir().join(format!("tarmac-trust-{}", std::process::id()));
        let dir = base.join("mesh");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("mesh.yaml");
        std::fs::write(&file, "").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let own = |problems: Vec<String>| -> Vec<String> {
            problems.into_iter().filter(|p| p.contains(&base.display().to_string())).collect()
        };
        assert_eq!(own(loosely_held(&dir)), Vec::<String>::new());

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let found = own(loosely_held(&dir));
        assert!(found.len() == 1 && found[0].contains("mesh.yaml is writable by every user"), "{found:?}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();

        // Above the configuration: someone could swap the directory.
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
        let found = own(loosely_held(&dir));
        assert!(found.len() == 1 && found[0].ends_with("writable by every user (mode 777)"), "{found:?}");
        // Unless it is sticky and root's, like /tmp (as root; otherwise the owner is us).
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o1777)).unwrap();
        // SAFETY: geteuid(2) cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(own(loosely_held(&dir)), Vec::<String>::new());
        }
        std::fs::remove_dir_all(&base).unwrap();
    }
}
