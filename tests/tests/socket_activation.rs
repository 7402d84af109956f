//! Socket activation end to end: the test does what systemd does for `outpost.socket` (bind and
//! listen, pass the socket as descriptor 3 with `LISTEN_FDS=1` and `LISTEN_PID` = the daemon's
//! pid) and checks that `outpost serve` answers on that socket instead of binding its own.
//!
//! The descriptor travels as the child's stdin (std clears close-on-exec for stdio) and a
//! shell moves it to 3 and sets `LISTEN_PID=$$` before it execs the daemon, keeping its pid:
//! no `pre_exec` code runs between fork and exec in this multi-threaded test process.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost_e2e::{config_text, http, outpost_bin, tiny_model, Notifications};
use serde_json::json;

/// A daemon started the way systemd starts a socket-activated service.
struct Activated {
    child: Child,
    notifications: Notifications,
    stderr: Arc<Mutex<String>>,
}

impl Activated {
    /// Starts `outpost serve --config <dir>/outpost.toml` with `fd3` as descriptor 3 and
    /// `LISTEN_PID` set to `listen_pid`, or to the daemon's own pid when `None`.
    fn spawn(dir: &Path, socket: &Path, fd3: OwnedFd, listen_pid: Option<u32>) -> Self {
        let config = dir.join("outpost.toml");
        std::fs::write(&config, config_text(&tiny_model(1), socket, "")).unwrap();
        let notify = dir.join("notify.sock");
        let notifications = Notifications::listen(&notify);
        let pid = listen_pid.map_or("$$".to_owned(), |p| p.to_string());
        let script =
            format!("exec 3<&0 </dev/null; export LISTEN_PID={pid} LISTEN_FDS=1; exec \"$0\" \"$@\"");
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .arg(outpost_bin())
            .args(["serve", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify)
            .env_remove("JOURNAL_STREAM")
            .env("RUST_LOG", "info")
            .stdin(Stdio::from(fd3))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (mut pipe, sink) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self { child, notifications, stderr }
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn wait_ready(&self) {
        if !self.notifications.wait_for("READY=1", Duration::from_secs(60)) {
            panic!("no READY=1 within 60 s; log:\n{}", self.log());
        }
    }

    /// SIGTERM (when `term`), then the exit code within 30 s.
    fn stop(&mut self, term: bool) -> Option<i32> {
        if term {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "daemon did not exit; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serves_on_the_socket_systemd_passes() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("outpost.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let inode = std::fs::metadata(&socket).unwrap().ino();
    // Had the daemon ignored descriptor 3, its own bind would find this path in use and fail.
    let mut daemon = Activated::spawn(dir.path(), &socket, listener.into(), None);
    daemon.wait_ready();
    assert!(daemon.log().contains("using the socket systemd passed"), "{}", daemon.log());

    let body =
        json!({ "messages": [{ "role": "user", "content": "Hello?" }], "max_tokens": 4, "temperature": 0 });
    let response = http::request(&socket, "POST", "/v1/chat/completions", Some(&body.to_string()));
    assert_eq!(response.status, 200, "{}", response.text());
    let answer = response.json();
    assert_eq!(answer["object"], "chat.completion");
    assert!(answer["usage"]["completion_tokens"].as_u64().unwrap() >= 1, "{answer}");
    assert_eq!(std::fs::metadata(&socket).unwrap().ino(), inode, "the socket file was replaced");

    assert_eq!(daemon.stop(true), Some(0), "{}", daemon.log());
}

#[test]
fn the_socket_units_file_outlives_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("outpost.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let mut daemon = Activated::spawn(dir.path(), &socket, listener.into(), None);
    daemon.wait_ready();
    assert_eq!(daemon.stop(true), Some(0), "{}", daemon.log());
    // systemd still listens on it and starts the next daemon on the next connection.
    assert!(socket.exists(), "the daemon removed the socket unit's file");
}

#[test]
fn sockets_meant_for_another_process_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("theirs.sock");
    let listener = UnixListener::bind(&theirs).unwrap();
    let ours = dir.path().join("outpost.sock");
    // LISTEN_PID names another process (pid 1): the daemon binds api.socket itself.
    let mut daemon = Activated::spawn(dir.path(), &ours, listener.into(), Some(1));
    daemon.wait_ready();
    assert_eq!(http::request(&ours, "GET", "/healthz", None).status, 200);
    assert!(!daemon.log().contains("using the socket systemd passed"), "{}", daemon.log());
    assert_eq!(daemon.stop(true), Some(0), "{}", daemon.log());
}

#[test]
fn a_passed_descriptor_that_is_not_a_listening_socket_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("outpost.sock");
    let not_a_socket = std::fs::File::open("/dev/null").unwrap();
    let mut daemon = Activated::spawn(dir.path(), &socket, not_a_socket.into(), None);
    assert_eq!(daemon.stop(false), Some(1), "{}", daemon.log());
    assert!(
        daemon.log().contains("the socket systemd passed (fd 3, LISTEN_FDS) is not usable"),
        "{}",
        daemon.log()
    );
    assert!(!socket.exists(), "it must not fall back to binding");
}
