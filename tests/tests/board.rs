//! Boards end to end: `outpost validate` on a real GGUF, `outpost serve` refusing a model that
//! does not fit the memory it is given, and `outpost bench` on a synthesized preset with a fake
//! sysfs holding a thermal zone and an INA3221 power monitor.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use outpost_e2e::{config_text, outpost_bin, tiny_model, Daemon};
use serde_json::Value;

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A config for `model` with `extra` TOML appended, in `dir`.
fn config(dir: &Path, model: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("outpost.toml");
    std::fs::write(&path, config_text(model, &dir.join("outpost.sock"), extra)).unwrap();
    path
}

fn validate(config: &Path) -> (Output, Value) {
    let out = Command::new(outpost_bin())
        .args(["validate", "--device", "pi5-2gb", "--json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    (out, json)
}

#[test]
fn validate_says_fits_then_does_not_fit_with_a_huge_context() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(1);
    let (out, report) = validate(&config(dir.path(), &model, "[router]\nenabled = false\n"));
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(report["verdict"], "fits");
    assert_eq!(report["device_bytes"], 2u64 << 30);
    let parts = report["parts"].as_array().unwrap();
    let names: Vec<&str> = parts.iter().map(|p| p["name"].as_str().unwrap()).collect();
    for name in ["weights", "kv_cache", "compute", "runtime", "response_cache", "os_reserve"] {
        assert!(names.contains(&name), "{name} missing: {names:?}");
    }
    assert!(!names.contains(&"router"), "the router is disabled: {names:?}");
    let sum: u64 = parts.iter().map(|p| p["bytes"].as_u64().unwrap()).sum();
    assert_eq!(report["total_bytes"].as_u64().unwrap(), sum);
    // tiny: 2 layers × 2 KV heads × (64 + 64) × f16 = 1 KiB per cell, 1024 cells.
    let kv = parts.iter().find(|p| p["name"] == "kv_cache").unwrap();
    assert_eq!(kv["bytes"], 1024 * 1024);
    // The tiny model was trained on 4,096 tokens: that caps the largest context.
    assert_eq!(report["max_context"], 4096);
    assert_eq!(report["max_context_limit"], "trained-context");

    // A million tokens of context in each of two slots: the KV cache alone is 2 GiB (1 KiB per
    // cell), the whole board.
    let dir = tempfile::tempdir().unwrap();
    let huge = config(dir.path(), &model, "[router]\nenabled = false\n");
    let text = std::fs::read_to_string(&huge)
        .unwrap()
        .replace("context = 1024", "context = 1048576")
        .replace("[api]\n", "[api]\nparallel = 2\n");
    std::fs::write(&huge, text).unwrap();
    let (out, report) = validate(&huge);
    assert_eq!(out.status.code(), Some(11), "{report}");
    assert_eq!(report["verdict"], "does-not-fit");
    assert!(report["total_bytes"].as_u64().unwrap() > 2u64 << 30);
    assert!(String::from_utf8_lossy(&out.stderr).contains("beyond the memory of pi5-2gb"));

    // The human form names every part and the verdict.
    let text = Command::new(outpost_bin())
        .args(["validate", "--device", "pi5-2gb", "--config"])
        .arg(&huge)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.contains("kv_cache") && stdout.contains("does not fit (exit 11)"), "{stdout}");
}

#[test]
fn serve_refuses_a_model_that_does_not_fit_unless_overcommit_is_allowed() {
    let root = tempfile::tempdir().unwrap();
    // 24 MiB available: less than the process without a model takes.
    write(root.path(), "proc/meminfo", "MemTotal: 1000000 kB\nMemAvailable: 24576 kB\n");
    let sysroot = root.path().to_str().unwrap();
    let model = tiny_model(1);
    let mut daemon = Daemon::spawn(&model, "[router]\nenabled = false\n", &[("OUTPOST_SYSROOT", sysroot)]);
    let status = daemon.wait(Duration::from_secs(30));
    let log = daemon.log();
    assert_eq!(status.code(), Some(78), "{log}");
    assert!(
        log.contains("does not fit in memory") && log.contains("24.0 MiB is available (MemAvailable)"),
        "{log}"
    );
    assert!(log.contains("kv_cache") && log.contains("model.allow_overcommit"), "{log}");

    // The same with overcommit allowed: it serves.
    let mut daemon = Daemon::spawn(
        &model,
        "[router]\nenabled = false\n[model]\nallow_overcommit = true\n",
        &[("OUTPOST_SYSROOT", sysroot)],
    );
    daemon.wait_ready();
    assert_eq!(daemon.terminate().code(), Some(0));

    // And with enough memory, no overcommit needed.
    write(root.path(), "proc/meminfo", "MemTotal: 8000000 kB\nMemAvailable: 4000000 kB\n");
    let mut daemon = Daemon::spawn(&model, "[router]\nenabled = false\n", &[("OUTPOST_SYSROOT", sysroot)]);
    daemon.wait_ready();
    assert_eq!(daemon.terminate().code(), Some(0));
}

#[test]
fn bench_reports_speed_memory_power_and_temperature() {
    let root = tempfile::tempdir().unwrap();
    let hw = "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3";
    write(root.path(), &format!("{hw}/name"), "ina3221\n");
    write(root.path(), &format!("{hw}/in1_label"), "VDD_IN\n");
    write(root.path(), &format!("{hw}/in1_input"), "5000\n");
    write(root.path(), &format!("{hw}/curr1_input"), "1200\n");
    write(root.path(), "sys/class/thermal/thermal_zone0/type", "cpu-thermal\n");
    write(root.path(), "sys/class/thermal/thermal_zone0/temp", "48500\n");
    let out = Command::new(outpost_bin())
        .args(["bench", "--preset", "tiny", "--json", "--threads", "1", "--context", "512"])
        .args(["--prompt-lengths", "32,64,128", "--gen-tokens", "24"])
        .env("OUTPOST_SYSROOT", root.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["model"], "preset tiny q4_k_m (synthesized)");
    assert_eq!(report["quantization"], "Q4_K_M");
    assert!(report["load_seconds"].as_f64().unwrap() > 0.0, "{report}");
    let prompts = report["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 3, "{report}");
    for p in prompts {
        assert!(p["tokens_per_second"].as_f64().unwrap() > 0.0, "{report}");
        assert!(p["first_token_ms"].as_f64().unwrap() > 0.0, "{report}");
    }
    // Calibrated lengths land near the asked ones (the chat template adds a few tokens).
    let longest = prompts[2]["tokens"].as_u64().unwrap();
    assert!((96..=192).contains(&longest), "{report}");
    let decode = &report["decode"];
    assert!(decode["tokens"].as_u64().unwrap() >= 24, "{report}");
    assert!(decode["tokens_per_second"].as_f64().unwrap() > 0.0, "{report}");
    assert!(decode["token_ms_p99"].as_f64().unwrap() >= decode["token_ms_p50"].as_f64().unwrap());
    assert!(report["peak_rss_bytes"].as_u64().unwrap() > 1 << 20, "{report}");
    let power = &report["power"][0];
    assert_eq!(power["name"], "VDD_IN");
    assert!((power["mean"].as_f64().unwrap() - 6.0).abs() < 1e-9, "{report}");
    let temp = &report["temperature"][0];
    assert_eq!(temp["name"], "cpu-thermal");
    assert!((temp["max"].as_f64().unwrap() - 48.5).abs() < 1e-9, "{report}");
}
