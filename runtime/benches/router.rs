//! Router latency next to local time-to-first-token, on the same prompts.
//!
//! ```text
//! cargo bench -p outpost --bench router                      # router only
//! OUTPOST_BENCH_MODEL=/tmp/bench/05b-q4km.gguf OUTPOST_BENCH_THREADS=2 \
//!     cargo bench -p outpost --bench router                  # + llama.cpp TTFT
//! ```
//!
//! Router: ONNX Runtime on one thread (`router.threads = 1`, as the daemon runs it), prompts of
//! 16, 128 and 512 router tokens (the router cuts long prompts as its `router.json` says, so
//! "512" measures the cut input), 20 warm-up runs then `OUTPOST_BENCH_RUNS` (default 300).
//! TTFT: the engine evaluates the same prompt (each run made unique at its start so that no
//! KV prefix is reused) and generates one token; prompt evaluation time from the engine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost::config::Config;
use outpost::engine::{ChatMessage, Engine, Event, Generate, Sampling};
use outpost::metrics::Metrics;
use outpost::router::{RouterConfig, RouterModel};

const WORDS: &[&str] = &[
    "the",
    "train",
    "leaves",
    "station",
    "at",
    "seven",
    "and",
    "travels",
    "north",
    "for",
    "three",
    "hours",
    "while",
    "a",
    "second",
    "one",
    "departs",
    "later",
    "how",
    "far",
    "apart",
    "are",
    "they",
    "when",
    "velocity",
    "equation",
    "integral",
    "protein",
    "constitution",
    "molecule",
    "enzyme",
    "theorem",
];

/// A prompt of exactly `tokens` router tokens (special tokens included), or as close as words allow.
fn prompt_of(model: &RouterModel, tokens: usize) -> String {
    let mut text = String::from("Question:");
    let mut i = 0;
    loop {
        let candidate = format!("{text} {}", WORDS[i % WORDS.len()]);
        let (ids, truncated) = model.encode(&candidate).expect("encode");
        if ids.len() > tokens || truncated {
            return text;
        }
        text = candidate;
        i += 1;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let runs: usize = std::env::var("OUTPOST_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let mut model = RouterModel::load(&RouterConfig::default()).expect("router loads (run scripts/setup.sh)");
    let m = model.manifest().clone();
    println!("router {} {} ({:?}), 1 thread, {runs} runs per length", m.name, m.version, m.truncation);
    let lengths = [16usize, 128, 512];
    let mut prompts = Vec::new();
    for &n in &lengths {
        // Long prompts: the text is built past the cut, then measured as the router sees it.
        let text = if n <= 128 { prompt_of(&model, n) } else { long_prompt(n) };
        let (ids, truncated) = model.encode(&text).expect("encode");
        for _ in 0..20 {
            model.score(&text).expect("score");
        }
        let mut times: Vec<Duration> =
            (0..runs).map(|_| model.score(&text).expect("score").elapsed).collect();
        times.sort();
        println!(
            "router  prompt ~{n:>3} tokens (encoder input {:>3}{}): p50 {:6.2} ms  p99 {:6.2} ms",
            ids.len(),
            if truncated { ", cut" } else { "" },
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
        );
        prompts.push((n, text));
    }

    let Some(model_path) = std::env::var_os("OUTPOST_BENCH_MODEL") else {
        println!("(set OUTPOST_BENCH_MODEL to a GGUF file to measure local time-to-first-token too)");
        return;
    };
    let threads: u32 = std::env::var("OUTPOST_BENCH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let mut config = Config::default();
    config.model.path = model_path.into();
    config.model.threads = threads;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let engine = Engine::start(&config, Arc::new(Metrics::new())).expect("engine");
        let info = engine.load().await.expect("model loads");
        println!("local   {} ({}), {threads} threads", info.id, info.quantization);
        for (n, text) in &prompts {
            let mut ttft = Vec::new();
            let mut llama_tokens = 0;
            for run in 0..5 {
                let mut sampling = Sampling::defaults(&config.generation);
                sampling.max_tokens = 1;
                sampling.temperature = 0.0;
                let request = Generate {
                    raw_prompt: None,
                    messages: vec![ChatMessage { role: "user".into(), content: format!("{run}. {text}") }],
                    sampling,
                    threads: None,
                    tools: None,
                };
                let started = Instant::now();
                let mut events = engine.submit(request).expect("submit");
                let mut first = None;
                while let Some(event) = events.recv().await {
                    match event {
                        Event::Started { prompt_tokens, .. } => llama_tokens = prompt_tokens,
                        Event::Token { .. } => {
                            first.get_or_insert_with(|| started.elapsed());
                        }
                        Event::Done(_) => break,
                        Event::Failed(err) => panic!("generation failed: {err}"),
                    }
                }
                if run > 0 {
                    ttft.push(first.expect("a token"));
                }
            }
            ttft.sort();
            println!(
                "local   prompt ~{n:>3} router tokens ({llama_tokens} llama tokens with template): TTFT p50 {:8.1} ms",
                ms(percentile(&ttft, 0.5))
            );
        }
    });
}

fn long_prompt(words: usize) -> String {
    let mut text = String::from("Question:");
    for i in 0..words {
        text.push(' ');
        text.push_str(WORDS[i % WORDS.len()]);
    }
    text
}
