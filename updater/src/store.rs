//! The model store on the device, its persistent state and the update journal.
//!
//! ```text
//! <store>/versions/<version>/model.gguf     one directory per version
//! <store>/versions/<version>/manifest.json  the signed manifest it came with
//! <store>/current -> versions/<version>     what the runtime loads (current/model.gguf)
//! <store>/state.json                        committed versions, latest known time, failures
//! <store>/journal.json                      the update in progress, if any
//! <store>/staging/                          an update being built (never loaded)
//! <store>/downloads/<sha256>.part           an artifact being downloaded (resumed next time)
//! ```
//!
//! Every change to `state.json`, `journal.json` and `current` is atomic (temp → fsync → rename →
//! fsync dir). [`crate::update::recover`] runs at every invocation and finishes or undoes
//! whatever an interrupted update left. One updater at a time changes a store: commands that
//! change it hold [`Store::lock`] (an exclusive `flock` on the store directory, released by the
//! kernel when the process dies, however it dies).

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::fsutil::{self, FsError};

/// The model file's name in each version directory.
pub const MODEL_FILE: &str = "model.gguf";
/// The manifest's name in each version directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A durable file-system step failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Another file-system operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `state.json` or `journal.json` is not valid.
    #[error("{path} is corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// `rollback` with no previous committed version on disk.
    #[error("no previous committed version to roll back to")]
    NoPrevious,
    /// Another updater process holds the store's lock.
    #[error("another outpost-updater is working on {path}")]
    Busy {
        /// The store.
        path: PathBuf,
    },
}

/// The store's lock, held until dropped.
#[derive(Debug)]
pub struct StoreLock {
    _flock: Flock<File>,
}

/// A committed version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// Its semantic version (also its directory name under `versions/`).
    pub version: String,
    /// Its model's SHA-256.
    pub sha256: String,
}

/// What the board remembers between updates (`state.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// The version `current` points at once no update is in progress.
    pub current: Option<Committed>,
    /// The version before it, kept for `rollback`.
    pub previous: Option<Committed>,
    /// The highest version ever committed: nothing older is accepted.
    pub highest_committed: Option<Committed>,
    /// The latest time seen (RFC 3339): manifests expiring before it are refused.
    pub latest_known_time: Option<String>,
    /// The last failed update, for `status`.
    pub last_failure: Option<String>,
    /// The last version whose trial failed (the runtime could not load or serve it): `apply`
    /// refuses this exact version and hash again, so a periodic check cannot loop on it.
    pub failed: Option<Committed>,
}

/// Steps of an update, recorded in `journal.json` before moving on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Building `staging/<version>`; nothing visible has changed.
    Staging,
    /// `versions/<version>` complete and verified; `current` not switched yet.
    Staged,
    /// `current` points at the new version; not committed yet.
    Switched,
}

/// The update in progress (`journal.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// Where the update is.
    pub step: Step,
    /// The version being installed.
    pub version: String,
    /// Its target SHA-256.
    pub sha256: String,
    /// Its manifest's creation time (RFC 3339), for the latest known time at commit.
    pub created: String,
    /// The version `current` pointed at before, if any.
    pub from: Option<Committed>,
    /// Trials started for this version (recorded before each starts, so one interrupted by a
    /// crash or reboot counts); at `max_trials` recovery switches back instead of trying again.
    #[serde(default)]
    pub trials: u32,
}

/// A model store rooted at a directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The store's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `versions/<version>`.
    pub fn version_dir(&self, version: &str) -> PathBuf {
        self.root.join("versions").join(version)
    }

    /// The `current` symlink.
    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }

    /// `staging/`.
    pub fn staging_root(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// `downloads/`: artifacts being downloaded.
    pub fn downloads_dir(&self) -> PathBuf {
        self.root.join("downloads")
    }

    /// Takes the store's exclusive lock (creating the store directory if missing), or fails at
    /// once with [`StoreError::Busy`] if another process holds it.
    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        let io = |op, source| StoreError::Io { op, path: self.root.clone(), source };
        std::fs::create_dir_all(&self.root).map_err(|e| io("create", e))?;
        let dir = File::open(&self.root).map_err(|e| io("open", e))?;
        match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(flock) => Ok(StoreLock { _flock: flock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(StoreError::Busy { path: self.root.clone() }),
            Err((_, errno)) => Err(io("lock", errno.into())),
        }
    }

    fn state_path(&self) -> PathBuf {
        self.root.join("state.json")
    }

    fn journal_path(&self) -> PathBuf {
        self.root.join("journal.json")
    }

    /// Creates the root and `versions/` if missing.
    pub fn ensure_dirs(&self) -> Result<(), StoreError> {
        let versions = self.root.join("versions");
        if !versions.is_dir() {
            std::fs::create_dir_all(&versions).map_err(|source| StoreError::Io {
                op: "create",
                path: versions.clone(),
                source,
            })?;
            fsutil::fsync_dir(&self.root)?;
        }
        Ok(())
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, path: &Path) -> Result<Option<T>, StoreError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StoreError::Corrupt { path: path.to_path_buf(), source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { op: "read", path: path.to_path_buf(), source }),
        }
    }

    /// The committed state (default when the store is new).
    pub fn state(&self) -> Result<State, StoreError> {
        Ok(self.read_json(&self.state_path())?.unwrap_or_default())
    }

    /// Replaces `state.json` atomically.
    pub fn write_state(&self, state: &State) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
        Ok(fsutil::write_atomic(&self.state_path(), &bytes)?)
    }

    /// The update in progress, if any.
    pub fn journal(&self) -> Result<Option<Journal>, StoreError> {
        self.read_json(&self.journal_path())
    }

    /// Records the update's step atomically.
    pub fn write_journal(&self, journal: &Journal) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(journal).unwrap_or_default();
        Ok(fsutil::write_atomic(&self.journal_path(), &bytes)?)
    }

    /// Removes the journal (the update is over) and makes that durable.
    pub fn clear_journal(&self) -> Result<(), StoreError> {
        remove_file_if_exists(&self.journal_path())?;
        Ok(fsutil::fsync_dir(&self.root)?)
    }

    /// Points `current` at `versions/<version>` atomically.
    pub fn switch_to(&self, version: &str) -> Result<(), StoreError> {
        let target = Path::new("versions").join(version);
        Ok(fsutil::switch_symlink(&self.current_link(), &target)?)
    }

    /// The version `current` points at now, read from the link.
    pub fn linked_version(&self) -> Option<String> {
        let target = std::fs::read_link(self.current_link()).ok()?;
        target.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    /// Removes `staging/` entirely.
    pub fn clear_staging(&self) -> Result<(), StoreError> {
        remove_dir_if_exists(&self.staging_root())
    }

    /// Removes `versions/<version>` unless it is the current or previous committed version.
    pub fn remove_uncommitted(&self, version: &str, state: &State) -> Result<(), StoreError> {
        let keep = |c: &Option<Committed>| c.as_ref().is_some_and(|c| c.version == version);
        if keep(&state.current) || keep(&state.previous) {
            return Ok(());
        }
        remove_dir_if_exists(&self.version_dir(version))
    }

    /// Deletes every version directory except the current and previous committed ones.
    pub fn collect_garbage(&self, state: &State) -> Result<Vec<String>, StoreError> {
        let versions = self.root.join("versions");
        let entries = match std::fs::read_dir(&versions) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StoreError::Io { op: "list", path: versions, source }),
        };
        let mut removed = Vec::new();
        let keep = |c: &Option<Committed>, name: &str| c.as_ref().is_some_and(|c| c.version == name);
        let linked = self.linked_version();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if linked.as_deref() == Some(name.as_str())
                || keep(&state.current, &name)
                || keep(&state.previous, &name)
            {
                continue;
            }
            remove_dir_if_exists(&entry.path())?;
            removed.push(name);
        }
        if !removed.is_empty() {
            fsutil::fsync_dir(&versions)?;
        }
        Ok(removed)
    }

    /// Switches back to the previous committed version (`rollback`): current and previous swap.
    pub fn rollback(&self) -> Result<Committed, StoreError> {
        let mut state = self.state()?;
        let previous = state.previous.clone().ok_or(StoreError::NoPrevious)?;
        if !self.version_dir(&previous.version).join(MODEL_FILE).is_file() {
            return Err(StoreError::NoPrevious);
        }
        self.switch_to(&previous.version)?;
        state.previous = state.current.take();
        state.current = Some(previous.clone());
        self.write_state(&state)?;
        Ok(previous)
    }
}

fn remove_file_if_exists(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Io { op: "remove", path: path.to_path_buf(), source }),
    }
}

/// Removes a directory tree if present, then fsyncs its parent.
pub fn remove_dir_if_exists(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => {
            if let Some(parent) = path.parent() {
                fsutil::fsync_dir(parent)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Io { op: "remove", path: path.to_path_buf(), source }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_lock_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("store"));
        let held = store.lock().unwrap();
        assert!(matches!(store.lock(), Err(StoreError::Busy { .. })));
        drop(held);
        store.lock().unwrap();
    }
}
