//! `outpost bench`: board qualification without a download.
//!
//! A preset model is synthesized into a temporary directory (or `--model` is used), loaded by
//! the engine exactly as `outpost serve` loads it, and driven through [`Engine::submit`] — no
//! socket, no HTTP. Measured: load time; prompt evaluation speed and first-token latency at
//! three prompt lengths; decode speed and per-token latency (p50, p99); peak RSS; and, where
//! the board exposes them, power rails and temperatures sampled during the run
//! ([`super::sensors`]).
//!
//! Prompts are words drawn from a small list by a seeded generator, each prompt from another
//! seed so that no slot's cached prefix is reused beyond the chat template's first tokens
//! (those are subtracted). Their token counts are reached by calibration: requests of 32 and 96
//! words give tokens per word and the chat template's share. Decoding samples at temperature 1 and runs requests until
//! `gen_tokens` tokens were generated (a model may end an answer early).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::sensors::{self, Summary};
use crate::config::Config;
use crate::engine::{ChatMessage, Engine, Event, Generate, GenerateError, LoadError, Sampling, SubmitError};
use crate::metrics::Metrics;
use crate::synth::{Preset, Quant, SynthError, SynthOptions};

/// What to bench and how.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// A GGUF file; `None`: synthesize `preset`.
    pub model: Option<PathBuf>,
    /// The preset to synthesize when no model is given.
    pub preset: Preset,
    /// Its tensor type.
    pub quant: Quant,
    /// llama.cpp threads.
    pub threads: u32,
    /// Context per request (`model.context`).
    pub context: u32,
    /// Prompt lengths to measure, in tokens.
    pub prompt_lengths: Vec<u32>,
    /// Tokens to generate for the decode figures.
    pub gen_tokens: u32,
    /// Where `/sys` and `/proc` are read from (sensors, board detection).
    pub sysroot: PathBuf,
    /// Draw a progress bar on stderr (only if it is a terminal).
    pub progress: bool,
}

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The options do not make sense.
    #[error("{0}")]
    Options(String),
    /// The temporary directory for the preset could not be made.
    #[error("cannot create a temporary directory: {0}")]
    TempDir(std::io::Error),
    /// The preset could not be synthesized.
    #[error("cannot synthesize the preset: {0}")]
    Synth(#[from] SynthError),
    /// The engine thread or the async runtime could not start.
    #[error("cannot start the engine: {0}")]
    Start(std::io::Error),
    /// The model could not be loaded.
    #[error("cannot load the model: {0}")]
    Load(#[from] LoadError),
    /// A request was refused.
    #[error("the engine refused a request: {0}")]
    Submit(#[from] SubmitError),
    /// A request failed.
    #[error("a request failed: {0}")]
    Generate(#[from] GenerateError),
}

/// One prompt length's figures.
#[derive(Clone, Debug, Serialize)]
pub struct PromptRun {
    /// Tokens in the prompt (chat template included).
    pub tokens: u32,
    /// Of those, evaluated (not reused from a slot's cache).
    pub evaluated: u32,
    /// Evaluated tokens per second.
    pub tokens_per_second: f64,
    /// From submitting the request to its first token, milliseconds.
    pub first_token_ms: f64,
}

/// Decode figures.
#[derive(Clone, Debug, Serialize)]
pub struct DecodeRun {
    /// Tokens generated (over `requests` requests).
    pub tokens: u32,
    /// Requests it took.
    pub requests: u32,
    /// Tokens per second after each request's first.
    pub tokens_per_second: f64,
    /// Median time between tokens, milliseconds.
    pub token_ms_p50: f64,
    /// 99th percentile, milliseconds.
    pub token_ms_p99: f64,
}

/// Everything `outpost bench` measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// The board detected (`outpost validate --device auto`'s profile name).
    pub device: String,
    /// `preset <name> <quant> (synthesized)` or the model's path.
    pub model: String,
    /// `general.architecture`.
    pub architecture: String,
    /// Parameters.
    pub parameters: u64,
    /// File size.
    pub model_bytes: u64,
    /// Tensor type (`Q4_K_M`).
    pub quantization: String,
    /// llama.cpp threads.
    pub threads: u32,
    /// Context.
    pub context: u32,
    /// Seconds to load the model and create its context.
    pub load_seconds: f64,
    /// Per prompt length.
    pub prompts: Vec<PromptRun>,
    /// Decoding.
    pub decode: DecodeRun,
    /// Peak resident memory of this process after the model was made (VmHWM), bytes.
    pub peak_rss_bytes: u64,
    /// Whether the peak was reset after synthesizing (else it may include the quantizer's).
    pub peak_reset: bool,
    /// Power rails and supplies, watts (empty where the board exposes none).
    pub power: Vec<Summary>,
    /// Temperatures, °C.
    pub temperature: Vec<Summary>,
}

/// A finished request, timed.
struct Timed {
    prompt_tokens: u32,
    cached_tokens: u32,
    completion_tokens: u32,
    prompt_time: Duration,
    decode_time: Duration,
    first_token: Option<Duration>,
    /// Arrival of each token's event.
    token_at: Vec<Instant>,
}

const WORDS: &[&str] = &[
    "the", "river", "light", "stone", "garden", "quiet", "north", "window", "market", "paper", "engine",
    "winter", "music", "forest", "bridge", "silver", "morning", "city", "ocean", "letter", "road", "simple",
    "history", "table", "mountain", "green", "village", "question", "answer", "travel", "summer", "bright",
    "people", "number", "story", "water", "little", "house", "school", "friend", "open", "early", "field",
    "machine", "voice", "island", "clock", "yellow", "harbor", "evening", "learn", "build", "second",
    "color",
];

/// `n` words from a generator seeded with `seed`.
fn prompt(n: u32, seed: u64) -> String {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        out.push(WORDS[((state >> 33) % WORDS.len() as u64) as usize]);
    }
    out.join(" ")
}

/// The `p`th percentile (0–100) of sorted values, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// This process's `VmHWM` (peak RSS), bytes.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

async fn timed(engine: &Engine, text: String, sampling: Sampling) -> Result<Timed, BenchError> {
    let request = Generate {
        messages: vec![ChatMessage { role: "user".into(), content: text }],
        raw_prompt: None,
        tools: None,
        sampling,
        threads: None,
    };
    let submitted = Instant::now();
    let mut events = engine.submit(request)?;
    let mut token_at = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Started { .. } => {}
            Event::Token { .. } => token_at.push(Instant::now()),
            Event::Done(done) => {
                return Ok(Timed {
                    prompt_tokens: done.prompt_tokens,
                    cached_tokens: done.cached_tokens,
                    completion_tokens: done.completion_tokens,
                    prompt_time: done.prompt_time,
                    decode_time: done.decode_time,
                    first_token: token_at.first().map(|t| t.duration_since(submitted)),
                    token_at,
                })
            }
            Event::Failed(err) => return Err(err.into()),
        }
    }
    Err(BenchError::Generate(GenerateError::Inference("the engine dropped the request".into())))
}

fn sampling(max_tokens: u32, temperature: f32, seed: u32) -> Sampling {
    Sampling {
        temperature,
        top_p: 0.95,
        top_k: 40,
        seed: Some(seed),
        max_tokens,
        ..Sampling::defaults(&crate::config::GenerationConfig::default())
    }
}

/// A progress bar on stderr, hidden unless asked for and stderr is a terminal.
fn progress_bar(wanted: bool, steps: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !wanted || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(steps);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{spinner} [{bar:24}] {pos}/{len} {msg} ({elapsed})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Runs the bench.
pub fn run(opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    let longest = opts.prompt_lengths.iter().copied().max().unwrap_or(0);
    if opts.prompt_lengths.is_empty() || longest + 64 > opts.context {
        return Err(BenchError::Options(format!(
            "prompt lengths {:?} need a context above their longest + 64 tokens (context {})",
            opts.prompt_lengths, opts.context
        )));
    }
    let steps = 3 + opts.prompt_lengths.len() as u64 + u64::from(opts.model.is_none());
    let bar = progress_bar(opts.progress, steps);
    let _tmp;
    let (path, source) = match &opts.model {
        Some(path) => (path.clone(), path.display().to_string()),
        None => {
            bar.set_message(format!(
                "synthesizing the {} preset ({})",
                opts.preset.name(),
                opts.quant.name()
            ));
            let tmp =
                tempfile::Builder::new().prefix("outpost-bench-").tempdir().map_err(BenchError::TempDir)?;
            let out = tmp.path().join(format!("{}-{}.gguf", opts.preset.name(), opts.quant.name()));
            let threads = opts.threads as usize;
            crate::synth::synthesize(&SynthOptions {
                preset: opts.preset,
                quant: opts.quant,
                seed: 0,
                out: out.clone(),
                threads,
            })?;
            _tmp = tmp;
            bar.inc(1);
            (out, format!("preset {} {} (synthesized)", opts.preset.name(), opts.quant.name()))
        }
    };
    // Writing 5 to clear_refs resets VmHWM (Linux 4.0+): the quantizer's peak is not the model's.
    let peak_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();

    let mut config = Config::default();
    config.model.path = path;
    config.model.context = opts.context;
    config.model.threads = opts.threads;
    config.model.batch = config.model.batch.min(opts.context);
    config.api.parallel = Some(1);
    config.router.enabled = false;
    config.cache.enabled = false;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(BenchError::Start)?;
    let engine = Engine::start(&config, Arc::new(Metrics::new())).map_err(BenchError::Start)?;
    let sampler = sensors::Sampler::start(sensors::discover(&opts.sysroot), Duration::from_millis(200));

    bar.set_message("loading the model");
    let started = Instant::now();
    let info = rt.block_on(engine.load())?;
    let load_seconds = started.elapsed().as_secs_f64();
    bar.inc(1);

    bar.set_message("calibrating prompt lengths");
    // Two prompts give tokens per word and the chat template's own tokens.
    let short = rt.block_on(timed(&engine, prompt(32, 1), sampling(1, 0.0, 1)))?.prompt_tokens;
    let long = rt.block_on(timed(&engine, prompt(96, 2), sampling(1, 0.0, 1)))?.prompt_tokens;
    let tokens_per_word = match long.saturating_sub(short) {
        0 => f64::from(long.max(1)) / 96.0,
        more => f64::from(more) / 64.0,
    };
    let template = (f64::from(short) - 32.0 * tokens_per_word).max(0.0);
    bar.inc(1);

    let mut prompts = Vec::new();
    for (i, &length) in opts.prompt_lengths.iter().enumerate() {
        bar.set_message(format!("prompt of {length} tokens"));
        let words = (((f64::from(length) - template) / tokens_per_word).round() as u32).max(1);
        let r = rt.block_on(timed(&engine, prompt(words, 10 + i as u64), sampling(1, 0.0, 1)))?;
        let evaluated = r.prompt_tokens - r.cached_tokens.min(r.prompt_tokens);
        prompts.push(PromptRun {
            tokens: r.prompt_tokens,
            evaluated,
            tokens_per_second: f64::from(evaluated) / r.prompt_time.as_secs_f64().max(1e-9),
            first_token_ms: r.first_token.unwrap_or_default().as_secs_f64() * 1e3,
        });
        bar.inc(1);
    }

    bar.set_message(format!("decoding {} tokens", opts.gen_tokens));
    let (mut tokens, mut requests, mut decoded, mut decode_time) = (0u32, 0u32, 0u32, Duration::ZERO);
    let mut gaps = Vec::new();
    while tokens < opts.gen_tokens && requests < 16 {
        let r = rt.block_on(timed(
            &engine,
            prompt(32, 100 + u64::from(requests)),
            sampling(opts.gen_tokens - tokens, 1.0, requests),
        ))?;
        requests += 1;
        tokens += r.completion_tokens;
        decoded += r.completion_tokens.saturating_sub(1);
        decode_time += r.decode_time;
        gaps.extend(r.token_at.windows(2).map(|w| w[1].duration_since(w[0]).as_secs_f64() * 1e3));
    }
    gaps.sort_by(f64::total_cmp);
    let decode = DecodeRun {
        tokens,
        requests,
        tokens_per_second: f64::from(decoded) / decode_time.as_secs_f64().max(1e-9),
        token_ms_p50: percentile(&gaps, 50.0),
        token_ms_p99: percentile(&gaps, 99.0),
    };
    bar.inc(1);
    let summaries = sampler.finish();
    bar.finish_and_clear();
    let (power, temperature) = summaries.into_iter().partition(|s| s.unit == "W");
    Ok(BenchReport {
        device: super::profiles::detect(&opts.sysroot).profile.name,
        model: source,
        architecture: info.architecture.clone(),
        parameters: info.parameters,
        model_bytes: info.size,
        quantization: info.quantization.clone(),
        threads: opts.threads,
        context: opts.context,
        load_seconds,
        prompts,
        decode,
        peak_rss_bytes: peak_rss(),
        peak_reset,
        power,
        temperature,
    })
}

impl BenchReport {
    /// The report for people.
    pub fn text(&self) -> String {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let mut out = format!(
            "model        {} — {}, {:.1}M parameters, {}, {:.1} MiB\n",
            self.model,
            self.architecture,
            self.parameters as f64 / 1e6,
            self.quantization,
            mib(self.model_bytes)
        );
        out +=
            &format!("device       {} ({} threads, context {})\n", self.device, self.threads, self.context);
        out += &format!("load         {:.2} s\n", self.load_seconds);
        for p in &self.prompts {
            out += &format!(
                "prompt {:>5}  {:>8.1} tok/s   first token {:>8.1} ms\n",
                p.tokens, p.tokens_per_second, p.first_token_ms
            );
        }
        let d = &self.decode;
        out += &format!(
            "decode {:>5}  {:>8.1} tok/s   per token p50 {:.1} ms, p99 {:.1} ms\n",
            d.tokens, d.tokens_per_second, d.token_ms_p50, d.token_ms_p99
        );
        out += &format!(
            "peak RSS     {:.1} MiB{}\n",
            mib(self.peak_rss_bytes),
            if self.peak_reset { "" } else { " (includes synthesis)" }
        );
        if self.power.is_empty() {
            out += "power        no rails exposed\n";
        }
        for s in self.power.iter().chain(&self.temperature) {
            let kind = if s.unit == "W" { "power" } else { "temperature" };
            out += &format!(
                "{kind:<12} {:<16} mean {:.2} {u}, max {:.2} {u} ({} samples)\n",
                s.name,
                s.mean,
                s.max,
                s.samples,
                u = s.unit
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_and_percentiles() {
        assert_eq!(prompt(8, 3), prompt(8, 3));
        assert_ne!(prompt(8, 3), prompt(8, 4));
        assert_eq!(prompt(8, 3).split(' ').count(), 8);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
