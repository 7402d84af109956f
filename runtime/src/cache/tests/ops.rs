//! `outpost cache import|export|stats|clear` on real files.

use std::convert::Infallible;
use std::path::Path;

use super::{fake_embedding, sampling, user, Fixture};
use crate::cache::ops::{self, LineError};
use crate::cache::{CacheError, Query, ReadMode};
use crate::engine::Sampling;

const INPUT: &str = r#"{"prompt": "What is the capital of France?", "answer": "Paris.", "ttl": "7d"}
{"prompt": "Boiling point of water?", "answer": "100 °C.", "model": "gpt-x", "route": "cloud", "confidence": 0.95}
this line is not JSON
{"prompt": "A prompt without an answer"}

{"prompt": "Q?", "answer": "A.", "anwser": "a typo"}
{"system": "Be brief.", "prompt": "Tallest mountain?", "answer": "Everest."}
{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "And you?"}], "answer": "Fine."}
{"prompt": "A seeded joke?", "answer": "Knock knock.", "sampling": {"temperature": 0.8, "top_p": 0.9, "top_k": 40, "seed": 7, "max_tokens": 64}}
"#;

fn embedder(text: &str) -> Result<Vec<f32>, Infallible> {
    Ok(fake_embedding(text))
}

/// An export line without the fields that depend on when it was written.
fn timeless(line: &str) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(line).expect("export line is JSON");
    let obj = v.as_object_mut().expect("object");
    for field in ["ttl", "created_at", "expires_at"] {
        assert!(obj.remove(field).is_some(), "export has `{field}`: {line}");
    }
    v
}

fn export_lines(config: &crate::cache::CacheConfig, path: &Path) -> Vec<serde_json::Value> {
    ops::export(config, path).expect("exports");
    std::fs::read_to_string(path).expect("reads").lines().map(timeless).collect()
}

#[tokio::test]
async fn import_export_round_trip_skips_bad_lines() {
    let f = Fixture::new(|_| {});
    let input = f.dir.path().join("in.jsonl");
    std::fs::write(&input, INPUT).expect("writes");
    let report = ops::import(&f.config, &input, Some("test-space"), embedder).expect("imports");
    let bad: Vec<usize> = report.skipped.iter().map(|LineError { line, .. }| *line).collect();
    assert_eq!(bad, vec![3, 4, 6], "{:?}", report.skipped);
    assert!(report.skipped[2].reason.contains("anwser"), "{}", report.skipped[2].reason);
    assert_eq!((report.imported, report.semantic), (5, 4));

    let first = f.dir.path().join("out.jsonl");
    let exported = export_lines(&f.config, &first);
    assert_eq!(exported.len(), 5);
    assert_eq!(exported[1]["route"], "cloud");
    assert_eq!(exported[1]["model"], "gpt-x");
    assert_eq!(exported[2]["system"], "Be brief.");
    assert!(exported[3]["messages"].is_array());
    assert_eq!(exported[4]["sampling"]["seed"], 7);
    assert_eq!(exported[0]["hits"], 0);

    // Into a fresh cache and out again: the same entries.
    let g = Fixture::new(|_| {});
    let report = ops::import(&g.config, &first, Some("test-space"), embedder).expect("re-imports");
    assert_eq!((report.imported, report.skipped.len()), (5, 0), "{:?}", report.skipped);
    let second = g.dir.path().join("out.jsonl");
    assert_eq!(export_lines(&g.config, &second), exported);

    // The daemon serves them.
    let cache = g.open();
    let hit =
        cache.lookup(Query::new(&user("What is the capital of France?"), &sampling(0.0)), ReadMode::Exact);
    assert_eq!(hit.await.expect("lookup").map(|h| h.answer).as_deref(), Some("Paris."));
    let seeded =
        Sampling { temperature: 0.8, top_p: 0.9, top_k: 40, seed: Some(7), max_tokens: 64, ..sampling(0.8) };
    let hit =
        cache.lookup(Query::new(&user("A seeded joke?"), &seeded), ReadMode::Exact).await.expect("lookup");
    assert_eq!(hit.map(|h| h.answer).as_deref(), Some("Knock knock."));
    let other = cache.lookup(Query::new(&user("A seeded joke?"), &sampling(0.8)), ReadMode::Exact).await;
    assert!(other.expect("lookup").is_none(), "imported with its sampling: other settings miss");
    drop(cache);

    let stats = ops::stats(&g.config).expect("stats");
    assert_eq!((stats.entries, stats.semantic_entries, stats.schema_version), (5, 4, 2));
    assert_eq!(stats.since_open, Default::default());
    assert!(stats.file_bytes > 0 && stats.oldest.is_some());
    assert_eq!(ops::clear(&g.config, Some(std::time::Duration::from_secs(3600))).expect("clear"), 0);
    assert_eq!(ops::clear(&g.config, None).expect("clear"), 5);
}

#[test]
fn operations_on_a_missing_file_say_so() {
    let f = Fixture::new(|_| {});
    assert!(matches!(ops::stats(&f.config), Err(CacheError::Open { .. })));
    assert!(matches!(ops::clear(&f.config, None), Err(CacheError::Open { .. })));
    assert!(!f.config.path.exists(), "not created by stats or clear");
    let missing = f.dir.path().join("nope.jsonl");
    let err = ops::import(&f.config, &missing, None, embedder).expect_err("no input");
    assert!(matches!(err, CacheError::Import { .. }), "{err}");
}
