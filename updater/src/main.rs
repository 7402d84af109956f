//! `outpost-updater`: signed delta model updates for Outpost.
//!
//! Exit codes (part of the systemd unit's contract):
//! - 0: done,
//! - 1: failed (an update refused, interrupted or failing its trial on the runtime leaves the
//!   store as it was, with the failure recorded for `status`),
//! - 78 (`EX_CONFIG`): the configuration is invalid; retrying cannot help.
//!
//! `daemon` runs until SIGTERM or SIGINT and then exits 0; it survives every other failure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Parser, Subcommand};
use outpost_updater::config::{ConfigError, Settings, DEFAULT_CONFIG_PATH, EXIT_CONFIG};
use outpost_updater::daemon::Daemon;
use outpost_updater::source::Source;
use outpost_updater::store::Store;
use outpost_updater::update::{self, Hooks, Outcome};
use outpost_updater::{keys, release};

#[derive(Parser)]
#[command(name = "outpost-updater", version, about = "Signed delta model updates for Outpost")]
struct Cli {
    /// The updater's config file (device-side commands); drop-ins are read from `updater.d/*.toml`
    /// beside it.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new ed25519 release key pair: DIR/release.key and DIR/release.pub (hex).
    Keygen {
        /// Directory to write the key files into (they must not exist).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Make a release: signed manifest.json, zstd full model, deltas from the bases.
    Release {
        /// Secret key file(s) to sign with.
        #[arg(long = "key", value_name = "KEY", required = true)]
        keys: Vec<PathBuf>,
        /// The new model.
        #[arg(long, value_name = "NEW.gguf")]
        model: PathBuf,
        /// Its semantic version.
        #[arg(long, value_name = "SEMVER")]
        version: String,
        /// Device class(es) it is for.
        #[arg(long = "device-class", value_name = "CLASS", required = true)]
        device_classes: Vec<String>,
        /// Models boards run now: one delta is tried from each.
        #[arg(long = "base", value_name = "OLD.gguf")]
        bases: Vec<PathBuf>,
        /// How long the manifest is valid (e.g. `30d`, `12h`).
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        expires: Duration,
        /// zstd level for the full file and delta payloads.
        #[arg(long, default_value_t = 10)]
        zstd_level: i32,
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Verify and install the release described by a manifest, try it on the runtime (reload,
    /// version check, one-token generation) and commit it, or switch back.
    Apply {
        /// The manifest: an http(s):// URL (artifacts are downloaded from beside it, resumably)
        /// or a local file (artifacts are read beside it). Default: `manifest_url`.
        #[arg(value_name = "MANIFEST_URL_OR_PATH")]
        manifest: Option<String>,
    },
    /// Check `manifest_url` every `check_interval` and install newer releases, until SIGTERM.
    /// SIGUSR1 asks for a check now.
    Daemon,
    /// Finish or undo an update that was interrupted (a crash, a power cut), then exit.
    Recover,
    /// Show the current and previous versions and any update in progress.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Switch back to the previous committed version (and ask the runtime to reload it).
    Rollback,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(config) = err.downcast_ref::<ConfigError>() {
                eprintln!("outpost-updater: invalid configuration: {config}");
                return ExitCode::from(EXIT_CONFIG);
            }
            let chain: Vec<String> = err.chain().map(ToString::to_string).collect();
            eprintln!("outpost-updater: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let now = SystemTime::now();
    match cli.command {
        Command::Keygen { out } => {
            std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
            let id = keys::keygen(&out)?;
            println!("wrote {}/release.key and release.pub (key id {id})", out.display());
        }
        Command::Release {
            keys: key_paths,
            model,
            version,
            device_classes,
            bases,
            expires,
            zstd_level,
            out,
        } => {
            let keys = key_paths.iter().map(|p| keys::read_signing_key(p)).collect::<Result<Vec<_>, _>>()?;
            let opts = release::ReleaseOptions {
                keys,
                model,
                version,
                device_classes,
                bases,
                expires_in: expires,
                out,
                zstd_level,
            };
            let report = release::release(&opts, now)?;
            for a in &report.manifest.signed.artifacts {
                println!("{:?} {} {} bytes", a.kind, a.name, a.size);
            }
            for (base, delta, full) in &report.skipped {
                println!("delta from {} not published: {delta} bytes vs full {full}", base.display());
            }
        }
        Command::Apply { manifest } => {
            let settings = Settings::load(&cli.config)?;
            let source = match manifest {
                Some(arg) => Source::parse(&arg),
                None => Source::Url(settings.manifest_url()?.to_owned()),
            };
            match update::apply_source(&settings, &source, now, Hooks::default())? {
                Outcome::AlreadyCurrent(c) => println!("{} is already current", c.version),
                Outcome::Installed { version, artifact, delta } => println!(
                    "installed {} ({}) from {artifact}",
                    version.version,
                    if delta { "delta" } else { "full" }
                ),
            }
        }
        Command::Daemon => {
            let daemon = Daemon::new(Settings::load(&cli.config)?)?;
            daemon.handle_signals()?;
            // Its own copy of the settings (the daemon keeps the first).
            let fleet = outpost_updater::fleet::FleetAgent::start(Settings::load(&cli.config)?)?;
            daemon.run();
            if let Some(fleet) = fleet {
                fleet.stop();
            }
        }
        Command::Recover => {
            let settings = Settings::load(&cli.config)?;
            let store = Store::new(&settings.updater.store);
            let _lock = store.lock()?;
            update::recover(&settings, &store, now)?;
            let state = store.state()?;
            println!("current: {}", state.current.map_or("-".to_owned(), |c| c.version));
        }
        Command::Status { json } => {
            let settings = Settings::load(&cli.config)?;
            let store = Store::new(&settings.updater.store);
            let state = store.state()?;
            let journal = store.journal()?;
            let value = serde_json::json!({
                "store": store.root(),
                "current": state.current,
                "previous": state.previous,
                "highest_committed": state.highest_committed,
                "linked": store.linked_version(),
                "state": journal.as_ref().map_or("idle".to_owned(), |j| format!("{:?}", j.step).to_lowercase()),
                "updating_to": journal.as_ref().map(|j| &j.version),
                "trials": journal.as_ref().map(|j| j.trials),
                "failed": state.failed,
                "latest_known_time": state.latest_known_time,
                "last_failure": state.last_failure,
                "partial_downloads": partial_downloads(&store),
            });
            if json {
                say(format_args!("{}", serde_json::to_string_pretty(&value)?));
            } else {
                let show = |c: &Option<outpost_updater::store::Committed>| {
                    c.as_ref().map_or("-".to_owned(), |c| format!("{} (sha256 {})", c.version, c.sha256))
                };
                say(format_args!("current:  {}", show(&state.current)));
                say(format_args!("previous: {}", show(&state.previous)));
                say(format_args!("state:    {}", value["state"].as_str().unwrap_or("idle")));
                if let Some(f) = &state.last_failure {
                    say(format_args!("last failure: {f}"));
                }
            }
        }
        Command::Rollback => {
            let settings = Settings::load(&cli.config)?;
            let to = update::rollback(&settings, now)?;
            println!("rolled back to {}", to.version);
        }
    }
    Ok(())
}

/// The partial downloads kept for resuming: file name and bytes so far.
fn partial_downloads(store: &Store) -> serde_json::Value {
    let Ok(entries) = std::fs::read_dir(store.downloads_dir()) else { return serde_json::json!([]) };
    let files: Vec<serde_json::Value> = entries
        .flatten()
        .map(|e| {
            let bytes = e.metadata().map(|m| m.len()).unwrap_or(0);
            serde_json::json!({ "file": e.file_name().to_string_lossy(), "bytes": bytes })
        })
        .collect();
    serde_json::Value::Array(files)
}

/// One line of a report on stdout; a closed pipe (`| head`, `| grep -q`) ends the output quietly
/// instead of panicking.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}
