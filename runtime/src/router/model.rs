//! The router model itself: tokenizer, ONNX Runtime session and the `router.json` that
//! describes them. Not thread-safe by design: one owner thread holds it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::Digest;
use tokenizers::Tokenizer;

use super::{locate, RouterConfig, RouterError};

/// How long prompts are cut to the encoder's input.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "strategy", rename_all = "snake_case")]
pub enum Truncation {
    /// Keep the first `max_tokens` tokens (special tokens included).
    Head {
        /// Encoder input length.
        max_tokens: usize,
    },
    /// Keep the first `head` and the last `tail` tokens of the text (special tokens added
    /// around them).
    HeadTail {
        /// Tokens kept from the start.
        head: usize,
        /// Tokens kept from the end.
        tail: usize,
    },
}

/// `router.json`: what the files are and how to feed them. Unknown fields are kept out.
#[derive(Clone, Debug, Deserialize)]
pub struct Manifest {
    /// The router's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Input cut.
    pub truncation: Truncation,
    /// The recommended complexity threshold for sending a prompt to the cloud.
    pub default_threshold: f32,
    /// Length of the embedding.
    #[serde(default = "default_dim")]
    pub embedding_dim: usize,
    /// sha256 of the files, checked at load.
    #[serde(default)]
    pub sha256: std::collections::BTreeMap<String, String>,
}

fn default_dim() -> usize {
    384
}

/// One prompt's score.
#[derive(Clone, Debug)]
pub struct Score {
    /// Probability that the local model fails on the prompt, in [0, 1].
    pub complexity: f32,
    /// L2-normalized sentence embedding.
    pub embedding: Vec<f32>,
    /// Encoder input tokens (after truncation).
    pub tokens: usize,
    /// Whether the prompt was cut.
    pub truncated: bool,
    /// Time spent (tokenizing and running the model).
    pub elapsed: Duration,
}

/// A loaded router.
pub struct RouterModel {
    tokenizer: Tokenizer,
    session: ort::session::Session,
    manifest: Manifest,
    dir: PathBuf,
}

impl std::fmt::Debug for RouterModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterModel").field("dir", &self.dir).field("manifest", &self.manifest).finish()
    }
}

/// ONNX Runtime's environment: one per process, created on the first load.
static ENVIRONMENT: std::sync::OnceLock<Result<ort::environment::Environment, RouterError>> =
    std::sync::OnceLock::new();

/// Loads ONNX Runtime's library and creates the environment, once per process (a second
/// router in the same process, in tests and benchmarks, shares them).
fn environment(config: &RouterConfig) -> Result<ort::environment::Environment, RouterError> {
    ENVIRONMENT
        .get_or_init(|| {
            let (path, origin) = locate::onnxruntime(config);
            if !path.exists() {
                return Err(RouterError::OnnxRuntime {
                    path,
                    reason: format!(
                        "not found (from {origin}); run scripts/setup.sh or set router.onnxruntime"
                    ),
                });
            }
            let fail = |reason: String| RouterError::OnnxRuntime { path: path.clone(), reason };
            ort::init_from(&path)
                .map_err(|e| fail(e.to_string()))?
                .with_name("outpost-router")
                .build()
                .map_err(|e| fail(e.to_string()))
        })
        .clone()
}

fn sha256_file(path: &Path) -> Result<String, RouterError> {
    let mut file = std::fs::File::open(path).map_err(|e| RouterError::read(path, e))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| RouterError::read(path, e))?;
    Ok(hex_string(&hasher.finalize()))
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl RouterModel {
    /// Loads the router named by the config (or the shipped one), checking the files' hashes.
    pub fn load(config: &RouterConfig) -> Result<Self, RouterError> {
        let (dir, origin) = locate::router_dir(config);
        let manifest_path = dir.join("router.json");
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| RouterError::Read {
            path: manifest_path.clone(),
            reason: format!("{e} (router directory from {origin})"),
        })?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| RouterError::Invalid { path: manifest_path.clone(), reason: e.to_string() })?;
        for (file, expected) in &manifest.sha256 {
            let path = dir.join(file);
            let actual = sha256_file(&path)?;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(RouterError::Invalid {
                    path,
                    reason: format!("sha256 is {actual}, router.json says {expected}"),
                });
            }
        }
        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| RouterError::Invalid { path: tokenizer_path.clone(), reason: e.to_string() })?;
        tokenizer.with_padding(None);
        if matches!(manifest.truncation, Truncation::HeadTail { .. }) {
            tokenizer
                .with_truncation(None)
                .map_err(|e| RouterError::Invalid { path: tokenizer_path.clone(), reason: e.to_string() })?;
        }

        let environment = environment(config)?;
        let model_path = dir.join("router.onnx");
        let threads = usize::try_from(config.threads).unwrap_or(1);
        let ort_err =
            |e: ort::Error| RouterError::Invalid { path: model_path.clone(), reason: e.to_string() };
        let session = ort::session::Session::builder(&environment)
            .map_err(ort_err)?
            .with_intra_threads(threads)
            .map_err(|e| ort_err(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| ort_err(e.into()))?
            // Spinning threads would steal cycles from llama.cpp between prompts.
            .with_intra_op_spinning(false)
            .map_err(|e| ort_err(e.into()))?
            .commit_from_file(&model_path)
            .map_err(ort_err)?;
        let model = Self { tokenizer, session, manifest, dir };
        // One warm-up pass: checks the graph's inputs and outputs now, not on the first request.
        model.check()
    }

    fn check(mut self) -> Result<Self, RouterError> {
        let score = self.score("Is the router working?")?;
        if score.embedding.len() != self.manifest.embedding_dim {
            return Err(RouterError::Invalid {
                path: self.dir.join("router.onnx"),
                reason: format!(
                    "embedding has {} values, router.json says {}",
                    score.embedding.len(),
                    self.manifest.embedding_dim
                ),
            });
        }
        Ok(self)
    }

    /// The router's description.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The directory it was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The encoder input for a text, cut as `router.json` says.
    pub fn encode(&self, text: &str) -> Result<(Vec<i64>, bool), RouterError> {
        let encoding = self.tokenizer.encode(text, true).map_err(|e| RouterError::Tokenize(e.to_string()))?;
        let ids = encoding.get_ids();
        let truncated = !encoding.get_overflowing().is_empty();
        match self.manifest.truncation {
            Truncation::Head { max_tokens } => {
                let n = ids.len().min(max_tokens.max(2));
                let mut out: Vec<i64> = ids[..n].iter().map(|&i| i64::from(i)).collect();
                let cut = truncated || n < ids.len();
                if n < ids.len() {
                    // Keep the closing special token.
                    if let (Some(last), Some(&sep)) = (out.last_mut(), ids.last()) {
                        *last = i64::from(sep);
                    }
                }
                Ok((out, cut))
            }
            Truncation::HeadTail { head, tail } => {
                let special = encoding.get_special_tokens_mask();
                let lead = special.iter().take_while(|&&s| s == 1).count();
                let trail = special.iter().rev().take_while(|&&s| s == 1).count();
                let body = &ids[lead.min(ids.len())..ids.len().saturating_sub(trail).max(lead)];
                let to_i64 = |s: &[u32]| s.iter().map(|&i| i64::from(i)).collect::<Vec<_>>();
                if body.len() <= head + tail {
                    return Ok((to_i64(ids), false));
                }
                let mut out = to_i64(&ids[..lead]);
                out.extend(to_i64(&body[..head]));
                out.extend(to_i64(&body[body.len() - tail..]));
                out.extend(to_i64(&ids[ids.len() - trail..]));
                Ok((out, true))
            }
        }
    }

    /// Scores one prompt.
    pub fn score(&mut self, text: &str) -> Result<Score, RouterError> {
        let start = Instant::now();
        let (ids, truncated) = self.encode(text)?;
        let n = ids.len();
        let mask = vec![1_i64; n];
        let run_err = |e: ort::Error| RouterError::Run(e.to_string());
        let input_ids = ort::value::Tensor::from_array(([1_usize, n], ids)).map_err(run_err)?;
        let attention = ort::value::Tensor::from_array(([1_usize, n], mask)).map_err(run_err)?;
        let outputs = self
            .session
            .run(ort::inputs!["input_ids" => input_ids, "attention_mask" => attention])
            .map_err(run_err)?;
        let (_, complexity) = outputs
            .get("complexity")
            .ok_or_else(|| RouterError::Run("the model has no `complexity` output".into()))?
            .try_extract_tensor::<f32>()
            .map_err(run_err)?;
        let (_, embedding) = outputs
            .get("embedding")
            .ok_or_else(|| RouterError::Run("the model has no `embedding` output".into()))?
            .try_extract_tensor::<f32>()
            .map_err(run_err)?;
        let complexity = complexity.first().copied().unwrap_or(f32::NAN);
        if !complexity.is_finite() {
            return Err(RouterError::Run(format!("complexity is {complexity}")));
        }
        Ok(Score {
            complexity: complexity.clamp(0.0, 1.0),
            embedding: embedding.to_vec(),
            tokens: n,
            truncated,
            elapsed: start.elapsed(),
        })
    }
}
