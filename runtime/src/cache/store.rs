//! The synchronous core: one SQLite connection and the vector index, owned by one thread (the
//! daemon's cache thread, or the CLI).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::clock::{duration_ms, from_ms, Clock};
use super::guard::guard;
use super::index::{dot, normalized, Index};
use super::schema::{self, OpenMode};
use super::{CacheConfig, CacheError, CounterCells, Hit, HitKind, Origin, Query, ReadMode, Stats};

/// Expired rows removed per write at most (the rest go with the next writes).
const PURGE_BATCH: i64 = 1000;
/// Unwritten hits kept at most while writing them fails.
const MAX_PENDING_TOUCHES: usize = 4096;

/// One entry to insert.
pub(crate) struct Row<'a> {
    pub query: &'a Query,
    pub answer: &'a str,
    pub model: &'a str,
    pub origin: Origin,
    pub confidence: f32,
    pub ttl_ms: i64,
}

/// What an insert did.
#[derive(Debug, Default)]
pub(crate) struct Inserted {
    pub ids: Vec<i64>,
    pub evicted: u64,
}

pub(crate) struct Store {
    conn: Connection,
    path: PathBuf,
    config: CacheConfig,
    clock: Clock,
    /// `None` for the CLI, which never matches by meaning.
    index: Option<Index>,
    /// `PRAGMA data_version` when the index and totals were last brought up to date.
    data_version: i64,
    entries: u64,
    bytes: u64,
    /// Hits not yet written: `(id, when)`.
    touches: Vec<(i64, i64)>,
    pub(crate) counters: Arc<CounterCells>,
}

fn err(e: rusqlite::Error) -> String {
    e.to_string()
}

fn blob_of(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn vec_of(blob: &[u8]) -> Vec<f32> {
    blob.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

impl Store {
    /// Opens (and migrates) the file; with `with_index`, loads the semantic entries into the
    /// index. `space` names the embedding model: when it differs from the one that wrote the
    /// file's embeddings, those are dropped (they would be compared across spaces) and the
    /// entries stay as exact-only.
    pub(crate) fn open(
        config: &CacheConfig,
        clock: Clock,
        space: Option<&str>,
        mode: OpenMode,
        with_index: bool,
    ) -> Result<Self, CacheError> {
        let conn = schema::open(&config.path, mode)?;
        let mut store = Self {
            conn,
            path: config.path.clone(),
            config: config.clone(),
            clock,
            index: with_index.then(Index::default),
            data_version: -1,
            entries: 0,
            bytes: 0,
            touches: Vec::new(),
            counters: Arc::new(CounterCells::default()),
        };
        if let Some(space) = space {
            store
                .set_space(space)
                .map_err(|e| CacheError::Open { path: store.path.clone(), reason: err(e) })?;
        }
        store.refresh().map_err(|e| CacheError::Open { path: store.path.clone(), reason: err(e) })?;
        if let Some(index) = &mut store.index {
            index.recenter();
        }
        Ok(store)
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn config(&self) -> &CacheConfig {
        &self.config
    }

    pub(crate) fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn set_space(&mut self, space: &str) -> rusqlite::Result<()> {
        let recorded: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE name = 'embedding_space'", [], |r| r.get(0))
            .optional()?;
        if recorded.as_deref() == Some(space) {
            return Ok(()); // the usual case: no write lock needed
        }
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE name = 'embedding_space'", [], |r| r.get(0))
            .optional()?;
        if current.as_deref() != Some(space) {
            if let Some(old) = &current {
                let dropped =
                    tx.execute("UPDATE entries SET embedding = NULL WHERE embedding IS NOT NULL", [])?;
                tracing::warn!(
                    old,
                    new = space,
                    dropped,
                    "embedding model changed; cached embeddings dropped"
                );
            }
            tx.execute(
                "INSERT INTO meta (name, value) VALUES ('embedding_space', ?1)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                [space],
            )?;
        }
        tx.commit()
    }

    /// Brings totals and index up to date if another connection committed since last time.
    pub(crate) fn refresh(&mut self) -> rusqlite::Result<()> {
        let version: i64 = self.conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        if version == self.data_version {
            return Ok(());
        }
        let (entries, bytes): (i64, i64) =
            self.conn.query_row("SELECT count(*), coalesce(sum(bytes), 0) FROM entries", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        self.entries = u64::try_from(entries).unwrap_or(0);
        self.bytes = u64::try_from(bytes).unwrap_or(0);
        if let Some(index) = self.index.as_mut().filter(|i| i.ids().is_empty()) {
            // At open: one pass over the table.
            let mut stmt = self.conn.prepare(
                "SELECT id, context, expires_at, embedding FROM entries
                 WHERE embedding IS NOT NULL AND context IS NOT NULL",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let blob: Vec<u8> = r.get(3)?;
                index.insert(r.get(0)?, &vec_of(&blob), r.get(1)?, r.get(2)?);
            }
        } else if let Some(index) = &mut self.index {
            // Another process changed the file: add and remove the difference.
            let mut live = HashMap::new();
            let mut stmt = self.conn.prepare(
                "SELECT id, context, expires_at FROM entries WHERE embedding IS NOT NULL AND context IS NOT NULL",
            )?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, (r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))))?;
            for row in rows {
                let (id, meta) = row?;
                live.insert(id, meta);
            }
            let gone: Vec<i64> = index.ids().iter().copied().filter(|id| !live.contains_key(id)).collect();
            for id in gone {
                index.remove(id);
            }
            let mut blob = self.conn.prepare_cached("SELECT embedding FROM entries WHERE id = ?1")?;
            for (id, (context, expires)) in live {
                if index.contains(id) {
                    continue;
                }
                let Some(bytes) =
                    blob.query_row([id], |r| r.get::<_, Option<Vec<u8>>>(0)).optional()?.flatten()
                else {
                    continue;
                };
                index.insert(id, &vec_of(&bytes), context, expires);
            }
        }
        self.data_version = version;
        Ok(())
    }

    /// Looks a request up.
    pub(crate) fn lookup(&mut self, q: &Query, mode: ReadMode) -> Result<Option<Hit>, CacheError> {
        if mode == ReadMode::Off {
            return Ok(None);
        }
        let now = self.now();
        let exact = self
            .conn
            .prepare_cached(
                "SELECT id, answer, model, route, created_at, prompt FROM entries
                 WHERE key IN (?1, ?2) AND expires_at > ?3 ORDER BY key = ?1 DESC LIMIT 1",
            )
            .and_then(|mut s| {
                s.query_row(params![&q.key.full[..], &q.key.any[..], now], |r| {
                    Ok(Hit {
                        id: r.get(0)?,
                        answer: r.get(1)?,
                        model: r.get(2)?,
                        origin: Origin::parse(&r.get::<_, String>(3)?),
                        similarity: 1.0,
                        age: age(now, r.get(4)?),
                        kind: HitKind::Exact,
                        prompt: r.get(5)?,
                    })
                })
                .optional()
            })
            .map_err(|e| CacheError::Lookup(err(e)))?;
        if let Some(hit) = exact {
            self.touch(hit.id, now);
            CounterCells::add(&self.counters.exact_hits, 1);
            return Ok(Some(hit));
        }
        if mode == ReadMode::Semantic {
            if let Some(hit) = self.semantic(q, now).map_err(|e| CacheError::Lookup(err(e)))? {
                self.touch(hit.id, now);
                CounterCells::add(&self.counters.semantic_hits, 1);
                return Ok(Some(hit));
            }
        }
        CounterCells::add(&self.counters.misses, 1);
        Ok(None)
    }

    fn semantic(&mut self, q: &Query, now: i64) -> rusqlite::Result<Option<Hit>> {
        let (Some((context, text)), Some(embedding)) = (&q.semantic, &q.embedding) else { return Ok(None) };
        let Some(query) = normalized(embedding) else { return Ok(None) };
        if self.index.is_none() {
            return Ok(None);
        }
        self.refresh()?;
        let threshold = self.config.similarity;
        let Some(index) = &mut self.index else { return Ok(None) };
        let candidates = index.search(&query, *context, now, threshold);
        let mut scored = Vec::new();
        let mut stmt = self.conn.prepare_cached(
            "SELECT embedding, prompt, answer, model, route, created_at FROM entries
             WHERE id = ?1 AND expires_at > ?2",
        )?;
        for (id, _) in candidates {
            let row = stmt
                .query_row(params![id, now], |r| {
                    let blob: Option<Vec<u8>> = r.get(0)?;
                    let similarity = blob.map_or(f32::NAN, |b| dot(&query, &vec_of(&b)));
                    Ok(Hit {
                        id,
                        answer: r.get(2)?,
                        model: r.get(3)?,
                        origin: Origin::parse(&r.get::<_, String>(4)?),
                        similarity,
                        age: age(now, r.get(5)?),
                        kind: HitKind::Semantic,
                        prompt: r.get(1)?,
                    })
                })
                .optional()?;
            if let Some(hit) = row.filter(|h| h.similarity >= threshold) {
                scored.push(hit);
            }
        }
        scored.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        for hit in scored {
            match guard(text, &hit.prompt) {
                Ok(()) => return Ok(Some(hit)),
                Err(rule) => {
                    CounterCells::add(&self.counters.guard_refusals, 1);
                    tracing::debug!(rule, similarity = hit.similarity, cached = %hit.prompt, "near-duplicate refused");
                }
            }
        }
        Ok(None)
    }

    /// Records a hit; written by [`Store::flush_touches`] (the owner thread calls it after
    /// replying, so no lookup waits for that write).
    fn touch(&mut self, id: i64, now: i64) {
        self.touches.push((id, now));
    }

    /// Hits not yet written.
    pub(crate) fn pending_touches(&self) -> usize {
        self.touches.len()
    }

    /// Writes the pending hits (`last_used`, `hits`). If that keeps failing, recency is given
    /// up beyond [`MAX_PENDING_TOUCHES`] rather than held in memory without bound.
    pub(crate) fn flush_touches(&mut self) -> rusqlite::Result<()> {
        if self.touches.is_empty() {
            return Ok(());
        }
        let written = self.write_touches();
        if written.is_err() && self.touches.len() > MAX_PENDING_TOUCHES {
            self.touches.clear();
        }
        written
    }

    /// Recency is not worth an fsync: this one transaction commits with `synchronous =
    /// NORMAL` (durable at the next FULL commit or checkpoint; a power cut may forget it).
    fn write_touches(&mut self) -> rusqlite::Result<()> {
        self.conn.execute_batch("PRAGMA synchronous = NORMAL")?;
        let written = self.write_touches_tx();
        let restored = self.conn.execute_batch("PRAGMA synchronous = FULL");
        written.and(restored)
    }

    fn write_touches_tx(&mut self) -> rusqlite::Result<()> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE entries SET last_used = max(last_used, ?2), hits = hits + 1 WHERE id = ?1",
            )?;
            for (id, when) in &self.touches {
                stmt.execute(params![id, when])?;
            }
        }
        tx.commit()?;
        self.touches.clear();
        Ok(())
    }

    /// Inserts entries in one transaction (each replacing an entry with the same exact key),
    /// removes expired entries and evicts the least recently used beyond the bounds; returns
    /// after the commit is durable. Rows over `max_bytes` on their own must be filtered out
    /// before.
    pub(crate) fn insert(&mut self, rows: &[Row<'_>]) -> rusqlite::Result<Inserted> {
        self.refresh()?;
        self.flush_touches()?;
        let now = self.now();
        let mut removed: Vec<(i64, i64)> = Vec::new();
        let mut added = Vec::new();
        let (max_entries, max_bytes) = (self.config.max_entries, self.config.max_bytes);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut expired = 0;
        {
            let mut purge = tx.prepare_cached(
                "DELETE FROM entries WHERE id IN
                 (SELECT id FROM entries WHERE expires_at <= ?1 LIMIT ?2) RETURNING id, bytes",
            )?;
            for row in purge.query_map(params![now, PURGE_BATCH], |r| Ok((r.get(0)?, r.get(1)?)))? {
                removed.push(row?);
                expired += 1;
            }
            let mut replace = tx.prepare_cached("DELETE FROM entries WHERE key = ?1 RETURNING id, bytes")?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO entries (key, prompt, answer, model, route, confidence, created_at, expires_at,
                   last_used, messages, sampling, context, embedding, bytes, hits)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?7, ?9, ?10, ?11, ?12, ?13, 0)",
            )?;
            for row in rows {
                let q = row.query;
                for old in replace.query_map([&q.key.full[..]], |r| Ok((r.get(0)?, r.get(1)?)))? {
                    removed.push(old?);
                }
                let prompt = q.prompt_text();
                let bytes = i64::try_from(prompt.len() + row.answer.len()).unwrap_or(i64::MAX);
                let dim = self.index.as_ref().map_or(0, Index::dim);
                let embedding = q
                    .semantic
                    .as_ref()
                    .and(q.embedding.as_deref())
                    .filter(|e| dim == 0 || e.len() == dim)
                    .and_then(normalized);
                let context = embedding.as_ref().and(q.semantic.as_ref()).map(|(c, _)| *c);
                let expires_at = now.saturating_add(row.ttl_ms);
                insert.execute(params![
                    &q.key.full[..],
                    prompt,
                    row.answer,
                    row.model,
                    row.origin.as_str(),
                    f64::from(row.confidence),
                    now,
                    expires_at,
                    serde_json::to_string(&q.messages).ok(),
                    q.sampling.as_ref().and_then(|s| serde_json::to_string(s).ok()),
                    context,
                    embedding.as_deref().map(blob_of),
                    bytes,
                ])?;
                let id = tx.last_insert_rowid();
                added.push((id, bytes, embedding.zip(context), expires_at));
            }
        }
        // Totals after the inserts, then evict oldest-used first until within bounds.
        let removed_bytes: i64 = removed.iter().map(|r| r.1).sum();
        let added_bytes: i64 = added.iter().map(|a| a.1).sum();
        let mut entries = (self.entries + added.len() as u64).saturating_sub(removed.len() as u64);
        let mut bytes =
            u64::try_from(i64::try_from(self.bytes).unwrap_or(i64::MAX) + added_bytes - removed_bytes)
                .unwrap_or(0);
        let mut evicted = 0;
        if entries > max_entries || bytes > max_bytes {
            let mut victims = Vec::new();
            {
                let mut lru = tx.prepare_cached("SELECT id, bytes FROM entries ORDER BY last_used, id")?;
                let mut rows = lru.query([])?;
                while entries > max_entries || bytes > max_bytes {
                    let Some(r) = rows.next()? else { break };
                    let (id, b): (i64, i64) = (r.get(0)?, r.get(1)?);
                    victims.push((id, b));
                    entries -= 1;
                    bytes = bytes.saturating_sub(u64::try_from(b).unwrap_or(0));
                }
            }
            let mut delete = tx.prepare_cached("DELETE FROM entries WHERE id = ?1")?;
            for (id, _) in &victims {
                delete.execute([id])?;
            }
            evicted = victims.len() as u64;
            removed.extend(victims);
        }
        tx.commit()?;
        self.entries = entries;
        self.bytes = bytes;
        CounterCells::add(&self.counters.expired, expired);
        CounterCells::add(&self.counters.evicted, evicted);
        let mut out = Inserted { ids: Vec::new(), evicted };
        if let Some(index) = &mut self.index {
            for (id, _) in &removed {
                index.remove(*id);
            }
        }
        let gone: std::collections::HashSet<i64> = removed.iter().map(|r| r.0).collect();
        for (id, _, semantic, expires_at) in added {
            if gone.contains(&id) {
                continue; // evicted in the same transaction (a batch larger than the bounds)
            }
            if let (Some(index), Some((embedding, context))) = (&mut self.index, semantic) {
                index.insert(id, &embedding, context, expires_at);
            }
            out.ids.push(id);
        }
        Ok(out)
    }

    /// Removes every entry, or those stored before `older_than` ago; returns how many.
    pub(crate) fn clear(&mut self, older_than: Option<std::time::Duration>) -> rusqlite::Result<u64> {
        self.refresh()?;
        self.flush_touches()?;
        let cutoff = older_than.map_or(i64::MAX, |d| self.now().saturating_sub(duration_ms(d)));
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut removed = Vec::new();
        {
            let mut stmt = tx.prepare("DELETE FROM entries WHERE created_at < ?1 RETURNING id, bytes")?;
            for row in stmt.query_map([cutoff], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))? {
                removed.push(row?);
            }
        }
        tx.commit()?;
        // Give the freed pages back to the file system (auto_vacuum = INCREMENTAL).
        self.conn.execute_batch("PRAGMA incremental_vacuum;")?;
        self.entries = self.entries.saturating_sub(removed.len() as u64);
        let freed: i64 = removed.iter().map(|r| r.1).sum();
        self.bytes = self.bytes.saturating_sub(u64::try_from(freed).unwrap_or(0));
        if let Some(index) = &mut self.index {
            for (id, _) in &removed {
                index.remove(*id);
            }
        }
        Ok(removed.len() as u64)
    }

    pub(crate) fn stats(&mut self) -> rusqlite::Result<Stats> {
        self.flush_touches()?;
        let (entries, semantic, bytes, oldest, newest, hits): (i64, i64, i64, Option<i64>, Option<i64>, i64) =
            self.conn.query_row(
                "SELECT count(*), count(embedding), coalesce(sum(bytes), 0), min(created_at), max(created_at),
                   coalesce(sum(hits), 0) FROM entries",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )?;
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        Ok(Stats {
            path: self.path.clone(),
            schema_version: schema::version(&self.conn)?,
            entries: u64::try_from(entries).unwrap_or(0),
            semantic_entries: u64::try_from(semantic).unwrap_or(0),
            bytes: u64::try_from(bytes).unwrap_or(0),
            file_bytes: size(&self.path) + size(Path::new(&wal)),
            oldest: oldest.map(from_ms),
            newest: newest.map(from_ms),
            recorded_hits: u64::try_from(hits).unwrap_or(0),
            since_open: self.counters.snapshot(),
        })
    }
}

fn age(now: i64, created_at: i64) -> std::time::Duration {
    std::time::Duration::from_millis(u64::try_from(now.saturating_sub(created_at)).unwrap_or(0))
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.flush_touches() {
            tracing::debug!(error = %e, "cache: recency of the last hits not written");
        }
    }
}
