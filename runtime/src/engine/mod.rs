//! The inference engine: llama.cpp on one owner thread, fed by a bounded queue.
//!
//! The async side holds an [`Engine`] handle. Each request carries its own event channel; the
//! owner thread tokenizes, evaluates and samples, sending [`Event`]s back. It runs up to
//! `api.parallel` requests at once in one context (continuous batching, see `worker.rs`). The thread never
//! waits on async code and async code never calls llama.cpp. A request whose receiver is dropped
//! (the client went away) is cancelled at the next token.
//!
//! Loading (at start and on reload) runs on a separate loader thread while the owner thread
//! keeps serving the old model; the loaded model is handed over between two requests.

mod backend;
pub(crate) mod jinja;
mod loaded;
mod plan;
mod sampling;
pub mod text;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::config::{Config, GenerationConfig};
use crate::metrics::{LoadLabels, Metrics};

pub use loaded::ModelInfo;

/// One chat message, as the chat template sees it.
#[derive(Clone, Debug)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The message text.
    pub content: String,
}

/// How to sample, with the configured defaults already applied.
#[derive(Clone, Debug)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1].
    pub top_p: f32,
    /// 0 = no top-k cut.
    pub top_k: u32,
    /// Seed of the random sampler; `None` picks one.
    pub seed: Option<u32>,
    /// Tokens generated at most.
    pub max_tokens: u32,
    /// Generation ends before the first of these strings; they are not returned.
    pub stop: Vec<String>,
    /// `Some(n)`: return each token's log-probability and the `n` most likely alternatives.
    pub logprobs: Option<u8>,
    /// Drops tokens below this share of the most likely token's probability (0 = off).
    pub min_p: f32,
    /// OpenAI's presence penalty, -2 to 2 (0 = off), over the last [`PENALTY_LAST_N`] tokens.
    pub presence_penalty: f32,
    /// OpenAI's frequency penalty, -2 to 2 (0 = off).
    pub frequency_penalty: f32,
    /// llama.cpp's repeat penalty (1 = off).
    pub repeat_penalty: f32,
    /// Token id → value added to its logit (-100 bans, 100 forces).
    pub logit_bias: Vec<(i32, f32)>,
    /// A GBNF grammar (root rule `root`) the answer must follow: from `response_format`, a
    /// tool call's schema, or `grammar`.
    pub grammar: Option<String>,
}

/// Tokens the penalties look back over (llama-server's default).
pub const PENALTY_LAST_N: i32 = 64;

impl Sampling {
    /// The configured defaults.
    pub fn defaults(config: &GenerationConfig) -> Self {
        Self {
            temperature: config.temperature,
            top_p: config.top_p,
            top_k: config.top_k,
            seed: None,
            max_tokens: config.max_tokens,
            stop: Vec::new(),
            logprobs: None,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repeat_penalty: 1.0,
            logit_bias: Vec::new(),
            grammar: None,
        }
    }
}

/// A generation request.
#[derive(Clone, Debug)]
pub struct Generate {
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// A raw prompt to complete instead of the conversation under the chat template
    /// (`/v1/completions`).
    pub raw_prompt: Option<String>,
    /// Sampling parameters.
    pub sampling: Sampling,
    /// llama.cpp threads for this request (the power mode's limit); `None` = `model.threads`.
    pub threads: Option<u32>,
    /// A tool request as the model's own Jinja template takes it. Used instead of `messages`
    /// when the template refers to `tools`; otherwise `messages` (which carry the generic tool
    /// prompt, calls and results as text) are rendered.
    pub tools: Option<Arc<ToolChat>>,
}

/// A tool request in the shape Hugging Face chat templates expect.
#[derive(Clone, Debug)]
pub struct ToolChat {
    /// The conversation: `role` (`system`, `user`, `assistant`, `tool`), `content` (text),
    /// an assistant's `tool_calls` (`function.arguments` as a JSON object), a tool result's
    /// `tool_call_id` and the called function's `name`.
    pub messages: Vec<serde_json::Value>,
    /// The request's `tools`.
    pub tools: Vec<serde_json::Value>,
}

/// A token's log-probability and its most likely alternatives.
#[derive(Clone, Debug, Serialize)]
pub struct TokenLogprob {
    /// The token's text (lossy UTF-8).
    pub token: String,
    /// Natural-log probability under the model's distribution.
    pub logprob: f32,
    /// The token's bytes.
    pub bytes: Vec<u8>,
    /// The most likely tokens at this position.
    pub top_logprobs: Vec<TopLogprob>,
}

/// One alternative token at a position.
#[derive(Clone, Debug, Serialize)]
pub struct TopLogprob {
    /// The token's text (lossy UTF-8).
    pub token: String,
    /// Natural-log probability.
    pub logprob: f32,
    /// The token's bytes.
    pub bytes: Vec<u8>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of generation token or a stop sequence.
    Stop,
    /// `max_tokens` or the context window was reached.
    Length,
    /// The client went away or the daemon is stopping.
    Cancelled,
}

/// Token counts and timings of a finished generation.
#[derive(Clone, Debug)]
pub struct Completion {
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Prompt tokens whose KV entries were reused from the previous request.
    pub cached_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Time to evaluate the prompt.
    pub prompt_time: Duration,
    /// Time to generate the tokens after the first.
    pub decode_time: Duration,
    /// Each generated token's log-probability (natural log), for the answer's confidence.
    pub token_logprobs: Vec<f32>,
}

/// What the engine sends back for a request, in order: `Started`, any number of `Token`s, then
/// `Done` — or a single `Failed`.
#[derive(Debug)]
pub enum Event {
    /// The prompt fits and evaluation begins.
    Started {
        /// Tokens in the prompt.
        prompt_tokens: u32,
        /// The model answering.
        model: Arc<ModelInfo>,
    },
    /// Text released by one token (may be empty while a stop sequence is undecided).
    Token {
        /// The text.
        text: String,
        /// Its log-probability, when asked for.
        logprob: Option<TokenLogprob>,
    },
    /// Generation ended.
    Done(Completion),
    /// The request failed before or during generation.
    Failed(GenerateError),
}

/// Why a request failed inside the engine.
#[derive(Clone, Debug, thiserror::Error)]
pub enum GenerateError {
    /// The prompt does not fit in the context window.
    #[error(
        "the prompt is {prompt_tokens} tokens but the model's context is {context} tokens; shorten the messages"
    )]
    ContextOverflow {
        /// Tokens in the prompt.
        prompt_tokens: u32,
        /// The context window.
        context: u32,
    },
    /// The chat template could not be applied to the messages.
    #[error("cannot apply the chat template: {0}")]
    Template(String),
    /// A sampling parameter the model cannot honour (a grammar llama.cpp rejects, a token id
    /// outside the vocabulary).
    #[error("{message}")]
    Invalid {
        /// The request parameter.
        param: &'static str,
        /// What is wrong.
        message: String,
    },
    /// llama.cpp failed while evaluating.
    #[error("inference failed: {0}")]
    Inference(String),
    /// No model is loaded.
    #[error("no model is loaded")]
    NotLoaded,
}

/// Why a request was not queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full.
    #[error("the engine queue is full ({0} requests waiting)")]
    QueueFull(usize),
    /// No model is loaded yet (or any more).
    #[error("the model is not loaded yet")]
    NotReady,
    /// The engine thread has stopped.
    #[error("the engine has stopped")]
    Stopped,
}

/// Why a model could not be loaded.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LoadError {
    /// The model file does not exist or cannot be read.
    #[error("cannot read model file {path}: {reason}")]
    Read {
        /// The configured path.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// llama.cpp rejected the file.
    #[error("llama.cpp could not load {path} (not a valid GGUF model, or an unsupported architecture)")]
    Model {
        /// The resolved path.
        path: String,
    },
    /// llama.cpp could not create a context (usually: not enough memory for `model.context`).
    #[error("llama.cpp could not create a context of {context} tokens for {path}")]
    Context {
        /// The resolved path.
        path: String,
        /// The requested context.
        context: u32,
    },
    /// The llama.cpp backend failed to start.
    #[error("llama.cpp backend: {0}")]
    Backend(String),
    /// The engine thread has stopped.
    #[error("the engine has stopped")]
    Stopped,
}

/// A queued request: the request and where its events go.
pub(crate) struct Job {
    request: Generate,
    events: mpsc::UnboundedSender<Event>,
    queued_at: Instant,
}

/// Messages to the owner thread outside the request queue.
pub(crate) enum Control {
    /// Replace the model (the old one is freed after the swap, once no request runs).
    Swap(Box<loaded::LoadedModel>, oneshot::Sender<Arc<ModelInfo>>),
    /// Tokenize text with the model's vocabulary (between two batches).
    Tokenize { text: String, add_special: bool, reply: oneshot::Sender<Result<Vec<Token>, GenerateError>> },
    /// Turn token ids back into text.
    Detokenize { tokens: Vec<i32>, reply: oneshot::Sender<Result<String, GenerateError>> },
}

/// One token of `tokenize`: its id and its text.
#[derive(Clone, Debug, Serialize)]
pub struct Token {
    /// The id.
    pub id: i32,
    /// Its text (lossy UTF-8 of its bytes).
    pub piece: String,
}

/// State shared between the handle and the owner thread.
#[derive(Debug)]
pub(crate) struct Shared {
    /// When the engine started; heartbeats are measured from it.
    epoch: Instant,
    /// Milliseconds after `epoch` of the owner thread's last sign of progress.
    heartbeat_ms: AtomicU64,
    /// The model being served.
    model: RwLock<Option<Arc<ModelInfo>>>,
    /// Set to cancel every running and queued generation (shutdown deadline passed).
    cancel_all: AtomicBool,
    /// Requests waiting in the queue.
    queued: std::sync::atomic::AtomicUsize,
}

impl Shared {
    pub(crate) fn beat(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }
}

/// Handle to the engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    jobs: crossbeam_channel::Sender<Job>,
    control: crossbeam_channel::Sender<Control>,
    shared: Arc<Shared>,
    settings: Arc<loaded::LoadSettings>,
    metrics: Arc<Metrics>,
    queue_capacity: usize,
    /// One load at a time.
    loading: Arc<Mutex<()>>,
    /// The owner thread, joined at shutdown.
    thread: crate::owner::OwnerThread,
}

impl Engine {
    /// Starts the owner thread (with no model: call [`Engine::load`]).
    pub fn start(config: &Config, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let queue_capacity = config.api.queue;
        let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(queue_capacity);
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            model: RwLock::new(None),
            cancel_all: AtomicBool::new(false),
            queued: std::sync::atomic::AtomicUsize::new(0),
        });
        let settings = Arc::new(loaded::LoadSettings::from_config(config));
        metrics.slots.set(i64::from(settings.parallel));
        metrics.kv_cells_per_slot.set(i64::from(settings.context));
        let worker = worker::Worker::new(shared.clone(), metrics.clone(), settings.clone());
        let thread = std::thread::Builder::new()
            .name("outpost-engine".into())
            .spawn(move || worker.run(jobs_rx, control_rx))?;
        Ok(Self {
            thread: crate::owner::OwnerThread::new("engine", thread),
            jobs: jobs_tx,
            control: control_tx,
            shared,
            settings,
            metrics,
            queue_capacity,
            loading: Arc::new(Mutex::new(())),
        })
    }

    /// The owner thread (it ends once every handle is dropped).
    pub fn thread(&self) -> crate::owner::OwnerThread {
        self.thread.clone()
    }

    /// Loads the model at the configured path (following symlinks as they are now) on a loader
    /// thread, then swaps it in between two requests. On failure the current model stays.
    pub async fn load(&self) -> Result<Arc<ModelInfo>, LoadError> {
        let _one_at_a_time = self.loading.lock().await;
        let settings = self.settings.clone();
        let (tx, rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("outpost-loader".into())
            .spawn(move || {
                let _ = tx.send(loaded::LoadedModel::load(&settings));
            })
            .map_err(|e| LoadError::Backend(format!("cannot start loader thread: {e}")))?;
        let result = match rx.await {
            Ok(result) => result,
            Err(_) => Err(LoadError::Backend("loader thread panicked".into())),
        };
        let loaded = match result {
            Ok(loaded) => loaded,
            Err(err) => {
                self.metrics.model_loads.get_or_create(&LoadLabels { result: "failed".into() }).inc();
                return Err(err);
            }
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        self.control.send(Control::Swap(Box::new(loaded), reply_tx)).map_err(|_| LoadError::Stopped)?;
        let info = reply_rx.await.map_err(|_| LoadError::Stopped)?;
        self.metrics.model_loads.get_or_create(&LoadLabels { result: "ok".into() }).inc();
        self.metrics.model_loaded.set(1);
        Ok(info)
    }

    /// Queues a request; its events arrive on the returned receiver. Dropping the receiver
    /// cancels the request.
    pub fn submit(&self, request: Generate) -> Result<mpsc::UnboundedReceiver<Event>, SubmitError> {
        if self.model().is_none() {
            return Err(SubmitError::NotReady);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let job = Job { request, events: tx, queued_at: Instant::now() };
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        self.metrics.queue_depth.inc();
        match self.jobs.try_send(job) {
            Ok(()) => Ok(rx),
            Err(err) => {
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                self.metrics.queue_depth.dec();
                Err(match err {
                    crossbeam_channel::TrySendError::Full(_) => SubmitError::QueueFull(self.queue_capacity),
                    crossbeam_channel::TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }

    /// The tokens of `text` under the loaded model's vocabulary (`add_special`: with BOS etc.).
    pub async fn tokenize(&self, text: String, add_special: bool) -> Result<Vec<Token>, GenerateError> {
        let (reply, rx) = oneshot::channel();
        self.control
            .send(Control::Tokenize { text, add_special, reply })
            .map_err(|_| GenerateError::NotLoaded)?;
        rx.await.map_err(|_| GenerateError::NotLoaded)?
    }

    /// The text of token ids under the loaded model's vocabulary.
    pub async fn detokenize(&self, tokens: Vec<i32>) -> Result<String, GenerateError> {
        let (reply, rx) = oneshot::channel();
        self.control.send(Control::Detokenize { tokens, reply }).map_err(|_| GenerateError::NotLoaded)?;
        rx.await.map_err(|_| GenerateError::NotLoaded)?
    }

    /// The model being served.
    pub fn model(&self) -> Option<Arc<ModelInfo>> {
        self.shared.model.read().ok().and_then(|m| m.clone())
    }

    /// Requests waiting for the engine.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::SeqCst)
    }

    /// How long ago the owner thread last showed progress. It beats while idle and at every
    /// token, so a large value means llama.cpp is stuck.
    pub fn heartbeat_age(&self) -> Duration {
        let now = self.shared.epoch.elapsed();
        let last = Duration::from_millis(self.shared.heartbeat_ms.load(Ordering::Relaxed));
        now.saturating_sub(last)
    }

    /// Cancels every running and queued generation (used when the shutdown deadline passes).
    pub fn cancel_all(&self) {
        self.shared.cancel_all.store(true, Ordering::SeqCst);
    }
}

pub(crate) use backend::backend;
