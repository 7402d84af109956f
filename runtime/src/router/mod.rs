//! The prompt router: a small ONNX model (sentence encoder plus heads) run by ONNX Runtime on
//! an owner thread, scoring each prompt's complexity (the probability that the local model
//! fails on it) and embedding it (for the response cache).
//!
//! The async side holds a [`Router`] handle; prompts go to the owner thread through a bounded
//! queue, each with its own reply channel. A full queue or a failed run is an error the caller
//! routes around (the policy treats an unknown complexity as "answer locally").

mod config;
pub mod locate;
mod model;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

pub use config::RouterConfig;
pub use model::{Manifest, RouterModel, Score, Truncation};

use crate::metrics::Metrics;

/// Why the router could not load or score.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RouterError {
    /// A router file could not be read.
    #[error("cannot read router file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// A router file is not what `router.json` says, or not a usable model.
    #[error("router file {path} is not usable: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// ONNX Runtime's library could not be loaded.
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    OnnxRuntime {
        /// The library path tried.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The prompt could not be tokenized.
    #[error("cannot tokenize the prompt: {0}")]
    Tokenize(String),
    /// ONNX Runtime failed on the prompt.
    #[error("router inference failed: {0}")]
    Run(String),
    /// Too many prompts are waiting.
    #[error("the router queue is full")]
    QueueFull,
    /// The owner thread is gone.
    #[error("the router has stopped")]
    Stopped,
}

impl RouterError {
    fn read(path: &std::path::Path, err: std::io::Error) -> Self {
        Self::Read { path: path.to_path_buf(), reason: err.to_string() }
    }
}

/// What the rest of the daemon knows about the loaded router.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RouterInfo {
    /// `router.json` name.
    pub name: String,
    /// `router.json` version.
    pub version: String,
    /// The directory it was loaded from.
    pub dir: PathBuf,
    /// Its recommended cloud threshold.
    pub default_threshold: f32,
}

struct Job {
    text: String,
    reply: oneshot::Sender<Result<Score, RouterError>>,
}

/// Handle to the router's owner thread; cheap to clone.
#[derive(Clone)]
pub struct Router {
    jobs: crossbeam_channel::Sender<Job>,
    info: Arc<RouterInfo>,
    metrics: Arc<Metrics>,
    /// The owner thread, joined at shutdown.
    thread: crate::owner::OwnerThread,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("info", &self.info).finish()
    }
}

impl Router {
    /// Loads the router on a new owner thread and waits for the result (blocking: call it
    /// from a blocking context, e.g. before serving or in `spawn_blocking`).
    pub fn start(config: &RouterConfig, metrics: Arc<Metrics>) -> Result<Self, RouterError> {
        let (jobs, rx) = crossbeam_channel::bounded::<Job>(config.queue);
        let (loaded_tx, loaded_rx) = std::sync::mpsc::sync_channel(1);
        let config = config.clone();
        let thread = std::thread::Builder::new()
            .name("outpost-router".into())
            .spawn(move || {
                let mut model = match RouterModel::load(&config) {
                    Ok(model) => {
                        let m = model.manifest();
                        let info = RouterInfo {
                            name: m.name.clone(),
                            version: m.version.clone(),
                            dir: model.dir().to_path_buf(),
                            default_threshold: m.default_threshold,
                        };
                        let _ = loaded_tx.send(Ok(info));
                        model
                    }
                    Err(err) => {
                        let _ = loaded_tx.send(Err(err));
                        return;
                    }
                };
                for job in rx {
                    if job.reply.is_closed() {
                        continue;
                    }
                    let _ = job.reply.send(model.score(&job.text));
                }
            })
            .map_err(|e| RouterError::Run(format!("cannot start the router thread: {e}")))?;
        let info = loaded_rx.recv().map_err(|_| RouterError::Stopped)??;
        let thread = crate::owner::OwnerThread::new("router", thread);
        Ok(Self { jobs, info: Arc::new(info), metrics, thread })
    }

    /// Scores a prompt on the owner thread.
    pub async fn score(&self, text: String) -> Result<Score, RouterError> {
        let (reply, rx) = oneshot::channel();
        self.jobs.try_send(Job { text, reply }).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(_) => RouterError::QueueFull,
            crossbeam_channel::TrySendError::Disconnected(_) => RouterError::Stopped,
        })?;
        let score = rx.await.map_err(|_| RouterError::Stopped)??;
        self.metrics.router_seconds.observe(score.elapsed.as_secs_f64());
        Ok(score)
    }

    /// The owner thread (it ends once every handle is dropped).
    pub fn thread(&self) -> crate::owner::OwnerThread {
        self.thread.clone()
    }

    /// The loaded router.
    pub fn info(&self) -> &RouterInfo {
        &self.info
    }
}

/// Scoring time below which the router is negligible next to local prefill; used in docs and
/// the benchmark's summary.
pub const BUDGET_128_TOKENS: Duration = Duration::from_millis(20);

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped router, run by this crate (Rust tokenizer + ONNX Runtime), gives what the
    /// build script recorded in `router.json`'s `check_vectors` (Python tokenizer + ONNX
    /// Runtime): the same token counts, complexities and embeddings.
    #[test]
    fn shipped_router_matches_its_recorded_check_vectors() {
        let mut model = match RouterModel::load(&RouterConfig::default()) {
            Ok(model) => model,
            Err(err) => panic!("the shipped router must load (run scripts/setup.sh): {err}"),
        };
        let text = std::fs::read_to_string(model.dir().join("router.json")).expect("router.json");
        let manifest: serde_json::Value = serde_json::from_str(&text).expect("json");
        let vectors = manifest["check_vectors"].as_array().expect("check_vectors");
        assert!(vectors.len() >= 5);
        for v in vectors {
            let prompt = v["prompt"].as_str().expect("prompt");
            let score = model.score(prompt).expect("score");
            assert_eq!(score.tokens as u64, v["n_tokens"].as_u64().expect("n_tokens"), "{prompt}");
            let expected = v["complexity"].as_f64().expect("complexity") as f32;
            // ONNX Runtime's int8 kernels differ by CPU (the vectors were recorded on an Intel
            // Sapphire Rapids with AMX; on an AMD EPYC with AVX-512 VNNI the complexity moved by
            // 2.8e-3 and embedding components by up to 1.3e-2). A pipeline error (pooling,
            // tokenizer, truncation) moves them by far more.
            assert!(
                (score.complexity - expected).abs() < 5e-3,
                "{prompt}: {} vs {expected}",
                score.complexity
            );
            let norm: f32 = score.embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-3, "embedding is L2-normalized: {norm}");
            for (got, want) in score.embedding.iter().zip(v["embedding_head8"].as_array().expect("head8")) {
                let want = want.as_f64().expect("f64") as f32;
                assert!((got - want).abs() < 2.5e-2, "{prompt}: embedding {got} vs {want}");
            }
        }
    }

    #[test]
    fn long_prompts_are_cut_as_router_json_says() {
        let model = RouterModel::load(&RouterConfig::default()).expect("router loads");
        let long = "word ".repeat(2000);
        let (ids, truncated) = model.encode(&long).expect("encode");
        assert!(truncated);
        match model.manifest().truncation {
            Truncation::Head { max_tokens } => assert_eq!(ids.len(), max_tokens),
            Truncation::HeadTail { head, tail } => assert!(ids.len() <= head + tail + 2),
        }
        let (short, cut) = model.encode("short").expect("encode");
        assert!(!cut && short.len() < 8);
    }
}
