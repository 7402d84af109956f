//! Configuration: a base TOML file plus `config.d/*.toml` drop-ins, merged by name, typed and
//! validated once.
//!
//! Loading has three stages (as Zincati and aziot do it): each file is parsed on its own (so a
//! syntax error names its file), the tables are merged key by key in file-name order (a drop-in
//! overrides single keys, not whole sections), and the merged value is deserialized into
//! [`Config`] and validated. Every error names the file that set the offending key, the key, and
//! the reason.

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
    /// Fleet control over MQTT (`docs/fleet.md`); no section, no fleet control.
    pub mqtt: Option<outpost_common::mqtt::MqttConfig>,
    /// `[mqtt]` checked (set by validation).
    #[serde(skip)]
    pub fleet: Option<outpost_common::mqtt::MqttSettings>,
    /// The base file this configuration was loaded from and whether it was given explicitly
    /// (for `config.set`, which writes a drop-in beside it).
    #[serde(skip)]
    pub loaded_from: Option<(PathBuf, bool)>,
}

/// Where the runtime keeps fleet state (seen job ids, the telemetry buffer) unless
/// `mqtt.state_dir` says otherwise: beside the cache, in systemd's `StateDirectory=`.
pub const DEFAULT_FLEET_STATE_DIR: &str = "/var/lib/outpost/fleet";

/// The drop-in `config.set` writes.
pub const FLEET_DROP_IN: &str = "50-fleet.toml";

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
    /// `chatml`, `llama3`, `gemma` (llama.cpp's built-in), or Jinja template text (rendered by
    /// minijinja). Unset: the GGUF's own template by minijinja, else by llama.cpp's built-ins,
    /// else ChatML.
    pub chat_template: Option<String>,
    /// Start even when the memory estimate (`outpost validate`, `docs/boards.md`) says the
    /// model, its KV cache and the rest do not fit in the memory this process may use (the
    /// cgroup's `memory.max`, else `MemAvailable`). Off: `outpost serve` refuses to start, with
    /// the estimate in its error, instead of being killed by the OOM killer mid-request.
    pub allow_overcommit: bool,
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
            allow_overcommit: false,
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
    ///
    /// The default is `auto`, as llama-server's: llama.cpp turns it on where the backend supports
    /// it (the CPU does). Off on the CPU was our default once (chosen on one Intel machine); on
    /// the AMD EPYC machines we measure on, attention without it took 14 % of decode time
    /// (`vec_dot_f16`) against ~7 % with it, and decode slowed with depth (docs/api.md,
    /// docs/performance.md step 1, README "Performance").
    pub fn flash_attention(&self) -> FlashAttention {
        self.flash_attention.unwrap_or(FlashAttention::Auto)
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
    /// Requests waiting for the engine beyond those it is running; more get 503.
    pub queue: usize,
    /// Requests generated at once in one llama.cpp context (continuous batching), each with
    /// its own `model.context` tokens of KV cache. Unset: sized for the board's memory (1 below
    /// 3 GiB, 2 below 6 GiB, else 4).
    pub parallel: Option<u32>,
    /// How long SIGTERM waits for in-flight requests before cancelling them.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl ApiConfig {
    /// `parallel`, with the default for this board applied.
    pub fn parallel(&self) -> u32 {
        self.parallel.unwrap_or_else(|| {
            let total_kib = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| {
                    m.lines()
                        .find(|l| l.starts_with("MemTotal:"))
                        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
                })
                .unwrap_or(0);
            self.parallel_for_memory(total_kib * 1024)
        })
    }

    /// `parallel` on a board with `total_bytes` of memory (`outpost validate --device`).
    pub fn parallel_for_memory(&self, total_bytes: u64) -> u32 {
        self.parallel.unwrap_or(match total_bytes / (1024 * 1024 * 1024) {
            0..=2 => 1,
            3..=5 => 2,
            _ => 4,
        })
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/outpost/outpost.sock"),
            group: None,
            admin_uids: Vec::new(),
            queue: 16,
            parallel: None,
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

pub use outpost_common::config::{ConfigError, EXIT_CONFIG};
use outpost_common::config::{Merged, Sources};

impl Config {
    /// Loads the base file (which must exist when `explicit`, else may be absent) and the
    /// drop-ins in `config.d/` beside it, then validates the result.
    pub fn load(base: &Path, explicit: bool) -> Result<Self, ConfigError> {
        let mut config = Self::from_merged(&Merged::load(&Self::sources(base, explicit))?)?;
        config.loaded_from = Some((base.to_path_buf(), explicit));
        Ok(config)
    }

    /// Where the configuration's files are for the base file `base`.
    pub fn sources(base: &Path, explicit: bool) -> Sources {
        Sources::new(base, explicit, DROP_IN_DIR)
    }

    /// The configuration as it would be with `text` written as the drop-in `candidate` (in
    /// `config.d/`): validated exactly as that drop-in would be at the next start.
    pub fn load_with_candidate(
        base: &Path,
        explicit: bool,
        candidate: &Path,
        text: &str,
    ) -> Result<Self, ConfigError> {
        Self::from_merged(&Merged::load_with(&Self::sources(base, explicit), Some((candidate, text)))?)
    }

    /// Parses and validates one TOML text, as if it were the whole configuration in `path`.
    pub fn from_toml_str(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::from_merged(&Merged::from_str(path, text)?)
    }

    fn from_merged(merged: &Merged) -> Result<Self, ConfigError> {
        let mut config: Config = merged.deserialize()?;
        config.validate(merged)?;
        if let Some(mqtt) = &config.mqtt {
            let settings = mqtt
                .check(Path::new(DEFAULT_FLEET_STATE_DIR))
                .map_err(|(key, reason)| merged.key_error(&format!("mqtt.{key}"), reason))?;
            config.fleet = Some(settings);
        }
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
        if let Some(group) = &a.group {
            match nix::unistd::Group::from_name(group) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(merged.key_error("api.group", format!("group `{group}` does not exist")))
                }
                Err(err) => {
                    return Err(
                        merged.key_error("api.group", format!("cannot look up group `{group}`: {err}"))
                    )
                }
            }
        }
        if let Some(p) = a.parallel {
            if !(1..=64).contains(&p) {
                return Err(merged.key_error("api.parallel", format!("must be between 1 and 64 (got {p})")));
            }
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
    fn an_unknown_socket_group_is_a_config_error() {
        let p = Path::new("/etc/outpost/outpost.toml");
        let err = Config::from_toml_str(p, "[api]\ngroup = \"no-such-group-xyz\"\n").expect_err("group");
        assert!(
            err.to_string().contains("key `api.group`: group `no-such-group-xyz` does not exist"),
            "{err}"
        );
        Config::from_toml_str(p, "[api]\ngroup = \"root\"\n").expect("root exists");
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
        assert_eq!(config.model.flash_attention(), FlashAttention::Auto, "llama.cpp decides by default");
        let gpu = Config::from_toml_str(&base, "[model]\ngpu_layers = 99\n").expect("gpu");
        assert_eq!(gpu.model.flash_attention(), FlashAttention::Auto);
        assert!(matches!(Config::load(&base, true), Err(ConfigError::Read { .. })));
    }
}
