//! The Unix socket: stale-socket removal, mode 0660, owning group, and the caller's peer
//! credentials.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::UnixListener;

/// Mode of the socket file: owner and group may connect.
pub const SOCKET_MODE: u32 = 0o660;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process is listening on the path.
    #[error("another process is already serving on {0}")]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("{0} exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf),
    /// A filesystem operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configured group does not exist.
    #[error("group `{0}` (api.group) does not exist")]
    UnknownGroup(String),
    /// Setting the owning group failed.
    #[error("cannot give {path} to group {group}: {source}")]
    Chown {
        /// The socket path.
        path: PathBuf,
        /// The group.
        group: String,
        /// The OS error.
        source: nix::Error,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SocketError + 'a {
    move |source| SocketError::Io { action, path: path.to_path_buf(), source }
}

/// Binds the socket with its final mode and group. A socket file nobody listens on is removed
/// first; one somebody listens on is an error (two daemons must not share a path).
pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, SocketError> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(io("create directory", parent))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(SocketError::NotASocket(path.to_path_buf()));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse(path.to_path_buf()));
            }
            tracing::info!(path = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(io("remove stale socket", path))?;
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(SocketError::Io { action: "inspect", path: path.to_path_buf(), source }),
    }
    let listener = UnixListener::bind(path).map_err(io("bind", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(io("set the mode of", path))?;
    if let Some(name) = group {
        let group = nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| SocketError::UnknownGroup(name.to_owned()))?;
        nix::unistd::chown(path, None, Some(group.gid)).map_err(|source| SocketError::Chown {
            path: path.to_path_buf(),
            group: name.to_owned(),
            source,
        })?;
    }
    Ok(listener)
}

/// The connecting process, from the socket's peer credentials (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    /// The caller's uid, if the kernel told us.
    pub uid: Option<u32>,
    /// The caller's pid, if the kernel told us.
    pub pid: Option<i32>,
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(cred) => Self { uid: Some(cred.uid()), pid: cred.pid() },
            Err(_) => Self { uid: None, pid: None },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_socket_is_replaced_live_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/outpost.sock");
        let first = bind(&path, None).expect("first bind");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        assert!(matches!(bind(&path, None), Err(SocketError::InUse(_))));
        drop(first); // The file stays behind, as after a crash.
        assert!(path.exists());
        let _second = bind(&path, None).expect("stale socket replaced");
    }

    #[tokio::test]
    async fn regular_file_is_never_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outpost.sock");
        std::fs::write(&path, b"precious").expect("write");
        assert!(matches!(bind(&path, None), Err(SocketError::NotASocket(_))));
        assert_eq!(std::fs::read(&path).expect("read"), b"precious");
    }

    #[tokio::test]
    async fn unknown_group_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outpost.sock");
        let err = bind(&path, Some("no-such-group-outpost")).expect_err("unknown group");
        assert!(matches!(err, SocketError::UnknownGroup(_)));
    }
}
