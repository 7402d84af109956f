//! The updater's trial against a real `outpost serve`: after switching `current` it reloads the
//! runtime itself, checks the reported version and a one-token generation, and commits; a model
//! the runtime cannot load is rolled back (the runtime keeps serving the old one); an updater
//! killed during its trial again and again gives up after `max_trials` and switches back.
#![allow(clippy::unwrap_used)]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use outpost_e2e::{release, tiny_model, updater, updater_output as run, Daemon};
use serde_json::json;

/// A store with v1 committed, the runtime serving it, and the updater configured to try new
/// versions on that runtime.
struct Board {
    dir: tempfile::TempDir,
    key: PathBuf,
    config: PathBuf,
    daemon: Daemon,
}

impl Board {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        updater(&["keygen", "--out", keys.to_str().unwrap()]);
        let key = keys.join("release.key");
        let rel1 = dir.path().join("rel1");
        release(&key, &tiny_model(1), "1.0.0", &rel1);
        let store = dir.path().join("store");
        let config = dir.path().join("updater.toml");
        // The first install has no runtime yet (nothing to go back to: committed untried).
        write_config(&config, &store, &keys.join("release.pub"), &dir.path().join("none.sock"));
        updater(&[
            "--config",
            config.to_str().unwrap(),
            "apply",
            rel1.join("manifest.json").to_str().unwrap(),
        ]);
        let daemon = Daemon::start(&store.join("current/model.gguf"), "");
        write_config(&config, &store, &keys.join("release.pub"), &daemon.socket);
        let board = Self { dir, key, config, daemon };
        assert_eq!(board.served()["version"], "1.0.0");
        board
    }

    fn cfg(&self) -> &str {
        self.config.to_str().unwrap()
    }

    fn release(&self, model: &Path, version: &str) -> PathBuf {
        let out = self.dir.path().join(format!("rel-{version}"));
        release(&self.key, model, version, &out);
        out.join("manifest.json")
    }

    /// What the runtime serves now (`/v1/models` data[0]).
    fn served(&self) -> serde_json::Value {
        self.daemon.request("GET", "/v1/models", None).json()["data"][0].clone()
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&updater(&["--config", self.cfg(), "status", "--json"])).unwrap()
    }

    fn linked(&self) -> PathBuf {
        std::fs::read_link(self.dir.path().join("store/current")).unwrap()
    }

    fn assert_serves_v1(&self) {
        assert_eq!(self.linked(), Path::new("versions/1.0.0"));
        assert_eq!(self.served()["version"], "1.0.0", "{}", self.daemon.log());
        let answer =
            self.daemon.chat(&json!({ "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2 }));
        assert_eq!(answer.status, 200, "{}", answer.text());
    }

    /// After a failed update to 2.0.0: the runtime serves 1.0.0, nothing is in progress, 1.0.0
    /// is still the highest committed version and 2.0.0 is recorded as failed. Returns the status.
    fn assert_back_on_v1_with_v2_failed(&self) -> serde_json::Value {
        self.assert_serves_v1();
        let st = self.status();
        assert_eq!(st["state"], "idle");
        assert_eq!(st["current"]["version"], "1.0.0");
        assert_eq!(st["highest_committed"]["version"], "1.0.0");
        assert_eq!(st["failed"]["version"], "2.0.0");
        st
    }
}

fn write_config(config: &Path, store: &Path, public: &Path, socket: &Path) {
    std::fs::write(
        config,
        format!(
            "[updater]\nstore = {:?}\ntrusted_keys = [{:?}]\ndevice_class = \"test-board\"\n\
             runtime_socket = {:?}\ntrial_timeout = \"60s\"\n",
            store.display().to_string(),
            public.display().to_string(),
            socket.display().to_string()
        ),
    )
    .unwrap();
}

#[test]
fn apply_reloads_the_runtime_and_commits_after_the_trial() {
    let board = Board::new();
    let m2 = board.release(&tiny_model(2), "2.0.0");
    let text = updater(&["--config", board.cfg(), "apply", m2.to_str().unwrap()]);
    assert!(text.contains("installed 2.0.0"), "{text}");
    // Nobody but the updater reloaded the runtime.
    assert_eq!(board.served()["version"], "2.0.0");
    let st = board.status();
    assert_eq!(st["state"], "idle");
    assert_eq!(st["current"]["version"], "2.0.0");
    assert_eq!(st["previous"]["version"], "1.0.0");
    assert_eq!(st["highest_committed"]["version"], "2.0.0");
    assert!(st["last_failure"].is_null(), "{st}");

    // A manual rollback reloads the runtime too.
    updater(&["--config", board.cfg(), "rollback"]);
    board.assert_serves_v1();
}

#[test]
fn a_model_the_runtime_cannot_load_is_rolled_back() {
    let board = Board::new();
    // A file that starts like a GGUF and then is garbage, released with valid signatures.
    let broken = board.dir.path().join("broken.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend((0..64 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80));
    std::fs::write(&broken, bytes).unwrap();
    let m2 = board.release(&broken, "2.0.0");

    let out = run(&["--config", board.cfg(), "apply", m2.to_str().unwrap()], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("failed its trial") && stderr.contains("model_load_failed"), "{stderr}");
    let st = board.assert_back_on_v1_with_v2_failed();
    let failure = st["last_failure"].as_str().unwrap();
    assert!(
        failure.contains("2.0.0: trial 1/3 failed") && failure.contains("model_load_failed"),
        "{failure}"
    );
    assert!(!board.dir.path().join("store/versions/2.0.0").exists());

    // The same release is not tried again.
    let out = run(&["--config", board.cfg(), "apply", m2.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not tried again"), "{out:?}");
    board.assert_serves_v1();
}

#[test]
fn an_updater_killed_in_every_trial_gives_up_after_three() {
    let board = Board::new();
    let m2 = board.release(&tiny_model(2), "2.0.0");
    let apply = ["--config", board.cfg(), "apply", m2.to_str().unwrap()];
    for trial in 1..=3 {
        // Killed right after the runtime reloaded the new version (before it is committed); each
        // invocation first recovers the interrupted update by trying it again.
        let out = run(&apply, Some("trial"));
        assert_eq!(out.status.signal(), Some(6), "trial {trial}: not killed: {out:?}");
        let st = board.status();
        assert_eq!(st["state"], "switched", "trial {trial}: {st}");
        assert_eq!(st["trials"], trial, "{st}");
        assert_eq!(st["current"]["version"], "1.0.0");
        assert_eq!(board.linked(), Path::new("versions/2.0.0"));
        assert_eq!(board.served()["version"], "2.0.0");
    }
    // The next invocation does not start a fourth trial: it switches back, reloads the runtime
    // on 1.0.0 and records the failure; the manifest it was given is then refused.
    let out = run(&apply, Some("trial"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not tried again"), "{out:?}");
    let st = board.assert_back_on_v1_with_v2_failed();
    assert!(st["last_failure"].as_str().unwrap().contains("gave up after 3 trial(s)"), "{st}");
}
