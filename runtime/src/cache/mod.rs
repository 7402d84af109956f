//! The offline response cache: answers worth keeping, in one SQLite file that survives power
//! loss, served again for the same request (exact hits) or, for single-turn prompts, for a
//! rewording of it (semantic hits).
//!
//! - [`key`](Query): what "the same request" means (normalisation, the exact key, which
//!   requests are matched by meaning).
//! - [`guard`]: near-duplicates that mean something else (negation, numbers, units, named
//!   entities) are never semantic hits.
//! - [`read_mode`]: which hits the API may serve, from the connectivity and the request.
//! - [`Cache`]: the async handle; SQLite and the vector index live on an owner thread behind a
//!   bounded queue, each job with its own reply channel.
//! - [`ops`]: `outpost cache stats|import|export|clear`, on the file directly (the daemon
//!   notices another process's changes through `PRAGMA data_version`).
//!
//! **Writes.** [`Cache::store`] keeps an answer if the cache is enabled, its confidence is at
//! least `cache.min_confidence`, and the request was not private (unless
//! `cache.store_private`). Each entry expires `cache.ttl` after it was stored; beyond
//! `cache.max_entries` or `cache.max_bytes` (prompt + answer text) the least recently used
//! entries are evicted in the same transaction. Hits move an entry's `last_used`; those writes
//! are batched (64 hits, written once the queue is idle; also after a second without jobs,
//! before every store and at shutdown) and committed without an fsync, so a crash forgets at
//! most some recency, never an entry.
//!
//! **Durability.** The file is in WAL mode with `synchronous = FULL`: `store()` returns `Ok`
//! only after its transaction is committed and the WAL fsynced, so neither a kill -9 nor a
//! power cut loses an acknowledged entry (NORMAL would survive kill -9, whose writes the
//! kernel still holds, but not a power cut, which can drop the last commits; a generation
//! costs seconds, an fsync milliseconds). SQLite's WAL keeps the file consistent wherever the
//! process dies. The `crash` test kills a writer mid-burst and checks the file and every
//! acknowledged entry; a power cut it cannot simulate.
//!
//! **Schema.** `PRAGMA user_version` is the schema version ([`SCHEMA_VERSION`]); migrations
//! run at open, each in its own transaction with its version bump. A file from a newer build
//! is refused ([`CacheError::SchemaTooNew`]).

mod clock;
mod config;
mod guard;
mod handle;
mod index;
mod key;
pub mod ops;
mod schema;
mod store;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use clock::Clock;
pub use config::{CacheConfig, OnlineHits};
pub use guard::guard;
pub use handle::Cache;
pub use key::{exact_key, normalize_text, ExactKey, KeySampling, Message, Query};
pub use schema::SCHEMA_VERSION;

use crate::cloud::Connectivity;
use crate::engine::Sampling;
use crate::policy::{PolicyConfig, Privacy, RequestOptions};

/// Why the cache could not do something.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CacheError {
    /// The file could not be opened or set up.
    #[error("cannot open the cache {path}: {reason}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A schema migration failed (the file stays at the version before it).
    #[error("cannot migrate the cache {path} from schema version {from}: {reason}")]
    Migrate {
        /// The file.
        path: PathBuf,
        /// The version it was at.
        from: u32,
        /// Why.
        reason: String,
    },
    /// The file was written by a newer Outpost.
    #[error("the cache {path} has schema version {found}; this build knows up to {supported}")]
    SchemaTooNew {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// The newest this build knows.
        supported: u32,
    },
    /// A lookup failed.
    #[error("cache lookup failed: {0}")]
    Lookup(String),
    /// Storing an entry failed (nothing was stored).
    #[error("cannot store in the cache: {0}")]
    Store(String),
    /// Reading the statistics failed.
    #[error("cannot read cache statistics: {0}")]
    Stats(String),
    /// Clearing failed (nothing was removed).
    #[error("cannot clear the cache: {0}")]
    Clear(String),
    /// Export failed.
    #[error("cannot export the cache to {path}: {reason}")]
    Export {
        /// The output file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The import file could not be read.
    #[error("cannot import {path}: {reason}")]
    Import {
        /// The input file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The cache is disabled (`cache.enabled = false`).
    #[error("the cache is disabled")]
    Disabled,
    /// Too many jobs are waiting for the cache thread.
    #[error("the cache queue is full")]
    QueueFull,
    /// The cache thread is gone.
    #[error("the cache has stopped")]
    Stopped,
}

/// Where a cached answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The local model.
    Local,
    /// The cloud model.
    Cloud,
    /// `outpost cache import` (a fleet's preloaded answers).
    Import,
}

impl Origin {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Cloud => "cloud",
            Self::Import => "import",
        }
    }

    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "local" => Self::Local,
            "cloud" => Self::Cloud,
            _ => Self::Import,
        }
    }
}

/// How a hit matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HitKind {
    /// The same normalised request.
    Exact,
    /// A single-turn prompt close in meaning, past the guards.
    Semantic,
}

/// A cached answer.
#[derive(Clone, Debug, Serialize)]
pub struct Hit {
    /// The entry's id.
    pub id: i64,
    /// The answer text.
    pub answer: String,
    /// The model that produced it.
    pub model: String,
    /// Where it came from.
    pub origin: Origin,
    /// Cosine similarity of the prompts (1 for exact hits).
    pub similarity: f32,
    /// Time since it was stored.
    #[serde(with = "humantime_serde")]
    pub age: Duration,
    /// Exact or semantic.
    pub kind: HitKind,
    /// The cached prompt (the user text of a single-turn request), for reports.
    pub prompt: String,
}

/// An answer to keep.
#[derive(Clone, Debug)]
pub struct NewEntry {
    /// The request, as looked up (with its embedding, for semantic hits later).
    pub query: Query,
    /// The answer text.
    pub answer: String,
    /// The model that produced it.
    pub model: String,
    /// Where it came from.
    pub origin: Origin,
    /// The answer's confidence, 0 to 1: the cascade's score for a local answer; for a cloud
    /// answer whatever the caller trusts it at (1.0 to trust it fully).
    pub confidence: f32,
    /// The request asked to stay on the board (see [`is_private`]).
    pub private: bool,
}

/// What [`Cache::store`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum StoreOutcome {
    /// Stored (replacing an entry with the same exact key), durably.
    Stored {
        /// The new entry's id.
        id: i64,
        /// Entries evicted to stay within the bounds.
        evicted: u64,
    },
    /// The confidence is below `cache.min_confidence`.
    BelowConfidence,
    /// The request was private and `cache.store_private` is off.
    Private,
    /// The answer is empty.
    Empty,
    /// Prompt and answer alone exceed `cache.max_bytes`.
    TooLarge,
}

/// Which hits a lookup may return.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadMode {
    /// Do not look up.
    Off,
    /// Exact hits only.
    Exact,
    /// Exact hits, else semantic hits (single-turn prompts with an embedding).
    Semantic,
}

/// Which hits may answer a request. Pure: the API calls it before routing.
///
/// - The cache is disabled, or the request asks for `logprobs` (a cached answer has none):
///   [`ReadMode::Off`].
/// - The cloud is known to be unreachable ([`Connectivity::Offline`]): [`ReadMode::Semantic`].
/// - Otherwise (online, not yet known, or no cloud configured: generation works as usual) as
///   `cache.online` says: `exact-deterministic` gives [`ReadMode::Exact`] for temperature 0
///   and [`ReadMode::Off`] otherwise; `exact`, `semantic` and `never` give exact, semantic and
///   off.
pub fn read_mode(config: &CacheConfig, connectivity: Connectivity, sampling: &Sampling) -> ReadMode {
    if !config.enabled || sampling.logprobs.is_some() {
        return ReadMode::Off;
    }
    if connectivity == Connectivity::Offline {
        return ReadMode::Semantic;
    }
    match config.online {
        OnlineHits::ExactDeterministic if KeySampling::from_sampling(sampling).deterministic() => {
            ReadMode::Exact
        }
        OnlineHits::ExactDeterministic | OnlineHits::Never => ReadMode::Off,
        OnlineHits::Exact => ReadMode::Exact,
        OnlineHits::Semantic => ReadMode::Semantic,
    }
}

/// The request asked to stay on the board: `policy.privacy = "local-only"` or the request's
/// `allow_cloud: false`. Its answer is stored only with `cache.store_private`.
pub fn is_private(policy: &PolicyConfig, options: &RequestOptions) -> bool {
    policy.privacy == Privacy::LocalOnly || options.allow_cloud == Some(false)
}

/// Counts since the cache was opened (this process only).
#[derive(Debug, Default)]
pub(crate) struct CounterCells {
    exact_hits: AtomicU64,
    semantic_hits: AtomicU64,
    misses: AtomicU64,
    guard_refusals: AtomicU64,
    stored: AtomicU64,
    not_stored: AtomicU64,
    evicted: AtomicU64,
    expired: AtomicU64,
    errors: AtomicU64,
}

/// A snapshot of the counts since the cache was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Lookups answered by an exact hit.
    pub exact_hits: u64,
    /// Lookups answered by a semantic hit.
    pub semantic_hits: u64,
    /// Lookups without a hit.
    pub misses: u64,
    /// Semantic candidates above the threshold refused by a guard.
    pub guard_refusals: u64,
    /// Entries stored.
    pub stored: u64,
    /// Answers not stored (confidence, privacy, empty, too large).
    pub not_stored: u64,
    /// Entries evicted by the bounds.
    pub evicted: u64,
    /// Expired entries removed.
    pub expired: u64,
    /// Lookups and stores that failed.
    pub errors: u64,
}

impl CounterCells {
    pub(crate) fn add(cell: &AtomicU64, n: u64) {
        cell.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Counters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            exact_hits: get(&self.exact_hits),
            semantic_hits: get(&self.semantic_hits),
            misses: get(&self.misses),
            guard_refusals: get(&self.guard_refusals),
            stored: get(&self.stored),
            not_stored: get(&self.not_stored),
            evicted: get(&self.evicted),
            expired: get(&self.expired),
            errors: get(&self.errors),
        }
    }
}

/// The cache's state.
#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    /// The file.
    pub path: PathBuf,
    /// Its schema version.
    pub schema_version: u32,
    /// Entries (expired ones not yet removed included).
    pub entries: u64,
    /// Entries that can be semantic hits (single-turn, with an embedding).
    pub semantic_entries: u64,
    /// Prompt plus answer bytes, the measure `cache.max_bytes` bounds.
    pub bytes: u64,
    /// The database file plus its WAL, on disk.
    pub file_bytes: u64,
    /// When the oldest entry was stored.
    #[serde(with = "humantime_serde")]
    pub oldest: Option<SystemTime>,
    /// When the newest entry was stored.
    #[serde(with = "humantime_serde")]
    pub newest: Option<SystemTime>,
    /// Hits recorded in the file, over its whole life.
    pub recorded_hits: u64,
    /// Counts since this process opened the cache (zero from the CLI).
    pub since_open: Counters,
}
