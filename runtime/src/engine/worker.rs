//! The owner thread: the only code that touches llama.cpp after loading.
//!
//! Continuous batching: up to `api.parallel` generations share one llama.cpp context, each in
//! its own sequence (a *slot*). Every step builds one batch ([`super::plan`]): the next token of
//! every generating slot, then prompt chunks of slots still evaluating their prompt, then one
//! `decode`, then each slot samples from its own logits with its own sampler. New requests
//! join at the next step; a finished or cancelled one frees its slot at once.
//!
//! Each slot keeps the KV entries of its last request: a new request goes to the idle slot
//! whose cached tokens share the longest prefix with its prompt (the rest are evaluated), so
//! apps that take turns each keep their system prompt warm.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::UnboundedSender;

use super::loaded::{ChatTemplate, LoadSettings, LoadedModel};
use super::plan::{plan, Need};
use super::sampling::{chosen_logprob, logprob_of, sampler_for, RequestSampler};
use super::text::TextStream;
use super::{Completion, Control, Event, FinishReason, Generate, GenerateError, Job, Sampling, Shared};
use crate::metrics::Metrics;

/// How often the idle loop wakes to beat.
const IDLE_BEAT: Duration = Duration::from_millis(250);

/// One sequence of the context.
struct Slot {
    /// The llama.cpp sequence id.
    seq: i32,
    /// The tokens whose KV entries are in the sequence, from position 0.
    cached: Vec<LlamaToken>,
    /// When its last request ended (the least recently used idle slot is reused first).
    last_used: Instant,
    /// The request it is serving.
    run: Option<Running>,
}

/// A request being served in a slot.
struct Running {
    /// Admission order: prompts are evaluated oldest first.
    ticket: u64,
    events: UnboundedSender<Event>,
    sampling: Sampling,
    prompt: Vec<LlamaToken>,
    cached_tokens: u32,
    sampler: RequestSampler,
    text: TextStream,
    generated: u32,
    token_logprobs: Vec<f32>,
    /// The token sampled last, to be evaluated in the next batch.
    pending: Option<LlamaToken>,
    started: Instant,
    waited: Duration,
    prompt_done: Option<Instant>,
    first_token: Option<Instant>,
}

pub(crate) struct Worker {
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    settings: Arc<LoadSettings>,
    current: Option<Box<LoadedModel>>,
    slots: Vec<Slot>,
    /// A model waiting to be swapped in once no slot is running.
    swap: Option<Control>,
    /// A request that needs another thread count than the running ones: admitted once they end.
    deferred: Option<Job>,
    tickets: u64,
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
        let now = Instant::now();
        let slots = (0..settings.parallel)
            .map(|i| Slot {
                seq: i32::try_from(i).unwrap_or(0),
                cached: Vec::new(),
                last_used: now,
                run: None,
            })
            .collect();
        Self {
            shared,
            metrics,
            settings,
            current: None,
            slots,
            swap: None,
            deferred: None,
            tickets: 0,
            stall_on_request,
        }
    }

    fn running(&self) -> usize {
        self.slots.iter().filter(|s| s.run.is_some()).count()
    }

    /// Serves until every handle is dropped.
    pub(crate) fn run(mut self, jobs: Receiver<Job>, control: Receiver<Control>) {
        let mut batch = LlamaBatch::new(self.settings.batch_tokens(), 1);
        loop {
            self.shared.beat();
            while let Ok(message) = control.try_recv() {
                self.control(message);
            }
            if self.running() == 0 {
                if let Some(message) = self.swap.take() {
                    self.handle(message);
                }
            }
            self.admit(&jobs);
            if self.running() > 0 {
                self.step(&mut batch);
                continue;
            }
            crossbeam_channel::select! {
                recv(control) -> message => match message {
                    Ok(message) => self.control(message),
                    Err(_) => return,
                },
                recv(jobs) -> job => match job {
                    Ok(job) => {
                        self.dequeued();
                        self.start(job);
                    }
                    Err(_) => return,
                },
                default(IDLE_BEAT) => {}
            }
        }
    }

    fn dequeued(&self) {
        self.shared.queued.fetch_sub(1, Ordering::SeqCst);
        self.metrics.queue_depth.dec();
    }

    /// Moves queued requests into free slots (not while a model swap waits).
    fn admit(&mut self, jobs: &Receiver<Job>) {
        while self.swap.is_none() && self.running() < self.slots.len() {
            let job = match self.deferred.take() {
                Some(job) => job,
                None => match jobs.try_recv() {
                    Ok(job) => {
                        self.dequeued();
                        job
                    }
                    Err(_) => return,
                },
            };
            if !self.start(job) {
                return;
            }
        }
    }

    /// A swap waits until no request runs; the rest is answered now.
    fn control(&mut self, message: Control) {
        match message {
            Control::Swap(..) => self.swap = Some(message),
            Control::Tokenize { text, add_special, reply } => {
                let result = match self.current.as_ref() {
                    None => Err(GenerateError::NotLoaded),
                    Some(loaded) => Ok(loaded.cell.with_dependent(|model, _| {
                        let vocab = model.vocab();
                        vocab
                            .tokenize(text.as_bytes(), add_special, true)
                            .into_iter()
                            .map(|t| super::Token {
                                id: t.0,
                                piece: String::from_utf8_lossy(&vocab.token_to_piece(t, true, None))
                                    .into_owned(),
                            })
                            .collect()
                    })),
                };
                let _ = reply.send(result);
            }
            Control::Detokenize { tokens, reply } => {
                let result = match self.current.as_ref() {
                    None => Err(GenerateError::NotLoaded),
                    Some(loaded) => loaded.cell.with_dependent(|model, _| {
                        let vocab = model.vocab();
                        let n = model.n_vocab();
                        let mut bytes = Vec::new();
                        for &id in &tokens {
                            if id < 0 || id >= n {
                                return Err(GenerateError::Invalid {
                                    param: "tokens",
                                    message: format!("token {id} is outside the vocabulary of {n} tokens"),
                                });
                            }
                            bytes.extend(vocab.token_to_piece(LlamaToken(id), false, None));
                        }
                        Ok(String::from_utf8_lossy(&bytes).into_owned())
                    }),
                };
                let _ = reply.send(result);
            }
        }
    }

    fn handle(&mut self, message: Control) {
        match message {
            Control::Swap(loaded, reply) => {
                let info = loaded.info.clone();
                // The old model and its context are freed here.
                self.current = Some(loaded);
                self.forget_caches();
                if let Ok(mut model) = self.shared.model.write() {
                    *model = Some(info.clone());
                }
                tracing::info!(model = %info.id, file = %info.file.display(), "model swapped in");
                let _ = reply.send(info);
            }
            other => self.control(other),
        }
    }

    fn forget_caches(&mut self) {
        for slot in &mut self.slots {
            slot.cached.clear();
        }
        self.publish_kv();
    }

    /// Makes the context run with `wanted` threads, recreating it (and losing every slot's
    /// cache) when the count changes. Only called with no slot running.
    fn apply_threads(&mut self, wanted: i32) {
        let Some(loaded) = self.current.take() else { return };
        if loaded.threads == wanted {
            self.current = Some(loaded);
            return;
        }
        let from = loaded.threads;
        self.forget_caches();
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

    /// Starts `job` in a slot; `false` if it must wait (deferred) for the running ones.
    fn start(&mut self, job: Job) -> bool {
        let Job { request, events, queued_at } = job;
        if events.is_closed() {
            return true; // The client left while queued.
        }
        if self.stall_on_request {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        let configured = self.settings.threads;
        let wanted = request
            .threads
            .map_or(configured, |n| i32::try_from(n).unwrap_or(configured).clamp(1, configured));
        if self.current.as_ref().is_some_and(|l| l.threads != wanted) {
            if self.running() > 0 {
                self.deferred = Some(Job { request, events, queued_at });
                return false;
            }
            self.apply_threads(wanted);
        }
        let Some(loaded) = self.current.as_mut() else {
            let _ = events.send(Event::Failed(GenerateError::NotLoaded));
            return true;
        };
        let context = self.settings.context;
        let info = loaded.info.clone();
        let template = &loaded.template;
        let prepared = loaded.cell.with_dependent(|model, _| {
            Ok::<_, GenerateError>((
                tokenize(model, template, &request)?,
                sampler_for(model, &request.sampling)?,
            ))
        });
        let (prompt, sampler) = match prepared {
            Ok((tokens, sampler)) => (Ok(tokens), sampler),
            Err(err) => {
                let _ = events.send(Event::Failed(err));
                return true;
            }
        };
        let tokens = match prompt {
            Ok(t) if t.is_empty() || t.len() >= context as usize => {
                let n = u32::try_from(t.len()).unwrap_or(u32::MAX);
                let _ =
                    events.send(Event::Failed(GenerateError::ContextOverflow { prompt_tokens: n, context }));
                return true;
            }
            Ok(t) => t,
            Err(err) => {
                let _ = events.send(Event::Failed(err));
                return true;
            }
        };
        let Some(index) = choose_slot(&self.slots, &tokens) else {
            return false;
        };
        let slot = &mut self.slots[index];
        let common = common_prefix(&slot.cached, &tokens).min(tokens.len() - 1);
        if common < slot.cached.len() {
            let from = u32::try_from(common).unwrap_or(0);
            let removed =
                loaded.cell.with_dependent_mut(|_, ctx| ctx.kv_cache_seq_rm(slot.seq, Some(from), None));
            if removed.is_err() {
                loaded.cell.with_dependent_mut(|_, ctx| {
                    let _ = ctx.clear_kv_cache_seq(Some(u32::try_from(slot.seq).unwrap_or(0)), None, None);
                });
                slot.cached.clear();
            } else {
                slot.cached.truncate(common);
            }
        }
        let prompt_tokens = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        let _ = events.send(Event::Started { prompt_tokens, model: info });
        self.tickets += 1;
        self.metrics.active.inc();
        let sampling = request.sampling;
        slot.run = Some(Running {
            ticket: self.tickets,
            events,
            sampler,
            text: TextStream::new(&sampling.stop),
            token_logprobs: Vec::with_capacity(usize::try_from(sampling.max_tokens).unwrap_or(0).min(4096)),
            sampling,
            prompt: tokens,
            cached_tokens: u32::try_from(slot.cached.len()).unwrap_or(0),
            generated: 0,
            pending: None,
            started: Instant::now(),
            waited: queued_at.elapsed(),
            prompt_done: None,
            first_token: None,
        });
        true
    }

    /// One batch: plan, evaluate, sample.
    fn step(&mut self, batch: &mut LlamaBatch) {
        let cancel_all = self.shared.cancel_all.load(Ordering::Relaxed);
        for i in 0..self.slots.len() {
            let gone = self.slots[i].run.as_ref().is_some_and(|r| cancel_all || r.events.is_closed());
            if gone {
                self.finish(i, FinishReason::Cancelled);
            }
        }
        let mut order: Vec<(u64, Need)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let r = s.run.as_ref()?;
                let prefill = if r.pending.is_some() { 0 } else { r.prompt.len() - s.cached.len() };
                Some((r.ticket, Need { slot: i, decode: r.pending.is_some(), prefill }))
            })
            .collect();
        order.sort_by_key(|(t, _)| *t);
        let needs: Vec<Need> = order.into_iter().map(|(_, n)| n).collect();
        let mut shares = plan(&needs, self.settings.batch_tokens());
        if shares.is_empty() {
            return;
        }
        // The plan decides who gets tokens (oldest first); the batch lists them by sequence id.
        // With one KV stream per sequence, llama.cpp splits a batch into micro-batches of
        // *consecutive, increasing* sequence ids (`split_equal`, sequential): in admission
        // order, four streams on sequences 2, 0, 3, 1 took three forward passes per step
        // instead of one, each reading every weight again.
        shares.sort_by_key(|share| self.slots[share.slot].seq);
        let Some(loaded) = self.current.as_mut() else {
            for i in 0..self.slots.len() {
                if self.slots[i].run.is_some() {
                    self.fail(i, GenerateError::NotLoaded);
                }
            }
            return;
        };
        // Fill the batch; remember where each slot's logits are.
        batch.clear();
        let mut logits_at: Vec<(usize, i32)> = Vec::new();
        let mut added = Ok(());
        for share in &shares {
            let slot = &self.slots[share.slot];
            let Some(run) = slot.run.as_ref() else { continue };
            let base = slot.cached.len();
            let tokens: Vec<LlamaToken> = if share.decode {
                run.pending.into_iter().collect()
            } else {
                run.prompt[base..base + share.tokens].to_vec()
            };
            let ends_prompt = !share.decode && base + share.tokens == run.prompt.len();
            for (k, token) in tokens.iter().enumerate() {
                let pos = i32::try_from(base + k).unwrap_or(i32::MAX);
                let logits = share.decode || (ends_prompt && k + 1 == tokens.len());
                added = added.and(batch.add(*token, pos, &[slot.seq], logits).map_err(|e| e.to_string()));
                if logits {
                    logits_at.push((share.slot, batch.n_tokens() - 1));
                }
            }
        }
        let decoded = added.and_then(|()| {
            loaded.cell.with_dependent_mut(|_, ctx| ctx.decode(batch).map_err(|e| e.to_string()))
        });
        if let Err(err) = decoded {
            tracing::error!(%err, "batch evaluation failed; failing its requests");
            for share in &shares {
                let seq = self.slots[share.slot].seq;
                loaded.cell.with_dependent_mut(|_, ctx| {
                    let _ = ctx.clear_kv_cache_seq(Some(u32::try_from(seq).unwrap_or(0)), None, None);
                });
                self.slots[share.slot].cached.clear();
                fail(&mut self.slots[share.slot], &self.metrics, GenerateError::Inference(err.clone()));
            }
            self.publish_kv();
            return;
        }
        // What was evaluated is now cached.
        let now = Instant::now();
        for share in &shares {
            let slot = &mut self.slots[share.slot];
            let Some(run) = slot.run.as_mut() else { continue };
            if share.decode {
                if let Some(t) = run.pending.take() {
                    slot.cached.push(t);
                }
            } else {
                let base = slot.cached.len();
                slot.cached.extend_from_slice(&run.prompt[base..base + share.tokens]);
                if slot.cached.len() == run.prompt.len() {
                    run.prompt_done = Some(now);
                }
            }
        }
        for (i, index) in logits_at {
            let outcome = {
                let context = self.settings.context as usize;
                let slot = &mut self.slots[i];
                let cached = slot.cached.len();
                let Some(run) = slot.run.as_mut() else { continue };
                loaded.cell.with_dependent_mut(|model, ctx| sample(model, ctx, run, index, cached, context))
            };
            if let Some(reason) = outcome {
                finish(&mut self.slots[i], &self.metrics, reason);
            }
        }
        self.publish_kv();
        self.shared.beat();
    }

    fn fail(&mut self, i: usize, err: GenerateError) {
        fail(&mut self.slots[i], &self.metrics, err);
    }

    fn finish(&mut self, i: usize, reason: FinishReason) {
        finish(&mut self.slots[i], &self.metrics, reason);
    }

    /// KV cells in use, per slot and in all.
    fn publish_kv(&self) {
        for slot in &self.slots {
            self.metrics.set_kv_used(slot.seq, slot.cached.len());
        }
    }
}

fn fail(slot: &mut Slot, metrics: &Metrics, err: GenerateError) {
    if let Some(run) = slot.run.take() {
        metrics.active.dec();
        slot.last_used = Instant::now();
        let _ = run.events.send(Event::Failed(err));
    }
}

/// Ends a slot's request: the rest of its text, `Done`, metrics; the slot keeps its cache.
fn finish(slot: &mut Slot, metrics: &Metrics, reason: FinishReason) {
    {
        let Some(mut run) = slot.run.take() else { return };
        slot.last_used = Instant::now();
        metrics.active.dec();
        let rest = run.text.finish();
        if !rest.is_empty() {
            let _ = run.events.send(Event::Token { text: rest, logprob: None });
        }
        let prompt_done = run.prompt_done.unwrap_or_else(Instant::now);
        let done = Completion {
            finish_reason: reason,
            prompt_tokens: u32::try_from(run.prompt.len()).unwrap_or(u32::MAX),
            cached_tokens: run.cached_tokens,
            completion_tokens: run.generated,
            prompt_time: prompt_done.duration_since(run.started),
            decode_time: run.first_token.map(|t| t.elapsed()).unwrap_or_default(),
            token_logprobs: std::mem::take(&mut run.token_logprobs),
        };
        let m = metrics;
        m.prompt_tokens.inc_by(u64::from(done.prompt_tokens));
        m.completion_tokens.inc_by(u64::from(done.completion_tokens));
        m.prompt_seconds.inc_by(done.prompt_time.as_secs_f64());
        m.decode_seconds.inc_by(done.decode_time.as_secs_f64());
        let evaluated = done.prompt_tokens.saturating_sub(done.cached_tokens);
        if done.prompt_time > Duration::ZERO && evaluated > 0 {
            m.prompt_tokens_per_second.set(f64::from(evaluated) / done.prompt_time.as_secs_f64());
        }
        if done.decode_time > Duration::ZERO && done.completion_tokens > 1 {
            let rate = f64::from(done.completion_tokens - 1) / done.decode_time.as_secs_f64();
            m.decode_tokens_per_second.set(rate);
            m.decode_rate.observe(rate);
        }
        tracing::debug!(
            slot = slot.seq,
            prompt = done.prompt_tokens,
            cached = done.cached_tokens,
            generated = done.completion_tokens,
            finish = ?done.finish_reason,
            waited_ms = run.waited.as_millis() as u64,
            "generation finished"
        );
        let _ = run.events.send(Event::Done(done));
    }
}

/// The prompt's tokens: the raw prompt (with the model's BOS), else the messages under the chat
/// template.
fn tokenize(
    model: &LlamaModel,
    template: &ChatTemplate,
    request: &Generate,
) -> Result<Vec<LlamaToken>, GenerateError> {
    if let Some(raw) = &request.raw_prompt {
        return Ok(model.vocab().tokenize(raw.as_bytes(), true, false));
    }
    let prompt = render(model, template, request)?;
    let vocab = model.vocab();
    let mut tokens = vocab.tokenize(prompt.as_bytes(), true, true);
    let bos = vocab.bos();
    if tokens.len() >= 2 && tokens[0] == bos && tokens[1] == bos {
        tokens.remove(0); // The template wrote BOS itself.
    }
    Ok(tokens)
}

/// The chat prompt text: a tool request by a Jinja template that takes `tools` in the
/// template's own format, anything else from the plain messages.
pub(crate) fn render(
    model: &LlamaModel,
    template: &ChatTemplate,
    request: &Generate,
) -> Result<String, GenerateError> {
    match template {
        ChatTemplate::Jinja(jinja) => {
            let rendered = match &request.tools {
                Some(chat) if jinja.takes_tools => jinja.render(&chat.messages, Some(&chat.tools), true),
                _ => {
                    let plain: Vec<serde_json::Value> = request
                        .messages
                        .iter()
                        .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
                        .collect();
                    jinja.render(&plain, None, true)
                }
            };
            rendered.map_err(|e| GenerateError::Template(e.to_string()))
        }
        ChatTemplate::Builtin(builtin) => {
            let messages = request
                .messages
                .iter()
                .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| GenerateError::Template("a message contains a NUL character".into()))?;
            model
                .apply_chat_template(builtin, &messages, true)
                .map_err(|e| GenerateError::Template(e.to_string()))
        }
    }
}

/// The idle slot for a prompt: the one whose cache shares the longest prefix with it, if that
/// prefix is at least half of what the slot holds (as llama-server's slot similarity); else an
/// empty slot, else the least recently used one. So an app's cached system prompt is not
/// thrown away for another app's request that shares only the template's first tokens.
fn choose_slot(slots: &[Slot], prompt: &[LlamaToken]) -> Option<usize> {
    let idle = || (0..slots.len()).filter(|&i| slots[i].run.is_none());
    let best = idle()
        .max_by_key(|&i| (common_prefix(&slots[i].cached, prompt), std::cmp::Reverse(slots[i].last_used)))?;
    let common = common_prefix(&slots[best].cached, prompt);
    if common > 0 && common * 2 >= slots[best].cached.len() {
        return Some(best);
    }
    idle().min_by_key(|&i| (!slots[i].cached.is_empty(), slots[i].last_used))
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Samples slot's next token from the logits at `index`, sends its text; the reason to stop, if
/// any. `cached`: tokens in the slot's sequence; `context`: the slot's window.
fn sample(
    model: &LlamaModel,
    ctx: &mut LlamaContext<'_>,
    run: &mut Running,
    index: i32,
    cached: usize,
    context: usize,
) -> Option<FinishReason> {
    let vocab = model.vocab();
    let token = run.sampler.sample(ctx, index);
    let logprob = run.sampling.logprobs.map(|n| logprob_of(ctx.get_logits_ith(index), token, n, model));
    if vocab.is_eog(token) {
        return Some(FinishReason::Stop);
    }
    run.token_logprobs.push(match &logprob {
        Some(l) => l.logprob,
        None => chosen_logprob(ctx.get_logits_ith(index), token),
    });
    run.generated += 1;
    run.first_token.get_or_insert_with(Instant::now);
    let bytes = vocab.token_to_piece(token, false, None);
    let released = run.text.push(&bytes);
    if run.events.send(super::Event::Token { text: released.text, logprob }).is_err() {
        return Some(FinishReason::Cancelled);
    }
    if released.stopped {
        return Some(FinishReason::Stop);
    }
    if run.generated >= run.sampling.max_tokens.max(1) || cached + 1 >= context {
        return Some(FinishReason::Length);
    }
    run.pending = Some(token);
    None
}
