//! The telemetry buffer: reports wait on disk, one file each (`<seq>.json`), until they are
//! handed to the broker, so that reports made while the broker cannot be reached (or before a
//! restart) arrive afterwards, in order. Bounded: past the limit the oldest are dropped and
//! counted; the count travels in the next reports (`dropped`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::write_atomically;

/// The on-disk buffer.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    limit: usize,
    state: State,
}

/// Persisted counters.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct State {
    /// The next report's sequence number.
    next_seq: u64,
    /// Reports dropped in all.
    dropped: u64,
}

impl Spool {
    /// Opens (creating) the buffer in `dir`, keeping at most `limit` reports.
    pub fn open(dir: &Path, limit: usize) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let state = std::fs::read(dir.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<State>(&b).ok())
            .unwrap_or_default();
        let mut spool = Self { dir: dir.to_path_buf(), limit: limit.max(1), state };
        // A crash between writing a report and the state leaves next_seq behind: catch up.
        if let Some(last) = spool.pending()?.last() {
            spool.state.next_seq = spool.state.next_seq.max(last + 1);
        }
        Ok(spool)
    }

    /// The sequence number the next report gets, and the drop count to put in it.
    pub fn next(&self) -> (u64, u64) {
        (self.state.next_seq, self.state.dropped)
    }

    /// Buffers a report made with [`Spool::next`]'s numbers; drops the oldest past the limit.
    pub fn push(&mut self, seq: u64, payload: &[u8]) -> std::io::Result<()> {
        let text = std::str::from_utf8(payload)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        write_atomically(&self.file(seq), text)?;
        self.state.next_seq = seq + 1;
        let pending = self.pending()?;
        if pending.len() > self.limit {
            for old in &pending[..pending.len() - self.limit] {
                std::fs::remove_file(self.file(*old))?;
                self.state.dropped += 1;
            }
        }
        self.save()
    }

    /// The buffered reports' sequence numbers, oldest first.
    pub fn pending(&self) -> std::io::Result<Vec<u64>> {
        let mut seqs = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name.strip_suffix(".json").and_then(|s| s.parse::<u64>().ok()) {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// One buffered report.
    pub fn read(&self, seq: u64) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.file(seq))
    }

    /// Forgets a report once it was handed to the broker.
    pub fn remove(&self, seq: u64) -> std::io::Result<()> {
        match std::fs::remove_file(self.file(seq)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }

    fn file(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.json"))
    }

    fn save(&self) -> std::io::Result<()> {
        let text = serde_json::to_string(&self.state).map_err(std::io::Error::other)?;
        write_atomically(&self.dir.join("state.json"), &text)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_drops_oldest_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 3).unwrap();
        for _ in 0..5 {
            let (seq, _) = spool.next();
            spool.push(seq, format!("{{\"seq\":{seq}}}").as_bytes()).unwrap();
        }
        assert_eq!(spool.pending().unwrap(), vec![2, 3, 4]);
        assert_eq!(spool.next(), (5, 2));
        spool.remove(2).unwrap();
        let spool = Spool::open(dir.path(), 3).unwrap();
        assert_eq!(spool.pending().unwrap(), vec![3, 4]);
        assert_eq!(spool.next(), (5, 2));
        assert_eq!(spool.read(3).unwrap(), b"{\"seq\":3}");
    }
}
