//! Configuration: a base TOML file plus `config.d/*.toml` drop-ins, merged by name, typed and
//! validated once.
//!
//! Loading has three stages (as Zincati and aziot do it): each file is parsed on its own (so a
//! syntax error names its file), the tables are merged key by key in file-name order (a drop-in
//! overrides single keys, not whole sections), and the merged value is deserialized into
//! [`Config`] and validated. Every error names the file that set the offending key, the key, and
//! the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where `outpost serve` looks for its base file when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/outpost/outpost.toml";

/// The name of the drop-in directory, beside the base file.
pub const DROP_IN_DIR: &str = "config.d";

/// The whole runtime configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The local model and how llama.cpp runs it.
    pub model: ModelConfig,
    /// The HTTP API on the Unix socket.
    pub api: ApiConfig,
    /// Defaults for requests that do not set their own sampling parameters.
    pub generation: GenerationConfig,
    /// The prompt router.
    pub router: crate::router::RouterConfig,
    /// The routing policy.
    pub policy: crate::policy::PolicyConfig,
    /// The battery signal and power modes.
    pub power: crate::power::PowerConfig,
    /// The cloud LLM.
    pub cloud: crate::cloud::CloudConfig,
    /// The offline response cache.
    pub cache: crate::cache::CacheConfig,
}

/// `[model]`: the GGUF file and llama.cpp's runtime parameters.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// The GGUF file to serve. Usually a path through the updater's `current` symlink, so that
    /// `POST /admin/reload` picks up a new version without a config change.
    pub path: PathBuf,
    /// The context window (llama.cpp `n_ctx`) in tokens: prompt plus answer must fit in it.
    pub context: u32,
    /// CPU threads for llama.cpp (prompt processing and decoding).
    pub threads: u32,
    /// Prompt tokens evaluated per llama.cpp batch (`n_batch`).
    pub batch: u32,
    /// Layers to offload to a GPU (CUDA builds on Jetson); 0 keeps everything on the CPU.
    pub gpu_layers: u32,
    /// Flash attention: `on`, `off` or `auto` (llama.cpp decides). Unset: `off` on the CPU (it
    /// made decoding at 800 tokens of context 28 % slower on our x86 test machine) and `auto`
    /// when layers are offloaded to a GPU.
    pub flash_attention: Option<FlashAttention>,
    /// A chat template to use instead of the one in the GGUF: a llama.cpp template name such as
    /// `chatml`, `llama3`, `gemma`, or a template text. Unset: the GGUF's own template, else
    /// ChatML.
    pub chat_template: Option<String>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/outpost/models/current/model.gguf"),
            context: 4096,
            threads: std::thread::available_parallelism()
                .map(|n| u32::try_from(n.get()).unwrap_or(4))
                .unwrap_or(4),
            batch: 512,
            gpu_layers: 0,
            flash_attention: None,
            chat_template: None,
        }
    }
}

/// `model.flash_attention`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlashAttention {
    /// Always.
    On,
    /// Never.
    Off,
    /// llama.cpp decides per backend.
    Auto,
}

impl ModelConfig {
    /// The flash-attention policy in force, with the default applied.
    pub fn flash_attention(&self) -> FlashAttention {
        self.flash_attention.unwrap_or(if self.gpu_layers > 0 {
            FlashAttention::Auto
        } else {
            FlashAttention::Off
        })
    }
}

/// `[api]`: the Unix socket and who may use it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The Unix socket apps connect to. A stale socket file is removed at start; the socket is
    /// created with mode 0660.
    pub socket: PathBuf,
    /// The group that owns the socket (apps in this group may connect). Unset: the daemon's group.
    pub group: Option<String>,
    /// Uids besides root allowed to call `/admin/*` (checked from the socket's peer credentials).
    pub admin_uids: Vec<u32>,
    /// Requests waiting for the engine beyond the one it is running; more get 503.
    pub queue: usize,
    /// How long SIGTERM waits for in-flight requests before cancelling them.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/outpost/outpost.sock"),
            group: None,
            admin_uids: Vec::new(),
            queue: 16,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// `[generation]`: defaults applied when a request leaves a parameter out.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationConfig {
    /// Tokens generated at most when a request sets no `max_tokens`.
    pub max_tokens: u32,
    /// Sampling temperature when a request sets none (0 = greedy).
    pub temperature: f32,
    /// Nucleus sampling mass when a request sets none.
    pub top_p: f32,
    /// Top-k cut when a request sets none (0 = off).
    pub top_k: u32,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self { max_tokens: 512, temperature: 0.7, top_p: 0.95, top_k: 40 }
    }
}

/// A configuration that could not be loaded: which file, which key, why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key has a value of the wrong type, is unknown, or is out of range.
    #[error("config file {path}: key `{key}`: {reason}")]
    Key {
        /// The file that set the key (the base file for keys no file set).
        path: PathBuf,
        /// The dotted key, e.g. `model.context`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The files a configuration was merged from, remembering which file set each key.
struct Merged {
    value: toml::Table,
    /// Dotted key → the file that set it last.
    origin: BTreeMap<String, PathBuf>,
    base: PathBuf,
}

impl Merged {
    fn file_for(&self, key: &str) -> PathBuf {
        // The longest recorded key that is `key` or a prefix of it at a dot boundary.
        let mut probe = key.to_owned();
        loop {
            if let Some(path) = self.origin.get(&probe) {
                return path.clone();
            }
            match probe.rfind('.') {
                Some(i) => probe.truncate(i),
                None => return self.base.clone(),
            }
        }
    }

    fn key_error(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Key { path: self.file_for(key), key: key.to_owned(), reason: reason.into() }
    }
}

impl Config {
    /// Loads the base file (which must exist when `explicit`, else may be absent) and the
    /// drop-ins in `config.d/` beside it, then validates the result.
    pub fn load(base: &Path, explicit: bool) -> Result<Self, ConfigError> {
        let mut files = Vec::new();
        if explicit || base.exists() {
            files.push(base.to_path_buf());
        }
        let drop_in_dir = base.parent().unwrap_or_else(|| Path::new(".")).join(DROP_IN_DIR);
        files.extend(drop_ins(&drop_in_dir)?);
        let merged = merge_files(base, &files)?;
        Self::from_merged(&merged)
    }

    /// Parses and validates one TOML text, as if it were the whole configuration in `path`.
    pub fn from_toml_str(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let table = parse(path, text)?;
        let mut merged =
            Merged { value: toml::Table::new(), origin: BTreeMap::new(), base: path.to_path_buf() };
        merge_into(&mut merged.value, table, "", path, &mut merged.origin);
        Self::from_merged(&merged)
    }

    fn from_merged(merged: &Merged) -> Result<Self, ConfigError> {
        let value = toml::Value::Table(merged.value.clone());
        let config: Config = serde_path_to_error::deserialize(value).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let message = inner.message().trim().to_owned();
            // For an unknown field, name the field itself rather than its table.
            let key = match unknown_field(&message) {
                Some(field) if path == "." || path.is_empty() => field,
                Some(field) if path.rsplit('.').next() != Some(field.as_str()) => format!("{path}.{field}"),
                _ => path,
            };
            merged.key_error(&key, message)
        })?;
        config.validate(merged)?;
        Ok(config)
    }

    fn validate(&self, merged: &Merged) -> Result<(), ConfigError> {
        let m = &self.model;
        if m.path.as_os_str().is_empty() {
            return Err(merged.key_error("model.path", "must not be empty"));
        }
        if !(64..=1_048_576).contains(&m.context) {
            return Err(merged.key_error(
                "model.context",
                format!("must be between 64 and 1048576 tokens (got {})", m.context),
            ));
        }
        if !(1..=256).contains(&m.threads) {
            return Err(
                merged.key_error("model.threads", format!("must be between 1 and 256 (got {})", m.threads))
            );
        }
        if !(1..=m.context).contains(&m.batch) {
            return Err(merged.key_error(
                "model.batch",
                format!("must be between 1 and model.context ({}) (got {})", m.context, m.batch),
            ));
        }
        let a = &self.api;
        if a.socket.as_os_str().is_empty() || a.socket.file_name().is_none() {
            return Err(merged.key_error("api.socket", "must be a path to a socket file"));
        }
        if a.socket.as_os_str().len() > 107 {
            return Err(
                merged.key_error("api.socket", "is longer than the 107 bytes a Unix socket path may have")
            );
        }
        if a.queue == 0 || a.queue > 4096 {
            return Err(
                merged.key_error("api.queue", format!("must be between 1 and 4096 (got {})", a.queue))
            );
        }
        let g = &self.generation;
        if g.max_tokens == 0 {
            return Err(merged.key_error("generation.max_tokens", "must be at least 1"));
        }
        if !(0.0..=2.0).contains(&g.temperature) {
            return Err(merged.key_error("generation.temperature", "must be between 0 and 2"));
        }
        if !(g.top_p > 0.0 && g.top_p <= 1.0) {
            return Err(merged.key_error("generation.top_p", "must be in (0, 1]"));
        }
        let section = |name: &str, r: Result<(), (&'static str, String)>| {
            r.map_err(|(key, reason)| merged.key_error(&format!("{name}.{key}"), reason))
        };
        section("router", self.router.validate())?;
        section("policy", self.policy.validate())?;
        section("power", self.power.validate())?;
        section("cloud", self.cloud.validate())?;
        section("cache", self.cache.validate())?;
        Ok(())
    }
}

/// serde's message for an unknown field starts "unknown field `name`".
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next().map(str::to_owned)
}

/// The `*.toml` files in a drop-in directory, sorted by name; none if it does not exist.
fn drop_ins(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ConfigError::Read { path: dir.to_path_buf(), source }),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ConfigError::Read { path: dir.to_path_buf(), source })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn parse(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|err| ConfigError::Syntax {
        path: path.to_path_buf(),
        message: err.to_string().trim().replace('\n', " "),
    })
}

fn merge_files(base: &Path, files: &[PathBuf]) -> Result<Merged, ConfigError> {
    let mut merged = Merged { value: toml::Table::new(), origin: BTreeMap::new(), base: base.to_path_buf() };
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|source| ConfigError::Read { path: file.clone(), source })?;
        let table = parse(file, &text)?;
        merge_into(&mut merged.value, table, "", file, &mut merged.origin);
    }
    Ok(merged)
}

/// Merges `from` into `into`: tables merge recursively, any other value replaces.
fn merge_into(
    into: &mut toml::Table,
    from: toml::Table,
    prefix: &str,
    file: &Path,
    origin: &mut BTreeMap<String, PathBuf>,
) {
    for (key, value) in from {
        let dotted = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(table)) => {
                merge_into(existing, table, &dotted, file, origin);
            }
            (_, value) => {
                origin.insert(dotted, file.to_path_buf());
                into.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn drop_ins_override_single_keys_in_name_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = write(
            dir.path(),
            "outpost.toml",
            "[model]\npath = \"/m/a.gguf\"\ncontext = 2048\nthreads = 2\n[api]\nsocket = \"/tmp/x.sock\"\n",
        );
        write(dir.path(), "config.d/20-late.toml", "[model]\nthreads = 3\n");
        write(dir.path(), "config.d/10-early.toml", "[model]\nthreads = 1\ncontext = 1024\n");
        write(dir.path(), "config.d/README", "not toml, ignored");
        let config = Config::load(&base, true).expect("loads");
        assert_eq!(config.model.path, PathBuf::from("/m/a.gguf"));
        assert_eq!(config.model.context, 1024);
        assert_eq!(config.model.threads, 3);
        assert_eq!(config.api.socket, PathBuf::from("/tmp/x.sock"));
    }

    #[test]
    fn errors_name_the_file_that_set_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = write(dir.path(), "outpost.toml", "[model]\ncontext = 2048\n");
        let drop_in = write(dir.path(), "config.d/50-bad.toml", "[model]\ncontext = 0\n");
        let err = Config::load(&base, true).expect_err("context 0 is invalid");
        let text = err.to_string();
        assert!(text.contains(&drop_in.display().to_string()), "{text}");
        assert!(text.contains("model.context"), "{text}");
        assert!(text.contains("between 64"), "{text}");
    }

    #[test]
    fn wrong_type_and_unknown_key_are_named() {
        let p = Path::new("/etc/outpost/outpost.toml");
        let err = Config::from_toml_str(p, "[model]\ncontext = \"big\"\n").expect_err("type");
        assert!(err.to_string().contains("key `model.context`"), "{err}");
        let err = Config::from_toml_str(p, "[model]\ncontxt = 10\n").expect_err("unknown");
        assert!(err.to_string().contains("key `model.contxt`"), "{err}");
        let err = Config::from_toml_str(p, "[modle]\n").expect_err("unknown section");
        assert!(err.to_string().contains("key `modle`"), "{err}");
        let err = Config::from_toml_str(p, "[model]\nflash_attention = \"sometimes\"\n").expect_err("enum");
        assert!(err.to_string().contains("key `model.flash_attention`"), "{err}");
        let err = Config::from_toml_str(p, "[api]\nshutdown_timeout = \"soon\"\n").expect_err("dur");
        assert!(err.to_string().contains("api.shutdown_timeout"), "{err}");
    }

    #[test]
    fn syntax_error_names_the_file() {
        let err = Config::from_toml_str(Path::new("/x/y.toml"), "[model\n").expect_err("syntax");
        assert!(matches!(err, ConfigError::Syntax { .. }));
        assert!(err.to_string().contains("/x/y.toml"), "{err}");
    }

    #[test]
    fn missing_default_base_is_fine_but_explicit_must_exist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("outpost.toml");
        let config = Config::load(&base, false).expect("defaults");
        assert_eq!(config.model.context, 4096);
        assert_eq!(config.model.flash_attention(), FlashAttention::Off, "off on the CPU by default");
        let gpu = Config::from_toml_str(&base, "[model]\ngpu_layers = 99\n").expect("gpu");
        assert_eq!(gpu.model.flash_attention(), FlashAttention::Auto);
        assert!(matches!(Config::load(&base, true), Err(ConfigError::Read { .. })));
    }
}
