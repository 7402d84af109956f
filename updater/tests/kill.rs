//! `apply` over HTTP killed with SIGKILL at random moments (seeded: the seed is printed; set
//! `KILL_SEED` to replay, `KILL_ITERATIONS` for more rounds). After each kill `current` must
//! point at a complete version (1.0.0 or 1.1.0, its model hashing to its own manifest's target),
//! `recover` must leave the store idle on one of the two, and a final `apply` must finish the
//! update, resuming a partial download where it stopped.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::server::{Fault, Server};
use common::{read_manifest, sha_of, write_manifest, Fixture};
use outpost_updater::manifest::{ArtifactKind, Manifest};
use rand::{Rng, SeedableRng};

fn updater(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outpost-updater"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("OUTPOST_FAILPOINT")
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// `current` points at a version directory whose model hashes to that directory's manifest's
/// target; returns the version.
fn assert_current_is_whole(f: &Fixture, what: &str) -> String {
    let link = std::fs::read_link(f.store().join("current")).unwrap();
    let version = link.file_name().unwrap().to_string_lossy().into_owned();
    assert!(version == "1.0.0" || version == "1.1.0", "{what}: current -> {}", link.display());
    let dir = f.store().join(&link);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["signed"]["version"], version.as_str(), "{what}");
    assert_eq!(sha_of(&dir.join("model.gguf")), m["signed"]["target"]["sha256"].as_str().unwrap(), "{what}");
    version
}

fn status(config: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(updater(config, &["status", "--json"]))).unwrap()
}

#[test]
fn killed_at_random_moments_recovers_to_old_or_new_and_then_finishes() {
    let seed: u64 = std::env::var("KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    let rounds: usize = std::env::var("KILL_ITERATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    println!("kill test: KILL_SEED={seed} KILL_ITERATIONS={rounds}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let f = Fixture::new();
    let server = Server::start(f.path());
    // 1.1.0 twice: as a delta from 1.0.0, and as the full file only.
    let full_only = f.copy_release(&f.rel2, "rel2-full");
    let mut m = read_manifest(&full_only);
    m.signed.artifacts.retain(|a| a.kind == ArtifactKind::Full);
    write_manifest(&full_only, &Manifest::sign(m.signed, std::slice::from_ref(&f.k1)));
    let artifacts = read_manifest(&f.rel2).signed.artifacts;
    let find = |kind| artifacts.iter().find(|a| a.kind == kind).map(|a| (a.name.clone(), a.size)).unwrap();
    // Throttled so that a download takes most of a second and kills land in it and after it.
    let (delta, delta_size) = find(ArtifactKind::Delta);
    let (full, full_size) = find(ArtifactKind::Full);
    server.always(&delta, Fault::Slow(delta_size * 10 / 7));
    server.always(&full, Fault::Slow(full_size * 10 / 7));
    let cfg = f.config_with(
        &["k1"],
        1,
        "retries = 2\nretry_backoff = \"10ms\"\nread_timeout = \"5s\"\nmin_rate = 0",
    );
    let (old, new) = (sha_of(&f.v1), sha_of(&f.v2));
    let fresh = || {
        let _ = std::fs::remove_dir_all(f.store());
        ok(updater(&cfg, &["apply", f.rel1.join("manifest.json").to_str().unwrap()]));
    };

    // How long an undisturbed update takes, per release.
    let mut took = BTreeMap::new();
    for rel in ["rel2", "rel2-full"] {
        fresh();
        let t = Instant::now();
        ok(updater(&cfg, &["apply", &server.url(&format!("{rel}/manifest.json"))]));
        took.insert(rel, t.elapsed());
        assert_eq!(f.current_sha(), Some(new.clone()));
    }

    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    for round in 0..rounds {
        let rel = if round % 2 == 0 { "rel2" } else { "rel2-full" };
        let (artifact, size) = if rel == "rel2" { (&delta, delta_size) } else { (&full, full_size) };
        let url = server.url(&format!("{rel}/manifest.json"));
        fresh();
        server.clear_log();
        // Half the kills anywhere in the update, half near its end (staging, switch, commit).
        let total = took[rel].as_secs_f64();
        let at =
            if round % 4 < 2 { rng.gen_range(0.0..total) } else { rng.gen_range(total * 0.85..total * 1.05) };
        let mut child = Command::new(env!("CARGO_BIN_EXE_outpost-updater"))
            .arg("--config")
            .arg(&cfg)
            .args(["apply", &url])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs_f64(at));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let what = format!("round {round} ({rel}, killed at {:.0} ms, seed {seed})", at * 1000.0);

        // Before any recovery: current is whole, and state names one of the two versions.
        assert_current_is_whole(&f, &what);
        let st = status(&cfg);
        let cur = st["current"]["version"].as_str().unwrap().to_owned();
        assert!(cur == "1.0.0" || cur == "1.1.0", "{what}: {st}");
        let partial = st["partial_downloads"][0]["bytes"].as_u64();
        let phase = match (st["state"].as_str().unwrap(), partial) {
            ("idle", Some(n)) => format!("downloading ({}%)", n * 100 / size / 25 * 25),
            ("idle", None) if cur == "1.1.0" => "committed".to_owned(),
            ("idle", None) => "before the download".to_owned(),
            (step, _) => step.to_owned(),
        };
        *phases.entry(phase).or_default() += 1;

        // Recovery leaves the store idle on the old or the new version, its hash matching.
        ok(updater(&cfg, &["recover"]));
        let st = status(&cfg);
        assert_eq!(st["state"], "idle", "{what}: {st}");
        let version = assert_current_is_whole(&f, &what);
        assert_eq!(st["current"]["version"], version.as_str(), "{what}: {st}");
        let sha = f.current_sha().unwrap();
        assert!(sha == old || sha == new, "{what}");
        assert_eq!(st["current"]["sha256"], sha.as_str(), "{what}: {st}");
        assert!(!f.store().join("staging").exists(), "{what}");

        // A final apply finishes the update, asking only for what the partial file lacks.
        server.clear_log();
        ok(updater(&cfg, &["apply", &url]));
        assert_eq!(f.current_sha(), Some(new.clone()), "{what}");
        assert_current_is_whole(&f, &what);
        let reqs = server.requests(artifact);
        match partial {
            Some(n) if n > 0 && n < size && version == "1.0.0" => {
                assert_eq!(reqs.first().and_then(|r| r.range_start()), Some(n), "{what}: {reqs:?}")
            }
            _ => {}
        }
        assert!(!f.store().join("downloads").exists(), "{what}");
    }
    println!("kill test: phases reached: {phases:?}");
}
