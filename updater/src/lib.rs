//! `outpost-updater`: signed, delta-compressed model updates for Outpost boards.
//!
//! Release side: [`keys::keygen`], [`release::release`] (full zstd file, chunked deltas,
//! signed manifest). Device side: [`update::apply`] verifies a manifest against the board's
//! rules ([`verify`]), stages the new version in the [`store`], switches `current` atomically,
//! tries it on the runtime ([`trial`]) and commits or switches back; [`update::recover`]
//! finishes or undoes an interrupted update. Releases come from a local manifest or over
//! HTTP(S) ([`source`], [`fetch`]: retried, resumable, capped and hashed downloads); [`daemon`]
//! checks a manifest URL periodically; [`fleet`] takes `update`/`rollback` jobs over MQTT.

pub mod config;
pub mod daemon;
pub mod delta;
pub mod fetch;
pub mod fleet;
pub mod fsutil;
pub mod gguf;
pub mod io;
pub mod keys;
pub mod manifest;
pub mod release;
pub mod source;
pub mod store;
#[doc(hidden)]
pub mod testutil;
pub mod trial;
pub mod update;
pub mod verify;
