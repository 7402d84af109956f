//! Tests of the cache against real SQLite files (and, in `semantic`, the real router).

mod crash;
mod ops;
mod semantic;

use std::time::{Duration, SystemTime};

use sha2::Digest;

use super::*;
use crate::engine::ChatMessage;

pub(super) const T0: Duration = Duration::from_secs(1_700_000_000);

pub(super) struct Fixture {
    pub dir: tempfile::TempDir,
    pub config: CacheConfig,
    pub clock: Clock,
}

impl Fixture {
    pub fn new(adjust: impl FnOnce(&mut CacheConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = CacheConfig { path: dir.path().join("cache.db"), ..CacheConfig::default() };
        adjust(&mut config);
        Self { dir, config, clock: Clock::manual(SystemTime::UNIX_EPOCH + T0) }
    }

    pub fn open(&self) -> Cache {
        Cache::open_with_clock(&self.config, Some("test-space"), self.clock.clone()).expect("opens")
    }
}

pub(super) fn user(prompt: &str) -> Vec<ChatMessage> {
    vec![ChatMessage { role: "user".into(), content: prompt.into() }]
}

pub(super) fn sampling(temperature: f32) -> Sampling {
    Sampling {
        temperature,
        top_p: 0.95,
        top_k: 40,
        seed: None,
        max_tokens: 256,
        stop: Vec::new(),
        logprobs: None,
        ..Sampling::defaults(&crate::config::GenerationConfig::default())
    }
}

/// A unit vector that depends only on `text` (unrelated texts: cosine near 0).
pub(super) fn fake_embedding(text: &str) -> Vec<f32> {
    let mut out = Vec::with_capacity(384);
    let mut block = sha2::Sha256::digest(text.as_bytes());
    while out.len() < 384 {
        out.extend(block.iter().map(|b| f32::from(*b) - 127.5));
        block = sha2::Sha256::digest(block);
    }
    out.truncate(384);
    let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
    out.iter().map(|x| x / norm).collect()
}

pub(super) fn query(prompt: &str) -> Query {
    Query::new(&user(prompt), &sampling(0.0))
}

pub(super) fn entry(query: Query, answer: &str) -> NewEntry {
    NewEntry {
        query,
        answer: answer.into(),
        model: "test-model".into(),
        origin: Origin::Local,
        confidence: 0.9,
        private: false,
    }
}

async fn stored(cache: &Cache, e: NewEntry) -> i64 {
    match cache.store(e).await.expect("stores") {
        StoreOutcome::Stored { id, .. } => id,
        other => panic!("not stored: {other:?}"),
    }
}

async fn answer(cache: &Cache, q: Query, mode: ReadMode) -> Option<String> {
    cache.lookup(q, mode).await.expect("looks up").map(|h| h.answer)
}

#[tokio::test]
async fn exact_repeat_is_a_hit_with_its_provenance() {
    let f = Fixture::new(|_| {});
    let cache = f.open();
    stored(&cache, entry(query("What is the capital of France?"), "Paris.")).await;
    f.clock.advance(Duration::from_secs(5));
    let hit =
        cache.lookup(query("  What is the capital\tof France? "), ReadMode::Exact).await.expect("lookup");
    let hit = hit.expect("exact hit");
    assert_eq!((hit.answer.as_str(), hit.model.as_str()), ("Paris.", "test-model"));
    assert_eq!((hit.kind, hit.origin, hit.similarity), (HitKind::Exact, Origin::Local, 1.0));
    assert_eq!(hit.age, Duration::from_secs(5));
    // Other sampling settings are another key; the lowercase question is another question.
    let hot = Query::new(&user("What is the capital of France?"), &sampling(0.7));
    assert_eq!(answer(&cache, hot, ReadMode::Exact).await, None);
    assert_eq!(answer(&cache, query("what is the capital of france?"), ReadMode::Exact).await, None);
    assert_eq!(answer(&cache, query("What is the capital of France?"), ReadMode::Off).await, None);
    let c = cache.counters();
    assert_eq!((c.exact_hits, c.misses, c.stored), (1, 2, 1));
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let f = Fixture::new(|c| c.ttl = Duration::from_secs(3600));
    let cache = f.open();
    let q = query("What is the capital of France?").with_embedding(fake_embedding("france"));
    stored(&cache, entry(q.clone(), "Paris.")).await;
    f.clock.advance(Duration::from_secs(3599));
    assert!(answer(&cache, q.clone(), ReadMode::Semantic).await.is_some());
    f.clock.advance(Duration::from_secs(2));
    assert_eq!(answer(&cache, q.clone(), ReadMode::Exact).await, None, "expired");
    let reworded = query("What's the capital of France?").with_embedding(fake_embedding("france"));
    assert_eq!(answer(&cache, reworded, ReadMode::Semantic).await, None, "no semantic hit either");
    stored(&cache, entry(query("Another question?"), "Another answer.")).await;
    let stats = cache.stats().await.expect("stats");
    assert_eq!((stats.entries, stats.since_open.expired), (1, 1), "the next write removed it");
}

#[tokio::test]
async fn eviction_at_the_bound_keeps_the_recently_hit_entry() {
    let f = Fixture::new(|c| c.max_entries = 3);
    let cache = f.open();
    for q in ["A?", "B?", "C?"] {
        stored(&cache, entry(query(q), q)).await;
        f.clock.advance(Duration::from_secs(1));
    }
    assert!(answer(&cache, query("A?"), ReadMode::Exact).await.is_some(), "A is used again");
    f.clock.advance(Duration::from_secs(1));
    let outcome = cache.store(entry(query("D?"), "D?")).await.expect("stores");
    assert!(matches!(outcome, StoreOutcome::Stored { evicted: 1, .. }), "{outcome:?}");
    assert_eq!(answer(&cache, query("B?"), ReadMode::Exact).await, None, "B was least recently used");
    for q in ["A?", "C?", "D?"] {
        assert!(answer(&cache, query(q), ReadMode::Exact).await.is_some(), "{q} survives");
    }
    assert_eq!(cache.stats().await.expect("stats").entries, 3);
}

#[tokio::test]
async fn eviction_by_bytes() {
    let f = Fixture::new(|c| c.max_bytes = 4096);
    let cache = f.open();
    let long = "x".repeat(1500);
    for q in ["one?", "two?", "three?"] {
        stored(&cache, entry(query(q), &long)).await;
        f.clock.advance(Duration::from_secs(1));
    }
    assert_eq!(answer(&cache, query("one?"), ReadMode::Exact).await, None);
    let stats = cache.stats().await.expect("stats");
    assert_eq!(stats.entries, 2);
    assert!(stats.bytes <= 4096, "{}", stats.bytes);
    let huge = entry(query("huge?"), &"y".repeat(5000));
    assert_eq!(cache.store(huge).await.expect("gate"), StoreOutcome::TooLarge);
}

#[tokio::test]
async fn only_confident_answers_are_stored() {
    let f = Fixture::new(|_| {});
    let cache = f.open();
    let mut low = entry(query("Q?"), "A.");
    low.confidence = 0.59;
    assert_eq!(cache.store(low).await.expect("gate"), StoreOutcome::BelowConfidence);
    let mut nan = entry(query("Q?"), "A.");
    nan.confidence = f32::NAN;
    assert_eq!(cache.store(nan).await.expect("gate"), StoreOutcome::BelowConfidence);
    assert_eq!(cache.store(entry(query("Q?"), "  ")).await.expect("gate"), StoreOutcome::Empty);
    assert_eq!(answer(&cache, query("Q?"), ReadMode::Exact).await, None);
    let mut enough = entry(query("Q?"), "A.");
    enough.confidence = 0.6;
    stored(&cache, enough).await;
    assert_eq!(cache.counters().not_stored, 3);
}

#[tokio::test]
async fn private_requests_are_stored_only_when_allowed() {
    let f = Fixture::new(|_| {});
    let cache = f.open();
    let mut private = entry(query("My diagnosis?"), "Secret.");
    private.private = true;
    assert_eq!(cache.store(private.clone()).await.expect("gate"), StoreOutcome::Private);
    assert_eq!(answer(&cache, query("My diagnosis?"), ReadMode::Exact).await, None);
    drop(cache);
    let f2 = Fixture::new(|c| c.store_private = true);
    stored(&f2.open(), private).await;

    let policy = crate::policy::PolicyConfig::default();
    let none = crate::policy::RequestOptions::default();
    let local = crate::policy::RequestOptions { allow_cloud: Some(false), ..none };
    assert!(!is_private(&policy, &none));
    assert!(is_private(&policy, &local));
    let local_only = crate::policy::PolicyConfig { privacy: crate::policy::Privacy::LocalOnly, ..policy };
    assert!(is_private(&local_only, &none));
}

#[test]
fn read_mode_follows_connectivity_and_config() {
    use crate::cloud::Connectivity::{NotConfigured, Offline, Online, Unknown};
    let config = CacheConfig::default();
    let (greedy, hot) = (sampling(0.0), sampling(0.7));
    assert_eq!(read_mode(&config, Offline, &greedy), ReadMode::Semantic);
    assert_eq!(read_mode(&config, Offline, &hot), ReadMode::Semantic);
    for online in [Online, Unknown, NotConfigured] {
        assert_eq!(read_mode(&config, online, &greedy), ReadMode::Exact);
        assert_eq!(read_mode(&config, online, &hot), ReadMode::Off);
    }
    let with = |online| CacheConfig { online, ..CacheConfig::default() };
    assert_eq!(read_mode(&with(OnlineHits::Exact), Online, &hot), ReadMode::Exact);
    assert_eq!(read_mode(&with(OnlineHits::Semantic), Online, &hot), ReadMode::Semantic);
    assert_eq!(read_mode(&with(OnlineHits::Never), Online, &greedy), ReadMode::Off);
    assert_eq!(read_mode(&with(OnlineHits::Never), Offline, &greedy), ReadMode::Semantic);
    let logprobs = Sampling { logprobs: Some(2), ..sampling(0.0) };
    assert_eq!(read_mode(&config, Offline, &logprobs), ReadMode::Off, "a cached answer has no logprobs");
    let off = CacheConfig { enabled: false, ..CacheConfig::default() };
    assert_eq!(read_mode(&off, Offline, &greedy), ReadMode::Off);
}

#[tokio::test]
async fn semantic_hits_need_a_single_turn_and_the_same_system_messages() {
    let f = Fixture::new(|_| {});
    let cache = f.open();
    let v = fake_embedding("x");
    let system = |s: &str, u: &str| {
        vec![
            ChatMessage { role: "system".into(), content: s.into() },
            ChatMessage { role: "user".into(), content: u.into() },
        ]
    };
    let q = Query::new(&system("Be brief.", "What is the capital of France?"), &sampling(0.0));
    stored(&cache, entry(q.with_embedding(v.clone()), "Paris.")).await;
    let same = Query::new(&system("Be  brief.", "What's the capital of France?"), &sampling(0.0));
    let hit = cache.lookup(same.with_embedding(v.clone()), ReadMode::Semantic).await.expect("lookup");
    assert_eq!(hit.map(|h| (h.kind, h.answer)), Some((HitKind::Semantic, "Paris.".to_owned())));
    let french = Query::new(&system("Answer in French.", "What's the capital of France?"), &sampling(0.0));
    assert_eq!(answer(&cache, french.with_embedding(v.clone()), ReadMode::Semantic).await, None);
    let same = Query::new(&system("Be brief.", "What's the capital of France?"), &sampling(0.0));
    assert_eq!(answer(&cache, same.with_embedding(v.clone()), ReadMode::Exact).await, None, "exact only");

    let turns = vec![
        ChatMessage { role: "user".into(), content: "Hi".into() },
        ChatMessage { role: "assistant".into(), content: "Hello".into() },
        ChatMessage { role: "user".into(), content: "What's the capital of France?".into() },
    ];
    let multi = Query::new(&turns, &sampling(0.0)).with_embedding(v.clone());
    assert_eq!(answer(&cache, multi.clone(), ReadMode::Semantic).await, None, "multi-turn: exact only");
    stored(&cache, entry(multi.clone(), "Paris, again.")).await;
    assert_eq!(answer(&cache, multi, ReadMode::Semantic).await.as_deref(), Some("Paris, again."));
}

#[tokio::test]
async fn a_new_embedding_model_drops_old_embeddings_but_keeps_exact_hits() {
    let f = Fixture::new(|_| {});
    let v = fake_embedding("x");
    {
        let cache = f.open();
        stored(&cache, entry(query("What is the capital of France?").with_embedding(v.clone()), "Paris."))
            .await;
    }
    let cache = Cache::open_with_clock(&f.config, Some("router-2"), f.clock.clone()).expect("opens");
    let reworded = query("What's the capital of France?").with_embedding(v.clone());
    assert_eq!(answer(&cache, reworded, ReadMode::Semantic).await, None);
    assert!(answer(&cache, query("What is the capital of France?"), ReadMode::Exact).await.is_some());
    assert_eq!(cache.stats().await.expect("stats").semantic_entries, 0);
}

#[tokio::test]
async fn schema_migrates_from_v1_and_refuses_newer() {
    let f = Fixture::new(|_| {});
    let key = exact_key(&user("What is the capital of France?"), &sampling(0.0));
    {
        let conn = rusqlite::Connection::open(&f.config.path).expect("sqlite");
        schema::migrate(&f.config.path, &conn, &schema::MIGRATIONS[..1]).expect("v1");
        conn.execute(
            "INSERT INTO entries (key, prompt, answer, model, route, confidence, created_at, expires_at, last_used)
             VALUES (?1, 'What is the capital of France?', 'Paris.', 'old-model', 'cloud', 0.9, ?2, ?3, ?2)",
            rusqlite::params![&key.full[..], clock::duration_ms(T0), clock::duration_ms(T0) + 3_600_000],
        )
        .expect("v1 row");
        assert_eq!(schema::version(&conn).expect("version"), 1);
    }
    let cache = f.open();
    let hit = cache.lookup(query("What is the capital of France?"), ReadMode::Exact).await.expect("lookup");
    let hit = hit.expect("the v1 entry is still served");
    assert_eq!((hit.model.as_str(), hit.origin), ("old-model", Origin::Cloud));
    let stats = cache.stats().await.expect("stats");
    assert_eq!((stats.schema_version, stats.entries, stats.bytes), (SCHEMA_VERSION, 1, 36));
    stored(&cache, entry(query("New?"), "New.")).await;
    drop(cache);

    let conn = rusqlite::Connection::open(&f.config.path).expect("sqlite");
    conn.pragma_update(None, "user_version", 99).expect("bump");
    drop(conn);
    let err = Cache::open_with_clock(&f.config, None, f.clock.clone()).expect_err("too new");
    assert!(matches!(err, CacheError::SchemaTooNew { found: 99, supported: 2, .. }), "{err}");
}

#[tokio::test]
async fn changes_by_another_process_are_seen_before_lookups() {
    let f = Fixture::new(|_| {});
    let cache = f.open();
    // Warm the daemon's index and data_version.
    assert_eq!(
        answer(&cache, query("Anything?").with_embedding(fake_embedding("a")), ReadMode::Semantic).await,
        None
    );
    let jsonl = "{\"prompt\": \"What is the boiling point of water?\", \"answer\": \"100 °C.\"}\n";
    let report = crate::cache::ops::import_from(
        &f.config,
        jsonl.as_bytes(),
        std::path::Path::new("-"),
        Some("test-space"),
        |t| Ok::<_, std::convert::Infallible>(fake_embedding(&format!("water:{}", t.len()))),
    )
    .expect("imports");
    assert_eq!((report.imported, report.semantic), (1, 1));
    let reworded = query("What's the boiling point of water?")
        .with_embedding(fake_embedding(&format!("water:{}", "What is the boiling point of water?".len())));
    let hit =
        cache.lookup(reworded.clone(), ReadMode::Semantic).await.expect("lookup").expect("semantic hit");
    assert_eq!((hit.kind, hit.origin, hit.model.as_str()), (HitKind::Semantic, Origin::Import, "import"));
    // An imported entry answers any sampling.
    let hot = Query::new(&user("What is the boiling point of water?"), &sampling(0.9));
    assert!(answer(&cache, hot, ReadMode::Exact).await.is_some());

    assert_eq!(crate::cache::ops::clear(&f.config, None).expect("clears"), 1);
    assert_eq!(answer(&cache, reworded, ReadMode::Semantic).await, None, "gone from the index too");
    assert_eq!(cache.stats().await.expect("stats").entries, 0);
}

#[tokio::test]
async fn clear_older_than_keeps_recent_entries() {
    let f = Fixture::new(|_| {});
    let cache = f.open();
    stored(&cache, entry(query("Old?"), "Old.")).await;
    f.clock.advance(Duration::from_secs(7200));
    stored(&cache, entry(query("New?"), "New.")).await;
    assert_eq!(cache.clear(Some(Duration::from_secs(3600))).await.expect("clears"), 1);
    assert_eq!(answer(&cache, query("Old?"), ReadMode::Exact).await, None);
    assert!(answer(&cache, query("New?"), ReadMode::Exact).await.is_some());
    assert_eq!(cache.clear(None).await.expect("clears"), 1);
    let stats = cache.stats().await.expect("stats");
    assert_eq!((stats.entries, stats.oldest), (0, None));
}
