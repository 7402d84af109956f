//! `outpost-common`: what both Outpost daemons (and the fleet CLI) need, defined once.
//!
//! - [`config`]: a base TOML file plus drop-ins, merged key by key, every error naming its file
//!   and key; [`config::EXIT_CONFIG`] is the exit code the unit files know.
//! - [`notify`]: the systemd notifier (READY, STATUS, STOPPING, the watchdog).
//! - [`gguf`]: GGUF constants and header reading (metadata, tensor infos, layout).
//! - [`failpoint`]: test-only failpoints, compiled in only with the `failpoints` feature.
//! - [`fleet`]: the fleet contract: MQTT topics and payloads (schema 1).
//! - [`mqtt`]: `[mqtt]`, TLS, and the device agent both daemons run.

pub mod config;
pub mod failpoint;
pub mod fleet;
pub mod gguf;
pub mod mqtt;
pub mod notify;
