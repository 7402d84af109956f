//! The job ids this component has seen, with their outcome, so that each job is acted on at
//! most once across redelivery, reconnects and restarts. Kept in `jobs.json` in the state
//! directory, rewritten atomically on every change; bounded to the newest [`MAX_JOBS`].

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::write_atomically;
use crate::fleet::JobStatus;

/// Job ids remembered (the oldest are forgotten first).
pub const MAX_JOBS: usize = 4096;

/// One job's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job id.
    pub id: String,
    /// The command.
    pub cmd: String,
    /// `in_progress` while it runs (and forever, if the daemon died running it).
    pub status: JobStatus,
    /// Its result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Its error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix seconds of the last change.
    pub time: u64,
}

/// The seen jobs, in arrival order.
#[derive(Debug)]
pub struct JobStore {
    path: PathBuf,
    jobs: VecDeque<JobRecord>,
}

#[derive(Serialize, Deserialize)]
struct File {
    jobs: VecDeque<JobRecord>,
}

impl JobStore {
    /// Opens `dir/jobs.json` (an absent file is an empty store; a corrupt one is set aside as
    /// `jobs.json.corrupt` and logged, since refusing to start would take fleet control away).
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("jobs.json");
        let jobs = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<File>(&bytes) {
                Ok(file) => file.jobs,
                Err(err) => {
                    tracing::error!(%err, path = %path.display(), "seen-jobs file is corrupt; setting it aside");
                    std::fs::rename(&path, path.with_extension("json.corrupt"))?;
                    VecDeque::new()
                }
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => VecDeque::new(),
            Err(err) => return Err(err),
        };
        Ok(Self { path, jobs })
    }

    /// The record of `id`, if seen.
    pub fn get(&self, id: &str) -> Option<&JobRecord> {
        self.jobs.iter().rev().find(|j| j.id == id)
    }

    /// Records `record` (new, or replacing the one with its id) and writes the file.
    pub fn put(&mut self, record: JobRecord) -> std::io::Result<()> {
        match self.jobs.iter_mut().rev().find(|j| j.id == record.id) {
            Some(existing) => *existing = record,
            None => {
                self.jobs.push_back(record);
                while self.jobs.len() > MAX_JOBS {
                    self.jobs.pop_front();
                }
            }
        }
        let text = serde_json::to_string(&File { jobs: self.jobs.clone() })
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        write_atomically(&self.path, &text)
    }

    /// Final records changed at or after `since` (unix seconds), oldest first.
    pub fn finished_since(&self, since: u64) -> Vec<JobRecord> {
        self.jobs.iter().filter(|j| j.status.is_final() && j.time >= since).cloned().collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(id: &str, status: JobStatus, time: u64) -> JobRecord {
        JobRecord { id: id.into(), cmd: "reload".into(), status, result: None, error: None, time }
    }

    #[test]
    fn survives_a_restart_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = JobStore::open(dir.path()).unwrap();
        store.put(rec("a", JobStatus::InProgress, 1)).unwrap();
        store.put(rec("a", JobStatus::Succeeded, 2)).unwrap();
        store.put(rec("b", JobStatus::Failed, 3)).unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        assert_eq!(store.get("a").unwrap().status, JobStatus::Succeeded);
        assert_eq!(store.finished_since(3).len(), 1);
        assert!(store.get("c").is_none());

        std::fs::write(dir.path().join("jobs.json"), b"{garbage").unwrap();
        let mut store = JobStore::open(dir.path()).unwrap();
        assert!(store.get("a").is_none());
        assert!(dir.path().join("jobs.json.corrupt").exists());
        for i in 0..MAX_JOBS + 10 {
            store.jobs.push_back(rec(&i.to_string(), JobStatus::Succeeded, 0));
        }
        store.put(rec("last", JobStatus::Succeeded, 0)).unwrap();
        assert_eq!(store.jobs.len(), MAX_JOBS);
        assert!(store.get("0").is_none() && store.get("last").is_some());
    }
}
