//! The updater's fleet agent: `update`, `rollback` and `status` over MQTT, through the same
//! functions as `outpost-updater apply` and `rollback` (verified, staged, tried, committed or
//! rolled back).
//!
//! The updater is a blocking program; the agent runs on its own thread with a small async
//! runtime, and each job's blocking work on a blocking thread. One job touches the store at a
//! time (the store's lock): a second `update` while one runs fails with the lock's error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use outpost_common::fleet::{Component, Status, UpdateProgress};
use outpost_common::mqtt::{Agent, Handler, Job, JobError, MqttError};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::source::Source;
use crate::store::Store;
use crate::update::{self, Hooks, Outcome};

/// The commands the updater takes.
pub const COMMANDS: &[&str] = &["update", "rollback", "status"];
/// How long the agent gets to send what it has at shutdown.
const STOP_DEADLINE: Duration = Duration::from_secs(8);

/// The running agent: stop it with [`FleetAgent::stop`].
pub struct FleetAgent {
    shutdown: CancellationToken,
    /// Set at stop: a running update's download stops (its partial file kept for resuming).
    cancel: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl FleetAgent {
    /// Starts the agent thread when `[mqtt]` is configured (`settings` is this agent's own
    /// copy of the configuration). Never waits for the broker.
    pub fn start(settings: Settings) -> Result<Option<Self>, MqttError> {
        let Some(mqtt) = settings.mqtt.clone() else { return Ok(None) };
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        let cancel_jobs = cancel.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("fleet".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(err) => {
                        let _ = ready_tx
                            .send(Err(MqttError::State { path: mqtt.state_dir.clone(), source: err }));
                        return;
                    }
                };
                rt.block_on(async move {
                    let tasks = TaskTracker::new();
                    let handler = Arc::new(UpdaterFleet {
                        settings: Arc::new(settings),
                        progress: Arc::default(),
                        cancel: cancel_jobs,
                    });
                    let started = Agent::start(
                        &mqtt,
                        Component::Updater,
                        env!("CARGO_PKG_VERSION"),
                        handler,
                        &tasks,
                        token.clone(),
                    );
                    let ok = started.is_ok();
                    let _ = ready_tx.send(started.map(|_| ()));
                    if ok {
                        token.cancelled().await;
                        tasks.close();
                        if tokio::time::timeout(STOP_DEADLINE, tasks.wait()).await.is_err() {
                            tracing::warn!("fleet agent did not finish sending in time");
                        }
                    }
                });
            })
            .map_err(|e| MqttError::State { path: std::path::PathBuf::from("(thread)"), source: e })?;
        ready_rx.recv().unwrap_or(Ok(()))?;
        Ok(Some(Self { shutdown, cancel, thread }))
    }

    /// Stops the agent: running jobs finish (bounded), the status says offline, and the
    /// thread is joined.
    pub fn stop(self) {
        self.cancel.store(true, Ordering::SeqCst);
        self.shutdown.cancel();
        if self.thread.join().is_err() {
            tracing::error!("fleet agent thread panicked");
        }
    }
}

struct UpdaterFleet {
    settings: Arc<Settings>,
    /// The update in progress, for the status.
    progress: Arc<Mutex<Option<UpdateProgress>>>,
    /// Set when the daemon stops.
    cancel: Arc<AtomicBool>,
}

impl Handler for UpdaterFleet {
    fn commands(&self) -> &'static [&'static str] {
        COMMANDS
    }

    fn run(&self, job: Job) -> BoxFuture<'static, Result<Value, JobError>> {
        let settings = self.settings.clone();
        let progress = self.progress.clone();
        let cancel = self.cancel.clone();
        Box::pin(async move {
            match job.cmd.as_str() {
                "update" => {
                    let url = job
                        .args
                        .get("manifest_url")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            JobError::Rejected("`update` needs a string argument `manifest_url`".into())
                        })?
                        .to_owned();
                    crate::fetch::check_url(&url)
                        .map_err(|e| JobError::Rejected(format!("manifest_url: {e}")))?;
                    job.progress(json!({ "step": "fetching", "manifest_url": url })).await;
                    let sender = job.progress_sender();
                    let id = job.id.clone();
                    let outcome = tokio::task::spawn_blocking(move || {
                        let set = |p: Option<UpdateProgress>| *progress.lock().unwrap_or_else(PoisonError::into_inner) = p;
                        set(Some(UpdateProgress { job: Some(id.clone()), step: "fetching".into(), ..Default::default() }));
                        let mut last_sent = std::time::Instant::now();
                        let mut on_progress = |p: crate::fetch::Progress| {
                            set(Some(UpdateProgress {
                                job: Some(id.clone()),
                                step: "fetching".into(),
                                bytes_done: Some(p.done),
                                bytes_total: Some(p.total),
                            }));
                            if last_sent.elapsed() >= Duration::from_secs(1) || p.done == p.total {
                                last_sent = std::time::Instant::now();
                                sender.send(json!({ "step": "fetching", "bytes_done": p.done, "bytes_total": p.total }));
                            }
                        };
                        let hooks = Hooks { cancel: Some(cancel), progress: Some(&mut on_progress) };
                        let result = update::apply_source(&settings, &Source::Url(url), SystemTime::now(), hooks);
                        set(None);
                        result
                    })
                    .await
                    .map_err(|e| JobError::Failed(format!("update thread: {e}")))?;
                    match outcome {
                        Ok(Outcome::AlreadyCurrent(c)) => {
                            Ok(json!({ "outcome": "already_current", "version": c.version }))
                        }
                        Ok(Outcome::Installed { version, artifact, delta }) => Ok(json!({
                            "outcome": "installed", "version": version.version, "sha256": version.sha256,
                            "artifact": artifact, "delta": delta,
                        })),
                        Err(err) => Err(JobError::Failed(err.to_string())),
                    }
                }
                "rollback" => {
                    let to =
                        tokio::task::spawn_blocking(move || update::rollback(&settings, SystemTime::now()))
                            .await
                            .map_err(|e| JobError::Failed(format!("rollback thread: {e}")))?
                            .map_err(|e| JobError::Failed(e.to_string()))?;
                    Ok(json!({ "outcome": "rolled_back", "version": to.version }))
                }
                "status" => Ok(json!({ "republished": true })),
                other => Err(JobError::Rejected(format!("unknown command `{other}`"))),
            }
        })
    }

    fn status(&self) -> BoxFuture<'static, Status> {
        let settings = self.settings.clone();
        let progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Box::pin(async move {
            let state = tokio::task::spawn_blocking(move || Store::new(&settings.updater.store).state().ok())
                .await
                .ok()
                .flatten();
            Status {
                current_version: state.as_ref().and_then(|s| s.current.as_ref().map(|c| c.version.clone())),
                previous_version: state.as_ref().and_then(|s| s.previous.as_ref().map(|c| c.version.clone())),
                update: progress,
                ..Status::default()
            }
        })
    }
}
