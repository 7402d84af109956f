//! Both daemons together: `outpost-updater` installs signed releases into the store that a real
//! `outpost serve` loads from, and the runtime reports what the updater installed.
//!
//! Here no `runtime_socket` is configured (`runtime_absent = "commit"`): the updater commits
//! untried and the test reloads the runtime itself; `updater_trial.rs` covers the trial.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use outpost_e2e::{tiny_model, updater, Daemon};
use serde_json::json;

fn release(key: &Path, model: &Path, version: &str, base: Option<&Path>, out: &Path) {
    let mut args = vec!["release", "--key", key.to_str().unwrap(), "--model", model.to_str().unwrap()];
    args.extend(["--version", version, "--device-class", "test-board", "--out", out.to_str().unwrap()]);
    if let Some(base) = base {
        args.extend(["--base", base.to_str().unwrap()]);
    }
    updater(&args);
}

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_owned()
}

#[test]
fn runtime_serves_what_the_updater_installed_and_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = (tiny_model(1), tiny_model(2));
    let keys = dir.path().join("keys");
    updater(&["keygen", "--out", keys.to_str().unwrap()]);
    let key = keys.join("release.key");
    let (rel1, rel2) = (dir.path().join("rel1"), dir.path().join("rel2"));
    release(&key, &v1, "1.0.0", None, &rel1);
    release(&key, &v2, "2.0.0", Some(&v1), &rel2);

    let store = dir.path().join("store");
    let config = dir.path().join("updater.toml");
    std::fs::write(
        &config,
        format!(
            "[updater]\nstore = {:?}\ntrusted_keys = [{:?}]\nthreshold = 1\ndevice_class = \"test-board\"\nruntime_absent = \"commit\"\n",
            store.display().to_string(),
            keys.join("release.pub").display().to_string()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    updater(&["--config", cfg, "apply", rel1.join("manifest.json").to_str().unwrap()]);

    let daemon = Daemon::start(&store.join("current/model.gguf"), "");
    let model = |d: &Daemon| d.request("GET", "/v1/models", None).json()["data"][0].clone();
    assert_eq!(model(&daemon)["version"], "1.0.0");
    assert_eq!(model(&daemon)["sha256"], sha256_hex(&v1).as_str());

    updater(&["--config", cfg, "apply", rel2.join("manifest.json").to_str().unwrap()]);
    assert_eq!(daemon.request("POST", "/admin/reload", None).status, 200);
    let now = model(&daemon);
    assert_eq!(now["version"], "2.0.0");
    assert_eq!(now["sha256"], sha256_hex(&v2).as_str());
    assert!(now["file"].as_str().unwrap().contains("2.0.0"), "{now}");
    let answer = daemon.chat(&json!({ "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4 }));
    assert_eq!(answer.status, 200, "{}", answer.text());

    updater(&["--config", cfg, "rollback"]);
    assert_eq!(daemon.request("POST", "/admin/reload", None).status, 200);
    assert_eq!(model(&daemon)["version"], "1.0.0");
}
