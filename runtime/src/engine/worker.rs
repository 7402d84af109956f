//! The owner thread: the only code that touches llama.cpp after loading.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::UnboundedSender;

use super::loaded::{LoadSettings, LoadedModel};
use super::text::TextStream;
use super::{
    Completion, Control, Event, FinishReason, Generate, GenerateError, Job, Shared, TokenLogprob, TopLogprob,
};
use crate::metrics::Metrics;

/// How often the idle loop wakes to beat.
const IDLE_BEAT: Duration = Duration::from_millis(250);

pub(crate) struct Worker {
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    settings: Arc<LoadSettings>,
    current: Option<Box<LoadedModel>>,
    /// The tokens whose KV entries are in sequence 0: a new prompt sharing a prefix with them
    /// only evaluates the rest (a chat's earlier turns are not evaluated again).
    kv_tokens: Vec<LlamaToken>,
    /// Test-only failpoint (`OUTPOST_FAILPOINT=engine-stall`, test builds): the thread hangs at its
    /// first request without beating, as a stuck llama.cpp would, to prove the watchdog stops.
    stall_on_request: bool,
}

impl Worker {
    pub(crate) fn new(shared: Arc<Shared>, metrics: Arc<Metrics>, settings: Arc<LoadSettings>) -> Self {
        let stall_on_request = outpost_common::failpoint::armed("engine-stall");
        if stall_on_request {
            tracing::warn!("failpoint engine-stall: the engine will hang at its first request");
        }
        Self { shared, metrics, settings, current: None, kv_tokens: Vec::new(), stall_on_request }
    }

    /// Serves until every handle is dropped.
    pub(crate) fn run(mut self, jobs: Receiver<Job>, control: Receiver<Control>) {
        loop {
            self.shared.beat();
            while let Ok(message) = control.try_recv() {
                self.handle(message);
            }
            crossbeam_channel::select! {
                recv(control) -> message => match message {
                    Ok(message) => self.handle(message),
                    Err(_) => return,
                },
                recv(jobs) -> job => match job {
                    Ok(job) => {
                        self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                        self.metrics.queue_depth.dec();
                        self.serve(job);
                    }
                    Err(_) => return,
                },
                default(IDLE_BEAT) => {}
            }
        }
    }

    fn handle(&mut self, message: Control) {
        match message {
            Control::Swap(loaded, reply) => {
                let info = loaded.info.clone();
                // The old model and its context are freed here.
                self.current = Some(loaded);
                self.kv_tokens.clear();
                if let Ok(mut model) = self.shared.model.write() {
                    *model = Some(info.clone());
                }
                tracing::info!(model = %info.id, file = %info.file.display(), "model swapped in");
                let _ = reply.send(info);
            }
        }
    }

    /// Makes the context run with the request's thread count (the power mode's limit, at most
    /// `model.threads`), recreating it when the count changes.
    fn apply_threads(&mut self, requested: Option<u32>) {
        let configured = self.settings.threads;
        let wanted =
            requested.map_or(configured, |n| i32::try_from(n).unwrap_or(configured).clamp(1, configured));
        let Some(loaded) = self.current.take() else { return };
        if loaded.threads == wanted {
            self.current = Some(loaded);
            return;
        }
        let from = loaded.threads;
        self.kv_tokens.clear();
        match loaded.with_threads(&self.settings, wanted) {
            Ok(changed) => {
                tracing::info!(from, to = wanted, "llama.cpp threads changed for the power mode");
                self.current = Some(Box::new(changed));
            }
            Err((kept, err)) => {
                tracing::error!(%err, "cannot change llama.cpp threads; keeping {from}");
                if kept.is_none() {
                    if let Ok(mut model) = self.shared.model.write() {
                        *model = None;
                    }
                    self.metrics.model_loaded.set(0);
                }
                self.current = kept.map(Box::new);
            }
        }
    }

    fn serve(&mut self, job: Job) {
        let Job { request, events, queued_at } = job;
        if events.is_closed() {
            return; // The client left while queued.
        }
        if self.stall_on_request {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        let waited = queued_at.elapsed();
        self.apply_threads(request.threads);
        let Some(loaded) = self.current.as_mut() else {
            let _ = events.send(Event::Failed(GenerateError::NotLoaded));
            return;
        };
        self.metrics.active.inc();
        let shared = &self.shared;
        let metrics = &self.metrics;
        let kv_tokens = &mut self.kv_tokens;
        let info = loaded.info.clone();
        let template = &loaded.template;
        let batch = loaded.batch;
        let outcome = loaded.cell.with_dependent_mut(|model, ctx| {
            let run = Run { model, shared, events: &events, batch };
            run.generate(ctx, template, &request, kv_tokens, &info)
        });
        self.metrics.active.dec();
        match outcome {
            Ok(done) => {
                metrics.prompt_tokens.inc_by(u64::from(done.prompt_tokens));
                metrics.completion_tokens.inc_by(u64::from(done.completion_tokens));
                metrics.prompt_seconds.inc_by(done.prompt_time.as_secs_f64());
                metrics.decode_seconds.inc_by(done.decode_time.as_secs_f64());
                let evaluated = done.prompt_tokens.saturating_sub(done.cached_tokens);
                if done.prompt_time > Duration::ZERO && evaluated > 0 {
                    metrics
                        .prompt_tokens_per_second
                        .set(f64::from(evaluated) / done.prompt_time.as_secs_f64());
                }
                if done.decode_time > Duration::ZERO && done.completion_tokens > 1 {
                    let rate = f64::from(done.completion_tokens - 1) / done.decode_time.as_secs_f64();
                    metrics.decode_tokens_per_second.set(rate);
                    metrics.decode_rate.observe(rate);
                }
                tracing::debug!(
                    prompt = done.prompt_tokens,
                    cached = done.cached_tokens,
                    generated = done.completion_tokens,
                    finish = ?done.finish_reason,
                    waited_ms = waited.as_millis() as u64,
                    "generation finished"
                );
                let _ = events.send(Event::Done(done));
            }
            Err(err) => {
                if matches!(err, GenerateError::Inference(_)) {
                    tracing::error!(%err, "generation failed");
                }
                let _ = events.send(Event::Failed(err));
            }
        }
    }
}

/// One generation's view of the engine.
struct Run<'a> {
    model: &'a LlamaModel,
    shared: &'a Shared,
    events: &'a UnboundedSender<Event>,
    batch: u32,
}

impl Run<'_> {
    fn cancelled(&self) -> bool {
        self.events.is_closed() || self.shared.cancel_all.load(Ordering::Relaxed)
    }

    fn generate(
        &self,
        ctx: &mut LlamaContext<'_>,
        template: &llama_cpp_2::model::LlamaChatTemplate,
        request: &Generate,
        kv_tokens: &mut Vec<LlamaToken>,
        info: &Arc<super::ModelInfo>,
    ) -> Result<Completion, GenerateError> {
        let started = Instant::now();
        let vocab = self.model.vocab();
        let messages = request
            .messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| GenerateError::Template("a message contains a NUL character".into()))?;
        let prompt = self
            .model
            .apply_chat_template(template, &messages, true)
            .map_err(|e| GenerateError::Template(e.to_string()))?;
        let mut tokens = vocab.tokenize(prompt.as_bytes(), true, true);
        let bos = vocab.bos();
        if tokens.len() >= 2 && tokens[0] == bos && tokens[1] == bos {
            tokens.remove(0); // The template wrote BOS itself.
        }
        let n_ctx = ctx.n_ctx();
        let n_prompt = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        if tokens.is_empty() || n_prompt >= n_ctx {
            return Err(GenerateError::ContextOverflow { prompt_tokens: n_prompt, context: n_ctx });
        }
        let _ = self.events.send(Event::Started { prompt_tokens: n_prompt, model: info.clone() });

        // Reuse the KV entries of the longest common prefix with the previous request.
        let mut common = kv_tokens.iter().zip(&tokens).take_while(|(a, b)| a == b).count();
        common = common.min(tokens.len() - 1);
        if common < kv_tokens.len() {
            let from = u32::try_from(common).unwrap_or(0);
            if ctx.kv_cache_seq_rm(0, Some(from), None).is_err() {
                ctx.clear_kv_cache();
                common = 0;
            }
            kv_tokens.truncate(common);
        }
        let cached = u32::try_from(common).unwrap_or(0);

        let fail = |ctx: &mut LlamaContext<'_>, kv: &mut Vec<LlamaToken>, what: String| {
            ctx.clear_kv_cache();
            kv.clear();
            GenerateError::Inference(what)
        };
        let done =
            |reason, generated: u32, first_token: Option<Instant>, prompt_done: Instant, lps| Completion {
                finish_reason: reason,
                token_logprobs: lps,
                prompt_tokens: n_prompt,
                cached_tokens: cached,
                completion_tokens: generated,
                prompt_time: prompt_done.duration_since(started),
                decode_time: first_token.map(|t| t.elapsed()).unwrap_or_default(),
            };

        // Evaluate the prompt in chunks of `batch`, asking for logits of the last token only.
        let chunk = usize::try_from(self.batch).unwrap_or(512).max(1);
        let mut batch = LlamaBatch::new(chunk, 1);
        let mut last_index = 0;
        for (n, piece) in tokens[common..].chunks(chunk).enumerate() {
            if self.cancelled() {
                return Ok(done(FinishReason::Cancelled, 0, None, Instant::now(), Vec::new()));
            }
            batch.clear();
            let base = common + n * chunk;
            let last_chunk = base + piece.len() == tokens.len();
            for (i, token) in piece.iter().enumerate() {
                let pos = i32::try_from(base + i).unwrap_or(i32::MAX);
                let logits = last_chunk && i + 1 == piece.len();
                batch.add(*token, pos, &[0], logits).map_err(|e| fail(ctx, kv_tokens, e.to_string()))?;
            }
            ctx.decode(&mut batch).map_err(|e| fail(ctx, kv_tokens, e.to_string()))?;
            kv_tokens.extend_from_slice(piece);
            last_index = batch.n_tokens() - 1;
            self.shared.beat();
        }
        let prompt_done = Instant::now();

        let sampling = &request.sampling;
        let mut sampler = sampler_for(sampling);
        let mut text = TextStream::new(&sampling.stop);
        let max_tokens = sampling.max_tokens.max(1);
        let mut generated = 0u32;
        let mut first_token = None;
        let mut index = last_index;
        let mut pos = tokens.len();
        let mut token_logprobs = Vec::with_capacity(usize::try_from(max_tokens).unwrap_or(0).min(4096));
        let reason = loop {
            if self.cancelled() {
                break FinishReason::Cancelled;
            }
            let token = sampler.sample(ctx, index);
            let logprob =
                sampling.logprobs.map(|n| logprob_of(ctx.get_logits_ith(index), token, n, self.model));
            if vocab.is_eog(token) {
                break FinishReason::Stop;
            }
            token_logprobs.push(match &logprob {
                Some(l) => l.logprob,
                None => chosen_logprob(ctx.get_logits_ith(index), token),
            });
            generated += 1;
            first_token.get_or_insert_with(Instant::now);
            let bytes = vocab.token_to_piece(token, false, None);
            let released = text.push(&bytes);
            if self.events.send(Event::Token { text: released.text, logprob }).is_err() {
                break FinishReason::Cancelled;
            }
            if released.stopped {
                break FinishReason::Stop;
            }
            if generated >= max_tokens || pos + 1 >= usize::try_from(n_ctx).unwrap_or(usize::MAX) {
                break FinishReason::Length;
            }
            batch.clear();
            let at = i32::try_from(pos).unwrap_or(i32::MAX);
            batch.add(token, at, &[0], true).map_err(|e| fail(ctx, kv_tokens, e.to_string()))?;
            ctx.decode(&mut batch).map_err(|e| fail(ctx, kv_tokens, e.to_string()))?;
            kv_tokens.push(token);
            pos += 1;
            index = 0;
            self.shared.beat();
        };
        let rest = text.finish();
        if !rest.is_empty() {
            let _ = self.events.send(Event::Token { text: rest, logprob: None });
        }
        Ok(done(reason, generated, first_token, prompt_done, token_logprobs))
    }
}

/// Greedy at temperature 0, else top-k → top-p → temperature → seeded draw.
fn sampler_for(sampling: &super::Sampling) -> LlamaSampler {
    if sampling.temperature <= 0.0 {
        return LlamaSampler::greedy();
    }
    let mut chain = Vec::new();
    if sampling.top_k > 0 {
        chain.push(LlamaSampler::top_k(i32::try_from(sampling.top_k).unwrap_or(i32::MAX)));
    }
    if sampling.top_p < 1.0 {
        chain.push(LlamaSampler::top_p(sampling.top_p, 1));
    }
    chain.push(LlamaSampler::temp(sampling.temperature));
    chain.push(LlamaSampler::dist(sampling.seed.unwrap_or_else(rand::random)));
    LlamaSampler::chain_simple(chain)
}

/// The chosen token's log-probability under the raw distribution (one pass over the logits:
/// about 0.2 ms for a 150k vocabulary, next to tens of ms per decoded token).
fn chosen_logprob(logits: &[f32], chosen: LlamaToken) -> f32 {
    logit_of(logits, chosen) - log_z(logits)
}

/// log Σ exp(logits), computed stably.
fn log_z(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    max + sum.ln()
}

fn logit_of(logits: &[f32], token: LlamaToken) -> f32 {
    usize::try_from(token.0).ok().and_then(|i| logits.get(i)).copied().unwrap_or(f32::NEG_INFINITY)
}

/// The chosen token's log-probability under the raw distribution and the `n` most likely tokens.
fn logprob_of(logits: &[f32], chosen: LlamaToken, n: u8, model: &LlamaModel) -> TokenLogprob {
    let log_z = log_z(logits);
    let mut top: Vec<(f32, usize)> = Vec::with_capacity(usize::from(n) + 1);
    if n > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if top.len() < usize::from(n) || l > top[top.len() - 1].0 {
                let at = top.partition_point(|&(v, _)| v >= l);
                top.insert(at, (l, i));
                top.truncate(usize::from(n));
            }
        }
    }
    let vocab = model.vocab();
    let piece = |t: LlamaToken| vocab.token_to_piece(t, true, None);
    let chosen_logit = logit_of(logits, chosen);
    let bytes = piece(chosen);
    TokenLogprob {
        token: String::from_utf8_lossy(&bytes).into_owned(),
        logprob: chosen_logit - log_z,
        bytes,
        top_logprobs: top
            .into_iter()
            .map(|(l, i)| {
                let bytes = piece(LlamaToken(i32::try_from(i).unwrap_or(0)));
                TopLogprob { token: String::from_utf8_lossy(&bytes).into_owned(), logprob: l - log_z, bytes }
            })
            .collect(),
    }
}
