//! MQTT for the daemons: connection options from `[mqtt]` ([`config`], [`connect`]) and the
//! device [`agent`] both daemons run: one task owns rumqttc's event loop (an error means back
//! off and poll again), commands are checked, deduplicated ([`jobs`]) and handed to the
//! daemon's [`agent::Handler`], results and the retained status are published, telemetry waits
//! on disk ([`spool`]) while the broker cannot be reached.

pub mod agent;
pub mod config;
pub mod connect;
pub mod jobs;
pub mod spool;

pub use agent::{Agent, ConnectionState, Handler, Job, JobError};
pub use config::{MqttConfig, MqttSettings};

/// Why MQTT could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The TLS files could not be used.
    #[error("MQTT TLS: {0}")]
    Tls(String),
    /// The password file could not be read.
    #[error("MQTT credentials: {0}")]
    Credentials(String),
    /// The state directory (seen jobs, telemetry buffer) could not be opened.
    #[error("MQTT state in {path}: {source}")]
    State {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
