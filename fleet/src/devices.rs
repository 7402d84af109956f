//! The fleet as the retained statuses tell it (`P/+/+/status`): one entry per device with its
//! runtime's and updater's last status; `outpost-fleet devices` prints them, `send` and
//! `rollout` find a group's members in them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use outpost_common::fleet::{split_device_topic, Component, Status};
use serde::Serialize;

use crate::broker::{Broker, Event};
use crate::error::FleetError;

/// One device's statuses.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Device {
    /// Its id.
    pub device: String,
    /// Whether any of its components is online.
    pub online: bool,
    /// Unix seconds of its newest status.
    pub last_seen: Option<u64>,
    /// The groups its components take commands for.
    pub groups: BTreeSet<String>,
    /// The runtime's status.
    pub runtime: Option<Status>,
    /// The updater's status.
    pub updater: Option<Status>,
}

impl Device {
    /// The status of `component`.
    pub fn status(&self, component: Component) -> Option<&Status> {
        match component {
            Component::Runtime => self.runtime.as_ref(),
            Component::Updater => self.updater.as_ref(),
        }
    }

    /// Whether `component` is online and takes `group`'s commands.
    pub fn in_group(&self, group: &str, component: Component) -> bool {
        self.status(component).is_some_and(|s| s.online && s.groups.iter().any(|g| g == group))
    }
}

/// The fleet, by device id.
#[derive(Clone, Debug, Default)]
pub struct Fleet {
    /// The devices, sorted by id.
    pub devices: BTreeMap<String, Device>,
}

impl Fleet {
    /// Takes in one status message (`topic` under `prefix`); other topics are ignored, and so
    /// are empty payloads (a cleared retained status). Returns whether it was a status.
    pub fn absorb(&mut self, prefix: &str, topic: &str, payload: &[u8]) -> bool {
        let Some((id, component, "status")) = split_device_topic(prefix, topic) else { return false };
        if payload.is_empty() {
            return false;
        }
        let status: Status = match serde_json::from_slice(payload) {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(%topic, %err, "ignoring a status that is not schema-1 JSON");
                return false;
            }
        };
        let device = self
            .devices
            .entry(id.to_owned())
            .or_insert_with(|| Device { device: id.to_owned(), ..Device::default() });
        match component {
            Component::Runtime => device.runtime = Some(status),
            Component::Updater => device.updater = Some(status),
        }
        let statuses = [&device.runtime, &device.updater];
        let statuses = statuses.iter().filter_map(|s| s.as_ref());
        device.online = statuses.clone().any(|s| s.online);
        device.last_seen = statuses.clone().filter_map(|s| s.time).max();
        device.groups = statuses.flat_map(|s| s.groups.iter().cloned()).collect();
        true
    }

    /// The ids of the devices whose `component` is online and takes `group`'s commands.
    pub fn members(&self, group: &str, component: Component) -> Vec<String> {
        self.devices.values().filter(|d| d.in_group(group, component)).map(|d| d.device.clone()).collect()
    }
}

/// Subscribes to every status and collects what arrives within `wait` (the retained ones
/// come at once; `wait` bounds how long to listen for a large fleet's).
pub fn collect(broker: &mut Broker, prefix: &str, wait: Duration) -> Result<Fleet, FleetError> {
    broker.subscribe(&[format!("{prefix}/+/+/status")])?;
    let mut fleet = Fleet::default();
    let deadline = Instant::now() + wait;
    while let Some(event) = broker.next(deadline) {
        if let Event::Message(m) = event {
            fleet.absorb(prefix, &m.topic, &m.payload);
        }
    }
    Ok(fleet)
}

/// "5s", "3m", "2h", "4d" (or "-" when unknown) for a time `now - then` ago.
pub fn age(then: Option<u64>, now: u64) -> String {
    let Some(then) = then else { return "-".into() };
    let secs = now.saturating_sub(then);
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// The device table.
pub fn table(fleet: &Fleet, now: u64) -> String {
    let dash = |s: Option<String>| s.unwrap_or_else(|| "-".into());
    let mut rows =
        vec![["DEVICE", "ONLINE", "RUNTIME", "MODEL", "UPDATER", "CURRENT", "POWER", "SEEN", "GROUPS"]
            .map(str::to_owned)];
    for d in fleet.devices.values() {
        let (rt, up) = (d.runtime.as_ref(), d.updater.as_ref());
        let online = match (rt.map(|s| s.online), up.map(|s| s.online)) {
            (Some(true), Some(true)) | (Some(true), None) | (None, Some(true)) => "yes",
            (Some(true), Some(false)) => "runtime",
            (Some(false), Some(true)) => "updater",
            _ => "no",
        };
        let model = rt.and_then(|s| s.model.as_ref()).map(|m| match &m.version {
            Some(v) => format!("{}@{v}", m.id),
            None => m.id.clone(),
        });
        let current = up.and_then(|s| {
            let current = s.current_version.clone()?;
            Some(match &s.update {
                Some(u) => format!("{current} ({})", u.step),
                None => current,
            })
        });
        rows.push([
            d.device.clone(),
            online.to_owned(),
            dash(rt.and_then(|s| s.version.clone())),
            dash(model),
            dash(up.and_then(|s| s.version.clone())),
            dash(current),
            dash(rt.and_then(|s| s.power_mode.clone())),
            age(d.last_seen, now),
            if d.groups.is_empty() {
                "-".into()
            } else {
                d.groups.iter().cloned().collect::<Vec<_>>().join(",")
            },
        ]);
    }
    let widths: Vec<usize> = (0..9).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn absorb(fleet: &mut Fleet, topic: &str, v: serde_json::Value) -> bool {
        fleet.absorb("outpost", topic, v.to_string().as_bytes())
    }

    #[test]
    fn statuses_make_devices_and_groups() {
        let mut fleet = Fleet::default();
        assert!(absorb(
            &mut fleet,
            "outpost/d1/runtime/status",
            json!({"schema":1,"online":true,"component":"runtime","version":"0.1.0","time":100,
                   "model":{"id":"smol","version":"2.0.0"},"power_mode":"balanced","groups":["kitchen"]}),
        ));
        absorb(
            &mut fleet,
            "outpost/d1/updater/status",
            json!({"schema":1,"online":true,"component":"updater","version":"0.1.0","time":160,
                   "current_version":"2.0.0","groups":["wave"]}),
        );
        absorb(
            &mut fleet,
            "outpost/d2/updater/status",
            json!({"schema":1,"online":false,"component":"updater"}),
        );
        absorb(
            &mut fleet,
            "outpost/d3/updater/status",
            json!({"schema":1,"online":true,"component":"updater","time":10,"groups":["wave"],"future_key":1}),
        );
        assert!(!absorb(&mut fleet, "outpost/d1/runtime/result", json!({})));
        assert!(!fleet.absorb("outpost", "outpost/d4/runtime/status", b""));
        assert!(!fleet.absorb("outpost", "outpost/d4/runtime/status", b"{not json"));
        assert_eq!(fleet.devices.len(), 3);
        let d1 = &fleet.devices["d1"];
        assert_eq!((d1.online, d1.last_seen), (true, Some(160)));
        assert_eq!(d1.groups.iter().collect::<Vec<_>>(), ["kitchen", "wave"]);
        assert_eq!(fleet.members("wave", Component::Updater), ["d1", "d3"]);
        assert_eq!(fleet.members("wave", Component::Runtime), Vec::<String>::new());
        assert_eq!(fleet.members("kitchen", Component::Runtime), ["d1"]);

        let text = table(&fleet, 200);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("DEVICE"), "{text}");
        assert!(lines[1].contains("smol@2.0.0") && lines[1].contains("balanced") && lines[1].contains("40s"));
        assert!(lines[1].ends_with("kitchen,wave"), "{text}");
        assert!(lines[2].starts_with("d2") && lines[2].contains(" no "), "{text}");
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(age(None, 5), "-");
        assert_eq!(age(Some(100), 100), "0s");
        assert_eq!(age(Some(0), 119), "119s");
        assert_eq!(age(Some(0), 600), "10m");
        assert_eq!(age(Some(0), 7200), "2h");
        assert_eq!(age(Some(0), 3 * 86_400), "3d");
        assert_eq!(age(Some(500), 100), "0s");
    }
}
