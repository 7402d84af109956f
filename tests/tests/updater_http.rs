//! Updates over HTTP end to end: `outpost-updater` fetches signed releases from a local HTTP
//! server (the updater's fault-injecting test server, included below) and installs them into the
//! store a real `outpost serve` loads from; the runtime then reports the new version.
//!
//! v2 is a realistic edit of v1 (the way a fine-tune release differs): `general.name` changed
//! (a longer string, so every tensor's data moves in the file) and about one tensor in ten with
//! slightly changed weights; it travels as a delta.
#![allow(clippy::unwrap_used)]

#[path = "../../updater/tests/common/server.rs"]
mod server;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outpost_e2e::{tiny_model, updater, Daemon};
use serde_json::json;
use server::{Fault, Server};

/// A board: keys, releases v1 (full) and v2 (delta from v1) served over HTTP, the store with v1
/// installed over HTTP, the runtime serving it, the updater configured to try new versions on it.
struct Board {
    dir: tempfile::TempDir,
    server: Server,
    config: PathBuf,
    v2: PathBuf,
    runtime: Daemon,
}

impl Board {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        updater(&["keygen", "--out", d.join("keys").to_str().unwrap()]);
        let v1 = tiny_model(1);
        let v2 = d.join("v2.gguf");
        let changed = edit_gguf(&v1, &v2, "outpost-synth-tiny-finetuned-v2", 10);
        assert!(changed >= 2, "{changed} tensors changed");
        release(d, &v1, "1.0.0", None, &d.join("www/rel1"));
        release(d, &v2, "2.0.0", Some(&v1), &d.join("www/rel2"));
        let server = Server::start(&d.join("www"));
        let config = d.join("updater.toml");
        // The first install has no runtime to try it on: committed untried.
        write_config(&config, d, &d.join("none.sock"), &server.url("channel/manifest.json"));
        let out =
            updater(&["--config", config.to_str().unwrap(), "apply", &server.url("rel1/manifest.json")]);
        assert!(out.contains("installed 1.0.0 (full)"), "{out}");
        let runtime = Daemon::start(&d.join("store/current/model.gguf"), "");
        write_config(&config, d, &runtime.socket, &server.url("channel/manifest.json"));
        let board = Self { dir, server, config, v2, runtime };
        assert_eq!(board.served()["version"], "1.0.0");
        board
    }

    fn cfg(&self) -> &str {
        self.config.to_str().unwrap()
    }

    fn served(&self) -> serde_json::Value {
        self.runtime.request("GET", "/v1/models", None).json()["data"][0].clone()
    }

    /// The runtime reports 2.0.0, the model it loaded hashes to v2, and it answers.
    fn assert_serves_v2(&self) {
        let model = self.served();
        assert_eq!(model["version"], "2.0.0", "{}", self.runtime.log());
        assert_eq!(model["sha256"], sha256_hex(&self.v2).as_str());
        let answer =
            self.runtime.chat(&json!({ "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2 }));
        assert_eq!(answer.status, 200, "{}", answer.text());
        let st: serde_json::Value =
            serde_json::from_str(&updater(&["--config", self.cfg(), "status", "--json"])).unwrap();
        assert_eq!(st["state"], "idle");
        assert_eq!(st["current"]["version"], "2.0.0");
        assert_eq!(st["previous"]["version"], "1.0.0");
    }

    fn delta_name(&self) -> String {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.dir.path().join("www/rel2/manifest.json")).unwrap())
                .unwrap();
        let arts = m["signed"]["artifacts"].as_array().unwrap();
        let delta = arts.iter().find(|a| a["kind"] == "delta").expect("v2 ships a delta from v1");
        delta["name"].as_str().unwrap().to_owned()
    }
}

fn write_config(config: &Path, dir: &Path, socket: &Path, manifest_url: &str) {
    std::fs::write(
        config,
        format!(
            "[updater]\nstore = {:?}\ntrusted_keys = [{:?}]\ndevice_class = \"test-board\"\n\
             runtime_socket = {:?}\ntrial_timeout = \"60s\"\nmanifest_url = {manifest_url:?}\n\
             check_interval = \"1s\"\nretry_backoff = \"50ms\"\nread_timeout = \"5s\"\n",
            dir.join("store").display().to_string(),
            dir.join("keys/release.pub").display().to_string(),
            socket.display().to_string()
        ),
    )
    .unwrap();
}

fn release(dir: &Path, model: &Path, version: &str, base: Option<&Path>, out: &Path) {
    let key = dir.join("keys/release.key");
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
fn full_then_delta_over_http_and_the_runtime_serves_v2() {
    let board = Board::new();
    let delta = board.delta_name();
    // The connection drops halfway through the delta once: the retry resumes it.
    let size = std::fs::metadata(board.dir.path().join("www/rel2").join(&delta)).unwrap().len();
    board.server.fault(&delta, Fault::DropAfter(size / 2));
    let out = updater(&["--config", board.cfg(), "apply", &board.server.url("rel2/manifest.json")]);
    assert!(out.contains("installed 2.0.0 (delta)"), "{out}");
    board.assert_serves_v2();
    let reqs = board.server.requests(&delta);
    assert_eq!(reqs.iter().map(|r| r.range_start()).collect::<Vec<_>>(), [None, Some(size / 2)]);
    assert!(
        board.server.requests(".gguf.zst").iter().all(|r| r.path.contains("rel1")),
        "v2's full file was fetched"
    );
}

#[test]
fn the_update_daemon_installs_v2_when_the_channel_announces_it() {
    let board = Board::new();
    let www = board.dir.path().join("www");
    copy_dir(&www.join("rel1"), &www.join("channel"));
    let mut daemon = Command::new(outpost_e2e::bin_dir().join("outpost-updater"))
        .args(["--config", board.cfg(), "daemon"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = daemon.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let wait_for = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cond() {
            assert!(Instant::now() < deadline, "{what}: not within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("a first check", &|| !board.server.requests("channel/manifest.json").is_empty());
    // Publish v2: artifacts first, the manifest last.
    copy_dir(&www.join("rel2"), &www.join("channel"));
    wait_for("2.0.0 served", &|| board.served()["version"] == "2.0.0");
    wait_for("2.0.0 committed", &|| {
        std::fs::read_to_string(board.dir.path().join("store/state.json")).unwrap().contains("\"2.0.0\"")
            && !board.dir.path().join("store/journal.json").exists()
    });
    board.assert_serves_v2();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let status = daemon.wait().unwrap();
    let log = log.join().unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("installed") && log.contains("delta"), "{log}");
    assert_eq!(board.server.requests(&board.delta_name()).len(), 1);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let mut entries: Vec<_> = std::fs::read_dir(from).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort_by_key(|p| p.file_name().is_some_and(|n| n == "manifest.json"));
    for p in entries {
        let tmp = to.join(".incoming");
        std::fs::copy(&p, &tmp).unwrap();
        std::fs::rename(&tmp, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// A reading position in a byte slice.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        self.pos += n;
        &self.bytes[self.pos - n..self.pos]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn skip_value(&mut self, ty: u32) {
        let size = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => self.u64() as usize,
            9 => {
                let item = self.u32();
                for _ in 0..self.u64() {
                    self.skip_value(item);
                }
                0
            }
            other => panic!("GGUF value type {other}"),
        };
        self.take(size);
    }
}

/// Writes `to`: `from` with `general.name` set to `name` (the header changes length, so all
/// tensor data moves) and every `every`-th tensor's weights nudged (the lowest mantissa bit of
/// one value in 16: f16 and f32 are little-endian, so that is bit 0 of a byte at a multiple of
/// 4). Returns how many tensors changed. Just enough GGUF (v2/v3) for the tiny synthetic model.
fn edit_gguf(from: &Path, to: &Path, name: &str, every: usize) -> usize {
    let bytes = std::fs::read(from).unwrap();
    let mut c = Cursor { bytes: &bytes, pos: 0 };
    assert_eq!(c.take(4), b"GGUF");
    c.take(4);
    let n_tensors = c.u64();
    let n_kv = c.u64();
    let mut header = bytes[..24].to_vec();
    let (mut alignment, mut renamed) = (32u64, false);
    for _ in 0..n_kv {
        let start = c.pos;
        let key_len = c.u64() as usize;
        let key = String::from_utf8(c.take(key_len).to_vec()).unwrap();
        let ty = c.u32();
        if key == "general.name" && ty == 8 {
            let len = c.u64() as usize;
            c.take(len);
            header.extend_from_slice(&bytes[start..start + 8 + key_len + 4]);
            header.extend_from_slice(&(name.len() as u64).to_le_bytes());
            header.extend_from_slice(name.as_bytes());
            renamed = true;
            continue;
        }
        let value = c.pos;
        c.skip_value(ty);
        if key == "general.alignment" {
            alignment = u64::from(u32::from_le_bytes(bytes[value..value + 4].try_into().unwrap()));
        }
        header.extend_from_slice(&bytes[start..c.pos]);
    }
    assert!(renamed, "no general.name in {}", from.display());
    let infos = c.pos;
    let mut offsets = Vec::new();
    for _ in 0..n_tensors {
        let len = c.u64() as usize;
        c.take(len);
        let dims = c.u32() as usize;
        c.take(8 * dims + 4);
        offsets.push(c.u64());
    }
    header.extend_from_slice(&bytes[infos..c.pos]);
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    let mut data = bytes[data_start as usize..].to_vec();
    header.resize((header.len() as u64).div_ceil(alignment) as usize * alignment as usize, 0);
    offsets.sort_unstable();
    let mut changed = 0;
    for (i, &off) in offsets.iter().enumerate().filter(|(i, _)| i % every == every / 2) {
        let end = offsets.get(i + 1).map_or(data.len() as u64, |&n| n);
        for b in (off..end).step_by(64) {
            data[b as usize] ^= 1;
        }
        changed += 1;
    }
    header.extend_from_slice(&data);
    std::fs::write(to, header).unwrap();
    changed
}
