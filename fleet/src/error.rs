//! The CLI's errors, one variant per operation that failed, and its exit codes (mapped in one
//! place, [`FleetError::exit_code`]).

use std::path::PathBuf;

/// Exit codes: part of the CLI's contract with the scripts that run it.
pub mod exit {
    /// Every job (or every device of a rollout) succeeded.
    pub const OK: u8 = 0;
    /// A job failed or was rejected; a rollout aborted, or finished with failed devices.
    pub const FAILED: u8 = 1;
    /// `send`: not every expected result came before `--timeout`.
    pub const TIMEOUT: u8 = 2;
    /// Bad arguments (`EX_USAGE`).
    pub const USAGE: u8 = 64;
    /// The broker could not be reached or refused us (`EX_UNAVAILABLE`).
    pub const UNAVAILABLE: u8 = 69;
    /// The rollout state file could not be read or written (`EX_IOERR`).
    pub const STATE: u8 = 74;
    /// The connection settings are wrong (`EX_CONFIG`, as the daemons use it).
    pub const CONFIG: u8 = outpost_common::config::EXIT_CONFIG;
}

/// Why a command could not do its work (as opposed to a job that failed on a device, which is
/// an outcome, reported by the exit code).
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The arguments make no sense together, or name nothing.
    #[error("{0}")]
    Usage(String),
    /// The config file could not be read or parsed.
    #[error("cannot read the config file {path}: {reason}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The connection settings (flags merged over `[mqtt]`) are invalid.
    #[error("connection settings: {key}: {reason}")]
    Settings {
        /// The key, as in `[mqtt]` (the flag of the same name).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The MQTT options could not be built (TLS files, password file).
    #[error(transparent)]
    Options(#[from] outpost_common::mqtt::MqttError),
    /// The first connection to the broker failed.
    #[error("cannot connect to the broker at {broker}: {reason}")]
    Connect {
        /// `host:port`.
        broker: String,
        /// The connection error.
        reason: String,
    },
    /// The broker refused a subscription or did not answer it.
    #[error("cannot subscribe to {filters}: {reason}")]
    Subscribe {
        /// The filters asked for.
        filters: String,
        /// Why.
        reason: String,
    },
    /// A command could not be handed to the client.
    #[error("cannot publish to {topic}: {reason}")]
    Publish {
        /// The topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// The rollout state file could not be opened, read or written.
    #[error("rollout state {path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The rollout state file belongs to another rollout, or is from a later version.
    #[error("rollout state {path}: {reason}")]
    StateMismatch {
        /// The file.
        path: PathBuf,
        /// How it differs.
        reason: String,
    },
}

impl FleetError {
    /// The exit code this error ends the program with.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => exit::USAGE,
            Self::ReadConfig { .. } | Self::Settings { .. } | Self::Options(_) => exit::CONFIG,
            Self::Connect { .. } | Self::Subscribe { .. } | Self::Publish { .. } => exit::UNAVAILABLE,
            Self::State { .. } | Self::StateMismatch { .. } => exit::STATE,
        }
    }
}
