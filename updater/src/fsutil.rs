//! Crash-safe changes to persistent state: write a temporary file, fsync it, rename it over the
//! target, fsync the directory (as Bottlerocket's migrator and thar-be-updates do).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A file-system step that failed, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// Writing a file's bytes failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// fsync of a file or directory failed.
    #[error("cannot fsync {path}: {source}")]
    Sync {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Renaming a file into place failed.
    #[error("cannot rename {from} to {to}: {source}")]
    Rename {
        /// The source.
        from: PathBuf,
        /// The destination.
        to: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Creating a symlink failed.
    #[error("cannot create symlink {path}: {source}")]
    Symlink {
        /// The link.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Asking the file system for its free space failed.
    #[error("cannot read free space of {path}: {source}")]
    Statvfs {
        /// The directory.
        path: PathBuf,
        /// The errno.
        source: nix::Error,
    },
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A sibling of `path` named `.NAME.tmp`, in the same directory (so a rename is atomic).
fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    parent_of(path).join(format!(".{name}.tmp"))
}

/// fsyncs a directory, making renames and creations in it durable.
pub fn fsync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| FsError::Sync { path: dir.to_path_buf(), source })
}

/// fsyncs a file's data and metadata.
pub fn fsync_file(path: &Path) -> Result<(), FsError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| FsError::Sync { path: path.to_path_buf(), source })
}

/// Replaces `path` with `bytes` atomically: write-temp → fsync → rename → fsync(dir).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let tmp = temp_sibling(path);
    let write = |tmp: &Path| -> std::io::Result<()> {
        let mut f = File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    write(&tmp).map_err(|source| FsError::Write { path: tmp.clone(), source })?;
    rename(&tmp, path)?;
    fsync_dir(parent_of(path))
}

/// Renames `from` to `to` (same file system) and fsyncs the destination's directory.
pub fn rename_durable(from: &Path, to: &Path) -> Result<(), FsError> {
    rename(from, to)?;
    fsync_dir(parent_of(to))
}

fn rename(from: &Path, to: &Path) -> Result<(), FsError> {
    fs::rename(from, to).map_err(|source| FsError::Rename {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    })
}

/// Points the symlink `link` at `target` atomically: a new symlink beside it, renamed over it,
/// then the directory fsynced. A reader sees the old target or the new one, never neither.
pub fn switch_symlink(link: &Path, target: &Path) -> Result<(), FsError> {
    let tmp = temp_sibling(link);
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .map_err(|source| FsError::Symlink { path: tmp.clone(), source })?;
    rename(&tmp, link)?;
    fsync_dir(parent_of(link))
}

/// Bytes available to an unprivileged writer on the file system holding `dir`.
pub fn free_space(dir: &Path) -> Result<u64, FsError> {
    let st = nix::sys::statvfs::statvfs(dir)
        .map_err(|source| FsError::Statvfs { path: dir.to_path_buf(), source })?;
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    Ok(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn switch_symlink_flips_target() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("current");
        switch_symlink(&link, Path::new("versions/1.0.0")).unwrap();
        switch_symlink(&link, Path::new("versions/2.0.0")).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("versions/2.0.0"));
        assert!(free_space(dir.path()).unwrap() > 0);
    }
}
