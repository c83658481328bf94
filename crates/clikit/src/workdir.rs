//! A private temporary directory for generated sidecar configurations, logs and (for
//! `tarmac bench` and `tarmac demo`) throwaway CA keys: mode 0700, so that other users of
//! the machine can neither read nor list it.

use std::path::{Path, PathBuf};

/// A private directory or file that could not be made, with the path it was for.
#[derive(Debug, thiserror::Error)]
pub enum WorkDirError {
    #[error("cannot create a directory in {}: {source}", base.display())]
    CreateDir {
        base: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create a fresh directory in {}", base.display())]
    NoFreshName { base: PathBuf },
    #[error("cannot replace {}: {source}", path.display())]
    Replace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create {}: {source}", path.display())]
    CreateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Created fresh under the system temp dir, removed (with everything in it) when dropped.
pub struct WorkDir(PathBuf);

impl WorkDir {
    /// `tag` names the command (`demo`, `bench`, `up`) in the directory's name.
    pub fn create(tag: &str) -> Result<Self, WorkDirError> {
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
                Err(source) => return Err(WorkDirError::CreateDir { base, source }),
            }
        }
        Err(WorkDirError::NoFreshName { base })
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
pub fn create_private(path: &Path, content: &str) -> Result<std::fs::File, WorkDirError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::remove_file(path) {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
            return Err(WorkDirError::Replace { path: path.to_path_buf(), source });
        }
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| WorkDirError::CreateFile { path: path.to_path_buf(), source })?;
    file.write_all(content.as_bytes())
        .map_err(|source| WorkDirError::Write { path: path.to_path_buf(), source })?;
    Ok(file)
}
