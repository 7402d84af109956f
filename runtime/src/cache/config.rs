//! `[cache]`: where the response cache lives, what it keeps and when it answers.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[cache]`. With no section at all, the cache is on with these defaults.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `false`: nothing is looked up or stored (the file is not even opened).
    pub enabled: bool,
    /// The SQLite file (its `-wal` and `-shm` files sit beside it). Its directory must exist
    /// and be writable by the daemon.
    pub path: PathBuf,
    /// How long an answer is kept after it was stored (humantime: `30d`, `12h`). Import lines
    /// may set their own.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Entries kept at most; beyond it the least recently used are evicted.
    pub max_entries: u64,
    /// Bytes of prompt plus answer text kept at most; beyond it the least recently used entries
    /// are evicted. (The file is larger: each semantic entry also keeps its 1.5 KiB embedding.)
    pub max_bytes: u64,
    /// Answers less confident than this (0 to 1; local answers are scored by
    /// [`crate::cascade`]) are not stored.
    pub min_confidence: f32,
    /// Cosine similarity of the router embeddings at or above which a single-turn prompt may
    /// be answered by a cached answer to a different wording (0 to 1; the near-duplicate guards
    /// apply on top).
    pub similarity: f32,
    /// Which hits are served while the cloud is reachable; offline, exact and semantic hits
    /// are always served.
    pub online: OnlineHits,
    /// Store answers to requests that asked to stay on the board (`policy.privacy =
    /// "local-only"` or a request's `allow_cloud: false`). Off by default: such prompts are
    /// not written to disk.
    pub store_private: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: PathBuf::from("/var/lib/outpost/cache.db"),
            ttl: Duration::from_secs(30 * 24 * 3600),
            max_entries: 100_000,
            max_bytes: 256 * 1024 * 1024,
            min_confidence: 0.6,
            similarity: 0.92,
            online: OnlineHits::ExactDeterministic,
            store_private: false,
        }
    }
}

/// `cache.online`: which hits are served while online.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnlineHits {
    /// Exact hits for requests with temperature 0 only (their answer is what generating again
    /// would give, so serving it changes nothing but the latency).
    ExactDeterministic,
    /// Exact hits for any temperature (a random request gets the same sample again).
    Exact,
    /// Exact and semantic hits.
    Semantic,
    /// None: online, every request is generated.
    Never,
}

impl CacheConfig {
    /// Checks ranges; the file itself is checked when the cache opens.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.path.as_os_str().is_empty() || self.path.file_name().is_none() {
            return Err(("path", "must be a path to a file".into()));
        }
        if self.ttl < Duration::from_secs(1) {
            return Err(("ttl", "must be at least 1s".into()));
        }
        if self.max_entries == 0 || self.max_entries > 100_000_000 {
            return Err((
                "max_entries",
                format!("must be between 1 and 100000000 (got {})", self.max_entries),
            ));
        }
        if self.max_bytes < 4096 {
            return Err(("max_bytes", format!("must be at least 4096 (got {})", self.max_bytes)));
        }
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return Err(("min_confidence", format!("must be between 0 and 1 (got {})", self.min_confidence)));
        }
        if !(self.similarity > 0.0 && self.similarity <= 1.0) {
            return Err(("similarity", format!("must be in (0, 1] (got {})", self.similarity)));
        }
        Ok(())
    }

    /// The TTL in milliseconds, saturated.
    pub(crate) fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_keys_are_named() {
        assert!(CacheConfig::default().validate().is_ok());
        let bad = CacheConfig { similarity: 1.5, ..CacheConfig::default() };
        assert_eq!(bad.validate().map_err(|e| e.0), Err("similarity"));
        let bad = CacheConfig { max_entries: 0, ..CacheConfig::default() };
        assert_eq!(bad.validate().map_err(|e| e.0), Err("max_entries"));
        let parsed: CacheConfig = toml::from_str("ttl = \"7d\"\nonline = \"semantic\"\n").expect("parses");
        assert_eq!(parsed.ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(parsed.online, OnlineHits::Semantic);
        assert!(toml::from_str::<CacheConfig>("tll = \"7d\"\n").is_err(), "unknown keys are refused");
    }
}
