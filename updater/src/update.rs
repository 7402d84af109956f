//! Installing a release on the device: verify the manifest, stage the new version, switch
//! `current`, try it on the runtime, commit; and recovering an update that was interrupted at
//! any step.
//!
//! Journal steps (each recorded atomically before the next action):
//! 1. `staging`: `staging/<v>` is being built from the verified artifact. Recovery: undo.
//! 2. `staged`: `versions/<v>` holds the verified model and manifest. Recovery: re-hash the
//!    model, then switch and try it (or undo if it does not match).
//! 3. `switched`: `current` points at `<v>`; the journal counts the trials started. Recovery:
//!    re-hash, then try again, unless `max_trials` were already started (a version that takes
//!    the board down during its trial), which switches back and records the failure.
//!
//! The trial ([`crate::trial`]): `POST /admin/reload` on the runtime socket, `/v1/models` must
//! report the new version, and a one-token chat completion must answer 200, all within
//! `trial_timeout`. Only then is the version committed (the highest committed version moves).
//! A failed trial switches `current` back, reloads the runtime on the old model, records the
//! failure in `state.json` (`last_failure`, `failed`) and refuses that version again. When the
//! runtime is not running, `runtime_absent` decides (default: a failed trial); a first install,
//! with nothing to go back to, is committed untried.
//!
//! The manifest and artifacts come from a [`Source`]: a local file, or a URL fetched with
//! retries and resumable, capped, hashed downloads ([`crate::fetch`]). The download comes before
//! the journal's first write; it lands in `downloads/`, which keeps a partial file for the next
//! attempt and nothing else.
//!
//! Every refusal before the journal's first write leaves the disk untouched (but for a partial
//! download kept to be resumed); a failure after it is undone before returning, so the store
//! looks as it did before the attempt.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::{RuntimeAbsent, Settings};
use crate::delta::{self, DeltaError};
use crate::fetch::{Client, FetchError, Progress};
use crate::fsutil::{self, FsError};
use crate::io::{copy_verified, hash_stream, StreamError};
use crate::manifest::{format_time, parse_time, Artifact, ArtifactKind, Manifest, ManifestError};
use crate::source::{Obtained, Source, SourceError};
use crate::store::{Committed, Journal, State, Step, Store, StoreError, MANIFEST_FILE, MODEL_FILE};
use crate::trial::{Runtime, TrialError};
use crate::verify::{self, Policy, TrustState, VerifyError};

/// Free space kept beyond what an update needs.
const SPACE_MARGIN: u64 = 16 * 1024 * 1024;

/// How far beyond the board's clock a committed manifest's `created` may move the latest known
/// time (see [`commit`]).
pub const MAX_CREATED_SKEW: Duration = Duration::from_secs(3600);

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
    /// Fetching the manifest or an artifact failed.
    #[error("download failed: {0}")]
    Fetch(#[from] FetchError),
    /// Stopped on request (SIGTERM) before the update was staged; nothing changed (a partial
    /// download is kept and resumed next time).
    #[error("stopped before the update was staged")]
    Cancelled,
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
    /// The new version failed its trial on the runtime; `current` was switched back.
    #[error("version {version} failed its trial and was rolled back: {source}")]
    Trial {
        /// The version tried.
        version: String,
        /// Why the trial failed.
        source: TrialError,
    },
    /// This exact version (same hash) failed its trial before and is not tried again.
    #[error("version {version} (sha256 {sha256}) failed its trial before; it is not tried again")]
    FailedBefore {
        /// The version.
        version: String,
        /// Its target hash.
        sha256: String,
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

impl From<SourceError> for UpdateError {
    fn from(e: SourceError) -> Self {
        match e {
            SourceError::Manifest(e) => Self::Manifest(e),
            SourceError::Fetch(FetchError::Cancelled) => Self::Cancelled,
            SourceError::Fetch(e) => Self::Fetch(e),
        }
    }
}

impl UpdateError {
    /// Whether trying again soon may help: the network or the server failed, another updater
    /// held the store, or the runtime was not there for the trial. A refused manifest or artifact
    /// stays refused until the release changes.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Fetch(e) => e.is_transient(),
            Self::Store(StoreError::Corrupt { .. } | StoreError::NoPrevious) => false,
            Self::Trial { source, .. } => source.is_runtime_absent(),
            Self::Space { .. } | Self::Io { .. } | Self::Store(_) => true,
            _ => false,
        }
    }
}

/// Hooks a long-running caller (`daemon`) gives [`apply_source`].
#[derive(Default)]
pub struct Hooks<'a> {
    /// Once set, a download stops (its partial file kept) and an update not yet staging is
    /// given up; staging and the trial are bounded and finish.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Called as a download advances.
    pub progress: Option<&'a mut dyn FnMut(Progress)>,
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

/// Crashes the process at a named point when the failpoint `updater-crash-at-<name>` is armed
/// (test builds only: tests use it to kill the updater at every journal step, and with `trial`
/// inside the trial, right after the runtime reloaded the new version).
pub(crate) fn crash_point(name: &str) {
    outpost_common::failpoint::crash(&format!("updater-crash-at-{name}"));
}

/// Verifies the manifest at `manifest_path` and installs its version into the store.
pub fn apply(settings: &Settings, manifest_path: &Path, now: SystemTime) -> Result<Outcome, UpdateError> {
    apply_source(settings, &Source::from(manifest_path), now, Hooks::default())
}

/// Fetches (or reads) and verifies the manifest at `source` and installs its version into the
/// store, holding the store's lock.
pub fn apply_source(
    settings: &Settings,
    source: &Source,
    now: SystemTime,
    mut hooks: Hooks<'_>,
) -> Result<Outcome, UpdateError> {
    let store = Store::new(&settings.updater.store);
    let _lock = store.lock()?;
    recover(settings, &store, now)?;
    let mut client = Client::new(&settings.http);
    if let Some(flag) = &hooks.cancel {
        client = client.with_cancel(flag.clone());
    }
    let cancelled = || hooks.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed));
    let (manifest, raw) = source.manifest(&client)?;
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
    if state.failed.as_ref() == Some(&target) {
        return Err(UpdateError::FailedBefore { version: target.version, sha256: target.sha256 });
    }

    let current_sha = state.current.as_ref().map(|c| c.sha256.clone());
    let artifact = choose_artifact(&s.artifacts, current_sha.as_deref())
        .ok_or(UpdateError::NoArtifact { current: current_sha.clone() })?;

    let space_root =
        if store.root().exists() { store.root() } else { store.root().parent().unwrap_or(Path::new("/")) };
    let need = s.target.size.saturating_add(artifact.size).saturating_add(SPACE_MARGIN);
    let have = fsutil::free_space(space_root)?;
    if have < need {
        return Err(UpdateError::Space { path: store.root().to_path_buf(), need, have });
    }
    // This version may still be on disk (the previous one, after a rollback): then nothing is
    // fetched.
    let on_disk =
        file_sha256(&store.version_dir(&s.version).join(MODEL_FILE)).as_deref() == Some(&*s.target.sha256);
    let mut no_progress = |_: Progress| {};
    let progress = hooks.progress.take().unwrap_or(&mut no_progress);
    let obtained = if on_disk { None } else { Some(source.obtain(artifact, &client, &store, progress)?) };
    if cancelled() {
        // A complete download stays in `downloads/` and is used (after re-hashing) next time.
        return Err(UpdateError::Cancelled);
    }

    let journal = Journal {
        step: Step::Staging,
        version: s.version.clone(),
        sha256: s.target.sha256.clone(),
        created: format_time(verified.created),
        from: state.current.clone(),
        trials: 0,
    };
    let result = stage_and_switch(&store, &journal, &manifest, &raw, artifact, obtained.as_ref());
    if let Err(err) = result {
        undo(&store, &journal)?;
        return Err(err);
    }
    try_and_commit(settings, &store, &journal, now)?;
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
    obtained: Option<&Obtained>,
) -> Result<(), UpdateError> {
    let s = &manifest.signed;
    store.ensure_dirs()?;
    let dest = store.version_dir(&s.version);
    let Some(obtained) = obtained else {
        // This version is still on disk, verified (the previous one, after a rollback): switch.
        store.write_journal(&Journal { step: Step::Staged, ..journal.clone() })?;
        store.switch_to(&s.version)?;
        store.write_journal(&Journal { step: Step::Switched, ..journal.clone() })?;
        return Ok(());
    };
    store.write_journal(journal)?;
    crash_point("staging");
    store.clear_staging()?;
    let staging = store.staging_root().join(&s.version);
    std::fs::create_dir_all(&staging).map_err(io("create", &staging))?;

    // A file from outside the store is copied into staging while it is hashed (capped at its
    // declared size), so what is verified is what is used. A download was verified as it was
    // written into the store; it is moved.
    let staged_artifact = staging.join(format!("{}.part", artifact.name));
    match obtained {
        Obtained::Outside(source) => {
            let mut src = std::fs::File::open(source).map_err(io("open", source))?;
            let mut dst = std::fs::File::create(&staged_artifact).map_err(io("create", &staged_artifact))?;
            copy_verified(&mut src, &mut dst, artifact.size, &artifact.sha256, &artifact.name)?;
            dst.sync_all().map_err(io("fsync", &staged_artifact))?;
        }
        Obtained::Downloaded(path) => {
            fsutil::rename_durable(path, &staged_artifact)?;
            crate::fetch::remove_dir_if_empty(&store.downloads_dir());
        }
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

/// Runs one trial of the switched version and commits it, or switches back and records why.
/// The trial is counted in the journal before it starts, so one a crash interrupts counts too.
fn try_and_commit(
    settings: &Settings,
    store: &Store,
    journal: &Journal,
    now: SystemTime,
) -> Result<(), UpdateError> {
    let cfg = &settings.updater;
    let journal =
        Journal { step: Step::Switched, trials: journal.trials.saturating_add(1), ..journal.clone() };
    store.write_journal(&journal)?;
    tracing::info!(version = %journal.version, trial = journal.trials, max = cfg.max_trials, "trying the new version on the runtime");
    let runtime = Runtime::new(&cfg.runtime_socket, cfg.trial_timeout);
    match runtime.trial(&journal.version, &journal.sha256) {
        Ok(()) => {
            tracing::info!(version = %journal.version, "trial passed; committing");
            commit(store, &journal, now)
        }
        Err(err)
            if err.is_runtime_absent()
                && (journal.from.is_none() || cfg.runtime_absent == RuntimeAbsent::Commit) =>
        {
            tracing::warn!(version = %journal.version, %err, "committing without a trial");
            commit(store, &journal, now)
        }
        Err(err) => {
            let reason =
                format!("{}: trial {}/{} failed: {err}", journal.version, journal.trials, cfg.max_trials);
            abandon(settings, store, &journal, reason, err.blames_version())?;
            Err(UpdateError::Trial { version: journal.version.clone(), source: err })
        }
    }
}

/// Gives up on an uncommitted version: records why in `state.json` (and, when the version itself
/// is to blame, marks it failed so it is not tried again), switches `current` back, removes the
/// version, and asks the runtime to load the previous model again.
fn abandon(
    settings: &Settings,
    store: &Store,
    journal: &Journal,
    reason: String,
    version_to_blame: bool,
) -> Result<(), UpdateError> {
    tracing::warn!(%reason, "switching back to the previous version");
    let mut state = store.state()?;
    state.last_failure = Some(reason);
    if version_to_blame {
        state.failed = Some(Committed { version: journal.version.clone(), sha256: journal.sha256.clone() });
    }
    store.write_state(&state)?;
    undo(store, journal)?;
    if journal.from.is_some() {
        if let Err(err) = reload_runtime(settings) {
            tracing::warn!(%err, "cannot reload the runtime on the previous version");
        }
    }
    Ok(())
}

/// Asks the runtime to load `current` again (after a rollback), within `trial_timeout`.
pub fn reload_runtime(settings: &Settings) -> Result<(), TrialError> {
    Runtime::new(&settings.updater.runtime_socket, settings.updater.trial_timeout).reload()
}

/// Switches back to the previous version (finishing or undoing an interrupted update first),
/// then asks the runtime to reload; a runtime that is not running loads it when it starts.
/// `outpost-updater rollback` and the fleet's `rollback` both call this.
pub fn rollback(settings: &Settings, now: SystemTime) -> Result<Committed, UpdateError> {
    let store = Store::new(&settings.updater.store);
    let _lock = store.lock()?;
    recover(settings, &store, now)?;
    let to = store.rollback()?;
    if let Err(err) = reload_runtime(settings) {
        tracing::warn!(%err, "cannot reload the runtime");
    }
    Ok(to)
}

/// Records the switched version as committed, then collects old versions.
///
/// The latest known time (the floor for expiry checks, persisted so a clock stepped backwards
/// cannot reopen an expired manifest) advances to the latest of itself, the board's clock, and
/// the manifest's `created` **capped at the board's clock plus [`MAX_CREATED_SKEW`]**. Without
/// the cap, one validly signed manifest with a far-future `created` (a release machine with a
/// wrong clock, a signing mistake) would make every later manifest look expired on this board
/// for good. With it, `created` can move the floor at most an hour past the board's own clock
/// (release machines and boards disagree by seconds once NTP runs; a board still without NTP is
/// behind, not ahead, and then the cap only means less protection, never a refusal). A manifest
/// is never refused for a future `created`: that would lock out a board whose clock is behind.
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
    let created = parse_time(&journal.created).map(|c| c.min(now + MAX_CREATED_SKEW));
    let latest = [state.latest_known_time.as_deref().and_then(parse_time), created, Some(now)]
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

/// Finishes or undoes an update a crash interrupted; a no-op when there is none. A switched but
/// uncommitted version is tried again (counting the trial) or, after `max_trials`, abandoned; a
/// failed trial during recovery leaves the previous version current and is recorded, not
/// returned, so the command that recovered can go on.
pub fn recover(settings: &Settings, store: &Store, now: SystemTime) -> Result<(), UpdateError> {
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
            let target = Committed { version: journal.version.clone(), sha256: journal.sha256.clone() };
            let max = settings.updater.max_trials;
            if journal.trials >= max || store.state()?.failed.as_ref() == Some(&target) {
                let reason = format!(
                    "{}: gave up after {} trial(s) interrupted before commit (crash or reboot)",
                    journal.version, journal.trials
                );
                return abandon(settings, store, &journal, reason, true);
            }
            tracing::info!(version = %journal.version, step = ?journal.step, trials = journal.trials, "resuming an interrupted update");
            store.switch_to(&journal.version)?;
            match try_and_commit(settings, store, &journal, now) {
                Err(UpdateError::Trial { version, source }) => {
                    tracing::warn!(%version, err = %source, "the interrupted update failed its trial; rolled back");
                    Ok(())
                }
                other => other,
            }
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
