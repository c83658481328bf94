//! A private temporary directory for generated sidecar configurations, logs and (for
//! `tarmac bench` and `tarmac demo`) throwaway CA keys: mode 0700, so that other users of
//! the machine can neither read nor list it.

use std::path::{Path, PathBuf};

/// Created fresh under the system temp dir, removed (with everything in it) when dropped.
pub struct WorkDir(PathBuf);

impl WorkDir {
    /// `tag` names the command (`demo`, `bench`, `up`) in the directory's name.
    pub fn create(tag: &str) -> Result<Self, String> {
        let base = std::env::temp_dir();
        // A random suffix, since another run, or a stale directory from one that was
        // killed, may hold the obvious name.
        for _ in 0..10 {
            let path =
                base.join(format!("tarmac-{tag}-{}-{:06x}", std::process::id(), fastrand::u32(..0xff_ffff)));
            let created = {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new().mode(0o700).create(&path)
            };
            match created {
                Ok(()) => return Ok(Self(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("cannot create a directory in {}: {e}", base.display())),
            }
        }
        Err(format!("cannot create a fresh directory in {}", base.display()))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("tarmac: cannot remove {}: {e}", self.0.display());
        }
    }
}

/// Creates `path` readable by its owner only, from the moment it exists, holding
/// `content`. Whatever stood at the path (an older copy, a symbolic link) is removed
/// first, never written through.
pub fn create_private(path: &Path, content: &str) -> Result<std::fs::File, String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("cannot replace {}: {e}", path.display()));
        }
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(content.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(file)
}
