//! kill -9 during a burst of writes: no corruption, no acknowledged entry lost.
//!
//! The test re-executes its own test binary with [`CHILD_ENV`] set; that child runs only
//! [`child_writes_until_killed`], which stores entries four at a time and prints `ack N` for
//! each `store()` that returned `Ok`. The parent SIGKILLs it at a random moment after the
//! first acknowledgement, several rounds on the same file, then checks the file and looks up
//! every acknowledged entry.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::Rng;

use super::{entry, query};
use crate::cache::{Cache, CacheConfig, ReadMode, StoreOutcome};

const CHILD_ENV: &str = "OUTPOST_CACHE_CRASH_CHILD";
const START_ENV: &str = "OUTPOST_CACHE_CRASH_START";
const ROUNDS: u64 = 5;

fn question(n: u64) -> String {
    format!("Crash question number {n}?")
}

/// The child: does nothing unless [`CHILD_ENV`] names the cache file.
#[test]
fn child_writes_until_killed() {
    let Some(path) = std::env::var_os(CHILD_ENV) else { return };
    let start: u64 = std::env::var(START_ENV).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let config = CacheConfig { path: path.into(), ..CacheConfig::default() };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let cache = Cache::open(&config, Some("crash")).expect("opens");
        for batch in 0.. {
            let ids: Vec<u64> = (0..4).map(|j| start + batch * 4 + j).collect();
            let stores = ids.iter().map(|n| {
                let q = query(&question(*n)).with_embedding(super::fake_embedding(&question(*n)));
                cache.store(entry(q, &format!("Answer {n}.")))
            });
            for (n, outcome) in ids.iter().zip(futures::future::join_all(stores).await) {
                if let Ok(StoreOutcome::Stored { .. }) = outcome {
                    println!("ack {n}");
                }
            }
        }
    });
}

#[test]
fn kill_9_during_writes_loses_no_acknowledged_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cache.db");
    let exe = std::env::current_exe().expect("test binary");
    let mut acked = BTreeSet::new();
    let mut rng = rand::thread_rng();
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "cache::tests::crash::child_writes_until_killed",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .env(START_ENV, (round * 1_000_000).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawns the child");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        let reader = std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout);
            let mut line = String::new();
            while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
                // A line cut by the kill has no newline: not an acknowledgement.
                if let Some(n) = line.strip_suffix('\n').and_then(|l| l.strip_prefix("ack ")) {
                    let _ = tx.send(n.parse().expect("ack number"));
                }
                line.clear();
            }
        });
        let first = rx.recv_timeout(Duration::from_secs(120)).expect("the child acknowledges a write");
        std::thread::sleep(Duration::from_millis(rng.gen_range(10..400)));
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("reaped");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "killed, not exited");
        reader.join().expect("reader");
        let before = acked.len();
        acked.insert(first);
        acked.extend(rx.try_iter());
        assert!(acked.len() > before, "round {round} acknowledged writes");
        eprintln!("round {round}: {} writes acknowledged before SIGKILL", acked.len() - before);

        let conn = rusqlite::Connection::open(&path).expect("opens after the kill");
        let check: String =
            conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity_check");
        assert_eq!(check, "ok", "round {round}");
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let config = CacheConfig { path: path.clone(), ..CacheConfig::default() };
        let cache = Cache::open(&config, Some("crash")).expect("reopens");
        for n in &acked {
            let hit = cache.lookup(query(&question(*n)), ReadMode::Exact).await.expect("looks up");
            assert_eq!(hit.map(|h| h.answer), Some(format!("Answer {n}.")), "acknowledged entry {n}");
        }
        let stats = cache.stats().await.expect("stats");
        assert!(
            stats.entries >= acked.len() as u64,
            "{} entries, {} acknowledged",
            stats.entries,
            acked.len()
        );
    });
}
