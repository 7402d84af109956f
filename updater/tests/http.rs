//! Updates over HTTP against a real local server that misbehaves on cue: every fault is either
//! recovered (retried, resumed) or refused with a clear error and the store left as it was.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::server::{Fault, Server};
use common::{read_manifest, sha_of, snapshot, snapshot_but_downloads, write_manifest, Fixture};
use outpost_updater::config::Settings;
use outpost_updater::fetch::FetchError;
use outpost_updater::manifest::{ArtifactKind, Manifest, ManifestError};
use outpost_updater::source::Source;
use outpost_updater::update::{apply, apply_source, Hooks, Outcome, UpdateError};

/// Quick retries and timeouts, so that faults cost milliseconds.
const FAST: &str =
    "retries = 3\nretry_backoff = \"10ms\"\nconnect_timeout = \"2s\"\nread_timeout = \"2s\"\nmin_rate = 0";

struct Env {
    f: Fixture,
    server: Server,
}

impl Env {
    /// The fixture's releases served over HTTP, 1.0.0 installed (from its local manifest).
    fn new() -> Self {
        let f = Fixture::new();
        let server = Server::start(f.path());
        let env = Self { f, server };
        apply(&env.settings(FAST), &env.f.rel1.join("manifest.json"), SystemTime::now()).unwrap();
        env
    }

    fn settings(&self, extra: &str) -> Settings {
        Settings::load(&self.f.config_with(&["k1"], 1, extra)).unwrap()
    }

    fn apply(&self, settings: &Settings, rel: &str) -> Result<Outcome, UpdateError> {
        let source = Source::Url(self.server.url(&format!("{rel}/manifest.json")));
        apply_source(settings, &source, SystemTime::now(), Hooks::default())
    }

    /// The name of `rel2`'s artifact of `kind`.
    fn artifact(&self, kind: ArtifactKind) -> (String, u64) {
        let m = read_manifest(&self.f.rel2);
        let a = m.signed.artifacts.iter().find(|a| a.kind == kind).unwrap();
        (a.name.clone(), a.size)
    }

    fn assert_v2(&self) {
        assert_eq!(self.f.current_sha(), Some(sha_of(&self.f.v2)));
        assert!(!self.f.store().join("downloads").exists(), "a download was left behind");
    }

    /// Applies rel2 expecting a refusal, with the store as it was (a partial download aside
    /// when `partial_ok`).
    fn refused(&self, settings: &Settings, rel: &str, partial_ok: bool) -> UpdateError {
        let before = snapshot(&self.f.store());
        let err = self.apply(settings, rel).expect_err("the update was accepted");
        if partial_ok {
            let before: std::collections::BTreeMap<_, _> =
                before.into_iter().filter(|(k, _)| !k.starts_with("downloads")).collect();
            assert_eq!(snapshot_but_downloads(&self.f.store()), before, "store changed after: {err}");
        } else {
            assert_eq!(snapshot(&self.f.store()), before, "store changed after: {err}");
        }
        assert_eq!(self.f.current_sha(), Some(sha_of(&self.f.v1)), "{err}");
        err
    }

    fn partial(&self) -> Option<u64> {
        let dir = self.f.store().join("downloads");
        let entry = std::fs::read_dir(dir).ok()?.next()?.unwrap();
        Some(entry.metadata().unwrap().len())
    }
}

fn fetch_err(err: &UpdateError) -> &FetchError {
    match err {
        UpdateError::Fetch(FetchError::GaveUp { last, .. }) => last,
        UpdateError::Fetch(e) => e,
        other => panic!("not a download error: {other}"),
    }
}

#[test]
fn full_then_delta_over_http() {
    let f = Fixture::new();
    let server = Server::start(f.path());
    let settings = Settings::load(&f.config_with(&["k1"], 1, FAST)).unwrap();
    let url = |rel: &str| Source::Url(server.url(&format!("{rel}/manifest.json")));
    let out = apply_source(&settings, &url("rel1"), SystemTime::now(), Hooks::default()).unwrap();
    assert!(matches!(out, Outcome::Installed { delta: false, .. }), "{out:?}");
    assert_eq!(f.current_sha(), Some(sha_of(&f.v1)));
    server.clear_log();
    let out = apply_source(&settings, &url("rel2"), SystemTime::now(), Hooks::default()).unwrap();
    assert!(matches!(out, Outcome::Installed { delta: true, .. }), "{out:?}");
    assert_eq!(f.current_sha(), Some(sha_of(&f.v2)));
    // Only the manifest and the delta crossed the network, each once, whole.
    let paths: Vec<String> = server.log().into_iter().map(|l| l.path).collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(paths[0].ends_with("rel2/manifest.json") && paths[1].ends_with(".odelta"), "{paths:?}");
    assert!(!f.store().join("downloads").exists());
    // The same release again: the manifest is fetched, nothing else.
    server.clear_log();
    let out = apply_source(&settings, &url("rel2"), SystemTime::now(), Hooks::default()).unwrap();
    assert!(matches!(out, Outcome::AlreadyCurrent(_)), "{out:?}");
    assert_eq!(server.log().len(), 1);
    // After a rollback, the version still on disk is switched back to without a download.
    outpost_updater::store::Store::new(f.store()).rollback().unwrap();
    assert_eq!(f.current_sha(), Some(sha_of(&f.v1)));
    server.clear_log();
    let out = apply_source(&settings, &url("rel2"), SystemTime::now(), Hooks::default()).unwrap();
    assert!(matches!(out, Outcome::Installed { .. }), "{out:?}");
    assert_eq!(f.current_sha(), Some(sha_of(&f.v2)));
    assert_eq!(server.log().len(), 1, "{:?}", server.log());
}

#[test]
fn a_dropped_connection_resumes_with_a_range_for_the_remainder() {
    let env = Env::new();
    let (full, size) = env.artifact(ArtifactKind::Full);
    // Offer only the full file (a bigger download).
    let d = env.f.copy_release(&env.f.rel2, "rel2-full");
    let mut m = read_manifest(&d);
    m.signed.artifacts.retain(|a| a.kind == ArtifactKind::Full);
    write_manifest(&d, &Manifest::sign(m.signed, std::slice::from_ref(&env.f.k1)));

    // Within one run: the retry asks for the rest only.
    let cut = size / 3;
    env.server.fault(&full, Fault::DropAfter(cut));
    env.apply(&env.settings(FAST), "rel2-full").unwrap();
    env.assert_v2();
    let reqs = env.server.requests(&full);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].range, None);
    assert_eq!(reqs[1].range_start(), Some(cut), "{reqs:?}");

    // Across runs: with no retries the first run fails, keeping the partial file; the next run
    // asks for exactly what is missing.
    let env = Env::new();
    let d = env.f.copy_release(&env.f.rel2, "rel2-full");
    let mut m = read_manifest(&d);
    m.signed.artifacts.retain(|a| a.kind == ArtifactKind::Full);
    write_manifest(&d, &Manifest::sign(m.signed, std::slice::from_ref(&env.f.k1)));
    let once = env.settings("retries = 0\nread_timeout = \"2s\"");
    env.server.fault(&full, Fault::DropAfter(cut));
    let err = env.refused(&once, "rel2-full", true);
    assert!(err.is_transient(), "{err}");
    assert!(matches!(fetch_err(&err), FetchError::Truncated { .. } | FetchError::Body { .. }), "{err}");
    assert_eq!(env.partial(), Some(cut));
    env.apply(&once, "rel2-full").unwrap();
    env.assert_v2();
    let reqs = env.server.requests(&full);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1].range_start(), Some(cut), "{reqs:?}");
}

#[test]
fn server_errors_are_retried_and_client_errors_are_not() {
    let env = Env::new();
    let (delta, _) = env.artifact(ArtifactKind::Delta);
    env.server.fault_n(&delta, Fault::Status(503), 2);
    env.server.fault("rel2/manifest.json", Fault::Status(502));
    env.apply(&env.settings(FAST), "rel2").unwrap();
    env.assert_v2();
    assert_eq!(env.server.requests(&delta).len(), 3);
    assert_eq!(env.server.requests("rel2/manifest.json").len(), 2);

    let env = Env::new();
    env.server.always(&delta, Fault::Status(404));
    let err = env.refused(&env.settings(FAST), "rel2", false);
    assert!(err.to_string().contains("HTTP 404"), "{err}");
    assert!(!err.is_transient());
    assert_eq!(env.server.requests(&delta).len(), 1, "a 404 was retried");

    env.server.clear();
    env.server.clear_log();
    env.server.always("rel2/manifest.json", Fault::Status(500));
    let err = env.refused(&env.settings(FAST), "rel2", false);
    assert!(
        err.to_string().contains("gave up after 4 attempts") && err.to_string().contains("HTTP 500"),
        "{err}"
    );
    assert!(err.is_transient());
    assert_eq!(env.server.requests("rel2/manifest.json").len(), 4);
    assert!(env.server.requests(&delta).is_empty(), "nothing but the manifest was asked for");
}

#[test]
fn a_server_ignoring_range_or_answering_another_range_is_survived() {
    let env = Env::new();
    let (delta, size) = env.artifact(ArtifactKind::Delta);
    let cut = size / 2;
    // Range ignored: the 200 answer replaces the partial file from its first byte.
    env.server.fault(&delta, Fault::DropAfter(cut));
    env.server.fault(&delta, Fault::IgnoreRange);
    env.apply(&env.settings(FAST), "rel2").unwrap();
    env.assert_v2();
    let reqs = env.server.requests(&delta);
    assert_eq!(reqs.iter().map(|r| r.range_start()).collect::<Vec<_>>(), [None, Some(cut)]);

    // A Content-Range that is not the one asked for: nothing of it is written, the partial file
    // is dropped and the whole file asked for again.
    let env = Env::new();
    env.server.fault(&delta, Fault::DropAfter(cut));
    env.server.fault(&delta, Fault::WrongContentRange);
    env.apply(&env.settings(FAST), "rel2").unwrap();
    env.assert_v2();
    let reqs = env.server.requests(&delta);
    assert_eq!(reqs.iter().map(|r| r.range_start()).collect::<Vec<_>>(), [None, Some(cut), None]);
}

#[test]
fn more_bytes_than_declared_are_cut_off_and_refused() {
    let env = Env::new();
    let (delta, _) = env.artifact(ArtifactKind::Delta);
    env.server.fault(&delta, Fault::Extra(100));
    let err = env.refused(&env.settings(FAST), "rel2", false);
    assert!(matches!(fetch_err(&err), FetchError::TooLong { .. }), "{err}");
    assert_eq!(env.server.requests(&delta).len(), 1, "refused bytes were fetched again");

    // No Content-Length and no end: cut off at the declared size, promptly.
    env.server.fault(&delta, Fault::Endless);
    let t = Instant::now();
    let err = env.refused(&env.settings(FAST), "rel2", false);
    assert!(matches!(fetch_err(&err), FetchError::TooLong { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    // The manifest is capped at 1 MiB, announced or not.
    let big = env.f.path().join("big");
    std::fs::create_dir(&big).unwrap();
    std::fs::write(big.join("manifest.json"), vec![b' '; 2 << 20]).unwrap();
    let err = env.refused(&env.settings(FAST), "big", false);
    assert!(matches!(fetch_err(&err), FetchError::ManifestTooLarge { .. }), "{err}");
    env.server.fault("rel2/manifest.json", Fault::Endless);
    let err = env.refused(&env.settings(FAST), "rel2", false);
    assert!(matches!(fetch_err(&err), FetchError::ManifestTooLarge { .. }), "{err}");
}

#[test]
fn slow_and_silent_servers_are_dropped_and_the_download_resumed() {
    let env = Env::new();
    let (delta, size) = env.artifact(ArtifactKind::Delta);
    // min_rate 4 KiB/s over 500 ms windows; the server trickles 1 KiB/s at first.
    let strict = "retries = 2\nretry_backoff = \"10ms\"\nread_timeout = \"500ms\"\nmin_rate = 4096";
    env.server.fault(&delta, Fault::Slow(1024));
    let t = Instant::now();
    env.apply(&env.settings(strict), "rel2").unwrap();
    env.assert_v2();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let reqs = env.server.requests(&delta);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    let resumed = reqs[1].range_start().unwrap();
    assert!(resumed > 0 && resumed < size, "{reqs:?}");

    // Headers, then silence: the read timeout drops the connection and a retry finishes.
    let env = Env::new();
    env.server.fault(&delta, Fault::Stall(Duration::from_secs(30)));
    let t = Instant::now();
    env.apply(&env.settings(strict), "rel2").unwrap();
    env.assert_v2();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(env.server.requests(&delta).len(), 2);

    // Slow every time: refused with the reason, the partial file kept for the next run.
    let env = Env::new();
    env.server.always(&delta, Fault::Slow(1024));
    let err = env.refused(&env.settings(strict), "rel2", true);
    assert!(err.to_string().contains("below min_rate 4096"), "{err}");
    assert_eq!(env.server.requests(&delta).len(), 3);
    assert!(env.partial().is_some_and(|n| n > 0 && n < size));
}

#[test]
fn a_corrupt_artifact_is_refused_and_a_corrupt_partial_file_is_fetched_again() {
    let env = Env::new();
    let (delta, size) = env.artifact(ArtifactKind::Delta);
    let d = env.f.copy_release(&env.f.rel2, "rel2-flipped");
    let mut bytes = std::fs::read(d.join(&delta)).unwrap();
    bytes[size as usize / 2] ^= 0x10;
    std::fs::write(d.join(&delta), &bytes).unwrap();
    let err = env.refused(&env.settings(FAST), "rel2-flipped", false);
    assert!(matches!(fetch_err(&err), FetchError::Hash { resumed: false, .. }), "{err}");
    assert_eq!(env.server.requests(&delta).len(), 1);

    // A partial file damaged on disk between runs: the resumed download fails its hash and is
    // fetched once more from the start, within the same run.
    let once = env.settings("retries = 0\nread_timeout = \"2s\"");
    env.server.clear_log();
    env.server.fault(&delta, Fault::DropAfter(size / 2));
    env.refused(&once, "rel2", true);
    let dir = env.f.store().join("downloads");
    let part = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&part).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&part, bytes).unwrap();
    env.apply(&env.settings(FAST), "rel2").unwrap();
    env.assert_v2();
    let reqs = env.server.requests(&delta);
    assert_eq!(reqs.iter().map(|r| r.range_start()).collect::<Vec<_>>(), [None, Some(size / 2), None]);
}

#[test]
fn artifacts_with_an_absolute_url_are_fetched_from_there() {
    let env = Env::new();
    let (delta, _) = env.artifact(ArtifactKind::Delta);
    let blobs = env.f.path().join("blobs");
    std::fs::create_dir(&blobs).unwrap();
    std::fs::copy(env.f.rel2.join(&delta), blobs.join("b1")).unwrap();
    // A local manifest whose delta lives on the server.
    let d = env.f.path().join("rel2-abs");
    std::fs::create_dir(&d).unwrap();
    let mut m = read_manifest(&env.f.rel2);
    for a in &mut m.signed.artifacts {
        a.url = Some(
            env.server.url(&format!("blobs/{}", if a.kind == ArtifactKind::Delta { "b1" } else { "none" })),
        );
    }
    write_manifest(&d, &Manifest::sign(m.signed, std::slice::from_ref(&env.f.k1)));
    let out = apply(&env.settings(FAST), &d.join("manifest.json"), SystemTime::now()).unwrap();
    assert!(matches!(out, Outcome::Installed { delta: true, .. }), "{out:?}");
    env.assert_v2();
    assert_eq!(env.server.requests("blobs/b1").len(), 1);
}

#[test]
fn unreachable_or_garbage_sources_fail_cleanly() {
    let env = Env::new();
    // Nothing listens there: retried, then a clear error.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let before = snapshot(&env.f.store());
    let source = Source::Url(format!("http://{dead}/rel2/manifest.json"));
    let err = apply_source(&env.settings(FAST), &source, SystemTime::now(), Hooks::default()).unwrap_err();
    assert!(err.to_string().contains("gave up after 4 attempts"), "{err}");
    assert_eq!(snapshot(&env.f.store()), before);
    // Not a manifest.
    std::fs::create_dir(env.f.path().join("junk")).unwrap();
    std::fs::write(env.f.path().join("junk/manifest.json"), b"<html>hello</html>").unwrap();
    let err = env.refused(&env.settings(FAST), "junk", false);
    assert!(matches!(err, UpdateError::Manifest(ManifestError::Parse { .. })), "{err}");
    assert!(err.to_string().contains(&env.server.url("junk/manifest.json")), "{err}");
}

#[test]
fn https_needs_a_trusted_certificate() {
    let f = Fixture::new();
    let (server, ca) = tls::start(f.path());
    let with_ca = f.config_with(&["k1"], 1, &format!("{FAST}\nca_file = {:?}", ca.display().to_string()));
    let source = Source::Url(server.url("rel1/manifest.json"));
    // Without the private CA: a certificate error, not retried, nothing changed.
    let before = snapshot(&f.store());
    let err = apply_source(
        &Settings::load(&f.config_with(&["k1"], 1, FAST)).unwrap(),
        &source,
        SystemTime::now(),
        Hooks::default(),
    )
    .unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    assert_eq!(snapshot(&f.store()), before);
    assert!(server.log().is_empty(), "a request went out over an untrusted connection");
    // With it: installed.
    let out = apply_source(&Settings::load(&with_ca).unwrap(), &source, SystemTime::now(), Hooks::default())
        .unwrap();
    assert!(matches!(out, Outcome::Installed { .. }), "{out:?}");
    assert_eq!(f.current_sha(), Some(sha_of(&f.v1)));
}

/// A TLS wrapper for the test server: a certificate for `localhost` from a private CA.
mod tls {
    use super::*;
    use std::sync::Arc;

    pub fn start(root: &Path) -> (Server, std::path::PathBuf) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let ca_path = root.join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let config = Arc::new(config);
        let wrap: common::server::Wrap = Arc::new(move |stream| {
            let conn = rustls::ServerConnection::new(config.clone()).map_err(std::io::Error::other)?;
            let mut tls = rustls::StreamOwned::new(conn, stream);
            // Finish the handshake before HTTP, so a refused handshake logs no request.
            while tls.conn.is_handshaking() {
                tls.conn.complete_io(&mut tls.sock)?;
            }
            Ok(Box::new(tls) as Box<dyn common::server::Conn>)
        });
        (Server::start_with(root, "https", wrap), ca_path)
    }
}
