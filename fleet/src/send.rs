//! `outpost-fleet send`: one command to a device or a group, and its results.
//!
//! The results topic is subscribed before the command is published, so no result can come
//! before we listen. After a lost connection the command is published again with the same job
//! id: a device that already has it answers `duplicate` with its first outcome.
//!
//! For a group, the number of results to wait for is `--expect N`, else the number of devices
//! whose retained status for the component is online and lists the group (collected for
//! `--wait`). Exit: 0 when every expected device succeeded, 1 when any failed or rejected the
//! job, 2 when some did not answer before `--timeout`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use outpost_common::fleet::{check_segment, group_command, Command, Component, JobResult, Topics};
use outpost_common::mqtt::MqttSettings;

use crate::broker::{Broker, Event};
use crate::error::{exit, FleetError};
use crate::job::{self, Outcome};

/// Whom a command goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One device.
    Device(String),
    /// Every device in a group.
    Group(String),
}

/// What `send` does.
#[derive(Clone, Debug)]
pub struct Request {
    /// Whom to.
    pub target: Target,
    /// Which component.
    pub component: Component,
    /// The command's name.
    pub cmd: String,
    /// Its arguments (an object).
    pub args: serde_json::Value,
    /// How long to wait for the results.
    pub timeout: Duration,
    /// For a group: how many final results to wait for (`None`: the members seen online).
    pub expect: Option<usize>,
    /// How long to collect retained statuses to count a group's members.
    pub wait: Duration,
    /// Print results as JSON lines.
    pub json: bool,
}

/// The final outcomes per device, first one wins (results are delivered at least once).
#[derive(Debug, Default)]
pub struct Tally {
    /// Device → its outcome.
    pub finals: BTreeMap<String, Outcome>,
}

impl Tally {
    /// Records `outcome` for `device`; returns whether it was its first final outcome.
    pub fn record(&mut self, device: &str, outcome: Outcome) -> bool {
        if !outcome.is_final() || self.finals.contains_key(device) {
            return false;
        }
        self.finals.insert(device.to_owned(), outcome);
        true
    }

    /// The exit code once waiting is over: any failure or rejection is 1, else fewer final
    /// results than `expected` is 2 (timeout), else 0.
    pub fn exit_code(&self, expected: usize) -> u8 {
        if self.finals.values().any(|o| matches!(o, Outcome::Failed | Outcome::Rejected)) {
            exit::FAILED
        } else if self.finals.len() < expected {
            exit::TIMEOUT
        } else {
            exit::OK
        }
    }
}

/// Runs `send`; returns the exit code.
pub fn run(settings: &MqttSettings, client_id: &str, req: &Request) -> Result<u8, FleetError> {
    check_segment("the command name", &req.cmd).map_err(FleetError::Usage)?;
    let prefix = &settings.config.topic_prefix;
    let (topic, results) = match &req.target {
        Target::Device(device) => {
            let topics = Topics::new(prefix, device, req.component).map_err(FleetError::Usage)?;
            (topics.command(&req.cmd), topics.result())
        }
        Target::Group(group) => {
            check_segment("the group", group).map_err(FleetError::Usage)?;
            let topic = group_command(prefix, group, req.component, &req.cmd);
            (topic, format!("{prefix}/+/{}/result", req.component.as_str()))
        }
    };
    let mut broker = Broker::connect(settings, client_id)?;
    let expected = match (&req.target, req.expect) {
        (Target::Device(_), _) => 1,
        (Target::Group(_), Some(n)) => n,
        (Target::Group(group), None) => {
            let fleet = crate::devices::collect(&mut broker, prefix, req.wait)?;
            let members = fleet.members(group, req.component);
            if members.is_empty() {
                return Err(FleetError::Usage(format!(
                    "no online {} lists group `{group}` in its status (waited {}); pass --expect N to send anyway",
                    req.component.as_str(),
                    humantime::format_duration(req.wait)
                )));
            }
            members.len()
        }
    };
    broker.subscribe(&[results])?;
    let id = job::new_id();
    let payload = serde_json::to_vec(&Command { id: id.clone(), args: req.args.clone(), expires_at: None })
        .map_err(|e| FleetError::Usage(e.to_string()))?;
    broker.publish(&topic, payload.clone())?;
    if !req.json {
        eprintln!("job {id}: {} to {topic}; waiting for {expected} result(s)", req.cmd);
    }
    let deadline = Instant::now() + req.timeout;
    let mut tally = Tally::default();
    while tally.finals.len() < expected {
        match broker.next(deadline) {
            None => break,
            Some(Event::Reconnected) => broker.publish(&topic, payload.clone())?,
            Some(Event::Message(m)) => {
                let Ok(result) = serde_json::from_slice::<JobResult>(&m.payload) else { continue };
                if result.id != id {
                    continue;
                }
                if req.json {
                    println!("{}", String::from_utf8_lossy(&m.payload));
                } else {
                    println!("{}", job::describe(&result));
                }
                tally.record(&result.device, Outcome::of(&result));
            }
        }
    }
    let code = tally.exit_code(expected);
    if !req.json && code == exit::TIMEOUT {
        eprintln!(
            "timed out after {}: {} of {expected} final result(s)",
            humantime::format_duration(req.timeout),
            tally.finals.len()
        );
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tally_counts_each_device_once_and_maps_exit_codes() {
        let mut t = Tally::default();
        assert!(!t.record("d1", Outcome::Running));
        assert!(t.record("d1", Outcome::Succeeded));
        assert!(!t.record("d1", Outcome::Failed), "a later final result does not count");
        assert_eq!(t.exit_code(1), exit::OK);
        assert_eq!(t.exit_code(2), exit::TIMEOUT);
        assert!(t.record("d2", Outcome::Rejected));
        assert_eq!(t.exit_code(3), exit::FAILED, "a failure wins over a timeout");
    }
}
