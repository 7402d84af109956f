//! What is known about the cloud's health: the circuit breaker and the probe's last verdict.
//!
//! Pure state; the caller passes the time in, so the transitions are tested without waiting.

use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::cloud::Connectivity;

/// The circuit breaker, as reports show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail fast until the cooldown has passed.
    Open,
    /// One trial call is in flight; the others fail fast until it ends.
    HalfOpen,
}

/// What the breaker lets a call do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Admission {
    /// The breaker is closed.
    Normal,
    /// The call is the half-open trial: its outcome closes or reopens the breaker.
    Trial,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen,
}

/// The probe's last verdict, or a call's success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reach {
    /// Nothing finished yet.
    Unknown,
    /// The last probe, or a later call, reached the cloud.
    Reachable,
    /// The last probe failed and no call has reached the cloud since.
    ProbeFailed,
}

/// The breaker plus the probe's verdict; one per endpoint, behind a mutex.
#[derive(Debug)]
pub(super) struct Health {
    /// Failures in a row that open the breaker.
    threshold: u32,
    /// How long the breaker stays open before a trial.
    cooldown: Duration,
    state: State,
    /// Failures in a row since the last success.
    failures: u32,
    reach: Reach,
    /// The last time the cloud was reached.
    pub(super) last_success: Option<SystemTime>,
    /// The last failure, for the status report.
    pub(super) last_error: Option<String>,
    /// When the probe runs next (set by the probe task).
    pub(super) next_probe: Option<Instant>,
}

impl Health {
    pub(super) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            state: State::Closed,
            failures: 0,
            reach: Reach::Unknown,
            last_success: None,
            last_error: None,
            next_probe: None,
        }
    }

    /// Whether a call may go out now; `None`: fail fast.
    pub(super) fn admit(&mut self, now: Instant) -> Option<Admission> {
        match self.state {
            State::Closed => Some(Admission::Normal),
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen;
                Some(Admission::Trial)
            }
            State::Open { .. } | State::HalfOpen => None,
        }
    }

    /// A call or probe reached the cloud (even if it answered with a client error): the breaker
    /// closes. `success`: it also answered well (for `last_success`).
    pub(super) fn reached(&mut self, success: bool) {
        self.state = State::Closed;
        self.failures = 0;
        self.reach = Reach::Reachable;
        if success {
            self.last_success = Some(SystemTime::now());
        }
    }

    /// A call failed for a reason that counts against the breaker. Returns whether the breaker
    /// opened now.
    pub(super) fn call_failed(&mut self, now: Instant, error: String) -> bool {
        self.failures = self.failures.saturating_add(1);
        self.last_error = Some(error);
        let open = match self.state {
            State::Closed => self.failures >= self.threshold,
            State::HalfOpen => true,
            State::Open { .. } => false,
        };
        if open {
            self.state = State::Open { until: now + self.cooldown };
        }
        open
    }

    /// A call failed in a way that says nothing about the cloud's health (a 400, a malformed
    /// answer): remembered for the report only.
    pub(super) fn note_error(&mut self, error: String) {
        self.last_error = Some(error);
    }

    /// The trial call was abandoned before its outcome was known (its caller went away): the
    /// next call may be the trial.
    pub(super) fn trial_abandoned(&mut self, now: Instant) {
        if self.state == State::HalfOpen {
            self.state = State::Open { until: now };
        }
    }

    /// The probe could not reach the cloud.
    pub(super) fn probe_failed(&mut self, error: String) {
        self.reach = Reach::ProbeFailed;
        self.last_error = Some(error);
    }

    pub(super) fn connectivity(&self) -> Connectivity {
        match (self.state, self.reach) {
            (State::Open { .. } | State::HalfOpen, _) | (_, Reach::ProbeFailed) => Connectivity::Offline,
            (State::Closed, Reach::Reachable) => Connectivity::Online,
            (State::Closed, Reach::Unknown) => Connectivity::Unknown,
        }
    }

    pub(super) fn breaker(&self) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
        }
    }

    pub(super) fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(30);

    #[test]
    fn opens_after_threshold_failures_in_a_row_only() {
        let mut h = Health::new(3, COOLDOWN);
        let t = Instant::now();
        assert_eq!(h.connectivity(), Connectivity::Unknown);
        assert!(!h.call_failed(t, "e".into()));
        assert!(!h.call_failed(t, "e".into()));
        // A success in between resets the count.
        h.reached(true);
        assert_eq!(h.connectivity(), Connectivity::Online);
        assert!(!h.call_failed(t, "e".into()));
        assert!(!h.call_failed(t, "e".into()));
        assert_eq!(h.admit(t), Some(Admission::Normal));
        assert!(h.call_failed(t, "e".into()));
        assert_eq!(h.breaker(), BreakerState::Open);
        assert_eq!(h.connectivity(), Connectivity::Offline);
        assert_eq!(h.admit(t + COOLDOWN / 2), None);
    }

    #[test]
    fn half_open_admits_one_trial_whose_outcome_decides() {
        let mut h = Health::new(1, COOLDOWN);
        let t = Instant::now();
        assert!(h.call_failed(t, "e".into()));
        let later = t + COOLDOWN;
        assert_eq!(h.admit(later), Some(Admission::Trial));
        assert_eq!(h.breaker(), BreakerState::HalfOpen);
        assert_eq!(h.admit(later), None, "only one trial at a time");
        // The trial fails: open for another full cooldown.
        assert!(h.call_failed(later, "e".into()));
        assert_eq!(h.admit(later + COOLDOWN / 2), None);
        assert_eq!(h.admit(later + COOLDOWN), Some(Admission::Trial));
        h.reached(true);
        assert_eq!(h.breaker(), BreakerState::Closed);
        assert_eq!(h.failures(), 0);
        assert_eq!(h.connectivity(), Connectivity::Online);
    }

    #[test]
    fn an_abandoned_trial_lets_the_next_call_try() {
        let mut h = Health::new(1, COOLDOWN);
        let t = Instant::now();
        h.call_failed(t, "e".into());
        assert_eq!(h.admit(t + COOLDOWN), Some(Admission::Trial));
        h.trial_abandoned(t + COOLDOWN);
        assert_eq!(h.admit(t + COOLDOWN), Some(Admission::Trial));
    }

    #[test]
    fn a_failed_probe_is_offline_until_something_reaches_the_cloud() {
        let mut h = Health::new(3, COOLDOWN);
        h.probe_failed("refused".into());
        assert_eq!(h.connectivity(), Connectivity::Offline);
        assert_eq!(h.breaker(), BreakerState::Closed, "a probe alone does not open the breaker");
        h.reached(false);
        assert_eq!(h.connectivity(), Connectivity::Online);
        assert_eq!(h.last_success, None, "a 4xx reaches the cloud but is no success");
    }
}
