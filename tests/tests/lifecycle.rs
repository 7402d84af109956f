//! The daemon's life: configuration errors, reload behind a symlink, admin access, SIGTERM, and
//! the clients users run against it (`outpost ask`, the official `openai` Python package).
#![allow(clippy::unwrap_used)]

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use outpost_e2e::{outpost_bin, python, repo_root, tiny_model, Daemon, Sse};
use serde_json::json;

/// Starts a streamed completion, sends SIGTERM once its first chunk arrived, and returns the
/// rest of the stream as the daemon finished it.
fn sigterm_during_stream(daemon: &Daemon, body: &serde_json::Value) -> String {
    let (status, mut stream) = Sse::open(&daemon.socket, "/v1/chat/completions", &body.to_string());
    assert_eq!(status, 200);
    assert!(stream.next_chunk().is_some());
    let pid = nix::unistd::Pid::from_raw(daemon.pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next_chunk() {
        rest.extend(chunk);
    }
    String::from_utf8_lossy(&rest).into_owned()
}

/// The last 400 characters of `text`, for assertion messages.
fn tail(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    chars[chars.len().saturating_sub(400)..].iter().collect()
}

#[test]
fn bad_config_exits_78_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("outpost.toml");
    std::fs::write(&config, "[model]\npath = \"/m.gguf\"\ncontext = \"large\"\n").unwrap();
    let out = Command::new(outpost_bin()).args(["serve", "--config"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("model.context"), "{stderr}");
    assert!(stderr.contains(&config.display().to_string()), "{stderr}");

    // A drop-in with a typo is blamed, not the base file.
    std::fs::write(&config, "[model]\npath = \"/m.gguf\"\n").unwrap();
    std::fs::create_dir(dir.path().join("config.d")).unwrap();
    let drop_in = dir.path().join("config.d/10-threads.toml");
    std::fs::write(&drop_in, "[model]\nthreds = 2\n").unwrap();
    let out = Command::new(outpost_bin()).args(["serve", "--config"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("model.threds") && stderr.contains("10-threads.toml"), "{stderr}");

    // A missing model is not a config error: exit 1 so systemd restarts it.
    std::fs::remove_file(&drop_in).unwrap();
    let socket = dir.path().join("s.sock");
    std::fs::write(&config, outpost_e2e::config_text(Path::new("/nonexistent/model.gguf"), &socket, ""))
        .unwrap();
    let out = Command::new(outpost_bin()).args(["serve", "--config"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model.gguf"));
}

#[test]
fn reload_follows_the_symlink_and_a_failed_reload_keeps_the_old_model() {
    let store = tempfile::tempdir().unwrap();
    for (version, seed) in [("1.0.0", 1), ("2.0.0", 2)] {
        let dir = store.path().join(version);
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(tiny_model(seed), dir.join("model.gguf")).unwrap();
        let manifest = json!({ "version": version, "sha256": format!("{seed:064}") });
        std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    }
    let broken = store.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("model.gguf"), b"GGUF but not really a model").unwrap();
    let current = store.path().join("current");
    std::os::unix::fs::symlink("1.0.0", &current).unwrap();

    let daemon = Daemon::start(&current.join("model.gguf"), "");
    let version = |d: &Daemon| d.request("GET", "/v1/models", None).json()["data"][0]["version"].clone();
    assert_eq!(version(&daemon), "1.0.0");

    // Flip the symlink as the updater does (new link, rename over), then reload.
    let flip = |target: &str| {
        let tmp = store.path().join("current.tmp");
        std::os::unix::fs::symlink(target, &tmp).unwrap();
        std::fs::rename(&tmp, &current).unwrap();
    };
    flip("2.0.0");
    let reloaded = daemon.request("POST", "/admin/reload", None);
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    let body = reloaded.json();
    assert_eq!(body["model"]["version"], "2.0.0");
    assert!(body["model"]["file"].as_str().unwrap().ends_with("2.0.0/model.gguf"));
    assert_eq!(version(&daemon), "2.0.0");
    assert_eq!(
        daemon.chat(&json!({ "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3 })).status,
        200
    );

    flip("broken");
    let failed = daemon.request("POST", "/admin/reload", None);
    assert_eq!(failed.status, 500, "{}", failed.text());
    let err = failed.json();
    assert_eq!(err["error"]["code"], "model_load_failed");
    assert!(err["error"]["message"].as_str().unwrap().contains("broken/model.gguf"), "{err}");
    assert_eq!(version(&daemon), "2.0.0");
    assert_eq!(daemon.request("GET", "/readyz", None).status, 200);
    assert_eq!(
        daemon.chat(&json!({ "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3 })).status,
        200
    );
    assert_eq!(daemon.metric("outpost_model_loads_total{result=\"failed\"}"), 1.0);
}

/// `curl` over the socket as another uid (gid 0 so the 0660 socket admits it).
fn curl_as(uid: u32, socket: &Path, method: &str, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(socket)
        .args(["-X", method, &format!("http://localhost{path}")])
        .uid(uid)
        .gid(0)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn admin_endpoints_check_the_callers_uid() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: needs root to act as other uids");
        return;
    }
    let model = tiny_model(1);
    let daemon = Daemon::start(&model, "[api]\nadmin_uids = [4242]\n");
    // Other endpoints are open to every uid that can reach the socket.
    assert_eq!(curl_as(65534, &daemon.socket, "GET", "/v1/models").0, 200);
    let (code, body) = curl_as(65534, &daemon.socket, "POST", "/admin/reload");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("permission_error"), "{body}");
    let (code, body) = curl_as(4242, &daemon.socket, "POST", "/admin/reload");
    assert_eq!(code, 200, "{body}");
}

#[test]
fn sigterm_sends_stopping_finishes_in_flight_and_exits_zero() {
    let mut daemon = Daemon::start(&tiny_model(1), "");
    let body = json!({ "messages": [{"role": "user", "content": "Go."}], "max_tokens": 60, "stream": true });
    // The in-flight stream still ends properly.
    let rest = sigterm_during_stream(&daemon, &body);
    let tail = tail(&rest);
    assert!(rest.contains("[DONE]"), "stream cut by SIGTERM: ...{tail:?}\n{}", daemon.log());
    let exit = daemon.wait(Duration::from_secs(20));
    assert_eq!(exit.code(), Some(0), "{}", daemon.log());
    assert!(daemon.notifications.wait_for("STOPPING=1", Duration::from_secs(1)));
    assert!(!daemon.socket.exists(), "socket removed on exit");
}

#[test]
fn ask_streams_the_answer_to_stdout() {
    let daemon = Daemon::start(&tiny_model(1), "");
    let out = Command::new(outpost_bin())
        .args(["ask", "--max-tokens", "8", "--temperature", "0", "--socket"])
        .arg(&daemon.socket)
        .arg("What is the capital of France?")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let direct = daemon.chat(&json!({
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 8, "temperature": 0
    }));
    let expected = direct.json()["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end_matches('\n'), expected);

    // No daemon: a clear error, exit 1.
    let out =
        Command::new(outpost_bin()).args(["ask", "--socket", "/nonexistent.sock", "hi"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `outpost serve` running?"));
}

#[test]
fn official_openai_python_client_chats_and_streams() {
    let daemon = Daemon::start(&tiny_model(1), "");
    let script = repo_root().join("tests/python/openai_client.py");
    let out = Command::new(python()).arg(&script).arg(&daemon.socket).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openai client failed (run scripts/test.sh, which installs it):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("chat ok") && stdout.contains("stream ok"), "{stdout}");
}

#[test]
fn watchdog_pings_come_from_the_engine_and_stop_when_it_is_stuck() {
    let model = tiny_model(1);
    let daemon =
        Daemon::spawn(&model, "", &[("WATCHDOG_USEC", "400000"), ("OUTPOST_FAILPOINT", "engine-stall")]);
    daemon.wait_ready();
    let pings = |d: &Daemon| d.notifications.lines().iter().filter(|l| *l == "WATCHDOG=1").count();
    std::thread::sleep(Duration::from_millis(1000));
    let healthy = pings(&daemon);
    assert!(healthy >= 3, "an idle, healthy engine is pinged for every 200 ms: {healthy}");

    // A request wedges the engine (the failpoint); the pings must stop.
    let socket = daemon.socket.clone();
    std::thread::spawn(move || {
        let body = json!({ "messages": [{"role": "user", "content": "hang"}], "max_tokens": 2 });
        let _ = std::panic::catch_unwind(|| {
            outpost_e2e::http::request(&socket, "POST", "/v1/chat/completions", Some(&body.to_string()))
        });
    });
    std::thread::sleep(Duration::from_millis(800)); // the stall is noticed after one period
    let at_stall = pings(&daemon);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(pings(&daemon), at_stall, "watchdog kept pinging a stuck engine");
    let lines = daemon.notifications.lines();
    assert!(lines.iter().any(|l| l.starts_with("STATUS=engine stuck")), "{lines:?}");
    // /healthz still answers (the process is alive); systemd would now kill and restart it.
    assert_eq!(daemon.request("GET", "/healthz", None).status, 200);
}

#[test]
fn sigterm_cancels_what_outlives_the_deadline_and_still_exits_zero() {
    let mut daemon =
        Daemon::start(&tiny_model(1), "[model]\ncontext = 4096\n[api]\nshutdown_timeout = \"300ms\"\n");
    // Greedy decoding of this model runs to max_tokens without an end-of-generation token.
    let body = json!({
        "messages": [{"role": "user", "content": "Go on forever."}],
        "max_tokens": 4000, "temperature": 0, "stream": true
    });
    let started = std::time::Instant::now();
    let rest = sigterm_during_stream(&daemon, &body);
    let tail = tail(&rest);
    assert!(rest.contains("\"code\":\"shutting_down\""), "the stream must say why it ended: ...{tail:?}");
    assert!(!rest.contains("[DONE]"));
    assert_eq!(daemon.wait(Duration::from_secs(20)).code(), Some(0), "{}", daemon.log());
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
    assert!(daemon.log().contains("outlived the shutdown deadline"));
}
