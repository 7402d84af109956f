//! `outpost`: the on-device LLM runtime's command line.
//!
//! Exit codes are part of the systemd unit's contract:
//! - 0: stopped cleanly,
//! - 1: failed (restartable: the unit restarts it),
//! - 78 (`EX_CONFIG`): the configuration is invalid; restarting cannot help
//!   (`RestartPreventExitStatus=78`). `serve` also exits 78 when the model, as configured,
//!   does not fit the memory it may use (`model.allow_overcommit` lifts that check).
//! - `validate`: 0 fits, 10 tight, 11 does not fit (`docs/boards.md`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outpost::config::{Config, ConfigError, DEFAULT_CONFIG_PATH, EXIT_CONFIG};
use outpost::synth::{Preset, Quant, SynthOptions};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Exit code for any other failure.
const EXIT_FAILURE: u8 = 1;

#[derive(Parser)]
#[command(
    name = "outpost",
    version,
    about = "On-device LLM runtime: llama.cpp behind an OpenAI-compatible Unix socket"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: load the model and serve the API on the Unix socket.
    Serve {
        /// Base config file; drop-ins are read from `config.d/` beside it.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and print the merged result.
    CheckConfig {
        /// Base config file; drop-ins are read from `config.d/` beside it.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Write a synthetic GGUF model: real architecture and tokenizer, random weights.
    SynthModel {
        /// Dimensions: `tiny` (tests), or those of real 0.5B / 1B / 3B models.
        #[arg(long, value_enum, default_value = "tiny")]
        preset: Preset,
        /// Tensor type (q8_0 and q4_k_m are quantized by llama.cpp).
        #[arg(long, value_enum, default_value = "f16")]
        quant: Quant,
        /// Seed of the random weights (same seed, same file).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Threads for quantization.
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// The GGUF file to write.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },
    /// Print the routing decision for prompts: complexity, route and reasons under the
    /// configured policy and the current signals.
    Route {
        /// Base config file; drop-ins are read from `config.d/` beside it.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Read JSON lines with a `prompt` field from stdin; write one JSON line per prompt.
        #[arg(long)]
        jsonl: bool,
        /// The prompt (without --jsonl).
        #[arg(num_args = 0..)]
        prompt: Vec<String>,
    },
    /// Inspect and manage the offline response cache (the file in `cache.path`; a running
    /// daemon sees the changes).
    Cache {
        /// Base config file; drop-ins are read from `config.d/` beside it.
        #[arg(long, value_name = "PATH", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Ask the running daemon a question; the answer streams to stdout.
    Ask {
        /// The daemon's socket.
        #[arg(
            long,
            value_name = "PATH",
            env = "OUTPOST_SOCKET",
            default_value = "/run/outpost/outpost.sock"
        )]
        socket: PathBuf,
        /// An optional system message.
        #[arg(long)]
        system: Option<String>,
        /// Tokens to generate at most.
        #[arg(long)]
        max_tokens: Option<u32>,
        /// Sampling temperature (0 = greedy).
        #[arg(long)]
        temperature: Option<f32>,
        /// The question.
        #[arg(required = true, num_args = 1..)]
        prompt: Vec<String>,
    },
    /// Estimate whether the configured model fits a board's memory: each part, the total, a
    /// verdict (exit 0 fits, 10 tight, 11 does not fit) and the largest context that fits.
    Validate {
        /// A board (`pi5-8gb`, `jetson-orin-nano-8gb`, ...; see docs/boards.md) or `auto`.
        #[arg(long, value_name = "NAME", default_value = "auto")]
        device: String,
        /// Base config file; drop-ins are read from `config.d/` beside it.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// A GGUF file instead of the configured `model.path`.
        #[arg(long, value_name = "PATH")]
        model: Option<PathBuf>,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// Where `/proc` and `/etc` are read from for `auto` (tests).
        #[arg(long, hide = true, env = "OUTPOST_SYSROOT", default_value = "/")]
        sysroot: PathBuf,
    },
    /// Qualify this board: load time, prompt and decode speed, latency, peak memory, power and
    /// temperature, on a synthesized preset (no download) or a given model.
    Bench {
        /// A GGUF file to bench instead of a preset.
        #[arg(long, value_name = "PATH")]
        model: Option<PathBuf>,
        /// The preset synthesized (into a temporary directory) when no model is given.
        #[arg(long, value_enum, default_value = "0.5b")]
        preset: Preset,
        /// The preset's tensor type.
        #[arg(long, value_enum, default_value = "q4_k_m")]
        quant: Quant,
        /// llama.cpp threads (0: every core).
        #[arg(long, default_value_t = 0)]
        threads: u32,
        /// Context per request.
        #[arg(long, default_value_t = 2048)]
        context: u32,
        /// Prompt lengths measured, in tokens.
        #[arg(long, value_delimiter = ',', default_values_t = [128, 512, 1024])]
        prompt_lengths: Vec<u32>,
        /// Tokens generated for the decode figures.
        #[arg(long, default_value_t = 128)]
        gen_tokens: u32,
        /// One JSON object on stdout (no progress bar).
        #[arg(long)]
        json: bool,
        /// Where `/sys` and `/proc` are read from (tests).
        #[arg(long, hide = true, env = "OUTPOST_SYSROOT", default_value = "/")]
        sysroot: PathBuf,
    },
}

#[derive(Subcommand)]
enum CacheAction {
    /// Entries, size, hits, oldest and newest entry, as JSON.
    Stats,
    /// Add prompt/answer pairs from a JSONL file (`-`: stdin): `{"prompt": ..., "answer": ...}`
    /// per line, optional `"ttl": "7d"`. Bad lines are reported and skipped.
    Import {
        /// The JSONL file.
        file: PathBuf,
    },
    /// Write every live entry as JSONL (`-`: stdout).
    Export {
        /// The output file (written atomically).
        file: PathBuf,
    },
    /// Remove every entry, or those older than a duration.
    Clear {
        /// e.g. `7d`, `12h`.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // stderr only: under systemd it reaches the journal too, so one line, not two.
            if let Some(config) = err.downcast_ref::<ConfigError>() {
                eprintln!("outpost: invalid configuration: {config}");
                return ExitCode::from(EXIT_CONFIG);
            }
            if let Some(outpost::serve::ServeError::Memory(fit)) = err.downcast_ref() {
                eprintln!("outpost: {fit}");
                return ExitCode::from(EXIT_CONFIG);
            }
            if let Some(verdict) = err.downcast_ref::<outpost::board::validate::NotFits>() {
                eprintln!("outpost: {verdict}");
                return ExitCode::from(verdict.verdict.exit_code());
            }
            let chain: Vec<String> = err.chain().map(ToString::to_string).collect();
            eprintln!("outpost: {}", chain.join(": "));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn load_config(path: Option<PathBuf>) -> Result<Config, ConfigError> {
    let explicit = path.is_some();
    let path = path.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    Config::load(&path, explicit)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let config = load_config(config)?;
            runtime()?.block_on(outpost::serve::run(config))?;
        }
        Command::CheckConfig { config } => {
            let config = load_config(config)?;
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = writeln!(std::io::stdout(), "{config:#?}");
        }
        Command::SynthModel { preset, quant, seed, threads, out } => {
            let threads = if threads == 0 {
                std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
            } else {
                threads
            };
            let started = std::time::Instant::now();
            let report = outpost::synth::synthesize(&SynthOptions { preset, quant, seed, out, threads })?;
            eprintln!(
                "wrote {} ({:.1} MiB, {} parameters, vocabulary {}) in {:.1}s",
                report.path.display(),
                report.bytes as f64 / (1024.0 * 1024.0),
                report.n_params,
                report.n_vocab,
                started.elapsed().as_secs_f64()
            );
        }
        Command::Route { config, jsonl, prompt } => {
            let config = load_config(config)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let mut routing = rt.block_on(outpost::route::Routing::new(config))?;
            if jsonl {
                let failed = routing.jsonl(std::io::stdin().lock(), std::io::stdout().lock())?;
                if failed > 0 {
                    anyhow::bail!("{failed} input line(s) could not be routed (see their error lines)");
                }
            } else {
                if prompt.is_empty() {
                    anyhow::bail!("give a PROMPT, or --jsonl to read prompts from stdin");
                }
                let line = routing.decide(&prompt.join(" "), Default::default())?;
                println!("{}", serde_json::to_string(&line)?);
            }
        }
        Command::Cache { config, action } => {
            use outpost::cache::ops;
            let config = load_config(config)?;
            let c = &config.cache;
            match action {
                CacheAction::Stats => println!("{}", serde_json::to_string_pretty(&ops::stats(c)?)?),
                CacheAction::Import { file } => {
                    let report = ops::import_with_router(c, &config.router, &file)?;
                    for skipped in &report.skipped {
                        eprintln!("{}: line {}: {}", file.display(), skipped.line, skipped.reason);
                    }
                    println!("{}", serde_json::to_string(&report)?);
                    if !report.skipped.is_empty() {
                        anyhow::bail!("{} line(s) skipped", report.skipped.len());
                    }
                }
                CacheAction::Export { file } => {
                    let n = if file == std::path::Path::new("-") {
                        ops::export_to(c, &mut std::io::stdout().lock(), &file)?
                    } else {
                        ops::export(c, &file)?
                    };
                    eprintln!("exported {n} entries");
                }
                CacheAction::Clear { older_than } => {
                    let n = ops::clear(c, older_than)?;
                    println!("{{\"removed\": {n}}}");
                }
            }
        }
        Command::Ask { socket, system, max_tokens, temperature, prompt } => {
            let prompt = prompt.join(" ");
            let ask =
                outpost::client::Ask { prompt: &prompt, system: system.as_deref(), max_tokens, temperature };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let mut stdout = std::io::stdout();
            let finish = rt.block_on(outpost::client::ask(&socket, &ask, &mut stdout))?;
            println!();
            if finish == "length" {
                eprintln!("(answer cut at max_tokens)");
            }
        }
        Command::Validate { device, config, model, json, sysroot } => {
            use outpost::board::validate;
            let config = load_config(config)?;
            let report = validate::for_config(&config, model.as_deref(), &device, &sysroot)?;
            let text = if json { serde_json::to_string(&report)? } else { report.text() };
            let _ = writeln!(std::io::stdout(), "{}", text.trim_end());
            if report.verdict != validate::Verdict::Fits {
                return Err(validate::NotFits { verdict: report.verdict, device: report.device.name }.into());
            }
        }
        Command::Bench {
            model,
            preset,
            quant,
            threads,
            context,
            prompt_lengths,
            gen_tokens,
            json,
            sysroot,
        } => {
            let threads = match threads {
                0 => std::thread::available_parallelism().map_or(2, |n| u32::try_from(n.get()).unwrap_or(2)),
                n => n,
            };
            let options = outpost::board::bench::BenchOptions {
                model,
                preset,
                quant,
                threads,
                context,
                prompt_lengths,
                gen_tokens,
                sysroot,
                progress: !json,
            };
            let report = outpost::board::bench::run(&options)?;
            let text = if json { serde_json::to_string(&report)? } else { report.text() };
            let _ = writeln!(std::io::stdout(), "{}", text.trim_end());
        }
    }
    Ok(())
}

/// Logs to journald when systemd runs us with a journal stream, else to stderr.
/// `RUST_LOG` filters (default: info, and llama.cpp's own chatter at warn).
fn init_logging() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,llama-cpp-2=warn,llama_cpp_2=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            registry.with(journald.with_syslog_identifier("outpost".into())).init();
            return;
        }
    }
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    registry.with(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr)).init();
}
