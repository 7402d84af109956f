//! The device agent: one per daemon, a client of the fleet's broker.
//!
//! Tasks (all tracked by the daemon's `TaskTracker`):
//! - the event loop: owns `EventLoop::poll()`; on an error it records it, backs off (1 s
//!   doubling to 60 s, jittered) and polls again; on connect it subscribes, republishes the
//!   status and, if the broker lost the session, replays recent final results;
//! - one task per command: parse, reject or deduplicate, run the [`Handler`], publish results;
//! - the status task: the retained status, on change and every `telemetry_interval`;
//! - the telemetry task: hands buffered reports to the broker in order while connected.
//!
//! Shutdown (the daemon's token): new commands are rejected, running jobs get
//! [`JOB_DRAIN`] to finish and publish their results, then the retained status says offline,
//! the client disconnects, and the event loop runs until the disconnect is sent.
//!
//! Results are delivered at least once (QoS 1, persistent session, replay after a lost
//! session): a backend deduplicates them by (device, component, job id, status).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use rand::Rng;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, Outgoing, QoS};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::jobs::{JobRecord, JobStore};
use super::spool::Spool;
use super::{unix_now, MqttError, MqttSettings};
use crate::fleet::{Command, Component, JobResult, JobStatus, Status, Telemetry, Topics, SCHEMA};

/// How long running jobs get to finish at shutdown.
pub const JOB_DRAIN: Duration = Duration::from_secs(4);
/// Final results this recent are published again when the broker lost the session.
const REPLAY_WINDOW: u64 = 600;
/// The longest job id accepted.
const MAX_ID: usize = 128;

/// What a daemon does with commands.
pub trait Handler: Send + Sync + 'static {
    /// The command names this component takes; others are rejected before anything runs.
    fn commands(&self) -> &'static [&'static str];
    /// Runs one job. Argument errors are [`JobError::Rejected`] (and must change nothing).
    fn run(&self, job: Job) -> BoxFuture<'static, Result<Value, JobError>>;
    /// The component's status now (the agent fills in schema, online, component, version,
    /// time).
    fn status(&self) -> BoxFuture<'static, Status>;
}

/// How a job ended badly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// Not acted on (bad arguments); nothing changed.
    Rejected(String),
    /// Tried and failed.
    Failed(String),
}

/// One job handed to the [`Handler`].
pub struct Job {
    /// The job id.
    pub id: String,
    /// The command.
    pub cmd: String,
    /// Its arguments (an object).
    pub args: Value,
    agent: Agent,
}

impl Job {
    /// Publishes an `in_progress` result carrying `progress`.
    pub async fn progress(&self, progress: Value) {
        let result =
            self.agent.result(&self.id, &self.cmd, JobStatus::InProgress, Some(progress), None, None);
        self.agent.publish_result(&result).await;
    }

    /// A handle for publishing progress from a blocking thread.
    pub fn progress_sender(&self) -> ProgressSender {
        ProgressSender { agent: self.agent.clone(), id: self.id.clone(), cmd: self.cmd.clone() }
    }
}

/// Publishes `in_progress` results from any thread (dropped, not queued, when the client's
/// channel is full: progress is advisory).
#[derive(Clone)]
pub struct ProgressSender {
    agent: Agent,
    id: String,
    cmd: String,
}

impl ProgressSender {
    /// Publishes `progress` without waiting.
    pub fn send(&self, progress: Value) {
        let result =
            self.agent.result(&self.id, &self.cmd, JobStatus::InProgress, Some(progress), None, None);
        if let Ok(payload) = serde_json::to_vec(&result) {
            let _ = self.agent.inner.client.try_publish(
                self.agent.inner.topics.result(),
                QoS::AtLeastOnce,
                false,
                payload,
            );
        }
    }
}

/// The connection as the daemon's status reports it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnectionState {
    /// Connected to the broker now.
    pub connected: bool,
    /// The broker, `host:port`.
    pub broker: String,
    /// The device id.
    pub device_id: String,
    /// Unix seconds of the last change.
    pub since: u64,
    /// The last connection error, if any.
    pub last_error: Option<String>,
    /// Connections made since start.
    pub connects: u64,
}

/// Handle to the agent; cheap to clone.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

struct Inner {
    client: AsyncClient,
    topics: Topics,
    groups: Vec<String>,
    version: String,
    interval: Duration,
    handler: Arc<dyn Handler>,
    jobs: Arc<Mutex<JobStore>>,
    spool: Arc<Mutex<Spool>>,
    connection: watch::Sender<ConnectionState>,
    status_dirty: Notify,
    spool_ready: Notify,
    /// Running jobs (awaited at shutdown before the disconnect).
    running: TaskTracker,
    stopping: CancellationToken,
}

impl Agent {
    /// Starts the agent's tasks on `tasks`; they stop when `shutdown` is cancelled. Never
    /// waits for the broker: an unreachable broker only shows in [`Agent::connection`].
    pub fn start(
        settings: &MqttSettings,
        component: Component,
        version: &str,
        handler: Arc<dyn Handler>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Self, MqttError> {
        let topics = settings.topics(component);
        let state_err = |source| MqttError::State { path: settings.state_dir.clone(), source };
        let dir = settings.state_dir.join(component.as_str());
        let jobs = JobStore::open(&dir).map_err(state_err)?;
        let spool =
            Spool::open(&dir.join("telemetry"), settings.config.telemetry_buffer).map_err(state_err)?;
        let will = serde_json::to_vec(&Status::offline(component)).unwrap_or_default();
        let client_id = format!("{}-{}", settings.device_id, component.as_str());
        let options = super::connect::options(settings, &client_id, false, Some((topics.status(), will)))?;
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        // Results and statuses are small and latency matters: no Nagle delay (about 40 ms per
        // hop otherwise, measured by the scale benchmark).
        eventloop.network_options.set_tcp_nodelay(true);
        let connection = ConnectionState {
            broker: format!("{}:{}", settings.host, settings.port),
            device_id: settings.device_id.clone(),
            since: unix_now(),
            ..ConnectionState::default()
        };
        let agent = Agent {
            inner: Arc::new(Inner {
                client,
                topics,
                groups: settings.config.groups.clone(),
                version: version.to_owned(),
                interval: settings.config.telemetry_interval,
                handler,
                jobs: Arc::new(Mutex::new(jobs)),
                spool: Arc::new(Mutex::new(spool)),
                connection: watch::channel(connection).0,
                status_dirty: Notify::new(),
                spool_ready: Notify::new(),
                running: TaskTracker::new(),
                stopping: shutdown.clone(),
            }),
        };
        tasks.spawn(agent.clone().event_loop(eventloop, tasks.clone()));
        tasks.spawn(agent.clone().status_loop());
        tasks.spawn(agent.clone().telemetry_loop());
        Ok(agent)
    }

    /// The connection now.
    pub fn connection(&self) -> ConnectionState {
        self.inner.connection.borrow().clone()
    }

    /// Waits until the connection state changes.
    pub fn watch_connection(&self) -> watch::Receiver<ConnectionState> {
        self.inner.connection.subscribe()
    }

    /// Asks for the status to be republished (something in it changed).
    pub fn status_changed(&self) {
        self.inner.status_dirty.notify_one();
    }

    /// Buffers a telemetry report (numbering it) and sends it when connected. Blocking file
    /// work runs off the async threads.
    pub async fn push_telemetry(&self, mut report: Telemetry) {
        let spool = self.inner.spool.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut spool = spool.lock().unwrap_or_else(PoisonError::into_inner);
            let (seq, dropped) = spool.next();
            report.schema = SCHEMA;
            report.seq = seq;
            report.dropped = dropped;
            let payload = serde_json::to_vec(&report).map_err(std::io::Error::other)?;
            spool.push(seq, &payload)
        })
        .await;
        match done {
            Ok(Ok(())) => self.inner.spool_ready.notify_one(),
            Ok(Err(err)) => tracing::warn!(%err, "cannot buffer a telemetry report"),
            Err(err) => tracing::warn!(%err, "telemetry buffer task failed"),
        }
    }

    fn result(
        &self,
        id: &str,
        cmd: &str,
        status: JobStatus,
        result: Option<Value>,
        error: Option<String>,
        first_status: Option<JobStatus>,
    ) -> JobResult {
        JobResult {
            schema: SCHEMA,
            id: id.to_owned(),
            cmd: cmd.to_owned(),
            device: self.inner.topics.device().to_owned(),
            component: self.inner.topics.component(),
            status,
            result,
            error,
            first_status,
            time: unix_now(),
        }
    }

    async fn publish_result(&self, result: &JobResult) {
        let Ok(payload) = serde_json::to_vec(result) else { return };
        if let Err(err) =
            self.inner.client.publish(self.inner.topics.result(), QoS::AtLeastOnce, false, payload).await
        {
            tracing::warn!(%err, id = %result.id, "cannot queue a job result");
        }
    }

    async fn publish_status(&self) {
        let mut status = self.inner.handler.status().await;
        status.schema = SCHEMA;
        status.online = !self.inner.stopping.is_cancelled();
        status.component = Some(self.inner.topics.component());
        status.version = Some(self.inner.version.clone());
        status.time = Some(unix_now());
        status.groups = self.inner.groups.clone();
        let Ok(payload) = serde_json::to_vec(&status) else { return };
        let _ = self.inner.client.publish(self.inner.topics.status(), QoS::AtLeastOnce, true, payload).await;
    }

    fn set_connection(&self, f: impl FnOnce(&mut ConnectionState)) {
        self.inner.connection.send_modify(|c| {
            f(c);
            c.since = unix_now();
        });
    }

    async fn event_loop(self, mut eventloop: EventLoop, tasks: TaskTracker) {
        let mut backoff = Duration::from_secs(1);
        let mut connected_before = false;
        let mut closing = false;
        loop {
            let event = tokio::select! {
                () = self.inner.stopping.cancelled(), if !closing => {
                    closing = true;
                    tasks.spawn(self.clone().close());
                    continue;
                }
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                    backoff = Duration::from_secs(1);
                    self.set_connection(|c| {
                        c.connected = true;
                        c.connects += 1;
                    });
                    tracing::info!(broker = %self.connection().broker, session_present = ack.session_present, "MQTT connected");
                    let replay = connected_before && !ack.session_present;
                    connected_before = true;
                    tasks.spawn(self.clone().on_connect(replay));
                }
                Ok(Event::Incoming(Incoming::Publish(publish))) => {
                    let agent = self.clone();
                    self.inner
                        .running
                        .spawn(async move { agent.dispatch(publish.topic, publish.payload.to_vec()).await });
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) if closing => break,
                Ok(_) => {}
                Err(err) => {
                    let first = self.connection().connected || self.connection().last_error.is_none();
                    self.set_connection(|c| {
                        c.connected = false;
                        c.last_error = Some(err.to_string());
                    });
                    if closing {
                        break;
                    }
                    if first {
                        tracing::warn!(%err, "MQTT connection lost or refused; retrying with backoff");
                    } else {
                        tracing::debug!(%err, "MQTT connection attempt failed");
                    }
                    let jitter = rand::thread_rng().gen_range(0.8..1.2);
                    let pause = backoff.mul_f64(jitter);
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = self.inner.stopping.cancelled(), if !closing => {
                            closing = true;
                            tasks.spawn(self.clone().close());
                        }
                    }
                }
            }
        }
        self.set_connection(|c| c.connected = false);
    }

    /// After each connection: subscribe, republish the status, replay results the broker may
    /// have lost, send buffered telemetry.
    async fn on_connect(self, replay: bool) {
        let filters = self.inner.topics.command_filters(&self.inner.groups);
        let subs = filters.into_iter().map(|f| rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce));
        if let Err(err) = self.inner.client.subscribe_many(subs).await {
            tracing::warn!(%err, "cannot subscribe to the command topics");
        }
        self.inner.status_dirty.notify_one();
        if replay {
            let jobs = self.inner.jobs.clone();
            let since = unix_now().saturating_sub(REPLAY_WINDOW);
            let records = tokio::task::spawn_blocking(move || {
                jobs.lock().unwrap_or_else(PoisonError::into_inner).finished_since(since)
            })
            .await
            .unwrap_or_default();
            tracing::info!(
                results = records.len(),
                "broker lost the session; publishing recent results again"
            );
            for r in records {
                self.publish_result(&self.result(&r.id, &r.cmd, r.status, r.result, r.error, None)).await;
            }
        }
        self.inner.spool_ready.notify_one();
    }

    /// At shutdown: let running jobs finish, say offline, disconnect.
    async fn close(self) {
        self.inner.running.close();
        if tokio::time::timeout(JOB_DRAIN, self.inner.running.wait()).await.is_err() {
            tracing::warn!("fleet jobs still running at shutdown; their results may not be sent");
        }
        let offline = serde_json::to_vec(&Status::offline(self.inner.topics.component())).unwrap_or_default();
        let _ = self.inner.client.publish(self.inner.topics.status(), QoS::AtLeastOnce, true, offline).await;
        let _ = self.inner.client.disconnect().await;
    }

    async fn status_loop(self) {
        loop {
            tokio::select! {
                () = self.inner.status_dirty.notified() => {}
                () = tokio::time::sleep(self.inner.interval) => {}
                () = self.inner.stopping.cancelled() => return,
            }
            if self.connection().connected {
                self.publish_status().await;
            }
        }
    }

    async fn telemetry_loop(self) {
        let mut connection = self.watch_connection();
        loop {
            tokio::select! {
                () = self.inner.spool_ready.notified() => {}
                changed = connection.changed() => if changed.is_err() { return },
                () = self.inner.stopping.cancelled() => return,
            }
            if !self.connection().connected {
                continue;
            }
            let spool = self.inner.spool.clone();
            let pending = tokio::task::spawn_blocking(move || {
                let spool = spool.lock().unwrap_or_else(PoisonError::into_inner);
                let seqs = spool.pending()?;
                seqs.into_iter().map(|s| spool.read(s).map(|b| (s, b))).collect::<std::io::Result<Vec<_>>>()
            })
            .await;
            let Ok(Ok(pending)) = pending else { continue };
            for (seq, payload) in pending {
                if !self.connection().connected || self.inner.stopping.is_cancelled() {
                    break;
                }
                let topic = self.inner.topics.telemetry();
                if self.inner.client.publish(topic, QoS::AtLeastOnce, false, payload).await.is_err() {
                    break;
                }
                let spool = self.inner.spool.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    spool.lock().unwrap_or_else(PoisonError::into_inner).remove(seq)
                })
                .await;
            }
        }
    }

    /// One incoming publish on a command topic.
    async fn dispatch(self, topic: String, payload: Vec<u8>) {
        let Some(target) = self.inner.topics.parse_command(&topic, &self.inner.groups) else {
            return;
        };
        let name = target.name;
        let command: Command = match serde_json::from_slice(&payload) {
            Ok(c) => c,
            Err(err) => {
                let id = serde_json::from_slice::<Value>(&payload)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                let error = format!("malformed command: {err}");
                self.publish_result(&self.result(&id, &name, JobStatus::Rejected, None, Some(error), None))
                    .await;
                return;
            }
        };
        let id = command.id.clone();
        if id.is_empty() || id.len() > MAX_ID {
            let error = format!("job id must be 1 to {MAX_ID} bytes");
            self.publish_result(&self.result(&id, &name, JobStatus::Rejected, None, Some(error), None)).await;
            return;
        }
        // Check and record the id in one step, so two deliveries at once run it once.
        let jobs = self.inner.jobs.clone();
        let record = JobRecord {
            id: id.clone(),
            cmd: name.clone(),
            status: JobStatus::InProgress,
            result: None,
            error: None,
            time: unix_now(),
        };
        let seen = tokio::task::spawn_blocking(move || {
            let mut jobs = jobs.lock().unwrap_or_else(PoisonError::into_inner);
            match jobs.get(&record.id) {
                Some(first) => Ok(Some(first.clone())),
                None => jobs.put(record).map(|()| None),
            }
        })
        .await;
        match seen {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(first))) => {
                let result = self.result(
                    &id,
                    &name,
                    JobStatus::Duplicate,
                    first.result,
                    first.error,
                    Some(first.status),
                );
                self.publish_result(&result).await;
                return;
            }
            Ok(Err(err)) => {
                // Without a record the at-most-once promise cannot be kept: do not run it.
                let error = format!("cannot record the job id: {err}");
                self.publish_result(&self.result(&id, &name, JobStatus::Failed, None, Some(error), None))
                    .await;
                return;
            }
            Err(_) => return,
        }
        let outcome = if self.inner.stopping.is_cancelled() {
            Err(JobError::Rejected("the daemon is stopping".into()))
        } else if !self.inner.handler.commands().contains(&name.as_str()) {
            Err(JobError::Rejected(format!(
                "unknown command `{name}` for the {}; known: {}",
                self.inner.topics.component().as_str(),
                self.inner.handler.commands().join(", ")
            )))
        } else if command.expires_at.is_some_and(|t| t <= unix_now()) {
            Err(JobError::Rejected(format!("expired at {}", command.expires_at.unwrap_or_default())))
        } else if !command.args.is_object() {
            Err(JobError::Rejected("args must be an object".into()))
        } else {
            let job = Job { id: id.clone(), cmd: name.clone(), args: command.args, agent: self.clone() };
            self.inner.handler.run(job).await
        };
        let (status, result, error) = match outcome {
            Ok(v) => (JobStatus::Succeeded, Some(v), None),
            Err(JobError::Rejected(e)) => (JobStatus::Rejected, None, Some(e)),
            Err(JobError::Failed(e)) => (JobStatus::Failed, None, Some(e)),
        };
        let record = JobRecord {
            id: id.clone(),
            cmd: name.clone(),
            status,
            result: result.clone(),
            error: error.clone(),
            time: unix_now(),
        };
        let jobs = self.inner.jobs.clone();
        let stored = tokio::task::spawn_blocking(move || {
            jobs.lock().unwrap_or_else(PoisonError::into_inner).put(record)
        })
        .await;
        if !matches!(stored, Ok(Ok(()))) {
            tracing::warn!(%id, "cannot record a job's outcome; a repeat will report it in progress");
        }
        self.publish_result(&self.result(&id, &name, status, result, error, None)).await;
        self.inner.status_dirty.notify_one();
    }
}
