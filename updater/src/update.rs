//! Installing a release on the device: verify the manifest, stage the new version, switch
//! `current`, commit; and recovering an update that was interrupted at any step.
//!
//! Journal steps (each recorded atomically before the next action):
//! 1. `staging`: `staging/<v>` is being built from the verified artifact. Recovery: undo.
//! 2. `staged`: `versions/<v>` holds the verified model and manifest. Recovery: re-hash the
//!    model, then switch and commit (or undo if it does not match).
//! 3. `switched`: `current` points at `<v>`. Recovery: re-hash, commit (or switch back).
//!
//! Every refusal before the journal's first write leaves the disk untouched; a failure after it
//! is undone before returning, so the store looks as it did before the attempt.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::config::Settings;
use crate::delta::{self, DeltaError};
use crate::fsutil::{self, FsError};
use crate::io::{copy_verified, hash_stream, StreamError};
use crate::manifest::{format_time, parse_time, Artifact, ArtifactKind, Manifest, ManifestError};
use crate::store::{Committed, Journal, State, Step, Store, StoreError, MANIFEST_FILE, MODEL_FILE};
use crate::verify::{self, Policy, TrustState, VerifyError};

/// Free space kept beyond what an update needs.
const SPACE_MARGIN: u64 = 16 * 1024 * 1024;

/// Why an update failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The manifest could not be read.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The manifest broke a security rule.
    #[error("manifest refused: {0}")]
    Verify(#[from] VerifyError),
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An artifact's bytes were refused.
    #[error("artifact refused: {0}")]
    Stream(#[from] StreamError),
    /// A delta could not be applied.
    #[error("delta refused: {0}")]
    Delta(#[from] DeltaError),
    /// No artifact applies to this board (no full file, no delta from the current model).
    #[error("no artifact applies: the manifest has no full file and no delta from sha256 {current:?}")]
    NoArtifact {
        /// The current model's hash.
        current: Option<String>,
    },
    /// The artifact lives at an absolute URL (HTTP fetch is not implemented yet).
    #[error("artifact {url} is remote; only artifacts beside a local manifest are supported yet")]
    Remote {
        /// The URL.
        url: String,
    },
    /// Not enough free space to stage the update.
    #[error("not enough space in {path}: {need} bytes needed, {have} free")]
    Space {
        /// The store.
        path: PathBuf,
        /// Bytes needed.
        need: u64,
        /// Bytes free.
        have: u64,
    },
    /// An I/O step failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl From<FsError> for UpdateError {
    fn from(e: FsError) -> Self {
        Self::Store(StoreError::Fs(e))
    }
}

/// What an `apply` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The version is already current; nothing changed.
    AlreadyCurrent(Committed),
    /// The version was installed and committed, from the named artifact.
    Installed {
        /// The new current version.
        version: Committed,
        /// The artifact used.
        artifact: String,
        /// Whether it was a delta.
        delta: bool,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> UpdateError + 'a {
    move |source| UpdateError::Io { op, path: path.to_path_buf(), source }
}

fn trust_state(state: &State) -> TrustState {
    TrustState {
        latest_known_time: state.latest_known_time.as_deref().and_then(parse_time),
        highest_committed: state
            .highest_committed
            .as_ref()
            .and_then(|c| verify::parse_version(&c.version).ok().map(|v| (v, c.sha256.clone()))),
    }
}

fn file_sha256(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    hash_stream(&mut f).ok().map(|(_, sha)| sha)
}

/// Crashes the process at a named point when `OUTPOST_UPDATER_CRASH_AT` names it (tests use it
/// to kill the updater at every journal step).
fn crash_point(name: &str) {
    if std::env::var("OUTPOST_UPDATER_CRASH_AT").is_ok_and(|v| v == name) {
        std::process::abort();
    }
}

/// Verifies the manifest at `manifest_path` and installs its version into the store.
pub fn apply(settings: &Settings, manifest_path: &Path, now: SystemTime) -> Result<Outcome, UpdateError> {
    let store = Store::new(&settings.updater.store);
    recover(&store, now)?;
    let (manifest, raw) = Manifest::read(manifest_path)?;
    let state = store.state()?;
    let policy = Policy {
        keys: &settings.keys,
        threshold: settings.updater.threshold,
        device_class: &settings.updater.device_class,
    };
    let verified = verify::verify(&manifest, policy, &trust_state(&state), now)?;
    let s = &manifest.signed;
    let target = Committed { version: s.version.clone(), sha256: s.target.sha256.clone() };
    if state.current.as_ref() == Some(&target) && store.linked_version().as_deref() == Some(&*s.version) {
        return Ok(Outcome::AlreadyCurrent(target));
    }

    let current_sha = state.current.as_ref().map(|c| c.sha256.clone());
    let artifact = choose_artifact(&s.artifacts, current_sha.as_deref())
        .ok_or(UpdateError::NoArtifact { current: current_sha.clone() })?;
    if let Some(url) = &artifact.url {
        return Err(UpdateError::Remote { url: url.clone() });
    }
    let source = manifest_path.parent().unwrap_or(Path::new(".")).join(&artifact.name);

    let space_root =
        if store.root().exists() { store.root() } else { store.root().parent().unwrap_or(Path::new("/")) };
    let need = s.target.size.saturating_add(artifact.size).saturating_add(SPACE_MARGIN);
    let have = fsutil::free_space(space_root)?;
    if have < need {
        return Err(UpdateError::Space { path: store.root().to_path_buf(), need, have });
    }

    let journal = Journal {
        step: Step::Staging,
        version: s.version.clone(),
        sha256: s.target.sha256.clone(),
        created: format_time(verified.created),
        from: state.current.clone(),
    };
    let result = stage_and_switch(&store, &journal, &manifest, &raw, artifact, &source);
    if let Err(err) = result {
        undo(&store, &journal)?;
        return Err(err);
    }
    commit(&store, &journal, now)?;
    Ok(Outcome::Installed {
        version: target,
        artifact: artifact.name.clone(),
        delta: artifact.kind == ArtifactKind::Delta,
    })
}

/// A delta from the current model if there is one, else the full file.
fn choose_artifact<'a>(artifacts: &'a [Artifact], current_sha: Option<&str>) -> Option<&'a Artifact> {
    let delta = artifacts.iter().find(|a| {
        a.kind == ArtifactKind::Delta && current_sha.is_some() && a.base_sha256.as_deref() == current_sha
    });
    delta.or_else(|| artifacts.iter().find(|a| a.kind == ArtifactKind::Full))
}

fn stage_and_switch(
    store: &Store,
    journal: &Journal,
    manifest: &Manifest,
    raw: &[u8],
    artifact: &Artifact,
    source: &Path,
) -> Result<(), UpdateError> {
    let s = &manifest.signed;
    store.ensure_dirs()?;
    let dest = store.version_dir(&s.version);
    if file_sha256(&dest.join(MODEL_FILE)).as_deref() == Some(&*s.target.sha256) {
        // This version is still on disk (the previous one, after a rollback): switch to it.
        store.write_journal(&Journal { step: Step::Staged, ..journal.clone() })?;
        store.switch_to(&s.version)?;
        store.write_journal(&Journal { step: Step::Switched, ..journal.clone() })?;
        return Ok(());
    }
    store.write_journal(journal)?;
    crash_point("staging");
    store.clear_staging()?;
    let staging = store.staging_root().join(&s.version);
    std::fs::create_dir_all(&staging).map_err(io("create", &staging))?;

    // The artifact is copied into staging while it is hashed (capped at its declared size), so
    // what is verified is what is used.
    let staged_artifact = staging.join(format!("{}.part", artifact.name));
    {
        let mut src = std::fs::File::open(source).map_err(io("open", source))?;
        let mut dst = std::fs::File::create(&staged_artifact).map_err(io("create", &staged_artifact))?;
        copy_verified(&mut src, &mut dst, artifact.size, &artifact.sha256, &artifact.name)?;
        dst.sync_all().map_err(io("fsync", &staged_artifact))?;
    }
    let model = staging.join(MODEL_FILE);
    match artifact.kind {
        ArtifactKind::Full => {
            let src = std::fs::File::open(&staged_artifact).map_err(io("open", &staged_artifact))?;
            let mut decoder =
                zstd::stream::read::Decoder::new(src).map_err(io("decompress", &staged_artifact))?;
            let mut dst = std::fs::File::create(&model).map_err(io("create", &model))?;
            copy_verified(&mut decoder, &mut dst, s.target.size, &s.target.sha256, "decompressed model")?;
            dst.sync_all().map_err(io("fsync", &model))?;
        }
        ArtifactKind::Delta => {
            let from = journal.from.as_ref().ok_or(UpdateError::NoArtifact { current: None })?;
            let old = store.version_dir(&from.version).join(MODEL_FILE);
            let base = artifact.base_sha256.as_deref().unwrap_or_default();
            delta::apply(&old, &staged_artifact, &model, base, s.target.size, &s.target.sha256)?;
        }
    }
    std::fs::remove_file(&staged_artifact).map_err(io("remove", &staged_artifact))?;
    fsutil::write_atomic(&staging.join(MANIFEST_FILE), raw)?;
    crash_point("before-rename");
    // A leftover directory of this version that did not verify above is not trusted.
    crate::store::remove_dir_if_exists(&dest)?;
    fsutil::rename_durable(&staging, &dest)?;
    store.clear_staging()?;
    store.write_journal(&Journal { step: Step::Staged, ..journal.clone() })?;
    crash_point("staged");
    store.switch_to(&s.version)?;
    store.write_journal(&Journal { step: Step::Switched, ..journal.clone() })?;
    crash_point("switched");
    Ok(())
}

/// Undoes an uncommitted update: `current` back where it was, new files removed, journal gone.
fn undo(store: &Store, journal: &Journal) -> Result<(), UpdateError> {
    let state = store.state()?;
    match &journal.from {
        Some(from) if store.linked_version().as_deref() != Some(&*from.version) => {
            store.switch_to(&from.version)?
        }
        None if store.current_link().symlink_metadata().is_ok() => {
            std::fs::remove_file(store.current_link()).map_err(io("remove", &store.current_link()))?;
            fsutil::fsync_dir(store.root())?;
        }
        _ => {}
    }
    store.clear_staging()?;
    store.remove_uncommitted(&journal.version, &state)?;
    store.clear_journal()?;
    Ok(())
}

/// Records the switched version as committed, then collects old versions.
fn commit(store: &Store, journal: &Journal, now: SystemTime) -> Result<(), UpdateError> {
    let mut state = store.state()?;
    let new = Committed { version: journal.version.clone(), sha256: journal.sha256.clone() };
    if state.current.as_ref() != Some(&new) {
        state.previous = state.current.take();
        state.current = Some(new.clone());
    }
    let newer = match (&state.highest_committed, verify::parse_version(&new.version)) {
        (Some(h), Ok(v)) => verify::parse_version(&h.version).map_or(true, |h| v >= h),
        (None, _) => true,
        (Some(_), Err(_)) => false,
    };
    if newer {
        state.highest_committed = Some(new);
    }
    let latest =
        [state.latest_known_time.as_deref().and_then(parse_time), parse_time(&journal.created), Some(now)]
            .into_iter()
            .flatten()
            .max();
    state.latest_known_time = latest.map(format_time);
    store.write_state(&state)?;
    store.clear_journal()?;
    crash_point("committed");
    if let Err(err) = store.collect_garbage(&state) {
        tracing::warn!(%err, "cannot collect old versions");
    }
    Ok(())
}

/// Finishes or undoes an update a crash interrupted; a no-op when there is none.
pub fn recover(store: &Store, now: SystemTime) -> Result<(), UpdateError> {
    let Some(journal) = store.journal()? else {
        if store.staging_root().exists() {
            store.clear_staging()?;
        }
        return Ok(());
    };
    let model = store.version_dir(&journal.version).join(MODEL_FILE);
    let verified = || file_sha256(&model).as_deref() == Some(&*journal.sha256);
    match journal.step {
        Step::Staging => {
            tracing::info!(version = %journal.version, "undoing an interrupted staging");
            undo(store, &journal)
        }
        Step::Staged | Step::Switched if verified() => {
            tracing::info!(version = %journal.version, step = ?journal.step, "finishing an interrupted update");
            store.switch_to(&journal.version)?;
            store.write_journal(&Journal { step: Step::Switched, ..journal.clone() })?;
            commit(store, &journal, now)
        }
        Step::Staged | Step::Switched => {
            tracing::warn!(version = %journal.version, "interrupted update does not verify; undoing it");
            let mut state = store.state()?;
            state.last_failure = Some(format!("{}: model did not verify after a crash", journal.version));
            store.write_state(&state)?;
            undo(store, &journal)
        }
    }
}
