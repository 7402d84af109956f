//! Delta size and apply cost on a larger synthetic model (ignored by default; run with
//! `cargo test -p outpost-updater --release --test measure -- --ignored --nocapture`).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{sha_of, Fixture};
use outpost_updater::release::{release, ReleaseOptions};
use outpost_updater::testutil::{write_gguf, TestTensor};

#[test]
#[ignore]
fn delta_sizes_and_apply_peak_rss() {
    let f = Fixture::new();
    let mb = std::env::var("MEASURE_TENSORS").ok().and_then(|v| v.parse().ok()).unwrap_or(64usize);
    let base: Vec<TestTensor> =
        (0..mb).map(|i| TestTensor::random(&format!("blk.{i}.weight"), 1 << 20, i as u64 + 1)).collect();
    let v1 = f.path().join("big-v1.gguf");
    write_gguf(&v1, "big-1", &base);
    let mut meta = base.clone();
    meta.truncate(mb); // same tensors, new name in metadata
    let mut ten = base.clone();
    for t in ten.iter_mut().step_by(10) {
        *t = TestTensor::random(&t.name.clone(), 1 << 20, 7_000 + t.data.len() as u64 + t.name.len() as u64);
    }
    let mut slight = base.clone();
    for t in slight.iter_mut() {
        t.perturb(4099);
    }
    let cfg = f.config(&["k1"], 1);
    for (label, tensors, name) in [
        ("metadata only", &meta, "big-1-renamed"),
        ("10% tensors", &ten, "big-2"),
        ("all slightly", &slight, "big-3"),
    ] {
        let _ = std::fs::remove_dir_all(f.store());
        let v2 = f.path().join("big-v2.gguf");
        write_gguf(&v2, name, tensors);
        let out = f.path().join(format!("rel-{}", label.replace([' ', '%'], "")));
        let t0 = std::time::Instant::now();
        let opts = ReleaseOptions {
            keys: vec![f.k1.clone()],
            model: v2.clone(),
            version: "2.0.0".into(),
            device_classes: vec![common::CLASS.into()],
            bases: vec![v1.clone()],
            expires_in: std::time::Duration::from_secs(86400),
            out: out.clone(),
            zstd_level: 3,
        };
        let report = release(&opts, std::time::SystemTime::now()).unwrap();
        let make = t0.elapsed();
        let full = report.manifest.signed.artifacts[0].size;
        let delta = report.manifest.signed.artifacts.get(1).map(|a| a.size);
        let delta = delta.or(report.skipped.first().map(|s| s.1));
        // Install v1 (full) from its own release, then time the delta apply under /usr/bin/time.
        let rel1 = f.path().join("rel-big-v1");
        if !rel1.exists() {
            f.release(&v1, "1.0.0", &[], &rel1, std::slice::from_ref(&f.k1));
        }
        let bin = env!("CARGO_BIN_EXE_outpost-updater");
        assert!(Command::new(bin)
            .arg("--config")
            .arg(&cfg)
            .arg("apply")
            .arg(rel1.join("manifest.json"))
            .status()
            .unwrap()
            .success());
        let t1 = std::time::Instant::now();
        let o = Command::new("/usr/bin/time")
            .args(["-f", "%M"])
            .arg(bin)
            .arg("--config")
            .arg(&cfg)
            .arg("apply")
            .arg(out.join("manifest.json"))
            .output()
            .unwrap();
        let apply = t1.elapsed();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{stderr}");
        assert_eq!(f.current_sha(), Some(sha_of(&v2)));
        let rss_kb = stderr.lines().last().unwrap_or("?").trim().to_owned();
        let size = std::fs::metadata(&v2).unwrap().len();
        println!(
            "{label:>14}: model {size} B, zstd full {full} B, delta {delta:?} B ({:.2}% of full), make {make:.1?}, apply {apply:.2?}, peak RSS {rss_kb} KiB, published: {}",
            delta.map_or(0.0, |d| d as f64 * 100.0 / full as f64),
            report.manifest.signed.artifacts.len() > 1
        );
    }
}
