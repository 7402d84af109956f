//! The binary end to end: keygen, release, apply, status, rollback, GC, exit codes, and the
//! updater killed (SIGABRT) at every journal step, then recovered by the next invocation.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

use common::{sha_of, Fixture};

fn updater(config: &Path, args: &[&str], crash_at: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost-updater"));
    cmd.arg("--config").arg(config).args(args);
    match crash_at {
        Some(point) => cmd.env("OUTPOST_FAILPOINT", format!("updater-crash-at-{point}")),
        None => cmd.env_remove("OUTPOST_FAILPOINT"),
    };
    cmd.output().unwrap()
}

fn ok(out: Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

fn status(config: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(updater(config, &["status", "--json"], None))).unwrap()
}

#[test]
fn keygen_release_apply_rollback_and_gc() {
    let f = Fixture::new();
    let bin = env!("CARGO_BIN_EXE_outpost-updater");
    let keydir = f.path().join("cli-keys");
    ok(Command::new(bin).args(["keygen", "--out"]).arg(&keydir).output().unwrap());
    let rel = f.path().join("cli-rel3");
    let out = Command::new(bin)
        .args(["release", "--key"])
        .arg(keydir.join("release.key"))
        .arg("--model")
        .arg(&f.v3)
        .args(["--version", "1.2.0", "--device-class", common::CLASS, "--zstd-level", "3", "--base"])
        .arg(&f.v2)
        .arg("--base")
        .arg(&f.v1)
        .arg("--out")
        .arg(&rel)
        .output()
        .unwrap();
    let text = ok(out);
    assert_eq!(text.matches("Delta").count(), 2, "{text}");

    // Trust both the fixture's k1 and the new key.
    let cfg = f.path().join("cli.toml");
    std::fs::write(
        &cfg,
        format!(
            "[updater]\nstore = {:?}\ntrusted_keys = [{:?}, {:?}]\ndevice_class = \"{}\"\nruntime_absent = \"commit\"\n",
            f.store().display().to_string(),
            f.path().join("k1/release.pub").display().to_string(),
            keydir.join("release.pub").display().to_string(),
            common::CLASS
        ),
    )
    .unwrap();
    assert_eq!(status(&cfg)["state"], "idle");
    ok(updater(&cfg, &["apply", f.rel1.join("manifest.json").to_str().unwrap()], None));
    ok(updater(&cfg, &["apply", f.rel2.join("manifest.json").to_str().unwrap()], None));
    let text = ok(updater(&cfg, &["apply", rel.join("manifest.json").to_str().unwrap()], None));
    assert!(text.contains("installed 1.2.0 (delta)"), "{text}");
    assert_eq!(f.current_sha(), Some(sha_of(&f.v3)));
    // The runtime reads version and sha256 from the manifest beside the model.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.store().join("current/manifest.json")).unwrap()).unwrap();
    assert_eq!(m["signed"]["version"], "1.2.0");
    assert_eq!(m["signed"]["target"]["sha256"], sha_of(&f.v3).as_str());
    // GC kept current and previous only.
    let mut versions: Vec<String> = std::fs::read_dir(f.store().join("versions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    assert_eq!(versions, ["1.1.0", "1.2.0"]);

    let st = status(&cfg);
    assert_eq!(st["current"]["version"], "1.2.0");
    assert_eq!(st["previous"]["version"], "1.1.0");
    ok(updater(&cfg, &["rollback"], None));
    assert_eq!(f.current_sha(), Some(sha_of(&f.v2)));
    let st = status(&cfg);
    assert_eq!(st["current"]["version"], "1.1.0");
    assert_eq!(st["highest_committed"]["version"], "1.2.0");
    // v1 is gone and still refused (older than the highest committed).
    let out = updater(&cfg, &["apply", f.rel1.join("manifest.json").to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("older than the highest committed"));
}

#[test]
fn invalid_config_exits_78_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("u.toml");
    std::fs::write(&cfg, "[updater]\ntrusted_keys = []\ndevice_class = \"x\"\n").unwrap();
    let out = updater(&cfg, &["status"], None);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("updater.trusted_keys") && err.contains(cfg.to_str().unwrap()), "{err}");
    let out = updater(&dir.path().join("missing.toml"), &["status"], None);
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn killed_at_every_step_recovers_to_old_or_new() {
    let f = Fixture::new();
    let cfg = f.config(&["k1"], 1);
    let (old, new) = (sha_of(&f.v1), sha_of(&f.v2));
    let m1 = f.rel1.join("manifest.json");
    let m2 = f.rel2.join("manifest.json");
    for point in ["staging", "before-rename", "staged", "switched", "committed"] {
        // A fresh store with v1 committed.
        let _ = std::fs::remove_dir_all(f.store());
        ok(updater(&cfg, &["apply", m1.to_str().unwrap()], None));
        let out = updater(&cfg, &["apply", m2.to_str().unwrap()], Some(point));
        assert_eq!(out.status.signal(), Some(6), "{point}: not killed: {out:?}");
        let cur = f.current_sha().unwrap();
        assert!(cur == old || cur == new, "{point}: current is neither version");
        // The next invocation recovers first, then (re)applies.
        ok(updater(&cfg, &["apply", m2.to_str().unwrap()], None));
        assert_eq!(f.current_sha(), Some(new.clone()), "{point}");
        let st = status(&cfg);
        assert_eq!(st["state"], "idle", "{point}");
        assert_eq!(st["current"]["version"], "1.1.0", "{point}");
        assert_eq!(st["previous"]["version"], "1.0.0", "{point}");
        assert!(!f.store().join("staging").exists(), "{point}");
        assert!(!f.store().join("journal.json").exists(), "{point}");
        // Rollback and re-apply reuse the directory still on disk.
        ok(updater(&cfg, &["rollback"], None));
        assert_eq!(f.current_sha(), Some(old.clone()), "{point}");
        ok(updater(&cfg, &["apply", m2.to_str().unwrap()], None));
        assert_eq!(f.current_sha(), Some(new.clone()), "{point}");
    }
}

#[test]
fn a_runtime_not_running_fails_the_trial_by_default() {
    let f = Fixture::new();
    let cfg = f.path().join("strict.toml");
    std::fs::write(
        &cfg,
        format!(
            "[updater]\nstore = {:?}\ntrusted_keys = [{:?}]\ndevice_class = \"{}\"\nruntime_socket = {:?}\n",
            f.store().display().to_string(),
            f.path().join("k1/release.pub").display().to_string(),
            common::CLASS,
            f.path().join("absent.sock").display().to_string(),
        ),
    )
    .unwrap();
    // A first install has nothing to go back to: committed untried.
    ok(updater(&cfg, &["apply", f.rel1.join("manifest.json").to_str().unwrap()], None));
    let out = updater(&cfg, &["apply", f.rel2.join("manifest.json").to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("runtime is not running"), "{out:?}");
    assert_eq!(f.current_sha(), Some(sha_of(&f.v1)));
    let st = status(&cfg);
    assert_eq!(st["state"], "idle");
    assert_eq!(st["current"]["version"], "1.0.0");
    assert_eq!(st["highest_committed"]["version"], "1.0.0");
    assert!(st["last_failure"].as_str().unwrap().contains("trial 1/3 failed"), "{st}");
    // The version is not to blame: it may be tried again once the runtime runs.
    assert!(st["failed"].is_null(), "{st}");
    assert!(!f.store().join("versions/1.1.0").exists());
}
