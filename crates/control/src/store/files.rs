//! The files store: a directory of YAML, watched for changes (the local mode).
//!
//! Every `*.yaml` and `*.yml` file below the directory is read (hidden files and folders
//! are skipped, so editors' swap files do not count). The whole directory is validated as
//! one: an error anywhere refuses the change, naming the file, line, object and field.
//! Changes are picked up by inotify, debounced so that an editor's save (often several
//! events) is read once.
//!
//! What is read is bounded: a file larger than [`MAX_FILE_BYTES`] is refused, a symbolic
//! link to a file is followed only when it stays inside the directory (as a Kubernetes
//! ConfigMap volume's links do), and symbolic links to directories are not followed (a
//! loop would otherwise never end). Each of these is an error naming the file, like any
//! other, rather than being skipped in silence.

use super::{Snapshot, Status, Store};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tarmac_model::{ModelError, ObjectKey, Resource, parse_documents};
use tokio::sync::{mpsc, watch};

/// Quiet time after the last file event before the directory is read again.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// The largest configuration file read: far above any real one, far below what would
/// hurt the control plane to parse (its objects are held in memory, and error messages
/// quote it).
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}: not a directory")]
    NotADirectory(String),
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ModelError>),
    #[error("cannot watch {dir}: {source}")]
    Watch { dir: String, source: notify::Error },
}

/// A watched directory. Dropping it stops the watch.
pub struct FilesStore {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    status: watch::Receiver<Arc<Status>>,
    _watcher: notify::RecommendedWatcher,
    _task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FilesStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilesStore").field("generation", &self.snapshots.borrow().generation).finish()
    }
}

impl Store for FilesStore {
    fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }

    fn status(&self) -> watch::Receiver<Arc<Status>> {
        self.status.clone()
    }
}

impl FilesStore {
    /// Reads `dir` and starts watching it. The first read must be valid: with no last
    /// good state to fall back on, an invalid directory is an error.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, OpenError> {
        let dir: PathBuf = dir.into();
        if !dir.is_dir() {
            return Err(OpenError::NotADirectory(dir.display().to_string()));
        }
        let objects = load_dir(&dir).map_err(OpenError::Invalid)?;
        let (snap_tx, snapshots) = watch::channel(Arc::new(Snapshot { generation: 1, objects }));
        let (status_tx, status) = watch::channel(Arc::new(Status {
            generation: 1,
            rejected: Vec::new(),
            checked_at: Some(SystemTime::now()),
        }));

        let (events_tx, events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Reading the files (ours included) raises access events; only changes count,
            // or every reload would trigger the next one.
            if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                let _ = events_tx.send(());
            }
        })
        .map_err(|source| OpenError::Watch { dir: dir.display().to_string(), source })?;
        notify::Watcher::watch(&mut watcher, &dir, notify::RecursiveMode::Recursive)
            .map_err(|source| OpenError::Watch { dir: dir.display().to_string(), source })?;
        let task = tokio::spawn(reload_on_change(dir, events, snap_tx, status_tx));
        Ok(Self { snapshots, status, _watcher: watcher, _task: task })
    }
}

async fn reload_on_change(
    dir: PathBuf,
    mut events: mpsc::UnboundedReceiver<()>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    status: watch::Sender<Arc<Status>>,
) {
    while events.recv().await.is_some() {
        // Wait for the burst of events to end.
        loop {
            match tokio::time::timeout(DEBOUNCE, events.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let current = snapshots.borrow().clone();
        match load_dir(&dir) {
            Ok(objects) => {
                let generation = if objects == current.objects {
                    current.generation
                } else {
                    let generation = current.generation + 1;
                    tracing::info!(dir = %dir.display(), generation, objects = objects.len(), "configuration accepted");
                    snapshots.send_replace(Arc::new(Snapshot { generation, objects }));
                    generation
                };
                status.send_replace(Arc::new(Status {
                    generation,
                    rejected: Vec::new(),
                    checked_at: Some(SystemTime::now()),
                }));
            }
            Err(errors) => {
                for e in &errors {
                    tracing::warn!("configuration refused, the last good one stays in force: {e}");
                }
                status.send_replace(Arc::new(Status {
                    generation: current.generation,
                    rejected: errors,
                    checked_at: Some(SystemTime::now()),
                }));
            }
        }
    }
}

/// Reads and validates every YAML file below `dir` as one configuration.
pub fn load_dir(dir: &Path) -> Result<BTreeMap<ObjectKey, Resource>, Vec<ModelError>> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    let root = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    collect_yaml_files(&root, dir, dir, &mut files, &mut errors);
    files.sort();
    let mut objects = BTreeMap::new();
    let mut defined_in: BTreeMap<ObjectKey, String> = BTreeMap::new();
    for path in files {
        let shown = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
        let text = match read_bounded(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(file_error(shown, e.to_string()));
                continue;
            }
        };
        match parse_documents(&shown, &text) {
            Ok(resources) => {
                for resource in resources {
                    let key = resource.key();
                    if let Some(first) = defined_in.get(&key) {
                        errors.push(ModelError {
                            file: shown.clone(),
                            line: None,
                            object: Some(key.to_string()),
                            field: None,
                            message: format!("defined twice: also in {first}"),
                        });
                        continue;
                    }
                    defined_in.insert(key.clone(), shown.clone());
                    objects.insert(key, resource);
                }
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() { Ok(objects) } else { Err(errors) }
}

fn file_error(file: String, message: String) -> ModelError {
    ModelError { file, line: None, object: None, field: None, message }
}

/// Why a configuration file was not read.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("larger than {} MiB: not read", MAX_FILE_BYTES / (1024 * 1024))]
    TooLarge,
}

/// A file's text, unless it is too large to be configuration.
fn read_bounded(path: &Path) -> Result<String, ReadError> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    // Bounded while reading too: the file may grow between a size check and the read.
    file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge);
    }
    Ok(text)
}

/// The YAML files below `dir` (`top` is the configuration directory, `root` its
/// canonical path). Symbolic links: see the module's documentation.
fn collect_yaml_files(
    root: &Path,
    top: &Path,
    dir: &Path,
    out: &mut Vec<PathBuf>,
    errors: &mut Vec<ModelError>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let Ok(kind) = entry.file_type() else { continue };
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        let shown = || path.strip_prefix(top).unwrap_or(&path).display().to_string();
        if kind.is_dir() {
            collect_yaml_files(root, top, &path, out, errors);
        } else if kind.is_symlink() {
            match std::fs::canonicalize(&path) {
                Ok(target) if target.is_dir() => errors.push(file_error(
                    shown(),
                    "a symbolic link to a directory: not followed; put the files themselves here".into(),
                )),
                Ok(target) if yaml && !target.starts_with(root) => errors.push(file_error(
                    shown(),
                    format!(
                        "a symbolic link to {}, outside the configuration directory: not followed",
                        target.display()
                    ),
                )),
                Ok(_) if yaml => out.push(path),
                Ok(_) => {}
                Err(e) if yaml => errors.push(file_error(shown(), format!("a broken symbolic link: {e}"))),
                Err(_) => {}
            }
        } else if yaml {
            out.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOKS: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: books}\nspec:\n  selector: {app: books}\n  ports: [{port: 80}]\n";
    const AUTHORS: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: authors}\nspec:\n  selector: {app: authors}\n  ports: [{port: 80}]\n";

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tarmac-store-{}-{}",
            std::process::id(),
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_directory_loads_as_one_configuration() {
        let dir = temp_dir();
        std::fs::write(dir.join("books.yaml"), BOOKS).unwrap();
        std::fs::create_dir(dir.join("more")).unwrap();
        std::fs::write(dir.join("more/authors.yml"), AUTHORS).unwrap();
        std::fs::write(dir.join(".books.yaml.swp"), "garbage: [").unwrap();
        std::fs::write(dir.join("notes.txt"), "not yaml").unwrap();
        let objects = load_dir(&dir).unwrap();
        assert_eq!(objects.len(), 2);
    }

    #[test]
    fn links_out_of_the_directory_loops_and_huge_files_are_refused_by_name() {
        let dir = temp_dir();
        let outside = temp_dir();
        std::fs::write(outside.join("secret.yaml"), BOOKS).unwrap();
        std::fs::write(dir.join("books.yaml"), BOOKS).unwrap();
        // Inside the directory, as a ConfigMap volume links its files: followed.
        std::fs::create_dir(dir.join(".data")).unwrap();
        std::fs::write(dir.join(".data/authors.yaml"), AUTHORS).unwrap();
        std::os::unix::fs::symlink(".data/authors.yaml", dir.join("authors.yaml")).unwrap();
        assert_eq!(load_dir(&dir).unwrap().len(), 2);

        std::os::unix::fs::symlink(outside.join("secret.yaml"), dir.join("elsewhere.yaml")).unwrap();
        std::os::unix::fs::symlink(".", dir.join("loop")).unwrap();
        std::fs::write(dir.join("huge.yaml"), "#".repeat(MAX_FILE_BYTES as usize + 1)).unwrap();
        let errors: Vec<String> = load_dir(&dir).unwrap_err().iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("elsewhere.yaml: ")
                    && e.contains("outside the configuration directory")),
            "{errors:#?}"
        );
        assert!(
            errors.iter().any(|e| e.starts_with("loop: ") && e.contains("to a directory: not followed")),
            "{errors:#?}"
        );
        assert!(
            errors.iter().any(|e| e.starts_with("huge.yaml: ") && e.contains("larger than 4 MiB")),
            "{errors:#?}"
        );
    }

    #[test]
    fn one_bad_file_refuses_everything_and_says_where() {
        let dir = temp_dir();
        std::fs::write(dir.join("books.yaml"), BOOKS).unwrap();
        std::fs::write(dir.join("bad.yaml"), AUTHORS.replace("port: 80", "port: 99999")).unwrap();
        let errors = load_dir(&dir).unwrap_err();
        assert_eq!(errors.len(), 1);
        let e = errors[0].to_string();
        assert!(e.starts_with("bad.yaml:6: Service default/authors: "), "{e}");
    }

    #[test]
    fn an_object_defined_twice_is_refused() {
        let dir = temp_dir();
        std::fs::write(dir.join("a.yaml"), BOOKS).unwrap();
        std::fs::write(dir.join("b.yaml"), BOOKS).unwrap();
        let e = load_dir(&dir).unwrap_err()[0].to_string();
        assert!(
            e.contains("b.yaml") && e.contains("Service default/books") && e.contains("also in a.yaml"),
            "{e}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_are_applied_whole_or_not_at_all() {
        let dir = temp_dir();
        std::fs::write(dir.join("books.yaml"), BOOKS).unwrap();
        let store = FilesStore::open(&dir).unwrap();
        let mut snapshots = store.snapshots();
        let mut status = store.status();
        assert_eq!(snapshots.borrow().objects.len(), 1);

        // A valid addition is applied.
        std::fs::write(dir.join("authors.yaml"), AUTHORS).unwrap();
        let snap = wait(&mut snapshots, |s| s.objects.len() == 2).await;
        assert_eq!(snap.generation, 2);

        // A broken file changes nothing in force, and the refusal is reported.
        std::fs::write(
            dir.join("broken.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: []}\n",
        )
        .unwrap();
        let st = wait(&mut status, |s| !s.rejected.is_empty()).await;
        assert!(st.rejected[0].to_string().contains("broken.yaml"), "{:?}", st.rejected);
        assert_eq!(st.generation, 2);
        assert_eq!(snapshots.borrow().generation, 2);
        assert_eq!(snapshots.borrow().objects.len(), 2);

        // Fixing it is accepted.
        std::fs::remove_file(dir.join("broken.yaml")).unwrap();
        let st = wait(&mut status, |s| s.rejected.is_empty()).await;
        assert_eq!(st.generation, 2, "removing the broken file restores the same objects: no new generation");

        // And then the store is quiet: its own reads of the directory are not changes.
        tokio::time::sleep(DEBOUNCE * 2).await;
        status.borrow_and_update();
        tokio::time::sleep(DEBOUNCE * 5).await;
        assert!(!status.has_changed().unwrap(), "the store keeps reloading with nothing changed");
    }

    async fn wait<T: Clone>(rx: &mut watch::Receiver<Arc<T>>, ok: impl Fn(&T) -> bool) -> Arc<T> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let value = rx.borrow_and_update().clone();
                if ok(&value) {
                    return value;
                }
                rx.changed().await.unwrap();
            }
        })
        .await
        .expect("the store reacted within 10 s")
    }
}
