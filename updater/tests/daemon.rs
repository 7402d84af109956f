//! `outpost-updater daemon` as a process against the local HTTP server: it installs each new
//! release the manifest URL announces, survives a server that fails, checks at once on SIGUSR1,
//! tells systemd what it does, and stops promptly on SIGTERM, a download in flight kept for the
//! next run to resume.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::server::{Fault, Server};
use common::{read_manifest, sha_of, Fixture};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use outpost_updater::manifest::ArtifactKind;

/// A running daemon with its stderr and systemd notifications collected.
struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
    notes: Arc<Mutex<Vec<String>>>,
    _notify_dir: tempfile::TempDir,
}

impl Daemon {
    fn start(config: &Path) -> Self {
        let notify_dir = tempfile::tempdir().unwrap();
        let socket_path = notify_dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let notes = Arc::new(Mutex::new(Vec::new()));
        let sink = notes.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while Arc::strong_count(&sink) > 1 {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    sink.lock().unwrap().extend(text.lines().map(str::to_owned));
                }
            }
        });
        let mut child = Command::new(env!("CARGO_BIN_EXE_outpost-updater"))
            .arg("--config")
            .arg(config)
            .arg("daemon")
            .env("NOTIFY_SOCKET", &socket_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (mut pipe, sink) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self { child, log, notes, _notify_dir: notify_dir }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn notes(&self) -> Vec<String> {
        self.notes.lock().unwrap().clone()
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// Waits until `cond` holds, panicking with the daemon's log after `secs`.
    fn wait_for(&self, what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !cond() {
            assert!(Instant::now() < deadline, "{what}: not within {secs}s; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status and how long the exit took.
    fn terminate(&mut self) -> (ExitStatus, Duration) {
        let t = Instant::now();
        self.signal(Signal::SIGTERM);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, t.elapsed());
            }
            assert!(t.elapsed() < Duration::from_secs(30), "no exit after SIGTERM; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes release `rel` on the channel directory `ch`: artifacts first, then the manifest by
/// rename, as a release server would.
fn publish(rel: &Path, ch: &Path) {
    std::fs::create_dir_all(ch).unwrap();
    for e in std::fs::read_dir(rel).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "manifest.json" {
            std::fs::copy(e.path(), ch.join(e.file_name())).unwrap();
        }
    }
    std::fs::copy(rel.join("manifest.json"), ch.join(".manifest.tmp")).unwrap();
    std::fs::rename(ch.join(".manifest.tmp"), ch.join("manifest.json")).unwrap();
}

fn config(f: &Fixture, server: &Server, interval: &str, extra: &str) -> PathBuf {
    f.config_with(
        &["k1"],
        1,
        &format!(
            "manifest_url = {:?}\ncheck_interval = {interval:?}\nretry_backoff = \"10ms\"\nread_timeout = \"2s\"\nmin_rate = 0\n{extra}",
            server.url("ch/manifest.json")
        ),
    )
}

#[test]
fn the_daemon_installs_each_new_release_and_stops_on_sigterm() {
    let f = Fixture::new();
    let server = Server::start(f.path());
    let ch = f.path().join("ch");
    publish(&f.rel1, &ch);
    let mut d = Daemon::start(&config(&f, &server, "1s", ""));
    d.wait_for("READY=1", 10, || d.notes().iter().any(|l| l == "READY=1"));
    d.wait_for("1.0.0 installed", 20, || f.current_sha() == Some(sha_of(&f.v1)));
    publish(&f.rel2, &ch);
    d.wait_for("1.1.0 installed", 20, || f.current_sha() == Some(sha_of(&f.v2)));
    // It took the delta, and keeps checking without downloading again.
    let delta = read_manifest(&f.rel2).signed.artifacts.into_iter().find(|a| a.kind == ArtifactKind::Delta);
    assert_eq!(server.requests(&delta.unwrap().name).len(), 1);
    let checks = server.requests("ch/manifest.json").len();
    d.wait_for("another check", 10, || server.requests("ch/manifest.json").len() > checks + 1);
    d.wait_for("STATUS up to date", 10, || {
        d.notes().iter().any(|l| l.starts_with("STATUS=up to date (1.1.0)"))
    });
    let (status, took) = d.terminate();
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(d.notes().iter().any(|l| l == "STOPPING=1"), "{:?}", d.notes());
    assert!(d.log().contains("installed") && d.log().contains("update daemon stopped"), "{}", d.log());
}

#[test]
fn sigterm_during_a_download_stops_promptly_and_the_next_run_resumes() {
    let f = Fixture::new();
    let server = Server::start(f.path());
    let ch = f.path().join("ch");
    publish(&f.rel1, &ch);
    let cfg = config(&f, &server, "1h", "");
    let mut d = Daemon::start(&cfg);
    d.wait_for("1.0.0 installed", 20, || f.current_sha() == Some(sha_of(&f.v1)));
    d.terminate();

    publish(&f.rel2, &ch);
    let delta =
        read_manifest(&f.rel2).signed.artifacts.into_iter().find(|a| a.kind == ArtifactKind::Delta).unwrap();
    server.always(&delta.name, Fault::Slow(8 * 1024));
    let part = f.store().join("downloads").join(format!("{}.part", delta.sha256));
    let mut d = Daemon::start(&cfg);
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    d.wait_for("download under way", 20, || size(&part) > 16 * 1024);
    let (status, took) = d.terminate();
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert!(took < Duration::from_secs(3), "{took:?}");
    // Nothing changed but the partial download, kept.
    assert_eq!(f.current_sha(), Some(sha_of(&f.v1)));
    assert!(!f.store().join("journal.json").exists() && !f.store().join("staging").exists());
    let kept = size(&part);
    assert!(kept > 0 && kept < delta.size, "{kept}");

    server.clear();
    let mut d = Daemon::start(&cfg);
    d.wait_for("1.1.0 installed", 20, || f.current_sha() == Some(sha_of(&f.v2)));
    d.terminate();
    let reqs = server.requests(&delta.name);
    assert_eq!(reqs.last().unwrap().range_start(), Some(kept), "{reqs:?}");
}

#[test]
fn the_daemon_survives_a_failing_server() {
    let f = Fixture::new();
    let server = Server::start(f.path());
    publish(&f.rel1, &f.path().join("ch"));
    // Three checks fail (no retries within a check), then the server recovers.
    server.fault_n("ch/manifest.json", Fault::Status(503), 3);
    let mut d = Daemon::start(&config(&f, &server, "1s", "retries = 0"));
    d.wait_for("1.0.0 installed", 30, || f.current_sha() == Some(sha_of(&f.v1)));
    assert!(d.log().contains("check failed"), "{}", d.log());
    assert!(d.notes().iter().any(|l| l.starts_with("STATUS=check failed (3 in a row)")), "{:?}", d.notes());
    assert_eq!(d.terminate().0.code(), Some(0));
}

#[test]
fn sigusr1_asks_for_a_check_now() {
    let f = Fixture::new();
    let server = Server::start(f.path());
    let ch = f.path().join("ch");
    publish(&f.rel1, &ch);
    let mut d = Daemon::start(&config(&f, &server, "1h", ""));
    d.wait_for("1.0.0 installed", 20, || f.current_sha() == Some(sha_of(&f.v1)));
    publish(&f.rel2, &ch);
    d.signal(Signal::SIGUSR1);
    d.wait_for("1.1.0 installed", 20, || f.current_sha() == Some(sha_of(&f.v2)));
    assert_eq!(server.requests("ch/manifest.json").len(), 2);
    assert_eq!(d.terminate().0.code(), Some(0));
}
