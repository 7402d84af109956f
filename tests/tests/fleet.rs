//! Fleet control end to end: real `outpost serve` and `outpost-updater daemon` processes, a
//! real mosquitto with TLS client certificates and the example ACL (packaging/mosquitto), and
//! an operator client.
#![allow(clippy::unwrap_used)]

#[path = "../../updater/tests/common/server.rs"]
mod server;

use std::path::Path;
use std::time::{Duration, Instant};

use outpost_e2e::mqtt::{Broker, Certs, Observer};
use outpost_e2e::{tiny_model, updater, Daemon};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

struct Fleet {
    _dir: tempfile::TempDir,
    certs: Certs,
    broker: Broker,
}

impl Fleet {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs =
            Certs::make(&dir.path().join("certs"), "operator", &["pi-a:kitchen", "pi-b:garage", "up-a"]);
        std::fs::create_dir(dir.path().join("broker")).unwrap();
        let broker = Broker::start(&certs, &dir.path().join("broker"));
        Self { _dir: dir, certs, broker }
    }

    fn operator(&self) -> Observer {
        Observer::connect(&self.certs, &self.broker, "operator", &["outpost/#"])
    }

    /// A runtime for `device`, its fleet state in this fleet's directory.
    fn runtime(&self, device: &str, extra: &str) -> Daemon {
        let state = self._dir.path().join(format!("state-{device}"));
        let extra = format!("groups = [\"kitchen\"]\nstate_dir = {:?}\n{extra}", state.display().to_string());
        let section = self.certs.mqtt_section(&self.broker, device, &extra);
        Daemon::start(&tiny_model(1), &section)
    }
}

fn send(op: &Observer, topic: &str, id: &str, args: Value) {
    op.publish(topic, &json!({ "id": id, "args": args }), false);
}

fn online_status(op: &Observer, device: &str, component: &str) -> Value {
    let topic = format!("outpost/{device}/{component}/status");
    op.wait_for("online status", T, |m| m.topic == topic && m.json["online"] == true).json
}

#[test]
fn status_is_retained_and_the_last_will_follows_a_kill_9() {
    let fleet = Fleet::new();
    let op = fleet.operator();
    let daemon = fleet.runtime("pi-a", "");
    // The agent may connect before the model is loaded: the status is republished once it is.
    let status = op
        .wait_for("status with the model", T, |m| {
            m.topic == "outpost/pi-a/runtime/status"
                && m.json["online"] == true
                && m.json["model"]["id"].is_string()
        })
        .json;
    assert_eq!(status["schema"], 1);
    assert_eq!(status["component"], "runtime");
    assert_eq!(status["model"]["id"], "outpost-synth-tiny", "{status}");
    assert!(status["router_version"].is_string() && status["power_mode"] == "high", "{status}");

    // A newcomer gets the retained status at once.
    let late = Observer::connect(&fleet.certs, &fleet.broker, "operator", &["outpost/+/+/status"]);
    let retained = late.wait_for("retained status", T, |m| m.topic == "outpost/pi-a/runtime/status");
    assert!(retained.retain && retained.json["online"] == true);

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.pid()), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let will = op
        .wait_for("last will", T, |m| m.topic == "outpost/pi-a/runtime/status" && m.json["online"] == false);
    assert_eq!(will.json, json!({"schema": 1, "online": false, "component": "runtime"}));
    let after = Observer::connect(&fleet.certs, &fleet.broker, "operator", &["outpost/+/+/status"]);
    let retained = after.wait_for("retained will", T, |m| m.topic == "outpost/pi-a/runtime/status");
    assert_eq!(retained.json["online"], false, "the will is retained");
}

#[test]
fn every_runtime_command_gets_its_result_and_a_job_runs_once() {
    let fleet = Fleet::new();
    let op = fleet.operator();
    let daemon = fleet.runtime("pi-a", "");
    online_status(&op, "pi-a", "runtime");
    let cmd = |name: &str| format!("outpost/pi-a/runtime/cmd/{name}");
    let results = "outpost/pi-a/runtime/result";

    send(&op, &cmd("reload"), "j-reload", json!({}));
    let r = op.result(results, "j-reload", T);
    assert_eq!((r["status"].as_str(), r["cmd"].as_str()), (Some("succeeded"), Some("reload")), "{r}");
    assert_eq!(r["result"]["model"]["id"], "outpost-synth-tiny");

    send(&op, &cmd("route.explain"), "j-explain", json!({"prompt": "What is 2+2?"}));
    let r = op.result(results, "j-explain", T);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert!(r["result"]["route"].is_string() && r["result"]["reasons"].is_array(), "{r}");

    send(&op, &cmd("status"), "j-status", json!({}));
    assert_eq!(op.result(results, "j-status", T)["status"], "succeeded");

    // The same import job twice (as a redelivery would bring it): imported once.
    let jsonl = "{\"prompt\": \"what is the fleet word\", \"answer\": \"outpost\"}\n";
    send(&op, &cmd("cache.import"), "j-import", json!({"jsonl": jsonl}));
    let first = op.result(results, "j-import", T);
    assert_eq!(
        (first["status"].as_str(), first["result"]["imported"].as_u64()),
        (Some("succeeded"), Some(1)),
        "{first}"
    );
    send(&op, &cmd("cache.import"), "j-import", json!({"jsonl": jsonl}));
    let again = op.wait_for("duplicate", T, |m| m.topic == results && m.json["status"] == "duplicate").json;
    assert_eq!((again["id"].as_str(), again["first_status"].as_str()), (Some("j-import"), Some("succeeded")));
    assert_eq!(again["result"]["imported"], 1, "the first outcome is repeated");
    let stats = daemon.request("GET", "/admin/cache/stats", None).json();
    assert_eq!(stats["entries"], 1, "imported once: {stats}");

    // A group command reaches the device through its group.
    send(&op, "outpost/group/kitchen/runtime/cmd/cache.clear", "j-clear", json!({}));
    let r = op.result(results, "j-clear", T);
    assert_eq!((r["status"].as_str(), r["result"]["removed"].as_u64()), (Some("succeeded"), Some(1)), "{r}");

    // Rejections: unknown command, malformed payload, expired job, bad arguments.
    send(&op, &cmd("reboot"), "j-unknown", json!({}));
    let r = op.result(results, "j-unknown", T);
    assert!(r["status"] == "rejected" && r["error"].as_str().unwrap().contains("unknown command"), "{r}");
    op.publish(&cmd("reload"), &json!({"id": "j-bad", "argz": {}}), false);
    let r = op.result(results, "j-bad", T);
    assert!(r["status"] == "rejected" && r["error"].as_str().unwrap().contains("malformed"), "{r}");
    op.publish(&cmd("reload"), &json!({"id": "j-old", "expires_at": 1_000_000}), false);
    let r = op.result(results, "j-old", T);
    assert!(r["status"] == "rejected" && r["error"].as_str().unwrap().contains("expired"), "{r}");
    send(&op, &cmd("route.explain"), "j-noprompt", json!({}));
    assert_eq!(op.result(results, "j-noprompt", T)["status"], "rejected");
}

#[test]
fn config_set_validates_like_a_drop_in_and_a_bad_one_changes_nothing() {
    let fleet = Fleet::new();
    let op = fleet.operator();
    let daemon = fleet.runtime("pi-a", "");
    online_status(&op, "pi-a", "runtime");
    let drop_in = daemon.dir.path().join("config.d/50-fleet.toml");
    let results = "outpost/pi-a/runtime/result";
    let topic = "outpost/pi-a/runtime/cmd/config.set";

    for (id, toml) in [
        ("bad-type", "[model]\ncontext = \"big\"\n"),
        ("bad-key", "[policy]\nno_such_key = 1\n"),
        ("bad-syntax", "[model\n"),
        ("bad-group", "[api]\ngroup = \"no-such-group-xyz\"\n"),
    ] {
        send(&op, topic, id, json!({"toml": toml}));
        let r = op.result(results, id, T);
        assert_eq!(r["status"], "rejected", "{id}: {r}");
        assert!(r["error"].as_str().unwrap().contains("50-fleet.toml"), "{id} names the file: {r}");
        assert!(!drop_in.exists(), "{id}: nothing written");
    }
    send(&op, topic, "good", json!({"toml": "[generation]\nmax_tokens = 77\n"}));
    let r = op.result(results, "good", T);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["result"]["changed"], json!(["generation.max_tokens"]));
    assert_eq!(r["result"]["restart_required"], true);
    assert_eq!(std::fs::read_to_string(&drop_in).unwrap(), "[generation]\nmax_tokens = 77\n");
    // What was written passes `outpost check-config`, as the next start will see it.
    let out = std::process::Command::new(outpost_e2e::outpost_bin())
        .args(["check-config", "--config"])
        .arg(daemon.dir.path().join("outpost.toml"))
        .output()
        .unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("max_tokens: 77"));
}

#[test]
fn telemetry_made_during_a_broker_outage_arrives_afterwards_in_order() {
    let mut fleet = Fleet::new();
    let op = fleet.operator();
    let _daemon = fleet.runtime("pi-a", "telemetry_interval = \"1s\"\n");
    let topic = "outpost/pi-a/runtime/telemetry";
    op.wait_for("telemetry", T, |m| m.topic == topic && m.json["seq"].as_u64().is_some_and(|s| s >= 1));
    fleet.broker.stop();
    let down = outpost_common::mqtt::unix_now();
    std::thread::sleep(Duration::from_secs(4));
    let up = outpost_common::mqtt::unix_now();
    fleet.broker.restart();
    // Reports made while the broker was down arrive, then the stream goes on.
    let wait_until = Instant::now() + T;
    loop {
        let made_while_down = op
            .messages()
            .iter()
            .filter(|m| m.topic == topic && m.json["to"].as_u64().is_some_and(|t| t > down && t < up))
            .count();
        if made_while_down >= 2 {
            break;
        }
        assert!(Instant::now() < wait_until, "reports made during the outage did not arrive");
        std::thread::sleep(Duration::from_millis(200));
    }
    let seqs: Vec<u64> =
        op.messages().iter().filter(|m| m.topic == topic).filter_map(|m| m.json["seq"].as_u64()).collect();
    let mut sorted = seqs.clone();
    sorted.dedup();
    assert_eq!(seqs, sorted, "in order: {seqs:?}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "no gaps: {seqs:?}");
    let last = op.messages().into_iter().rev().find(|m| m.topic == topic).unwrap();
    assert_eq!(last.json["dropped"], 0);
}

#[test]
fn a_device_certificate_reaches_only_its_own_topics() {
    let fleet = Fleet::new();
    let op = fleet.operator();
    // pi-a may read its own commands (a positive control) but not pi-b's.
    let pi_a = Observer::connect(
        &fleet.certs,
        &fleet.broker,
        "pi-a",
        &["outpost/pi-a/runtime/cmd/+", "outpost/pi-b/runtime/cmd/+", "outpost/group/garage/runtime/cmd/+"],
    );
    send(&op, "outpost/pi-b/runtime/cmd/reload", "for-b", json!({}));
    send(&op, "outpost/group/garage/runtime/cmd/reload", "for-garage", json!({}));
    send(&op, "outpost/pi-a/runtime/cmd/reload", "for-a", json!({}));
    pi_a.wait_for("own command", T, |m| m.json["id"] == "for-a");
    std::thread::sleep(Duration::from_millis(500));
    let ids: Vec<Value> = pi_a.messages().iter().map(|m| m.json["id"].clone()).collect();
    assert_eq!(ids, vec![json!("for-a")], "pi-a saw another device's or group's commands");

    // pi-a cannot write pi-b's status (the broker drops it) but can write its own.
    pi_a.publish("outpost/pi-b/runtime/status", &json!({"schema": 1, "online": true, "forged": true}), true);
    pi_a.publish("outpost/pi-a/runtime/status", &json!({"schema": 1, "online": true, "mine": true}), true);
    op.wait_for("own status", T, |m| m.topic == "outpost/pi-a/runtime/status");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !op.messages().iter().any(|m| m.topic == "outpost/pi-b/runtime/status"),
        "a forged status got through"
    );
    assert!(fleet.broker.log().contains("Denied PUBLISH from pi-a"), "{}", fleet.broker.log());
}

/// The updater over MQTT: an update job survives a broker restart in the middle of its
/// download and its result arrives; then a rollback job.
#[test]
fn an_update_job_completes_across_a_broker_restart_and_rolls_back() {
    let mut fleet = Fleet::new();
    let op = fleet.operator();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    updater(&["keygen", "--out", d.join("keys").to_str().unwrap()]);
    release(d, &tiny_model(1), "1.0.0", &d.join("www/rel1"));
    release(d, &tiny_model(2), "2.0.0", &d.join("www/rel2"));
    let server = server::Server::start(&d.join("www"));
    let config = d.join("updater.toml");
    let mqtt = fleet.certs.mqtt_section(&fleet.broker, "up-a", "");
    std::fs::write(
        &config,
        format!(
            "[updater]\nstore = {:?}\ntrusted_keys = [{:?}]\ndevice_class = \"test-board\"\n\
             runtime_socket = {:?}\nruntime_absent = \"commit\"\nretry_backoff = \"50ms\"\nread_timeout = \"5s\"\n{mqtt}",
            d.join("store").display().to_string(),
            d.join("keys/release.pub").display().to_string(),
            d.join("none.sock").display().to_string(),
        ),
    )
    .unwrap();
    updater(&["--config", config.to_str().unwrap(), "apply", &server.url("rel1/manifest.json")]);
    // The full v2 file trickles at 256 KiB/s: the download outlives the broker's restart.
    let artifact = largest_file(&d.join("www/rel2"));
    server.fault(&artifact, server::Fault::Slow(256 * 1024));
    let mut daemon = std::process::Command::new(outpost_e2e::bin_dir().join("outpost-updater"))
        .args(["--config", config.to_str().unwrap(), "daemon"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = online_status(&op, "up-a", "updater");
    assert_eq!(status["current_version"], "1.0.0", "{status}");

    let results = "outpost/up-a/updater/result";
    send(
        &op,
        "outpost/up-a/updater/cmd/update",
        "u-1",
        json!({"manifest_url": server.url("rel2/manifest.json")}),
    );
    op.wait_for("download progress", T, |m| {
        m.topic == results
            && m.json["status"] == "in_progress"
            && m.json["result"]["bytes_done"].as_u64().is_some()
    });
    fleet.broker.restart();
    let r = op.result(results, "u-1", Duration::from_secs(120));
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(
        (r["result"]["outcome"].as_str(), r["result"]["version"].as_str()),
        (Some("installed"), Some("2.0.0"))
    );
    op.wait_for("status on 2.0.0", T, |m| {
        m.topic == "outpost/up-a/updater/status" && m.json["current_version"] == "2.0.0"
    });

    send(&op, "outpost/up-a/updater/cmd/rollback", "u-2", json!({}));
    let r = op.result(results, "u-2", T);
    assert_eq!(
        (r["status"].as_str(), r["result"]["version"].as_str()),
        (Some("succeeded"), Some("1.0.0")),
        "{r}"
    );
    send(&op, "outpost/up-a/updater/cmd/update", "u-3", json!({"manifest_url": "ftp://nowhere"}));
    assert_eq!(op.result(results, "u-3", T)["status"], "rejected");

    // SIGTERM: the retained status says offline (a clean stop, not the will).
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    assert!(daemon.wait().unwrap().success());
    op.wait_for("offline status", T, |m| {
        m.topic == "outpost/up-a/updater/status" && m.json["online"] == false
    });
}

fn release(dir: &Path, model: &Path, version: &str, out: &Path) {
    let key = dir.join("keys/release.key");
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

/// The name (relative to `www/`) of the largest file in a release directory.
fn largest_file(dir: &Path) -> String {
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let name = files.last().unwrap().file_name().unwrap().to_string_lossy().into_owned();
    format!("{}/{name}", dir.file_name().unwrap().to_string_lossy())
}
