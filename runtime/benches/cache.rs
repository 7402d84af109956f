//! Response cache lookup latency at 1k, 10k and 100k entries.
//!
//! ```text
//! nice cargo bench -p outpost --bench cache
//! OUTPOST_BENCH_SIZES=1000,10000 OUTPOST_BENCH_RUNS=500 cargo bench -p outpost --bench cache
//! ```
//!
//! Each size gets a fresh cache file filled through `ops::import_from` with random
//! L2-normalised 384-dimension embeddings; one entry in ten is a near-duplicate (cosine about
//! 0.95) of another, so that shortlists are not trivially short. Then, through the async
//! handle as the API calls it (a current-thread runtime, the owner thread, the reply channel):
//!
//! - `miss`: a random embedding far from every entry (the common case: full scan, no candidate);
//! - `semantic hit`: a reworded prompt whose embedding is a noisy copy of a cached one
//!   (cosine about 0.975): scan, shortlist, exact re-rank from SQLite, guards;
//! - `exact hit`: the cached prompt itself (SQLite index only).
//!
//! Prompts are lowercase words without numbers, so that the guards pass.

use std::io::Write;
use std::time::{Duration, Instant};

use outpost::cache::{ops, Cache, CacheConfig, HitKind, Query, ReadMode};
use outpost::engine::{ChatMessage, Sampling};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DIM: usize = 384;
const SPACE: &str = "bench@1";

fn unit(v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

fn random_unit(rng: &mut impl Rng) -> Vec<f32> {
    unit((0..DIM).map(|_| rng.gen_range(-1.0_f32..1.0)).collect())
}

fn noisy(rng: &mut impl Rng, v: &[f32], noise: f32) -> Vec<f32> {
    unit(v.iter().map(|x| x + rng.gen_range(-noise..noise)).collect())
}

/// A number spelled in lowercase letters (no digits: the number guard would refuse).
fn word(mut i: usize) -> String {
    let mut s = String::new();
    loop {
        s.push(char::from(b'a' + (i % 26) as u8));
        i /= 26;
        if i == 0 {
            return s;
        }
    }
}

fn prompt(i: usize) -> String {
    format!("tell me about the topic {}", word(i))
}

fn sampling() -> Sampling {
    Sampling {
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        seed: None,
        max_tokens: 256,
        stop: Vec::new(),
        logprobs: None,
        ..Sampling::defaults(&outpost::config::GenerationConfig::default())
    }
}

fn query(text: &str, embedding: Option<Vec<f32>>) -> Query {
    let q = Query::new(&[ChatMessage { role: "user".into(), content: text.into() }], &sampling());
    match embedding {
        Some(e) => q.with_embedding(e),
        None => q,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(name: &str, n: usize, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "{n:>7} entries  {name:<13} p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms  ({} lookups)",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().expect("runs")),
        times.len()
    );
}

fn bench(rt: &tokio::runtime::Runtime, n: usize, runs: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = CacheConfig {
        path: dir.path().join("cache.db"),
        max_entries: 10_000_000,
        max_bytes: 1 << 34,
        ..CacheConfig::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(n as u64);
    let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(n);
    for i in 0..n {
        let v = if i % 10 == 9 {
            let of = rng.gen_range(0..i);
            noisy(&mut rng, &vectors[of], 0.028)
        } else {
            random_unit(&mut rng)
        };
        vectors.push(v);
    }
    let mut jsonl = Vec::new();
    for i in 0..n {
        writeln!(jsonl, "{{\"prompt\": \"{}\", \"answer\": \"the answer about {}\"}}", prompt(i), word(i))
            .expect("jsonl");
    }
    let started = Instant::now();
    let mut next = 0;
    let report_import =
        ops::import_from(&config, jsonl.as_slice(), "bench".as_ref(), Some(SPACE), |_: &str| {
            next += 1;
            Ok::<_, std::convert::Infallible>(vectors[next - 1].clone())
        })
        .expect("fills");
    assert_eq!(report_import.imported as usize, n);
    let fill = started.elapsed();
    let started = Instant::now();
    let cache = Cache::open(&config, Some(SPACE)).expect("opens");
    let open = started.elapsed();
    let file_mb = std::fs::metadata(&config.path).map_or(0, |m| m.len()) as f64 / 1e6;
    println!(
        "{n:>7} entries  filled in {:.1} s, opened (index built) in {:.0} ms, file {file_mb:.0} MB",
        fill.as_secs_f64(),
        ms(open)
    );

    rt.block_on(async {
        let (mut miss, mut semantic, mut exact) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..20 {
            let _ = cache.lookup(query("warm up", Some(random_unit(&mut rng))), ReadMode::Semantic).await;
        }
        for _ in 0..runs {
            let q = query("tell me about something else entirely", Some(random_unit(&mut rng)));
            let t = Instant::now();
            let hit = cache.lookup(q, ReadMode::Semantic).await.expect("lookup");
            miss.push(t.elapsed());
            assert!(hit.is_none());

            let i = rng.gen_range(0..n);
            let q = query(&format!("{}, please", prompt(i)), Some(noisy(&mut rng, &vectors[i], 0.02)));
            let t = Instant::now();
            let hit = cache.lookup(q, ReadMode::Semantic).await.expect("lookup");
            semantic.push(t.elapsed());
            let hit = hit.expect("semantic hit");
            assert_eq!(hit.kind, HitKind::Semantic);

            let q = query(&prompt(i), None);
            let t = Instant::now();
            let hit = cache.lookup(q, ReadMode::Semantic).await.expect("lookup");
            exact.push(t.elapsed());
            assert_eq!(hit.map(|h| h.kind), Some(HitKind::Exact));
        }
        report("miss", n, miss);
        report("semantic hit", n, semantic);
        report("exact hit", n, exact);
    });
}

fn main() {
    let sizes: Vec<usize> = std::env::var("OUTPOST_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000]);
    let runs: usize = std::env::var("OUTPOST_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    for n in sizes {
        bench(&rt, n, runs);
    }
}
