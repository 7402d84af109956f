//! The tamper table: each attack is refused and the store is byte-for-byte as it was; and a
//! far-future `created` cannot lock a board out of later releases.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime};

use common::{read_manifest, snapshot, write_manifest, Fixture};
use outpost_updater::delta::DeltaError;
use outpost_updater::io::StreamError;
use outpost_updater::manifest::{format_time, parse_time, ArtifactKind, Manifest};
use outpost_updater::store::Store;
use outpost_updater::update::{apply, Outcome, UpdateError, MAX_CREATED_SKEW};
use outpost_updater::verify::VerifyError;

/// Applies `dir/manifest.json` at `now`, expecting a refusal that leaves the store unchanged.
fn refused(
    f: &Fixture,
    settings: &outpost_updater::config::Settings,
    dir: &std::path::Path,
    now: SystemTime,
) -> UpdateError {
    let before = snapshot(&f.store());
    let err = apply(settings, &dir.join("manifest.json"), now).expect_err("tampered update was accepted");
    assert_eq!(snapshot(&f.store()), before, "store changed after: {err}");
    err
}

fn resign(f: &Fixture, dir: &std::path::Path, edit: impl FnOnce(&mut Manifest)) {
    let mut m = read_manifest(dir);
    edit(&mut m);
    write_manifest(dir, &Manifest::sign(m.signed, std::slice::from_ref(&f.k1)));
}

#[test]
fn tamper_table() {
    let f = Fixture::new();
    let s = f.settings(&["k1"], 1);
    let now = SystemTime::now();
    let v1 = apply(&s, &f.rel1.join("manifest.json"), now).unwrap();
    assert!(matches!(v1, Outcome::Installed { delta: false, .. }), "{v1:?}");
    assert_eq!(f.current_sha(), Some(common::sha_of(&f.v1)));

    // Unsigned manifest.
    let d = f.copy_release(&f.rel2, "unsigned");
    let mut m = read_manifest(&d);
    m.signatures.clear();
    write_manifest(&d, &m);
    let e = refused(&f, &s, &d, now);
    assert!(matches!(e, UpdateError::Verify(VerifyError::Threshold { valid: 0, required: 1 })), "{e}");

    // Signed by an unknown key.
    let d = f.copy_release(&f.rel2, "unknown-key");
    let m = read_manifest(&d);
    write_manifest(&d, &Manifest::sign(m.signed, std::slice::from_ref(&f.k3)));
    let e = refused(&f, &s, &d, now);
    assert!(matches!(e, UpdateError::Verify(VerifyError::Threshold { valid: 0, .. })), "{e}");

    // A bit flipped in the manifest (still valid JSON: one hex digit of the target hash).
    let d = f.copy_release(&f.rel2, "flip-manifest");
    let text = std::fs::read_to_string(d.join("manifest.json")).unwrap();
    let sha = read_manifest(&d).signed.target.sha256;
    let flipped = format!("{}{}", if sha.starts_with('0') { '1' } else { '0' }, &sha[1..]);
    std::fs::write(d.join("manifest.json"), text.replace(&sha, &flipped)).unwrap();
    let e = refused(&f, &s, &d, now);
    assert!(matches!(e, UpdateError::Verify(VerifyError::Threshold { valid: 0, .. })), "{e}");

    // A bit flipped in the delta artifact.
    let d = f.copy_release(&f.rel2, "flip-delta");
    let delta = read_manifest(&d)
        .signed
        .artifacts
        .iter()
        .find(|a| a.kind == ArtifactKind::Delta)
        .unwrap()
        .name
        .clone();
    let mut bytes = std::fs::read(d.join(&delta)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(d.join(&delta), &bytes).unwrap();
    let e = refused(&f, &s, &d, now);
    assert!(matches!(e, UpdateError::Stream(StreamError::HashMismatch { .. })), "{e}");

    // More bytes than declared.
    bytes[mid] ^= 0x10;
    bytes.extend_from_slice(b"endless data");
    std::fs::write(d.join(&delta), &bytes).unwrap();
    let e = refused(&f, &s, &d, now);
    assert!(matches!(e, UpdateError::Stream(StreamError::TooLong { .. })), "{e}");

    // A bit flipped in the full artifact (manifest offering only the full file).
    let d = f.copy_release(&f.rel2, "flip-full");
    resign(&f, &d, |m| m.signed.artifacts.retain(|a| a.kind == ArtifactKind::Full));
    let full = read_manifest(&d).signed.artifacts[0].name.clone();
    let mut bytes = std::fs::read(d.join(&full)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(d.join(&full), &bytes).unwrap();
    let e = refused(&f, &s, &d, now);
    assert!(matches!(e, UpdateError::Stream(StreamError::HashMismatch { .. })), "{e}");

    // Absurd version.
    let d = f.copy_release(&f.rel2, "absurd");
    resign(&f, &d, |m| m.signed.version = "18446744073709551615.0.0".into());
    let e = refused(&f, &s, &d, now);
    assert!(matches!(e, UpdateError::Verify(VerifyError::Version { .. })), "{e}");
    resign(&f, &d, |m| m.signed.version = "999999999.0.0".into());
    let e = refused(&f, &s, &d, now);
    assert!(matches!(e, UpdateError::Verify(VerifyError::Version { .. })), "{e}");

    // Expired.
    let d = f.copy_release(&f.rel2, "expired");
    resign(&f, &d, |m| {
        m.signed.created = format_time(now - Duration::from_secs(10 * 86400));
        m.signed.expires = format_time(now - Duration::from_secs(86400));
    });
    let e = refused(&f, &s, &d, now);
    assert!(matches!(e, UpdateError::Verify(VerifyError::Expired { .. })), "{e}");
    // ...and a clock stepped back to before that expiry cannot reopen it: the store remembers
    // the time of the last commit.
    let e = refused(&f, &s, &d, now - Duration::from_secs(5 * 86400));
    assert!(matches!(e, UpdateError::Verify(VerifyError::Expired { .. })), "{e}");

    // A delta for another base, and no full file: nothing applies.
    let other = f.path().join("rel-other");
    f.release(&f.v2, "1.1.0", std::slice::from_ref(&f.v3), &other, std::slice::from_ref(&f.k1));
    resign(&f, &other, |m| m.signed.artifacts.retain(|a| a.kind == ArtifactKind::Delta));
    let e = refused(&f, &s, &other, now);
    assert!(matches!(e, UpdateError::NoArtifact { .. }), "{e}");
    // ...and the same delta claiming to be from the current model: its header gives it away.
    let current = common::sha_of(&f.v1);
    resign(&f, &other, |m| m.signed.artifacts[0].base_sha256 = Some(current.clone()));
    let e = refused(&f, &s, &other, now);
    assert!(matches!(e, UpdateError::Delta(DeltaError::WrongBase { .. })), "{e}");

    // Wrong device class.
    let d = f.copy_release(&f.rel2, "class");
    resign(&f, &d, |m| m.signed.device_classes = vec!["jetson-orin".into()]);
    let e = refused(&f, &s, &d, now);
    assert!(matches!(e, UpdateError::Verify(VerifyError::DeviceClass { .. })), "{e}");

    // Path traversal in an artifact name, in the target name, and a relative URL.
    let d = f.copy_release(&f.rel2, "traversal");
    resign(&f, &d, |m| m.signed.artifacts[0].name = "../../etc/passwd".into());
    let e = refused(&f, &s, &d, now);
    assert!(matches!(e, UpdateError::Verify(VerifyError::Field { .. })), "{e}");
    resign(&f, &d, |m| m.signed.target.name = "/var/lib/x.gguf".into());
    let e = refused(&f, &s, &d, now);
    assert!(matches!(e, UpdateError::Verify(VerifyError::Field { .. })), "{e}");
    resign(&f, &d, |m| m.signed.artifacts[0].url = Some("../model.zst".into()));
    let e = refused(&f, &s, &d, now);
    assert!(matches!(e, UpdateError::Verify(VerifyError::Field { .. })), "{e}");

    // One key's signature counted twice toward a threshold of 2.
    let s2 = f.settings(&["k1", "k2"], 2);
    let d = f.copy_release(&f.rel2, "twice");
    let mut m = read_manifest(&d);
    m.signatures.push(m.signatures[0].clone());
    write_manifest(&d, &m);
    let e = refused(&f, &s2, &d, now);
    assert!(matches!(e, UpdateError::Verify(VerifyError::Threshold { valid: 1, required: 2 })), "{e}");
    // Two distinct keys meet it (positive control): install v2 via its delta.
    write_manifest(&d, &Manifest::sign(m.signed, &[f.k1.clone(), f.k2.clone()]));
    let out = apply(&s2, &d.join("manifest.json"), now).unwrap();
    assert!(matches!(out, Outcome::Installed { delta: true, .. }), "{out:?}");
    assert_eq!(f.current_sha(), Some(common::sha_of(&f.v2)));

    // Downgrade: replaying v1's (still valid, signed) manifest.
    let e = refused(&f, &s, &f.rel1, now);
    assert!(matches!(e, UpdateError::Verify(VerifyError::Downgrade { .. })), "{e}");
    // Same version, another target.
    let d = f.copy_release(&f.rel2, "same-version");
    resign(&f, &d, |m| m.signed.target.sha256 = "ab".repeat(32));
    let e = refused(&f, &s, &d, now);
    assert!(matches!(e, UpdateError::Verify(VerifyError::SameVersionOtherTarget { .. })), "{e}");
    // The same release again is fine and changes nothing.
    let before = snapshot(&f.store());
    let out = apply(&s, &f.rel2.join("manifest.json"), now).unwrap();
    assert!(matches!(out, Outcome::AlreadyCurrent(_)), "{out:?}");
    assert_eq!(snapshot(&f.store()), before);
}

/// A validly signed manifest with a far-future `created` moves the latest known time at most
/// [`MAX_CREATED_SKEW`] past the board's clock, so releases made later still install.
#[test]
fn a_far_future_created_cannot_expire_later_releases() {
    let f = Fixture::new();
    let s = f.settings(&["k1"], 1);
    let now = SystemTime::now();
    let latest = || {
        let state = Store::new(f.store()).state().unwrap();
        parse_time(state.latest_known_time.as_deref().unwrap()).unwrap()
    };
    apply(&s, &f.rel1.join("manifest.json"), now).unwrap();

    let year = Duration::from_secs(365 * 86400);
    let d = f.copy_release(&f.rel2, "future");
    resign(&f, &d, |m| {
        m.signed.created = format_time(now + 10 * year);
        m.signed.expires = format_time(now + 11 * year);
    });
    // Accepted (a board's clock may be behind the release machine's)...
    apply(&s, &d.join("manifest.json"), now).unwrap();
    assert_eq!(f.current_sha(), Some(common::sha_of(&f.v2)));
    // ...but it moved the floor only to the board's clock plus the skew.
    let t = latest();
    assert!(t <= now + MAX_CREATED_SKEW + Duration::from_secs(1), "{}", format_time(t));
    assert!(t >= now + MAX_CREATED_SKEW - Duration::from_secs(1), "{}", format_time(t));

    // A release made a day later (its machine's clock 30 min ahead of the board's), valid for
    // 30 days, still installs; within the skew, its `created` counts in full.
    let (day, half_hour) = (Duration::from_secs(86400), Duration::from_secs(1800));
    let rel3 = f.path().join("rel3");
    f.release(&f.v3, "1.2.0", std::slice::from_ref(&f.v2), &rel3, std::slice::from_ref(&f.k1));
    resign(&f, &rel3, |m| {
        m.signed.created = format_time(now + day + half_hour);
        m.signed.expires = format_time(now + 31 * day);
    });
    let out = apply(&s, &rel3.join("manifest.json"), now + day).unwrap();
    assert!(matches!(out, Outcome::Installed { delta: true, .. }), "{out:?}");
    assert_eq!(format_time(latest()), format_time(now + day + half_hour));
}
