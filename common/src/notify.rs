//! The systemd notifier: `READY=1` when the daemon can do its work, `STATUS=` lines that help an
//! operator, `STOPPING=1` on SIGTERM, and `WATCHDOG=1` from the loop that does the work.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op; failures to notify are logged at
//! debug level and never stop the daemon.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(false, states) {
        tracing::debug!(%err, "sd_notify failed");
    }
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A `STATUS=` line (shown by `systemctl status`).
pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// `STOPPING=1` with a status line.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// One watchdog ping.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// The watchdog period systemd expects pings within (`WatchdogSec=`, passed as
/// `WATCHDOG_USEC`), if the watchdog is enabled for this process. Ping at half of it.
pub fn watchdog_period() -> Option<Duration> {
    let mut usec = 0u64;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0).then(|| Duration::from_micros(usec))
}
