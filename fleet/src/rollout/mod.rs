//! `outpost-fleet rollout`: a staged update of a group, the way AWS IoT Jobs stages one.
//!
//! - The group's devices are those whose retained *updater* status is online and lists the
//!   group, when the rollout is first planned; the plan (waves, one job id per device) is then
//!   fixed in the state file, so a resumed rollout works on the same devices with the same ids.
//! - Waves are the devices sorted by id in chunks of `--wave`. Each device is sent `update
//!   {"manifest_url"}` on its own command topic (`P/D/updater/cmd/update`, not the group's, so
//!   a wave is exactly its devices). The next wave starts only when every job of the previous
//!   one has a final outcome.
//! - A failed or rejected job, or none within `--timeout-per-device`, is a failure. When
//!   failures reach the threshold (`--abort-at`: a count, or a percentage of the group's size,
//!   at least 1) no further wave is started; jobs already running are still awaited.
//! - Resuming: devices with an outcome are skipped; devices sent their job by an earlier run
//!   are sent the same job again, which a device that has it answers with `duplicate` and its
//!   first outcome (that is the outcome), or, if it is still running, with the run's own result
//!   when it ends. A failed device stays failed: raise `--abort-at` to go past it.
//!
//! Exit: 0 when every device succeeded, 1 when the rollout aborted or finished with failures.

pub mod plan;
pub mod state;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use outpost_common::fleet::{check_segment, Command, Component, JobResult, Topics};
use outpost_common::mqtt::{unix_now, MqttSettings};
use serde_json::json;

use crate::broker::{Broker, Event};
use crate::error::{exit, FleetError};
use crate::job::{self, Outcome};
use plan::{Size, WaveWork};
use state::{DeviceRow, DeviceState, Meta, StateFile};

/// What `rollout` does.
#[derive(Clone, Debug)]
pub struct Request {
    /// The group.
    pub group: String,
    /// The manifest URL sent to every device.
    pub manifest: String,
    /// Devices per wave (`None`: the stored plan's, else 10%).
    pub wave: Option<Size>,
    /// Failures that stop the rollout (`None`: the stored value, else 10%).
    pub abort_at: Option<Size>,
    /// The state file.
    pub state: PathBuf,
    /// How long a device's job may take, from when it is sent.
    pub timeout_per_device: Duration,
    /// How long to collect retained statuses when planning.
    pub wait: Duration,
}

/// The default wave size and abort threshold.
const DEFAULT_SIZE: Size = Size::Percent(10.0);

/// Prints above the progress bar (or plainly when there is none).
struct Output {
    bar: ProgressBar,
}

impl Output {
    fn new(total: usize, done: usize) -> Self {
        let bar = if std::io::stdout().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stdout());
            let style = ProgressStyle::with_template("{bar:32} {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        } else {
            ProgressBar::hidden()
        };
        bar.set_position(done as u64);
        Self { bar }
    }

    fn line(&self, text: &str) {
        if self.bar.is_hidden() {
            println!("{text}");
        } else {
            self.bar.println(text);
        }
    }
}

/// Runs the rollout; returns the exit code.
pub fn run(settings: &MqttSettings, client_id: &str, req: &Request) -> Result<u8, FleetError> {
    check_segment("the group", &req.group).map_err(FleetError::Usage)?;
    let prefix = settings.config.topic_prefix.clone();
    let mut state = StateFile::open(&req.state)?;
    let mut broker = Broker::connect(settings, client_id)?;
    // Results first: nothing is sent before we listen.
    broker.subscribe(&[format!("{prefix}/+/updater/result")])?;
    let meta = match state.meta()? {
        Some(meta) => resume(&state, meta, req)?,
        None => plan_new(&mut state, &mut broker, &prefix, req)?,
    };
    let abort_at: Size = match req.abort_at {
        Some(size) => size,
        None => meta.abort_at.parse().unwrap_or(DEFAULT_SIZE),
    };
    let rows = state.devices()?;
    let total = rows.len();
    let threshold = abort_at.of(total);
    let waves = rows.iter().map(|r| r.wave).max().map_or(0, |w| w + 1);
    let mut failures = rows.iter().filter(|r| r.state.is_failure()).count();
    let done = rows.iter().filter(|r| !matches!(r.state, DeviceState::Pending | DeviceState::Sent)).count();
    state.set_outcome(&abort_at.to_string(), "running")?;
    println!(
        "rollout {} of {} to group {}: {total} device(s) in {waves} wave(s), abort at {threshold} failure(s); state {}",
        meta.rollout_id,
        meta.manifest,
        meta.group,
        state.path().display()
    );
    let out = Output::new(total, done);
    let mut aborted = false;
    for wave in 0..waves {
        if plan::should_abort(failures, threshold) {
            aborted = true;
            break;
        }
        let members: Vec<&DeviceRow> = rows.iter().filter(|r| r.wave == wave).collect();
        let work = WaveWork::of(&members);
        if work.is_empty() {
            continue;
        }
        out.bar.set_message(format!("wave {}/{waves}, {failures} failed", wave + 1));
        let jobs: BTreeMap<String, String> =
            members.iter().map(|r| (r.device.clone(), r.job_id.clone())).collect();
        let mut wave_run =
            WaveRun { state: &state, broker: &mut broker, prefix: &prefix, req, out: &out, wave };
        failures += wave_run.run(&jobs, &work)?;
        out.bar.set_message(format!("wave {}/{waves}, {failures} failed", wave + 1));
    }
    out.bar.finish_and_clear();
    let rows = state.devices()?;
    let outcome = if aborted { "aborted" } else { "completed" };
    state.set_outcome(&abort_at.to_string(), outcome)?;
    summary(&rows, outcome, failures, threshold);
    Ok(if aborted || failures > 0 { exit::FAILED } else { exit::OK })
}

/// Checks that the stored plan is this rollout's.
fn resume(state: &StateFile, meta: Meta, req: &Request) -> Result<Meta, FleetError> {
    if meta.group != req.group || meta.manifest != req.manifest {
        return Err(FleetError::StateMismatch {
            path: state.path().to_path_buf(),
            reason: format!(
                "it holds the rollout of {} to group {}; give another --state for a new rollout",
                meta.manifest, meta.group
            ),
        });
    }
    if let Some(wave) = req.wave.filter(|w| w.to_string() != meta.wave_size) {
        eprintln!(
            "resuming: the waves were planned with --wave {}; --wave {wave} is ignored",
            meta.wave_size
        );
    }
    eprintln!("resuming rollout {} from {}", meta.rollout_id, state.path().display());
    Ok(meta)
}

/// Finds the group's devices and writes the plan.
fn plan_new(
    state: &mut StateFile,
    broker: &mut Broker,
    prefix: &str,
    req: &Request,
) -> Result<Meta, FleetError> {
    let fleet = crate::devices::collect(broker, prefix, req.wait)?;
    let members = fleet.members(&req.group, Component::Updater);
    if members.is_empty() {
        return Err(FleetError::Usage(format!(
            "no online updater lists group `{}` in its status (waited {})",
            req.group,
            humantime::format_duration(req.wait)
        )));
    }
    let wave = req.wave.unwrap_or(DEFAULT_SIZE);
    let meta = Meta {
        rollout_id: crate::random_hex(8),
        group: req.group.clone(),
        manifest: req.manifest.clone(),
        wave_size: wave.to_string(),
        abort_at: req.abort_at.unwrap_or(DEFAULT_SIZE).to_string(),
        outcome: "running".into(),
    };
    let waves = plan::waves(&members, wave.of(members.len()));
    state.create(&meta, &waves, |_| job::new_id())?;
    Ok(meta)
}

/// One wave's jobs being sent and awaited.
struct WaveRun<'a> {
    state: &'a StateFile,
    broker: &'a mut Broker,
    prefix: &'a str,
    req: &'a Request,
    out: &'a Output,
    wave: usize,
}

impl WaveRun<'_> {
    /// Sends the wave's jobs and waits for their outcomes; returns the failures.
    fn run(&mut self, jobs: &BTreeMap<String, String>, work: &WaveWork) -> Result<usize, FleetError> {
        // Device → (job id, when its wait ends).
        let mut waiting: BTreeMap<String, (String, Instant)> = BTreeMap::new();
        for device in work.send.iter().chain(&work.reawait) {
            let Some(id) = jobs.get(device) else { continue };
            if work.reawait.contains(device) {
                self.out.line(&format!(
                    "wave {:<3} {device:<16} re-awaiting job {id} sent by an earlier run",
                    self.wave + 1
                ));
            }
            self.state.set(device, DeviceState::Sent, None)?;
            self.send(device, id)?;
            waiting.insert(device.clone(), (id.clone(), Instant::now() + self.req.timeout_per_device));
        }
        let mut failures = 0;
        while !waiting.is_empty() {
            let deadline = waiting.values().map(|(_, d)| *d).min().unwrap_or_else(Instant::now);
            match self.broker.next(deadline) {
                Some(Event::Reconnected) => {
                    for (device, (id, _)) in &waiting {
                        self.send(device, id)?;
                    }
                }
                Some(Event::Message(m)) => {
                    let Ok(result) = serde_json::from_slice::<JobResult>(&m.payload) else { continue };
                    let ours = waiting.get(&result.device).is_some_and(|(id, _)| *id == result.id);
                    if !ours || result.component != Component::Updater {
                        continue;
                    }
                    let outcome = Outcome::of(&result);
                    let (state, detail) = match outcome {
                        Outcome::Running => {
                            if let Some(step) = result.result.as_ref().and_then(|r| r.get("step")) {
                                self.out.bar.set_message(format!(
                                    "wave {}: {} {step}",
                                    self.wave + 1,
                                    result.device
                                ));
                            }
                            continue;
                        }
                        Outcome::Succeeded => {
                            (DeviceState::Succeeded, result.result.as_ref().map(|v| v.to_string()))
                        }
                        Outcome::Failed | Outcome::Rejected => (DeviceState::Failed, result.error.clone()),
                    };
                    self.finish(&result.device, state, detail.as_deref(), &job::describe(&result))?;
                    failures += usize::from(state.is_failure());
                    waiting.remove(&result.device);
                }
                None => {
                    let now = Instant::now();
                    let late: Vec<String> =
                        waiting.iter().filter(|(_, (_, d))| *d <= now).map(|(k, _)| k.clone()).collect();
                    for device in late {
                        let why = format!(
                            "no final result within {}",
                            humantime::format_duration(self.req.timeout_per_device)
                        );
                        let line = format!("{device:<16} updater  timed_out   {why}");
                        self.finish(&device, DeviceState::TimedOut, Some(&why), &line)?;
                        failures += 1;
                        waiting.remove(&device);
                    }
                }
            }
        }
        Ok(failures)
    }

    /// Publishes `device`'s update job (again, after a reconnection or on resume: same id).
    fn send(&mut self, device: &str, id: &str) -> Result<(), FleetError> {
        let topics = Topics::new(self.prefix, device, Component::Updater).map_err(FleetError::Usage)?;
        let expires = unix_now() + self.req.timeout_per_device.as_secs();
        let command = Command {
            id: id.to_owned(),
            args: json!({ "manifest_url": self.req.manifest }),
            expires_at: Some(expires),
        };
        let payload = serde_json::to_vec(&command).map_err(|e| FleetError::Usage(e.to_string()))?;
        self.broker.publish(&topics.command("update"), payload)
    }

    fn finish(
        &self,
        device: &str,
        state: DeviceState,
        detail: Option<&str>,
        line: &str,
    ) -> Result<(), FleetError> {
        self.state.set(device, state, detail)?;
        self.out.line(&format!("wave {:<3} {line}", self.wave + 1));
        self.out.bar.inc(1);
        Ok(())
    }
}

/// The closing summary.
fn summary(rows: &[DeviceRow], outcome: &str, failures: usize, threshold: usize) {
    let names = |pred: &dyn Fn(DeviceState) -> bool| -> Vec<&str> {
        rows.iter().filter(|r| pred(r.state)).map(|r| r.device.as_str()).collect()
    };
    let succeeded = names(&|s| s == DeviceState::Succeeded);
    let failed = names(&DeviceState::is_failure);
    let untouched = names(&|s| matches!(s, DeviceState::Pending | DeviceState::Sent));
    match outcome {
        "aborted" => println!("rollout aborted: {failures} failure(s) reached the threshold of {threshold}"),
        _ if failures > 0 => println!("rollout completed with {failures} failure(s)"),
        _ => println!("rollout completed"),
    }
    for (label, list) in [("succeeded", succeeded), ("failed", failed), ("not updated", untouched)] {
        if !list.is_empty() {
            println!("  {label} ({}): {}", list.len(), list.join(" "));
        }
    }
}
