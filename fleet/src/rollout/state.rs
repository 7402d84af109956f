//! The rollout's state file (SQLite): the plan (devices, waves, job ids) written once when the
//! rollout starts, then each device's progress, one transaction per change. An interrupted
//! rollout resumes from it with the same job ids.
//!
//! A device is marked `sent` *before* its command is published: after a crash between the two
//! the resumed run sends the same job again, which the device runs once (it deduplicates by job
//! id). The other order could lose track of a job that is running.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::FleetError;

/// The schema version in `PRAGMA user_version`.
const SCHEMA: i64 = 1;

const CREATE: &str = "
CREATE TABLE IF NOT EXISTS rollout (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    rollout_id TEXT NOT NULL,
    grp TEXT NOT NULL,
    manifest TEXT NOT NULL,
    wave_size TEXT NOT NULL,
    abort_at TEXT NOT NULL,
    created INTEGER NOT NULL,
    outcome TEXT NOT NULL DEFAULT 'running',
    updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY,
    wave INTEGER NOT NULL,
    job_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL DEFAULT 'pending',
    detail TEXT,
    updated INTEGER NOT NULL
);";

/// The rollout as planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// A random id, for the operator's records.
    pub rollout_id: String,
    /// The group.
    pub group: String,
    /// The manifest every device is sent.
    pub manifest: String,
    /// `--wave` as given when planned.
    pub wave_size: String,
    /// `--abort-at` as last given.
    pub abort_at: String,
    /// `running`, `aborted` or `completed`.
    pub outcome: String,
}

/// Where one device stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceState {
    /// Its job was not sent yet.
    Pending,
    /// Its job was sent; no final result yet.
    Sent,
    /// Its job succeeded.
    Succeeded,
    /// Its job failed or was rejected.
    Failed,
    /// No final result came within the per-device timeout (counts as a failure).
    TimedOut,
}

impl DeviceState {
    /// The name stored in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Sent, Self::Succeeded, Self::Failed, Self::TimedOut]
            .into_iter()
            .find(|state| state.as_str() == s)
    }

    /// Whether it counts toward the abort threshold.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::TimedOut)
    }
}

/// One device's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRow {
    /// The device id.
    pub device: String,
    /// Its wave (0-based).
    pub wave: usize,
    /// Its job id, fixed when planned.
    pub job_id: String,
    /// Where it stands.
    pub state: DeviceState,
    /// The job's result (JSON) or error, once final.
    pub detail: Option<String>,
}

/// The open state file.
pub struct StateFile {
    conn: Connection,
    path: PathBuf,
}

impl StateFile {
    /// Opens (or creates) the file at `path`.
    pub fn open(path: &Path) -> Result<Self, FleetError> {
        let err = |source| FleetError::State { path: path.to_path_buf(), source };
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch("PRAGMA synchronous = FULL;").map_err(err)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(err)?;
        if version > SCHEMA {
            return Err(FleetError::StateMismatch {
                path: path.to_path_buf(),
                reason: format!("written by a later outpost-fleet (schema {version})"),
            });
        }
        conn.execute_batch(CREATE).map_err(err)?;
        conn.pragma_update(None, "user_version", SCHEMA).map_err(err)?;
        Ok(Self { conn, path: path.to_path_buf() })
    }

    fn err(&self, source: rusqlite::Error) -> FleetError {
        FleetError::State { path: self.path.clone(), source }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The planned rollout, if the file holds one.
    pub fn meta(&self) -> Result<Option<Meta>, FleetError> {
        self.conn
            .query_row(
                "SELECT rollout_id, grp, manifest, wave_size, abort_at, outcome FROM rollout WHERE id = 1",
                [],
                |r| {
                    Ok(Meta {
                        rollout_id: r.get(0)?,
                        group: r.get(1)?,
                        manifest: r.get(2)?,
                        wave_size: r.get(3)?,
                        abort_at: r.get(4)?,
                        outcome: r.get(5)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Writes the plan: `meta` and each wave's devices with a job id each, in one transaction.
    pub fn create(
        &mut self,
        meta: &Meta,
        waves: &[Vec<String>],
        mut job_id: impl FnMut(&str) -> String,
    ) -> Result<(), FleetError> {
        let now = outpost_common::mqtt::unix_now() as i64;
        let tx =
            self.conn.transaction().map_err(|e| FleetError::State { path: self.path.clone(), source: e })?;
        let result = (|| {
            tx.execute(
                "INSERT INTO rollout (id, rollout_id, grp, manifest, wave_size, abort_at, created, outcome, updated)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6)",
                params![meta.rollout_id, meta.group, meta.manifest, meta.wave_size, meta.abort_at, now, meta.outcome],
            )?;
            for (wave, devices) in waves.iter().enumerate() {
                for device in devices {
                    tx.execute(
                        "INSERT INTO devices (device, wave, job_id, updated) VALUES (?1, ?2, ?3, ?4)",
                        params![device, wave as i64, job_id(device), now],
                    )?;
                }
            }
            tx.commit()
        })();
        result.map_err(|e| self.err(e))
    }

    /// Every device, by wave then id.
    pub fn devices(&self) -> Result<Vec<DeviceRow>, FleetError> {
        let mut stmt = self
            .conn
            .prepare("SELECT device, wave, job_id, state, detail FROM devices ORDER BY wave, device")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                let state: String = r.get(3)?;
                Ok(DeviceRow {
                    device: r.get(0)?,
                    wave: r.get::<_, i64>(1)? as usize,
                    job_id: r.get(2)?,
                    state: DeviceState::parse(&state).unwrap_or(DeviceState::Pending),
                    detail: r.get(4)?,
                })
            })
            .and_then(Iterator::collect)
            .map_err(|e| self.err(e));
        rows
    }

    /// Records where `device` stands (and the result or error, once final).
    pub fn set(&self, device: &str, state: DeviceState, detail: Option<&str>) -> Result<(), FleetError> {
        self.conn
            .execute(
                "UPDATE devices SET state = ?2, detail = ?3, updated = ?4 WHERE device = ?1",
                params![device, state.as_str(), detail, outpost_common::mqtt::unix_now() as i64],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Records the abort threshold in force and the rollout's outcome so far.
    pub fn set_outcome(&self, abort_at: &str, outcome: &str) -> Result<(), FleetError> {
        self.conn
            .execute(
                "UPDATE rollout SET abort_at = ?1, outcome = ?2, updated = ?3 WHERE id = 1",
                params![abort_at, outcome, outpost_common::mqtt::unix_now() as i64],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            rollout_id: "r1".into(),
            group: "wave".into(),
            manifest: "http://h/m.json".into(),
            wave_size: "1".into(),
            abort_at: "1".into(),
            outcome: "running".into(),
        }
    }

    #[test]
    fn a_plan_survives_reopening_with_its_job_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rollout.db");
        let mut state = StateFile::open(&path).unwrap();
        assert_eq!(state.meta().unwrap(), None);
        let waves = vec![vec!["d1".to_owned()], vec!["d2".to_owned(), "d3".to_owned()]];
        state.create(&meta(), &waves, |d| format!("job-{d}")).unwrap();
        state.set("d1", DeviceState::Sent, None).unwrap();
        state.set("d1", DeviceState::Succeeded, Some(r#"{"version":"2"}"#)).unwrap();
        state.set("d2", DeviceState::Sent, None).unwrap();
        state.set_outcome("2", "running").unwrap();
        drop(state);

        let state = StateFile::open(&path).unwrap();
        let m = state.meta().unwrap().unwrap();
        assert_eq!((m.group.as_str(), m.abort_at.as_str()), ("wave", "2"));
        let rows = state.devices().unwrap();
        let summary: Vec<_> =
            rows.iter().map(|r| (r.device.as_str(), r.wave, r.job_id.as_str(), r.state)).collect();
        assert_eq!(
            summary,
            [
                ("d1", 0, "job-d1", DeviceState::Succeeded),
                ("d2", 1, "job-d2", DeviceState::Sent),
                ("d3", 1, "job-d3", DeviceState::Pending),
            ]
        );
        assert_eq!(rows[0].detail.as_deref(), Some(r#"{"version":"2"}"#));
        // The resumed second wave re-awaits d2's job and sends d3's.
        let wave: Vec<&DeviceRow> = rows.iter().filter(|r| r.wave == 1).collect();
        let work = super::super::plan::WaveWork::of(&wave);
        assert_eq!((work.send, work.reawait), (vec!["d3".to_owned()], vec!["d2".to_owned()]));
    }

    #[test]
    fn a_second_plan_or_a_later_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rollout.db");
        let mut state = StateFile::open(&path).unwrap();
        state.create(&meta(), &[vec!["d1".to_owned()]], |_| "j".into()).unwrap();
        assert!(state.create(&meta(), &[vec!["d1".to_owned()]], |_| "j".into()).is_err());
        assert_eq!(state.devices().unwrap().len(), 1, "the failed plan left nothing behind");
        state.conn.pragma_update(None, "user_version", 9).unwrap();
        drop(state);
        assert!(matches!(StateFile::open(&path), Err(FleetError::StateMismatch { .. })));
        assert!(DeviceState::TimedOut.is_failure() && !DeviceState::Sent.is_failure());
    }
}
