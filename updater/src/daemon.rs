//! `outpost-updater daemon`: fetch `manifest_url` every `check_interval` (jittered), install a
//! newer valid release when one appears, and keep going whatever fails.
//!
//! One thread does the work; everything else talks to it through a bounded channel of
//! [`Trigger`]s, through a [`Handle`]: the signal thread (SIGTERM/SIGINT stop, SIGUSR1 asks for a
//! check now) and, later, an MQTT client announcing releases. A failed check (network down,
//! server error, the runtime away for the trial) is retried sooner: after 1 min, doubling, never
//! later than `check_interval`; a refused release (bad signature, expired, failed its trial
//! before) waits for the next regular check.
//!
//! Stopping: the stop flag is seen by a download between reads (the partial file is kept and
//! resumed by the next run) and before an update starts staging; staging and the trial are
//! bounded (`trial_timeout`) and finish, so the store is never left mid-step by a clean stop
//! (and the journal makes a SIGKILL safe too).
//!
//! systemd (`Type=notify`): READY=1 once the signals are handled, STATUS= with what the daemon
//! is doing, STOPPING=1 when asked to stop. With `WatchdogSec=`, WATCHDOG=1 is sent from the
//! waiting loop and from download progress; staging a large model and the trial do not feed it,
//! so `WatchdogSec` must exceed `trial_timeout` plus the longest staging.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{SigSet, Signal};
use outpost_common::notify;
use rand::Rng;

use crate::config::{ConfigError, Settings};
use crate::fetch::{self, Progress};
use crate::source::Source;
use crate::update::{self, Hooks, Outcome, UpdateError};

/// The first retry after a failed check; it doubles up to `check_interval`.
const FIRST_RETRY: Duration = Duration::from_secs(60);

/// What the daemon can be asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Check the manifest now (a release was announced, or an operator asked).
    Check,
    /// Stop (the stop flag is set too, so that work in progress sees it).
    Stop,
}

/// How other threads reach the daemon. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: SyncSender<Trigger>,
    stop: Arc<AtomicBool>,
}

impl Handle {
    /// Asks for a check as soon as the daemon is idle (a check already pending absorbs it).
    pub fn check_now(&self) {
        match self.tx.try_send(Trigger::Check) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Asks the daemon to stop: work in progress is abandoned where that is safe.
    pub fn stop(&self) {
        if !self.stop.swap(true, Ordering::SeqCst) {
            notify::stopping("stopping");
        }
        let _ = self.tx.try_send(Trigger::Stop);
    }

    /// Whether a stop was asked for.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// The daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Signal handling could not be set up.
    #[error("cannot set up signal handling: {0}")]
    Signals(#[source] std::io::Error),
}

/// systemd notifications (no-ops without `NOTIFY_SOCKET`), with the watchdog ping interval.
#[derive(Clone, Copy, Debug)]
struct Notifier {
    /// Half the watchdog period, if the watchdog is on.
    watchdog: Option<Duration>,
}

impl Notifier {
    fn new() -> Self {
        Self { watchdog: notify::watchdog_period().map(|p| p / 2) }
    }

    fn status(&self, text: &str) {
        notify::status(text);
    }

    fn feed(&self) {
        if self.watchdog.is_some() {
            notify::watchdog();
        }
    }
}

/// The update daemon.
#[derive(Debug)]
pub struct Daemon {
    settings: Settings,
    /// The manifest checked periodically; none when only the fleet drives updates.
    source: Option<Source>,
    rx: Receiver<Trigger>,
    handle: Handle,
}

impl Daemon {
    /// A daemon for `settings`, which must set `manifest_url`.
    pub fn new(settings: Settings) -> Result<Self, ConfigError> {
        // Without `[mqtt]` the periodic check is the daemon's only job: it needs a manifest.
        let source = match (&settings.updater.manifest_url, &settings.mqtt) {
            (Some(url), _) => Some(Source::Url(url.clone())),
            (None, Some(_)) => None,
            (None, None) => Some(Source::Url(settings.manifest_url()?.to_owned())),
        };
        let (tx, rx) = mpsc::sync_channel(1);
        Ok(Self { settings, source, rx, handle: Handle { tx, stop: Arc::new(AtomicBool::new(false)) } })
    }

    /// A handle to trigger checks or stop the daemon from other threads.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Blocks SIGTERM, SIGINT and SIGUSR1 in the calling thread (and so in threads it starts
    /// later: call this before starting any) and starts a thread that turns them into
    /// [`Handle::stop`] and [`Handle::check_now`].
    pub fn handle_signals(&self) -> Result<(), DaemonError> {
        let mut set = SigSet::empty();
        for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGUSR1] {
            set.add(sig);
        }
        set.thread_block().map_err(|e| DaemonError::Signals(e.into()))?;
        let handle = self.handle();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || loop {
                match set.wait() {
                    Ok(Signal::SIGUSR1) => {
                        tracing::info!("SIGUSR1: checking now");
                        handle.check_now();
                    }
                    Ok(sig) => {
                        tracing::info!(signal = %sig, "stopping");
                        handle.stop();
                    }
                    Err(err) => {
                        tracing::error!(%err, "cannot wait for signals");
                        return;
                    }
                }
            })
            .map_err(DaemonError::Signals)?;
        Ok(())
    }

    /// Checks now, then every `check_interval`, until stopped. Failures are logged and retried;
    /// nothing but a stop ends the loop.
    pub fn run(self) {
        let notifier = Notifier::new();
        let interval = self.settings.updater.check_interval;
        let Some(source) = &self.source else {
            tracing::info!("update daemon started; no manifest_url: updates come from the fleet only");
            notify::ready("started; updates come from the fleet");
            while self.wait_until(Instant::now() + Duration::from_secs(3600), &notifier) {}
            tracing::info!("update daemon stopped");
            return;
        };
        tracing::info!(manifest = %source, ?interval, "update daemon started");
        notify::ready("started");
        let mut failures = 0u32;
        let mut next = Instant::now();
        loop {
            if !self.wait_until(next, &notifier) {
                break;
            }
            let result = self.check(source, &notifier);
            let (wait, summary) = match &result {
                Ok(outcome) => {
                    failures = 0;
                    let summary = match outcome {
                        Outcome::AlreadyCurrent(c) => {
                            tracing::info!(version = %c.version, "up to date");
                            format!("up to date ({})", c.version)
                        }
                        Outcome::Installed { version, artifact, delta } => {
                            tracing::info!(version = %version.version, %artifact, delta, "installed");
                            format!("installed {}", version.version)
                        }
                    };
                    (jittered(interval), summary)
                }
                Err(UpdateError::Cancelled) => break,
                Err(err) if err.is_transient() => {
                    failures += 1;
                    let wait = fetch::backoff(FIRST_RETRY, failures - 1).min(jittered(interval));
                    tracing::warn!(%err, failures, retry_in = ?wait, "update check failed");
                    (wait, format!("check failed ({failures} in a row): {err}"))
                }
                Err(err) => {
                    failures = 0;
                    tracing::warn!(%err, "release refused");
                    (jittered(interval), format!("release refused: {err}"))
                }
            };
            if self.handle.stopping() {
                break;
            }
            next = Instant::now() + wait;
            notifier.status(&format!("{summary}; next check in {}", humantime::format_duration(round(wait))));
        }
        tracing::info!("update daemon stopped");
    }

    /// Waits for `deadline`, a check trigger (true) or a stop (false), feeding the watchdog.
    fn wait_until(&self, deadline: Instant, notifier: &Notifier) -> bool {
        loop {
            if self.handle.stopping() {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            let slice = notifier.watchdog.map_or(left, |w| left.min(w));
            match self.rx.recv_timeout(slice) {
                Ok(Trigger::Check) => return !self.handle.stopping(),
                Ok(Trigger::Stop) | Err(RecvTimeoutError::Disconnected) => return false,
                Err(RecvTimeoutError::Timeout) => notifier.feed(),
            }
        }
    }

    fn check(&self, source: &Source, notifier: &Notifier) -> Result<Outcome, UpdateError> {
        notifier.status(&format!("checking {source}"));
        notifier.feed();
        let mut last = Instant::now();
        let mut progress = |p: Progress| {
            if last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                notifier.status(&format!("downloading: {} of {} bytes", p.done, p.total));
                notifier.feed();
            }
        };
        let hooks = Hooks { cancel: Some(self.handle.stop.clone()), progress: Some(&mut progress) };
        update::apply_source(&self.settings, source, SystemTime::now(), hooks)
    }
}

/// `interval` ±10 %, so that boards started together drift apart.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::thread_rng().gen_range(0.9..=1.1))
}

fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(100));
            assert!(d >= Duration::from_secs(90) && d <= Duration::from_secs(110), "{d:?}");
        }
    }
}
