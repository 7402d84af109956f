//! Semantic hits with the shipped router's real MiniLM embeddings (ONNX Runtime from
//! `vendor/onnxruntime`, as `scripts/setup.sh` puts it there).

use std::sync::{Mutex, OnceLock};

use super::{entry, query, Fixture};
use crate::cache::{guard, Cache, HitKind, ReadMode};
use crate::router::{RouterConfig, RouterModel};

fn model() -> &'static Mutex<RouterModel> {
    static MODEL: OnceLock<Mutex<RouterModel>> = OnceLock::new();
    MODEL.get_or_init(|| {
        Mutex::new(RouterModel::load(&RouterConfig::default()).expect("the shipped router loads"))
    })
}

fn embed(text: &str) -> Vec<f32> {
    model().lock().expect("router lock").score(text).expect("scores").embedding
}

fn cosine(a: &str, b: &str) -> f32 {
    embed(a).iter().zip(embed(b)).map(|(x, y)| x * y).sum()
}

/// The prompts the cache answered before, with their answers.
const CACHED: &[(&str, &str)] = &[
    ("What is the capital of France?", "Paris."),
    ("How do I reset my password?", "Settings, then Account, then Reset password."),
    ("How long do I boil an egg?", "Nine minutes for a hard-boiled egg."),
    ("Which foods contain gluten?", "Wheat, barley and rye."),
    ("What is 17 times 23?", "391."),
    ("Show me the safety procedure for the Model X200 lathe", "Lock out, guard down, glasses on."),
    ("Write a short poem about autumn leaves falling in Central Park on a quiet Sunday morning", "Leaves..."),
    ("Convert 5 km to miles", "3.1 miles."),
    ("Flights from Paris to Berlin", "Three a day."),
    ("What is 100 minus 7?", "93."),
    ("What is the weather in Paris, France?", "Mild."),
];

async fn filled(similarity: f32) -> (Fixture, Cache) {
    let f = Fixture::new(|c| c.similarity = similarity);
    let cache = f.open();
    for (prompt, answer) in CACHED {
        let q = query(prompt).with_embedding(embed(prompt));
        cache.store(entry(q, answer)).await.expect("stores");
    }
    (f, cache)
}

async fn semantic(cache: &Cache, prompt: &str) -> Option<crate::cache::Hit> {
    let q = query(prompt).with_embedding(embed(prompt));
    cache.lookup(q, ReadMode::Semantic).await.expect("looks up")
}

#[tokio::test]
async fn paraphrases_are_semantic_hits() {
    let (_f, cache) = filled(0.92).await;
    for (paraphrase, answer) in [
        ("What's the capital of France?", "Paris."),
        ("What is France's capital?", "Paris."),
        ("Tell me the capital of France.", "Paris."),
        ("How can I reset my password?", "Settings, then Account, then Reset password."),
        ("how do i reset my password", "Settings, then Account, then Reset password."),
        ("How long should I boil an egg?", "Nine minutes for a hard-boiled egg."),
    ] {
        let hit = semantic(&cache, paraphrase).await.unwrap_or_else(|| panic!("{paraphrase}: no hit"));
        assert_eq!((hit.kind, hit.answer.as_str()), (HitKind::Semantic, answer), "{paraphrase}");
        assert!(hit.similarity >= 0.92 && hit.similarity < 1.0, "{paraphrase}: {}", hit.similarity);
        let exact = cache.lookup(query(paraphrase), ReadMode::Exact).await.expect("looks up");
        assert!(exact.is_none(), "{paraphrase}: not an exact hit");
    }
    let hit = semantic(&cache, "What is the capital of France?").await.expect("hit");
    assert_eq!((hit.kind, hit.similarity), (HitKind::Exact, 1.0), "an exact hit comes first");
}

/// Near-duplicates above the default threshold: only the guards stand between them and a
/// wrong answer.
#[tokio::test]
async fn near_duplicates_above_the_threshold_are_refused() {
    let (_f, cache) = filled(0.92).await;
    for (cached, near, rule) in [
        ("What is the capital of France?", "What isn't the capital of France?", "negation"),
        ("Which foods contain gluten?", "Which foods contain no gluten?", "negation"),
        (
            "Show me the safety procedure for the Model X200 lathe",
            "Show me the safety procedure for the Model X300 lathe",
            "number",
        ),
        ("What is 100 minus 7?", "What is 7 minus 100?", "number"),
        ("Convert 5 km to miles", "Convert 5 miles to km", "unit"),
        (
            "Write a short poem about autumn leaves falling in Central Park on a quiet Sunday morning",
            "Write a short poem about autumn leaves falling in Hyde Park on a quiet Sunday morning",
            "entity",
        ),
        ("Flights from Paris to Berlin", "Flights from Berlin to Paris", "order"),
    ] {
        let c = cosine(cached, near);
        assert!(c >= 0.92, "{near}: cosine {c} is below the threshold; the test proves nothing");
        assert_eq!(guard(near, cached), Err(rule), "{near}");
        let before = cache.counters().guard_refusals;
        assert!(semantic(&cache, near).await.is_none(), "{near} must not hit {cached}");
        assert!(cache.counters().guard_refusals > before, "{near}: refused by a guard");
    }
}

/// The brief's examples sit below 0.92 with this router; with the threshold lowered to 0.85 they
/// are candidates, and the guards still refuse them while the paraphrase hits.
#[tokio::test]
async fn guards_hold_with_a_lower_threshold() {
    let (_f, cache) = filled(0.85).await;
    for (near, rule) in [
        ("What is not the capital of France?", "negation"),
        ("What is 17 times 24?", "number"),
        ("What is the weather in Paris, Texas?", "entity"),
        ("What is the capital of Germany?", "entity"),
    ] {
        let hit = semantic(&cache, near).await;
        assert!(hit.is_none(), "{near} ({rule}) hit {:?}", hit.map(|h| h.prompt));
    }
    assert!(cosine("What is the capital of France?", "What is not the capital of France?") >= 0.85);
    assert!(cosine("What is 17 times 23?", "What is 17 times 24?") >= 0.85);
    let hit = semantic(&cache, "What's the capital of France?").await.expect("the paraphrase still hits");
    assert_eq!(hit.answer, "Paris.");
}
