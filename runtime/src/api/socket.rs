//! The Unix socket: socket activation, stale-socket removal, mode 0660, owning group, and the
//! caller's peer credentials.
//!
//! Socket activation (`outpost.socket`): when systemd passes a listening socket
//! (`LISTEN_PID` is our pid, `LISTEN_FDS` ≥ 1), [`bind`] serves on descriptor 3 instead of
//! binding; the socket unit owns the file, its mode and group, and keeps accepting connections
//! into its backlog while the daemon restarts.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use nix::libc;
use tokio::net::UnixListener;

/// Mode of the socket file: owner and group may connect.
pub const SOCKET_MODE: u32 = 0o660;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Set once [`bind`] has taken the socket systemd passed: descriptor 3 is then ours, and the
/// socket file belongs to the socket unit (see [`remove`]).
static ACTIVATED: AtomicBool = AtomicBool::new(false);

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
    /// systemd passed a descriptor that is not a listening Unix stream socket.
    #[error("the socket systemd passed (fd 3, LISTEN_FDS) is not usable: {0}")]
    Inherited(String),
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

/// The listening socket: the one systemd passed, if any (socket activation; `path` and `group`
/// are then the socket unit's business), else `path` bound with its final mode and group. A
/// socket file nobody listens on is removed first; one somebody listens on is an error (two
/// daemons must not share a path). Call it from within the tokio runtime.
pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, SocketError> {
    if let Some(listener) = take_inherited()? {
        let local = listener.local_addr().map_err(|e| SocketError::Inherited(e.to_string()))?;
        match local.as_pathname() {
            Some(bound) if bound == path => {
                tracing::info!(path = %path.display(), "using the socket systemd passed");
            }
            passed => tracing::warn!(
                ?passed,
                configured = %path.display(),
                "the socket systemd passed is not api.socket; clients of api.socket will not reach this daemon"
            ),
        }
        listener.set_nonblocking(true).map_err(|e| SocketError::Inherited(e.to_string()))?;
        return UnixListener::from_std(listener).map_err(|e| SocketError::Inherited(e.to_string()));
    }
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

/// Removes the socket file when the daemon stops, unless it came from systemd: that file belongs
/// to the socket unit, which keeps listening on it for the next start.
pub fn remove(path: &Path) {
    if !ACTIVATED.load(Ordering::SeqCst) {
        // Already gone is fine; anything else only leaves a stale file the next start removes.
        let _ = std::fs::remove_file(path);
    }
}

/// How many sockets systemd passed: `LISTEN_FDS` if `LISTEN_PID` is `me`, else none (the
/// variables were meant for another process, e.g. a parent that did not unset them).
fn listen_fds(listen_pid: Option<&OsStr>, listen_fds: Option<&OsStr>, me: u32) -> usize {
    let number = |v: Option<&OsStr>| v.and_then(OsStr::to_str).and_then(|s| s.parse::<u64>().ok());
    match (number(listen_pid), number(listen_fds)) {
        (Some(pid), Some(fds)) if pid == u64::from(me) => usize::try_from(fds).unwrap_or(0),
        _ => 0,
    }
}

/// Takes descriptor 3 if systemd passed sockets, as `sd_listen_fds(unset_environment = 1)` does:
/// the variables are removed (no child inherits them) and the descriptor is taken at most once.
fn take_inherited() -> Result<Option<std::os::unix::net::UnixListener>, SocketError> {
    let count = listen_fds(
        std::env::var_os("LISTEN_PID").as_deref(),
        std::env::var_os("LISTEN_FDS").as_deref(),
        std::process::id(),
    );
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // glibc's unsetenv only moves pointers within `environ` and frees nothing, so a thread
        // reading the environment meanwhile sees it before or after, never freed memory.
        std::env::remove_var(var);
    }
    if count == 0 || ACTIVATED.swap(true, Ordering::SeqCst) {
        return Ok(None);
    }
    if count > 1 {
        tracing::warn!(count, "systemd passed several sockets; serving on the first (fd 3) only");
    }
    let fd = LISTEN_FDS_START;
    let check = |option, want: libc::c_int, what: &str| match sockopt(fd, option) {
        Ok(value) if value == want => Ok(()),
        Ok(_) => Err(SocketError::Inherited(format!("it is not {what}"))),
        Err(err) => Err(SocketError::Inherited(err.to_string())),
    };
    check(libc::SO_DOMAIN, libc::AF_UNIX, "a Unix socket")?;
    check(libc::SO_TYPE, libc::SOCK_STREAM, "a stream socket")?;
    check(libc::SO_ACCEPTCONN, 1, "listening")?;
    // SAFETY: systemd handed descriptor 3 to this process, it is an open socket (checked above),
    // and the ACTIVATED flag makes this the only place that ever takes ownership of it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::fcntl::fcntl(owned.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
        .map_err(|e| SocketError::Inherited(format!("cannot set close-on-exec: {e}")))?;
    Ok(Some(owned.into()))
}

/// An integer socket option of descriptor `fd` at `SOL_SOCKET`.
fn sockopt(fd: RawFd, option: libc::c_int) -> std::io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes and `len` holds `value`'s size.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, option, std::ptr::addr_of_mut!(value).cast(), &mut len)
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(std::io::Error::last_os_error())
    }
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

    #[test]
    fn listen_fds_only_counts_for_our_pid() {
        let os = |s: &'static str| Some(OsStr::new(s));
        assert_eq!(listen_fds(os("42"), os("1"), 42), 1);
        assert_eq!(listen_fds(os("42"), os("2"), 42), 2);
        assert_eq!(listen_fds(os("41"), os("1"), 42), 0, "meant for another process");
        assert_eq!(listen_fds(None, os("1"), 42), 0);
        assert_eq!(listen_fds(os("42"), None, 42), 0);
        assert_eq!(listen_fds(os("42"), os("one"), 42), 0);
        assert_eq!(listen_fds(os(" 42"), os("1"), 42), 0);
    }

    #[test]
    fn sockopt_tells_a_listener_from_a_connected_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let client = std::os::unix::net::UnixStream::connect(&path).expect("connect");
        let fd = listener.as_raw_fd();
        assert_eq!(sockopt(fd, libc::SO_DOMAIN).expect("domain"), libc::AF_UNIX);
        assert_eq!(sockopt(fd, libc::SO_TYPE).expect("type"), libc::SOCK_STREAM);
        assert_eq!(sockopt(fd, libc::SO_ACCEPTCONN).expect("acceptconn"), 1);
        assert_eq!(sockopt(client.as_raw_fd(), libc::SO_ACCEPTCONN).expect("acceptconn"), 0);
        let file = std::fs::File::open("/dev/null").expect("open");
        assert!(sockopt(file.as_raw_fd(), libc::SO_TYPE).is_err(), "not a socket");
    }

    #[tokio::test]
    async fn unknown_group_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outpost.sock");
        let err = bind(&path, Some("no-such-group-outpost")).expect_err("unknown group");
        assert!(matches!(err, SocketError::UnknownGroup(_)));
    }
}
