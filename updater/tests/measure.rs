//! Delta size against the zstd full file, and the cost of applying each on the device (wall time
//! and peak RSS of `outpost-updater apply`, from `/usr/bin/time`). Ignored by default:
//!
//! ```text
//! MEASURE_MODEL=/tmp/bench/05b-q4km.gguf \
//!   cargo test -p outpost-updater --release --test measure -- --ignored --nocapture
//! ```
//!
//! - `MEASURE_MODEL`: the v1 GGUF (e.g. the runtime's `synth-model --preset 0.5b --quant
//!   q4_k_m`); unset: a synthetic file of `MEASURE_TENSORS` (default 64) f32 tensors of
//!   `MEASURE_TENSOR_MIB` (default 4) MiB of pseudo-random bytes (tensors over 16 MiB are cut
//!   into 16 MiB delta chunks, as a real model's large tensors are).
//! - `MEASURE_VARIANTS`: which v2s, of `meta` (only `general.name` changed, to a longer string:
//!   all tensor data moves), `ten` (one tensor in ten rewritten with new bytes, as a retrained and
//!   re-quantized layer), `all` (every tensor slightly changed: one bit flipped in every
//!   `MEASURE_ALL_EVERY` bytes, default 256, about one per q4_K block); default all three.
//! - `MEASURE_ZSTD_LEVEL`: default 10, the `release` default.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::{sha_of, Fixture};
use outpost_updater::release::{release, ReleaseOptions};
use outpost_updater::testutil::{random_bytes, rewrite_gguf, write_gguf, TestTensor};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs `apply` under `/usr/bin/time`: (wall time, peak RSS in KiB).
fn timed_apply(config: &Path, manifest: &Path) -> (Duration, u64) {
    let t = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(env!("CARGO_BIN_EXE_outpost-updater"))
        .arg("--config")
        .arg(config)
        .arg("apply")
        .arg(manifest)
        .output()
        .unwrap();
    let took = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    (took, stderr.lines().last().unwrap().trim().parse().unwrap())
}

fn make_release(
    f: &Fixture,
    model: &Path,
    version: &str,
    bases: &[PathBuf],
    out: &Path,
) -> (u64, Option<u64>, bool) {
    let opts = ReleaseOptions {
        keys: vec![f.k1.clone()],
        model: model.to_path_buf(),
        version: version.into(),
        device_classes: vec![common::CLASS.into()],
        bases: bases.to_vec(),
        expires_in: Duration::from_secs(86400),
        out: out.to_path_buf(),
        zstd_level: env("MEASURE_ZSTD_LEVEL", 10),
    };
    let report = release(&opts, SystemTime::now()).unwrap();
    let full = report.manifest.signed.artifacts[0].size;
    let published = report.manifest.signed.artifacts.get(1).map(|a| a.size);
    (full, published.or(report.skipped.first().map(|s| s.1)), published.is_some())
}

const MIB: f64 = 1024.0 * 1024.0;

#[test]
#[ignore]
fn delta_sizes_and_apply_peak_rss() {
    let f = Fixture::new();
    let v1 = match std::env::var_os("MEASURE_MODEL") {
        Some(p) => PathBuf::from(p),
        None => {
            let (n, mib) = (env("MEASURE_TENSORS", 64usize), env("MEASURE_TENSOR_MIB", 4usize));
            let tensors: Vec<TestTensor> = (0..n)
                .map(|i| TestTensor::random(&format!("blk.{i}.weight"), mib << 18, i as u64 + 1))
                .collect();
            let p = f.path().join("big-v1.gguf");
            write_gguf(&p, "big-1", &tensors);
            p
        }
    };
    let size = std::fs::metadata(&v1).unwrap().len();
    let layout = outpost_updater::gguf::layout(&v1).unwrap();
    let (_, name) = outpost_updater::gguf::find_string(&v1, "general.name").unwrap();
    println!(
        "v1: {} ({:.1} MiB, {} tensors), zstd level {}",
        v1.display(),
        size as f64 / MIB,
        layout.tensors.len(),
        env("MEASURE_ZSTD_LEVEL", 10)
    );

    let cfg = f.config(&["k1"], 1);
    let rel1 = f.path().join("rel-v1");
    let t = Instant::now();
    let (full1, _, _) = make_release(&f, &v1, "1.0.0", &[], &rel1);
    println!(
        "full release of v1: zstd {:.1} MiB ({:.1}% of the model), made in {:.1?}",
        full1 as f64 / MIB,
        full1 as f64 * 100.0 / size as f64,
        t.elapsed()
    );
    let (took, rss) = timed_apply(&cfg, &rel1.join("manifest.json"));
    println!(
        "full install of v1 (zstd decode, hash, fsync): {took:.2?}, peak RSS {:.1} MiB",
        rss as f64 / 1024.0
    );

    let variants = std::env::var("MEASURE_VARIANTS").unwrap_or_else(|_| "meta,ten,all".into());
    for variant in variants.split(',') {
        let v2 = f.path().join("v2.gguf");
        let t = Instant::now();
        let new_name = format!("{name}-finetuned-v2");
        match variant {
            "meta" => rewrite_gguf(&v1, &v2, Some(&new_name), |_, _, _| {}),
            "ten" => rewrite_gguf(&v1, &v2, Some(&new_name), |i, _, b| {
                if i % 10 == 5 {
                    *b = random_bytes(b.len(), 7_000 + i as u64);
                }
            }),
            "all" => rewrite_gguf(&v1, &v2, Some(&new_name), |_, _, b| {
                for j in (0..b.len()).step_by(env("MEASURE_ALL_EVERY", 256)) {
                    b[j] ^= 1;
                }
            }),
            other => panic!("unknown variant {other}"),
        }
        let edit = t.elapsed();
        let out = f.path().join(format!("rel-{variant}"));
        let t = Instant::now();
        let (full, delta, published) = make_release(&f, &v2, "2.0.0", std::slice::from_ref(&v1), &out);
        let make = t.elapsed();
        // Back to v1 alone (rollback target gone), then the delta.
        let _ = std::fs::remove_dir_all(f.store());
        timed_apply(&cfg, &rel1.join("manifest.json"));
        let (apply, rss) =
            if published { timed_apply(&cfg, &out.join("manifest.json")) } else { (Duration::ZERO, 0) };
        if published {
            assert_eq!(f.current_sha(), Some(sha_of(&v2)));
        }
        let delta = delta.unwrap_or(0);
        println!(
            "{variant:>4}: v2 made in {edit:.1?}; zstd full {:.2} MiB; delta {:.3} MiB = {:.2}% of the full file ({}); release (zstd + delta) {make:.1?}; delta apply {apply:.2?}, peak RSS {:.1} MiB",
            full as f64 / MIB,
            delta as f64 / MIB,
            delta as f64 * 100.0 / full as f64,
            if published { "published" } else { "not published: over 70 %" },
            rss as f64 / 1024.0,
        );
        std::fs::remove_dir_all(&out).unwrap();
        std::fs::remove_file(&v2).unwrap();
    }
}
