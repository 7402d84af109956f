//! `outpost cache stats | import FILE | export FILE | clear [--older-than D]`: the cache file
//! operated on directly, blocking, from the CLI. The daemon may be running: SQLite's locking
//! serialises the writes (each waits up to 5 s for the other's), and the daemon picks up the
//! changes before its next lookup or store (`PRAGMA data_version`).
//!
//! The JSONL format, one entry per line:
//!
//! ```text
//! {"prompt": "What is the boiling point of water?", "answer": "100 °C at sea level.", "ttl": "7d"}
//! ```
//!
//! `prompt` and `answer` are required (unless `messages` replaces `prompt`); optional: `ttl`
//! (default `cache.ttl`), `system` (a system message before the prompt), `messages` (a whole
//! conversation, `[{"role", "content"}]`, instead of `system` + `prompt`), `sampling` (the
//! settings the answer was generated with; without it the entry answers any sampling), `model`
//! (default `import`), `route` (`local`, `cloud` or `import`, the default), `confidence`
//! (default 1). Export writes these (with `ttl` = the time left) plus `created_at`,
//! `expires_at` and `hits`, which import accepts and ignores. Unknown fields make a line bad.
//! Imported entries are trusted: `cache.min_confidence` and the privacy gate do not apply.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::clock::{duration_ms, from_ms, Clock};
use super::key::{normalize, Message};
use super::schema::OpenMode;
use super::store::{Row, Store};
use super::{CacheConfig, CacheError, KeySampling, Origin, Query, Stats};
use crate::engine::ChatMessage;
use crate::router::{RouterConfig, RouterModel};

/// Lines stored per transaction.
const IMPORT_BATCH: usize = 256;

/// The name of an embedding model, as the cache records it: `name@version` of the router.
pub fn embedding_space(name: &str, version: &str) -> String {
    format!("{name}@{version}")
}

/// The file's state (`since_open` is zero: counts live in the daemon, see `/metrics`).
pub fn stats(config: &CacheConfig) -> Result<Stats, CacheError> {
    let mut store = Store::open(config, Clock::system(), None, OpenMode::Existing, false)?;
    store.stats().map_err(|e| CacheError::Stats(e.to_string()))
}

/// Removes every entry, or those stored more than `older_than` ago; returns how many.
pub fn clear(config: &CacheConfig, older_than: Option<Duration>) -> Result<u64, CacheError> {
    let mut store = Store::open(config, Clock::system(), None, OpenMode::Existing, false)?;
    store.clear(older_than).map_err(|e| CacheError::Clear(e.to_string()))
}

/// A line import skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// Why it was skipped.
    pub reason: String,
}

/// What an import did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ImportReport {
    /// Entries stored.
    pub imported: u64,
    /// Of those, with an embedding (semantic hits possible).
    pub semantic: u64,
    /// Entries evicted to stay within the bounds.
    pub evicted: u64,
    /// Bad lines, skipped.
    pub skipped: Vec<LineError>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportLine {
    prompt: Option<String>,
    answer: String,
    #[serde(default, with = "humantime_serde")]
    ttl: Option<Duration>,
    system: Option<String>,
    messages: Option<Vec<Message>>,
    sampling: Option<KeySampling>,
    model: Option<String>,
    route: Option<Origin>,
    confidence: Option<f32>,
    #[serde(rename = "created_at")]
    _created_at: Option<serde::de::IgnoredAny>,
    #[serde(rename = "expires_at")]
    _expires_at: Option<serde::de::IgnoredAny>,
    #[serde(rename = "hits")]
    _hits: Option<serde::de::IgnoredAny>,
}

/// Imports a JSONL file, embedding single-turn prompts with the router (`router.enabled =
/// false`: entries are imported for exact hits only).
pub fn import_with_router(
    config: &CacheConfig,
    router: &RouterConfig,
    path: &Path,
) -> Result<ImportReport, CacheError> {
    if !router.enabled {
        return import(config, path, None, |_| Ok::<_, std::convert::Infallible>(Vec::new()));
    }
    let mut model = RouterModel::load(router).map_err(|e| CacheError::Import {
        path: path.to_path_buf(),
        reason: format!("cannot load the router to embed prompts: {e}"),
    })?;
    let space = embedding_space(&model.manifest().name, &model.manifest().version);
    import(config, path, Some(&space), |text| model.score(text).map(|s| s.embedding))
}

/// Imports a JSONL file (`-`: stdin). `space` names the embedding model `embed` runs (`None`:
/// no embeddings, `embed` is not called). Bad lines are skipped and reported; the good ones
/// are stored, 256 per transaction.
pub fn import<E: std::fmt::Display>(
    config: &CacheConfig,
    path: &Path,
    space: Option<&str>,
    embed: impl FnMut(&str) -> Result<Vec<f32>, E>,
) -> Result<ImportReport, CacheError> {
    let fail = |e: std::io::Error| CacheError::Import { path: path.to_path_buf(), reason: e.to_string() };
    if path == Path::new("-") {
        return import_from(config, std::io::stdin().lock(), path, space, embed);
    }
    let file = std::fs::File::open(path).map_err(fail)?;
    import_from(config, BufReader::new(file), path, space, embed)
}

/// [`import`] from a reader; `source` names it in errors.
pub fn import_from<E: std::fmt::Display>(
    config: &CacheConfig,
    mut input: impl BufRead,
    source: &Path,
    space: Option<&str>,
    mut embed: impl FnMut(&str) -> Result<Vec<f32>, E>,
) -> Result<ImportReport, CacheError> {
    let mut store = Store::open(config, Clock::system(), space, OpenMode::Create, false)?;
    let mut report = ImportReport::default();
    let mut batch: Vec<(Query, ImportLine)> = Vec::new();
    let mut line_no = 0;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = input
            .read_until(b'\n', &mut buf)
            .map_err(|e| CacheError::Import { path: source.to_path_buf(), reason: e.to_string() })?;
        if n > 0 {
            line_no += 1;
            match parse_line(&buf, space.is_some(), &mut embed) {
                Ok(Some(entry)) if too_large(config, &entry.0, &entry.1) => report.skipped.push(LineError {
                    line: line_no,
                    reason: "prompt and answer exceed cache.max_bytes".into(),
                }),
                Ok(Some(entry)) => batch.push(entry),
                Ok(None) => {}
                Err(reason) => report.skipped.push(LineError { line: line_no, reason }),
            }
        }
        if batch.len() >= IMPORT_BATCH || (n == 0 && !batch.is_empty()) {
            let default_ttl = config.ttl_ms();
            let rows: Vec<Row<'_>> = batch
                .iter()
                .map(|(query, line)| Row {
                    query,
                    answer: &line.answer,
                    model: line.model.as_deref().unwrap_or("import"),
                    origin: line.route.unwrap_or(Origin::Import),
                    confidence: line.confidence.unwrap_or(1.0),
                    ttl_ms: line.ttl.map_or(default_ttl, duration_ms),
                })
                .collect();
            let inserted = store.insert(&rows).map_err(|e| CacheError::Store(e.to_string()))?;
            report.imported += batch.len() as u64;
            report.semantic += batch.iter().filter(|(q, _)| q.embedding.is_some()).count() as u64;
            report.evicted += inserted.evicted;
            batch.clear();
        }
        if n == 0 {
            return Ok(report);
        }
    }
}

fn too_large(config: &CacheConfig, query: &Query, line: &ImportLine) -> bool {
    (query.prompt_text().len() + line.answer.len()) as u64 > config.max_bytes
}

/// One line: `Ok(None)` for a blank line, `Err(reason)` for a bad one.
fn parse_line<E: std::fmt::Display>(
    raw: &[u8],
    embedding: bool,
    embed: &mut impl FnMut(&str) -> Result<Vec<f32>, E>,
) -> Result<Option<(Query, ImportLine)>, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "not UTF-8".to_owned())?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    let line: ImportLine = serde_json::from_str(text).map_err(|e| format!("not a valid entry: {e}"))?;
    if line.answer.trim().is_empty() {
        return Err("`answer` is empty".into());
    }
    if let Some(c) = line.confidence.filter(|c| !(0.0..=1.0).contains(c)) {
        return Err(format!("`confidence` must be between 0 and 1 (got {c})"));
    }
    let messages = match (&line.messages, &line.prompt) {
        (Some(messages), _) if !messages.is_empty() => {
            let chat: Vec<ChatMessage> = messages
                .iter()
                .map(|m| ChatMessage { role: m.role.clone(), content: m.content.clone() })
                .collect();
            normalize(&chat)
        }
        (Some(_), _) => return Err("`messages` is empty".into()),
        (None, Some(prompt)) if !prompt.trim().is_empty() => {
            let mut chat = Vec::new();
            if let Some(system) = &line.system {
                chat.push(ChatMessage { role: "system".into(), content: system.clone() });
            }
            chat.push(ChatMessage { role: "user".into(), content: prompt.clone() });
            normalize(&chat)
        }
        (None, _) => return Err("`prompt` is missing or empty".into()),
    };
    let mut query = Query::from_normalized(messages, line.sampling.clone().map(KeySampling::canonical));
    if embedding {
        if let Some(text) = query.semantic_text().map(str::to_owned) {
            let vector = embed(&text).map_err(|e| format!("cannot embed the prompt: {e}"))?;
            query = query.with_embedding(vector);
        }
    }
    Ok(Some((query, line)))
}

#[derive(Serialize)]
struct ExportLine {
    prompt: String,
    answer: String,
    ttl: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Vec<Message>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sampling: Option<KeySampling>,
    model: String,
    route: Origin,
    confidence: f32,
    created_at: String,
    expires_at: String,
    hits: u64,
}

/// Exports the entries not yet expired to a file, atomically (written beside it, synced, then
/// renamed over it); returns how many.
pub fn export(config: &CacheConfig, path: &Path) -> Result<u64, CacheError> {
    let fail = |e: std::io::Error| CacheError::Export { path: path.to_path_buf(), reason: e.to_string() };
    let name = path.file_name().ok_or_else(|| fail(std::io::ErrorKind::InvalidInput.into()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(fail)?;
        let n = export_to(config, &mut std::io::BufWriter::new(&mut file), path)?;
        file.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, path).map_err(fail)?;
        std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(fail)?;
        Ok(n)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// [`export`] to a writer (stdout); `target` names it in errors.
pub fn export_to(config: &CacheConfig, out: &mut impl Write, target: &Path) -> Result<u64, CacheError> {
    let fail = |reason: String| CacheError::Export { path: target.to_path_buf(), reason };
    let store = Store::open(config, Clock::system(), None, OpenMode::Existing, false)?;
    let now = store.now();
    let mut stmt = store
        .conn()
        .prepare(
            "SELECT prompt, answer, messages, sampling, model, route, confidence, created_at, expires_at, hits
             FROM entries WHERE expires_at > ?1 ORDER BY id",
        )
        .map_err(|e| fail(e.to_string()))?;
    let mut rows = stmt.query([now]).map_err(|e| fail(e.to_string()))?;
    let mut n = 0;
    while let Some(r) = rows.next().map_err(|e| fail(e.to_string()))? {
        let get = |e: rusqlite::Error| fail(e.to_string());
        let messages: Option<Vec<Message>> =
            r.get::<_, Option<String>>(2).map_err(get)?.and_then(|m| serde_json::from_str(&m).ok());
        let (system, messages) = split_system(messages);
        let expires_at: i64 = r.get(8).map_err(get)?;
        let left = Duration::from_secs(u64::try_from((expires_at - now) / 1000).unwrap_or(0).max(1));
        let line = ExportLine {
            prompt: r.get(0).map_err(get)?,
            answer: r.get(1).map_err(get)?,
            ttl: humantime::format_duration(left).to_string(),
            system,
            messages,
            sampling: r.get::<_, Option<String>>(3).map_err(get)?.and_then(|s| serde_json::from_str(&s).ok()),
            model: r.get(4).map_err(get)?,
            route: Origin::parse(&r.get::<_, String>(5).map_err(get)?),
            confidence: r.get::<_, f64>(6).map_err(get)? as f32,
            created_at: humantime::format_rfc3339_seconds(from_ms(r.get(7).map_err(get)?)).to_string(),
            expires_at: humantime::format_rfc3339_seconds(from_ms(expires_at)).to_string(),
            hits: u64::try_from(r.get::<_, i64>(9).map_err(get)?).unwrap_or(0),
        };
        let json = serde_json::to_string(&line).map_err(|e| fail(e.to_string()))?;
        writeln!(out, "{json}").map_err(|e| fail(e.to_string()))?;
        n += 1;
    }
    out.flush().map_err(|e| fail(e.to_string()))?;
    Ok(n)
}

/// `[user]` → no `system`, no `messages` (the prompt says it all); `[system, user]` →
/// `system`; anything else → `messages`.
fn split_system(messages: Option<Vec<Message>>) -> (Option<String>, Option<Vec<Message>>) {
    match messages.as_deref() {
        Some([user]) if user.role == "user" => (None, None),
        Some([system, user]) if system.role == "system" && user.role == "user" => {
            (Some(system.content.clone()), None)
        }
        Some(_) => (None, messages),
        None => (None, None),
    }
}
