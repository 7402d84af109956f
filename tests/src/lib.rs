//! Helpers shared by the end-to-end tests: build fixtures with the real binaries, start real
//! daemons, talk HTTP/1.1 over their Unix sockets, and listen to their systemd notifications.
#![allow(clippy::unwrap_used)]

pub mod fake_cloud;
pub mod http;
pub mod mqtt;

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use http::{Response, Sse};

/// The directory holding the workspace's binaries (`target/<profile>/`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("OUTPOST_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // This test executable lives in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

/// Path of the `outpost` binary; built by `cargo build --workspace` before the tests run.
pub fn outpost_bin() -> PathBuf {
    let bin = bin_dir().join("outpost");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the end-to-end tests (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A synthetic `tiny` model for `seed`, generated once per seed and shared by all tests.
pub fn tiny_model(seed: u64) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap();
    let dir = bin_dir().join("e2e-models");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("tiny-f16-seed{seed}.gguf"));
    if !path.exists() {
        let status = Command::new(outpost_bin())
            .args(["synth-model", "--preset", "tiny", "--quant", "f16", "--seed", &seed.to_string(), "--out"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "synth-model failed: {status}");
    }
    path
}

/// Notifications a daemon sent to its `NOTIFY_SOCKET`.
#[derive(Clone, Default)]
pub struct Notifications {
    inner: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Notifications {
    /// Starts listening on a datagram socket at `path`.
    pub fn listen(path: &Path) -> Self {
        let socket = UnixDatagram::bind(path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let me = Self::default();
        let inner = me.inner.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        let (lock, cvar) = &*inner;
                        lock.lock().unwrap().extend(text.lines().map(str::to_owned));
                        cvar.notify_all();
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        if Arc::strong_count(&inner) == 1 {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        me
    }

    /// Every line received so far.
    pub fn lines(&self) -> Vec<String> {
        self.inner.0.lock().unwrap().clone()
    }

    /// Waits until a line equal to `line` arrives.
    pub fn wait_for(&self, line: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.inner;
        let mut lines = lock.lock().unwrap();
        loop {
            if lines.iter().any(|l| l == line) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            lines = cvar.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }
}

/// A running `outpost serve`.
pub struct Daemon {
    child: Option<Child>,
    /// Its working directory (config, socket, notify socket).
    pub dir: tempfile::TempDir,
    /// The API socket.
    pub socket: PathBuf,
    /// What it told systemd.
    pub notifications: Notifications,
    stderr: Arc<Mutex<String>>,
}

/// The base config used by [`Daemon::start`] for `model`, plus `extra` TOML appended.
///
/// One llama.cpp thread: tests run two at a time on two cores, and ggml's threads spin at every
/// barrier, so oversubscribing the cores slows generation down by orders of magnitude.
pub fn config_text(model: &Path, socket: &Path, extra: &str) -> String {
    format!(
        "[model]\npath = \"{}\"\ncontext = 1024\nthreads = 1\n\n[api]\nsocket = \"{}\"\nshutdown_timeout = \"5s\"\n\n[cache]\npath = \"{}\"\n{extra}\n",
        model.display(),
        socket.display(),
        socket.with_file_name("cache.db").display()
    )
}

impl Daemon {
    /// Starts a daemon on `model` and waits for `READY=1`. `dropin` is written to
    /// `config.d/50-test.toml` beside the base config (it may override any key).
    pub fn start(model: &Path, dropin: &str) -> Self {
        let daemon = Self::spawn(model, dropin, &[]);
        daemon.wait_ready();
        daemon
    }

    /// Starts a daemon without waiting for it.
    pub fn spawn(model: &Path, dropin: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("outpost.sock");
        let config = dir.path().join("outpost.toml");
        std::fs::write(&config, config_text(model, &socket, "")).unwrap();
        std::fs::create_dir(dir.path().join("config.d")).unwrap();
        std::fs::write(dir.path().join("config.d/50-test.toml"), dropin).unwrap();
        let notify_path = dir.path().join("notify.sock");
        let notifications = Notifications::listen(&notify_path);
        // systemd sets WATCHDOG_PID to the service's pid; a shell that execs keeps its pid.
        let watchdog = env.iter().any(|(k, _)| *k == "WATCHDOG_USEC");
        let mut command = if watchdog {
            let mut c = Command::new("sh");
            c.args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""]).arg(outpost_bin());
            c
        } else {
            Command::new(outpost_bin())
        };
        command
            .args(["serve", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env_remove("JOURNAL_STREAM")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self { child: Some(child), dir, socket, notifications, stderr }
    }

    /// Waits for `READY=1` (panics with the daemon's log if it does not come).
    pub fn wait_ready(&self) {
        if !self.notifications.wait_for("READY=1", Duration::from_secs(60)) {
            panic!("no READY=1 within 60 s; log:\n{}", self.log());
        }
    }

    /// What the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Sends a request and reads the whole response.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        http::request(&self.socket, method, path, body)
    }

    /// `POST /v1/chat/completions` with a JSON body.
    pub fn chat(&self, body: &serde_json::Value) -> Response {
        self.request("POST", "/v1/chat/completions", Some(&body.to_string()))
    }

    /// The value of a Prometheus sample (first line starting with `name`).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.request("GET", "/metrics", None).text();
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.pid());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        self.wait(Duration::from_secs(30))
    }

    /// Waits for the daemon to exit.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!("daemon did not exit within {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The interpreter for the Python client tests: `OUTPOST_TEST_PYTHON`, else the repository's
/// `.venv`, else `python3`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("OUTPOST_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = repo_root().join(".venv/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("root").to_path_buf()).clone()
}

/// Runs `outpost-updater` with `args`, optionally crashing it at a named step
/// (the failpoint `updater-crash-at-<step>`, test builds), and returns its output.
pub fn updater_output(args: &[&str], crash_at: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(bin_dir().join("outpost-updater"));
    cmd.args(args);
    match crash_at {
        Some(point) => cmd.env("OUTPOST_FAILPOINT", format!("updater-crash-at-{point}")),
        None => cmd.env_remove("OUTPOST_FAILPOINT"),
    };
    cmd.output().unwrap()
}

/// Runs `outpost-updater` with `args`, panics with its output unless it succeeds, returns stdout.
pub fn updater(args: &[&str]) -> String {
    let out = updater_output(args, None);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "outpost-updater {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Path of the `outpost-fleet` binary (built by `cargo build --workspace`).
pub fn fleet_bin() -> PathBuf {
    bin_dir().join("outpost-fleet")
}

/// Signs a full release of `model` as `version` for the `test-board` class with `key`, into
/// `out` (`out/manifest.json` and the artifact), with `outpost-updater release`.
pub fn release(key: &Path, model: &Path, version: &str, out: &Path) {
    updater(&[
        "release",
        "--key",
        key.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--version",
        version,
        "--device-class",
        "test-board",
        "--out",
        out.to_str().unwrap(),
    ]);
}
