//! Outpost runtime: an on-device LLM endpoint.
//!
//! The module tree names the capabilities:
//! - [`config`]: the typed configuration, base file plus drop-ins.
//! - [`engine`]: llama.cpp on an owner thread behind a bounded queue.
//! - [`api`]: the OpenAI-compatible HTTP API on the Unix socket.
//! - [`serve`]: the supervised daemon (systemd notify, watchdog, shutdown).
//! - [`metrics`]: Prometheus metrics.
//! - [`owner`]: owner threads (llama.cpp, ONNX Runtime, SQLite) joined at shutdown.
//! - [`client`]: a client of the socket, for `outpost ask`.
//! - [`router`]: the ONNX prompt router (complexity and embedding) on an owner thread.
//! - [`route`]: `outpost route`, routing decisions without serving.
//! - [`power`]: the battery signal and power modes; [`cloud`] says whether the cloud is reachable.
//! - [`policy`]: the pure routing decision.
//! - [`cloud`]: the cloud LLM client, its circuit breaker and probe.
//! - [`cascade`]: confidence of local answers.
//! - [`cache`]: the offline response cache in SQLite (exact and semantic hits).
//! - [`fleet`]: the MQTT agent: fleet commands, status and telemetry.
//! - [`synth`]: synthetic GGUF models (random weights, real architecture and tokenizer) for tests
//!   and board qualification.
//! - [`board`]: device profiles, the memory estimate (`outpost validate`), `outpost bench`.

pub mod api;
pub mod board;
pub mod cache;
pub mod cascade;
pub mod client;
pub mod cloud;
pub mod config;
pub mod engine;
pub mod fleet;
pub mod metrics;
pub mod owner;
pub mod policy;
pub mod power;
pub mod route;
pub mod router;
pub mod serve;
pub mod synth;
