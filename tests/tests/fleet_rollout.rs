//! A staged rollout over MQTT end to end: a real mosquitto (TLS, client certificates, ACL),
//! three `outpost-updater daemon` processes as boards d1, d2, d3 in group `wave`, a signed
//! release on a real HTTP server, and `outpost-fleet rollout` driving them one board per wave
//! with an abort threshold of one failure.
//!
//! d2 is sabotaged: its store trusts another key, so v2's signature does not verify there. The
//! first rollout run is killed while d1 downloads (its artifact stalls once); the rerun resumes
//! it (d1's job is sent again with the same id and answered `duplicate` or by the first run's
//! own result), d2 fails, the rollout aborts before d3's wave. A third run with a higher
//! threshold sends d3 its job and nothing to d1 or d2.
#![allow(clippy::unwrap_used)]

#[path = "../../updater/tests/common/server.rs"]
mod server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use outpost_e2e::mqtt::{Broker, Certs, Message, Observer};
use outpost_e2e::{bin_dir, fleet_bin, release, tiny_model, updater};
use server::{Fault, Server};

const BOARDS: [&str; 3] = ["d1", "d2", "d3"];

/// An `outpost-updater daemon`, killed when dropped.
struct Board {
    child: Child,
    dir: PathBuf,
}

impl Board {
    /// Installs `v1` into the board's store, then starts its daemon trusting `trusted`.
    fn start(dir: &Path, certs: &Certs, broker: &Broker, v1: &Path, keys: &Path, trusted: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let name = dir.file_name().unwrap().to_str().unwrap();
        let config = dir.join("updater.toml");
        let write = |key: &Path| {
            let text = format!(
                "[updater]\nstore = {:?}\ntrusted_keys = [{:?}]\ndevice_class = \"test-board\"\n\
                 runtime_socket = {:?}\nruntime_absent = \"commit\"\nretry_backoff = \"50ms\"\n\
                 read_timeout = \"5s\"\n\n{}",
                dir.join("store").display().to_string(),
                key.display().to_string(),
                dir.join("no-runtime.sock").display().to_string(),
                certs.mqtt_section(broker, name, "groups = [\"wave\"]\ntelemetry_interval = \"2s\""),
            );
            std::fs::write(&config, text).unwrap();
        };
        write(&keys.join("release.pub"));
        updater(&["--config", config.to_str().unwrap(), "apply", v1.to_str().unwrap()]);
        write(trusted);
        let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
        let child = Command::new(bin_dir().join("outpost-updater"))
            .args(["--config", config.to_str().unwrap(), "daemon"])
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self { child, dir: dir.to_path_buf() }
    }

    /// The version `current` points at.
    fn current(&self) -> String {
        let link = std::fs::read_link(self.dir.join("store/current")).unwrap();
        link.file_name().unwrap().to_string_lossy().into_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `outpost-fleet` with the operator's connection file and `args`.
fn fleet(operator: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(fleet_bin());
    cmd.arg("--config").arg(operator).args(args).env("RUST_LOG", "warn").stdin(Stdio::null());
    cmd
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The update commands each board was sent so far (their job ids, in order).
fn commands(observer: &Observer) -> BTreeMap<String, Vec<String>> {
    let mut sent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in observer.messages() {
        let parts: Vec<&str> = m.topic.split('/').collect();
        if let ["outpost", device, "updater", "cmd", "update"] = parts[..] {
            sent.entry(device.to_owned()).or_default().push(m.json["id"].as_str().unwrap().to_owned());
        }
    }
    sent
}

/// The state file's rows: device → (state, detail), and the rollout's outcome.
fn state(path: &Path) -> (BTreeMap<String, (String, Option<String>)>, String) {
    let db = rusqlite::Connection::open(path).unwrap();
    let mut stmt = db.prepare("SELECT device, state, detail FROM devices").unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .collect::<Result<BTreeMap<_, _>, _>>()
        .unwrap();
    let outcome = db.query_row("SELECT outcome FROM rollout", [], |r| r.get(0)).unwrap();
    (rows, outcome)
}

fn wait_until(what: &str, timeout: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_staged_rollout_stops_at_the_failure_threshold_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let specs: Vec<String> = BOARDS.iter().map(|b| format!("{b}:wave")).collect();
    let certs = Certs::make(
        &d.join("certs"),
        "fleet-operator",
        &specs.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    std::fs::create_dir_all(d.join("broker")).unwrap();
    let broker = Broker::start(&certs, &d.join("broker"));
    let observer = Observer::connect(
        &certs,
        &broker,
        "fleet-operator",
        &["outpost/+/updater/cmd/+", "outpost/+/updater/status"],
    );
    let operator = d.join("operator.toml");
    std::fs::write(&operator, certs.mqtt_section(&broker, "fleet-operator", "")).unwrap();

    // Releases: v1 installed from a local path, v2 served over HTTP. d2 trusts another key.
    let (keys, other) = (d.join("keys"), d.join("other-keys"));
    updater(&["keygen", "--out", keys.to_str().unwrap()]);
    updater(&["keygen", "--out", other.to_str().unwrap()]);
    let www = d.join("www");
    release(&keys.join("release.key"), &tiny_model(1), "1.0.0", &d.join("rel1"));
    release(&keys.join("release.key"), &tiny_model(2), "2.0.0", &www.join("rel2"));
    let server = Server::start(&www);
    let manifest = server.url("rel2/manifest.json");
    let v1 = d.join("rel1/manifest.json");
    let boards: BTreeMap<&str, Board> = BOARDS
        .iter()
        .map(|&b| {
            let trusted = if b == "d2" { other.join("release.pub") } else { keys.join("release.pub") };
            (b, Board::start(&d.join(b), &certs, &broker, &v1, &keys, &trusted))
        })
        .collect();
    for b in BOARDS {
        observer.wait_for(&format!("{b} online in group wave"), Duration::from_secs(30), |m: &Message| {
            m.topic == format!("outpost/{b}/updater/status")
                && m.json["online"] == true
                && m.json["groups"] == serde_json::json!(["wave"])
        });
    }

    // The plain commands work on the same boards: the device list, and a group `status` job
    // answered by all three.
    let out = fleet(&operator, &["devices", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    assert_eq!(list[0]["updater"]["current_version"], "1.0.0");
    let out = fleet(
        &operator,
        &["send", "--group", "wave", "--component", "updater", "status", "--timeout", "20s"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches("succeeded").count(), 3, "{}", text(&out));

    let state_file = d.join("rollout.sqlite");
    let rollout = |abort_at: &str| {
        let mut cmd =
            fleet(&operator, &["rollout", "--group", "wave", "--manifest", &manifest, "--wave", "1"]);
        cmd.args(["--abort-at", abort_at, "--timeout-per-device", "60s", "--state"]).arg(&state_file);
        cmd
    };

    // Run 1, killed while d1 downloads (the artifact's first request stalls 4 s).
    server.fault("model-2.0.0.gguf.zst", Fault::Stall(Duration::from_secs(4)));
    let mut first = rollout("1").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_until("d1 fetching v2", Duration::from_secs(30), || {
        !server.requests("model-2.0.0.gguf.zst").is_empty()
    });
    first.kill().unwrap();
    first.wait().unwrap();
    let (rows, _) = state(&state_file);
    assert_eq!(rows["d1"].0, "sent");
    assert_eq!((rows["d2"].0.as_str(), rows["d3"].0.as_str()), ("pending", "pending"));
    let d1_job = commands(&observer)["d1"][0].clone();

    // Run 2 resumes: d1's same job again, then d2 fails and the rollout stops before d3.
    let out = rollout("1").output().unwrap();
    let log = || BOARDS.iter().map(|b| format!("--- {b}\n{}", boards[b].log())).collect::<String>();
    assert_eq!(out.status.code(), Some(1), "{}\n{}", text(&out), log());
    assert!(text(&out).contains("rollout aborted"), "{}", text(&out));
    let sent = commands(&observer);
    assert_eq!(sent["d1"], [d1_job.clone(), d1_job.clone()], "d1 was re-awaited by its job id");
    assert_eq!(sent["d2"].len(), 1);
    assert!(!sent.contains_key("d3"), "the wave after the threshold got no job: {sent:?}");
    let (rows, outcome) = state(&state_file);
    assert_eq!(
        (rows["d1"].0.as_str(), rows["d2"].0.as_str(), rows["d3"].0.as_str()),
        ("succeeded", "failed", "pending")
    );
    assert!(rows["d2"].1.as_deref().unwrap_or("").contains("signature"), "{:?}", rows["d2"]);
    assert_eq!(outcome, "aborted");
    assert_eq!(boards["d1"].current(), "2.0.0");
    assert_eq!(boards["d2"].current(), "1.0.0", "the failed board stays on the old version");
    assert_eq!(boards["d3"].current(), "1.0.0");

    // Run 3 with a higher threshold: only d3 is sent a job.
    let out = rollout("2").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "finished with d2 failed: {}", text(&out));
    assert!(text(&out).contains("rollout completed"), "{}", text(&out));
    let sent = commands(&observer);
    assert_eq!((sent["d1"].len(), sent["d2"].len(), sent["d3"].len()), (2, 1, 1), "{sent:?}");
    let (rows, outcome) = state(&state_file);
    assert_eq!((rows["d3"].0.as_str(), outcome.as_str()), ("succeeded", "completed"));
    assert_eq!(boards["d3"].current(), "2.0.0");
    drop(broker);
}
