use std::path::Path;

use super::*;
use crate::io::hash_stream;
use crate::testutil::{random_bytes, write_gguf, TestTensor};

fn hash(p: &Path) -> (u64, String) {
    hash_stream(&mut std::fs::File::open(p).unwrap()).unwrap()
}

fn model(seed: u64) -> Vec<TestTensor> {
    (0..10)
        .map(|i| TestTensor::random(&format!("blk.{i}.weight"), 20_000 + i * 100, seed * 100 + i as u64))
        .collect()
}

fn round_trip(old: &Path, new: &Path) -> EncodeStats {
    let dir = old.parent().unwrap();
    let delta = dir.join("d.odelta");
    let out = dir.join("out.gguf");
    let stats = encode(old, new, &delta, 3).unwrap();
    let (_, base) = hash(old);
    let (size, sha) = hash(new);
    apply(old, &delta, &out, &base, size, &sha).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(new).unwrap());
    stats
}

#[test]
fn gguf_edit_uses_copies_and_patches() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("v1.gguf"), dir.path().join("v2.gguf"));
    let v1 = model(1);
    write_gguf(&old, "model-v1", &v1);
    let mut v2 = v1.clone();
    v2[3].perturb(500); // slightly changed
    v2[7] = TestTensor::random("blk.7.weight", 20_700, 999); // rewritten
    write_gguf(&new, "model-v2-renamed", &v2); // metadata changed too
    let stats = round_trip(&old, &new);
    assert!(stats.gguf);
    assert_eq!(stats.copies, 8, "{stats:?}");
    assert!(stats.patches >= 2, "{stats:?}"); // header and blk.3
    let full = zstd::bulk::compress(&std::fs::read(&new).unwrap(), 3).unwrap().len() as u64;
    assert!(stats.size * 5 < full, "delta {} vs full {full}", stats.size);
}

#[test]
fn non_gguf_files_use_fixed_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("a.bin"), dir.path().join("b.bin"));
    let mut bytes = random_bytes(300_000, 5);
    std::fs::write(&old, &bytes).unwrap();
    bytes[1000] ^= 0xff;
    bytes.extend_from_slice(b"appended");
    std::fs::write(&new, &bytes).unwrap();
    let stats = round_trip(&old, &new);
    assert!(!stats.gguf);
    assert_eq!(stats.patches, 1, "{stats:?}");
}

#[test]
fn wrong_base_and_flipped_bits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new, other) = (dir.path().join("v1"), dir.path().join("v2"), dir.path().join("x"));
    let v1 = model(1);
    write_gguf(&old, "v1", &v1);
    let mut v2 = v1.clone();
    v2[0] = TestTensor::random("blk.0.weight", 20_000, 77);
    write_gguf(&new, "v2", &v2);
    write_gguf(&other, "x", &model(3));
    let delta = dir.path().join("d");
    encode(&old, &new, &delta, 3).unwrap();
    let (_, base) = hash(&old);
    let (size, sha) = hash(&new);
    let out = dir.path().join("out");
    let err = apply(&other, &delta, &out, &base, size, &sha).unwrap_err();
    assert!(matches!(err, DeltaError::WrongBase { .. }), "{err}");
    // A bit flip in the last payload byte.
    let mut bytes = std::fs::read(&delta).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&delta, &bytes).unwrap();
    let err = apply(&old, &delta, &out, &base, size, &sha).unwrap_err();
    assert!(matches!(err, DeltaError::Chunk { .. }), "{err}");
    // Extra bytes appended.
    bytes[last] ^= 1;
    bytes.push(0);
    std::fs::write(&delta, &bytes).unwrap();
    let err = apply(&old, &delta, &out, &base, size, &sha).unwrap_err();
    assert!(matches!(err, DeltaError::Invalid { .. }), "{err}");
}
