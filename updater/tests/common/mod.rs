//! Shared fixtures: keys, two synthetic GGUF versions, releases, a store snapshot, and a
//! fault-injecting HTTP server ([`server`]).
#![allow(dead_code, clippy::unwrap_used)]

pub mod server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ed25519_dalek::SigningKey;
use outpost_updater::config::Settings;
use outpost_updater::io::{hash_stream, sha256_hex};
use outpost_updater::keys;
use outpost_updater::manifest::Manifest;
use outpost_updater::release::{release, ReleaseOptions};
use outpost_updater::testutil::{write_gguf, TestTensor};

pub const CLASS: &str = "pi5-8g";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub k1: SigningKey,
    pub k2: SigningKey,
    pub k3: SigningKey,
    pub v1: PathBuf,
    pub v2: PathBuf,
    pub v3: PathBuf,
    /// v1 full release.
    pub rel1: PathBuf,
    /// v2 release with a delta from v1.
    pub rel2: PathBuf,
}

pub fn model_tensors(seed: u64) -> Vec<TestTensor> {
    (0..12)
        .map(|i| TestTensor::random(&format!("blk.{i}.ffn.weight"), 16_000 + i * 64, seed * 1000 + i as u64))
        .collect()
}

pub fn sha_of(path: &Path) -> String {
    hash_stream(&mut std::fs::File::open(path).unwrap()).unwrap().1
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for k in ["k1", "k2", "k3"] {
            std::fs::create_dir(p.join(k)).unwrap();
            keys::keygen(&p.join(k)).unwrap();
        }
        let sk = |k: &str| keys::read_signing_key(&p.join(k).join("release.key")).unwrap();
        let v1_t = model_tensors(1);
        let mut v2_t = v1_t.clone();
        v2_t[2].perturb(997);
        v2_t[5] = TestTensor::random("blk.5.ffn.weight", 16_320, 4242);
        let mut v3_t = v2_t.clone();
        v3_t[9].perturb(311);
        let (v1, v2, v3) = (p.join("v1.gguf"), p.join("v2.gguf"), p.join("v3.gguf"));
        write_gguf(&v1, "demo-1.0.0", &v1_t);
        write_gguf(&v2, "demo-1.1.0", &v2_t);
        write_gguf(&v3, "demo-1.2.0", &v3_t);
        let f = Fixture {
            k1: sk("k1"),
            k2: sk("k2"),
            k3: sk("k3"),
            rel1: p.join("rel1"),
            rel2: p.join("rel2"),
            v1,
            v2,
            v3,
            dir,
        };
        f.release(&f.v1, "1.0.0", &[], &f.rel1, std::slice::from_ref(&f.k1));
        f.release(&f.v2, "1.1.0", std::slice::from_ref(&f.v1), &f.rel2, std::slice::from_ref(&f.k1));
        f
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn release(
        &self,
        model: &Path,
        version: &str,
        bases: &[PathBuf],
        out: &Path,
        keys: &[SigningKey],
    ) -> Manifest {
        let opts = ReleaseOptions {
            keys: keys.to_vec(),
            model: model.to_path_buf(),
            version: version.into(),
            device_classes: vec![CLASS.into()],
            bases: bases.to_vec(),
            expires_in: Duration::from_secs(30 * 86400),
            out: out.to_path_buf(),
            zstd_level: 3,
        };
        release(&opts, SystemTime::now()).unwrap().manifest
    }

    pub fn store(&self) -> PathBuf {
        self.path().join("store")
    }

    /// A config file trusting the given key dirs. No runtime runs in these tests: the socket is
    /// absent and `runtime_absent = "commit"` commits untried (the trial has its own tests).
    pub fn config(&self, keys: &[&str], threshold: usize) -> PathBuf {
        self.config_with(keys, threshold, "")
    }

    /// [`Self::config`] with `extra` lines appended to `[updater]`.
    pub fn config_with(&self, keys: &[&str], threshold: usize, extra: &str) -> PathBuf {
        let list: Vec<String> = keys
            .iter()
            .map(|k| format!("{:?}", self.path().join(k).join("release.pub").display().to_string()))
            .collect();
        let text = format!(
            "[updater]\nstore = {:?}\ntrusted_keys = [{}]\nthreshold = {threshold}\ndevice_class = \"{CLASS}\"\n\
             runtime_socket = {:?}\nruntime_absent = \"commit\"\n{extra}\n",
            self.store().display().to_string(),
            list.join(", "),
            self.path().join("no-runtime.sock").display().to_string()
        );
        let tag =
            if extra.is_empty() { String::new() } else { format!("-{}", &sha256_hex(extra.as_bytes())[..8]) };
        let path = self.path().join(format!("updater-{}-{threshold}{tag}.toml", keys.join("-")));
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn settings(&self, keys: &[&str], threshold: usize) -> Settings {
        Settings::load(&self.config(keys, threshold)).unwrap()
    }

    /// Copies a release directory, for tampering.
    pub fn copy_release(&self, from: &Path, name: &str) -> PathBuf {
        let to = self.path().join(name);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
        to
    }

    /// The model `current` resolves to, hashed.
    pub fn current_sha(&self) -> Option<String> {
        let p = self.store().join("current").join("model.gguf");
        p.exists().then(|| sha_of(&p))
    }
}

/// [`snapshot`] without `downloads/` (where a partial download is kept on purpose).
pub fn snapshot_but_downloads(root: &Path) -> BTreeMap<String, String> {
    snapshot(root).into_iter().filter(|(k, _)| !k.starts_with("downloads")).collect()
}

/// Every path under `root` with its content hash, link target or "dir".
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries {
            let e = e.unwrap();
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.insert(rel, format!("-> {}", std::fs::read_link(&path).unwrap().display()));
            } else if meta.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &path, out);
            } else {
                out.insert(rel, sha_of(&path));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

pub fn read_manifest(dir: &Path) -> Manifest {
    Manifest::read(&dir.join("manifest.json")).unwrap().0
}

pub fn write_manifest(dir: &Path, m: &Manifest) {
    std::fs::write(dir.join("manifest.json"), m.to_json()).unwrap();
}
