//! The SQLite file: connection settings and the versioned schema.
//!
//! `PRAGMA user_version` is the schema version; [`MIGRATIONS`]`[i]` takes a file from version
//! `i` to `i + 1`, each in its own transaction together with its version bump, so a crash
//! leaves the file at the old or the new version, never between. A file newer than this build
//! knows is refused (a downgraded daemon must not write rows it cannot describe).
//!
//! - **v1**, the first cut: exact-match entries (`key`, `prompt`, `answer`, `model`, `route`,
//!   `confidence`, `created_at`, `expires_at`, `last_used`).
//! - **v2**: semantic matching and bounds: `messages` and `sampling` (JSON, for export),
//!   `context` (hash of the system messages) and `embedding` (f32 little-endian) for
//!   single-turn prompts, `bytes` (prompt + answer, backfilled), `hits`; indexes for LRU and
//!   expiry; the `meta` table (which embedding model wrote the embeddings).
//!
//! Durability: WAL with `synchronous = FULL`, so a commit returns only after the WAL is on
//! stable storage; a kill -9 or a power cut loses no acknowledged entry, and the WAL design
//! keeps the file consistent whenever the process dies. Times are Unix milliseconds.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::CacheError;

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 2;

/// How long a statement waits for another process's write lock (the CLI importing while the
/// daemon runs) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `MIGRATIONS[i]` migrates version `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 0 → 1
    "CREATE TABLE entries (
        id INTEGER PRIMARY KEY,
        key BLOB NOT NULL UNIQUE,
        prompt TEXT NOT NULL,
        answer TEXT NOT NULL,
        model TEXT NOT NULL,
        route TEXT NOT NULL,
        confidence REAL NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        last_used INTEGER NOT NULL
    );",
    // 1 → 2
    "ALTER TABLE entries ADD COLUMN messages TEXT;
     ALTER TABLE entries ADD COLUMN sampling TEXT;
     ALTER TABLE entries ADD COLUMN context INTEGER;
     ALTER TABLE entries ADD COLUMN embedding BLOB;
     ALTER TABLE entries ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE entries ADD COLUMN hits INTEGER NOT NULL DEFAULT 0;
     UPDATE entries SET bytes = length(CAST(prompt AS BLOB)) + length(CAST(answer AS BLOB));
     CREATE INDEX entries_lru ON entries (last_used, id);
     CREATE INDEX entries_expiry ON entries (expires_at);
     CREATE INDEX entries_created ON entries (created_at);
     CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);",
];

/// How to open the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenMode {
    /// Create it if missing (the daemon, import).
    Create,
    /// It must exist (stats, export, clear).
    Existing,
}

/// Opens the file, sets the connection up and migrates it to [`SCHEMA_VERSION`].
pub(crate) fn open(path: &Path, mode: OpenMode) -> Result<Connection, CacheError> {
    let fail = |reason: String| CacheError::Open { path: path.to_path_buf(), reason };
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if mode == OpenMode::Create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    } else if !path.exists() {
        return Err(fail("no cache file there".into()));
    }
    let conn = Connection::open_with_flags(path, flags).map_err(|e| fail(e.to_string()))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| fail(e.to_string()))?;
    // auto_vacuum only takes effect before the first table exists: set it first, every time.
    conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;").map_err(|e| fail(e.to_string()))?;
    let journal: String =
        conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(|e| fail(e.to_string()))?;
    if !journal.eq_ignore_ascii_case("wal") {
        return Err(fail(format!("cannot switch to WAL (journal mode is {journal})")));
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
        .map_err(|e| fail(e.to_string()))?;
    migrate(path, &conn, MIGRATIONS)?;
    Ok(conn)
}

/// The file's schema version.
pub(crate) fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Runs the migrations from the file's version up to `migrations.len()`.
pub(crate) fn migrate(path: &Path, conn: &Connection, migrations: &[&str]) -> Result<(), CacheError> {
    let target = u32::try_from(migrations.len()).unwrap_or(u32::MAX);
    let found =
        version(conn).map_err(|e| CacheError::Open { path: path.to_path_buf(), reason: e.to_string() })?;
    if found > target {
        return Err(CacheError::SchemaTooNew { path: path.to_path_buf(), found, supported: target });
    }
    for from in found..target {
        let fail = |e: rusqlite::Error| CacheError::Migrate {
            path: path.to_path_buf(),
            from,
            reason: e.to_string(),
        };
        let sql = migrations[from as usize];
        // IMMEDIATE: take the write lock first, so two processes opening a new file at once
        // do not both run the same step.
        conn.execute_batch("BEGIN IMMEDIATE").map_err(fail)?;
        let step = || -> rusqlite::Result<()> {
            if version(conn)? != from {
                return Ok(()); // another process migrated it meanwhile
            }
            conn.execute_batch(sql)?;
            conn.pragma_update(None, "user_version", from + 1)
        };
        match step() {
            Ok(()) => conn.execute_batch("COMMIT").map_err(fail)?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(fail(e));
            }
        }
    }
    Ok(())
}
