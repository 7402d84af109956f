//! `outpost-fleet watch`: job results, telemetry and status changes as they arrive.
//!
//! The retained statuses sent at subscription are the baseline and are not printed (`devices`
//! shows them); a status is printed when it differs from the device's previous one in more
//! than its timestamp. With `--json`, one object per line: `{"kind", "device", "component",
//! "payload"}`, the payload as the device sent it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use outpost_common::fleet::{fleet_filters, split_device_topic, Component, JobResult, Status, Telemetry};
use outpost_common::mqtt::MqttSettings;
use serde_json::{json, Value};

use crate::broker::{Broker, Event};
use crate::error::{exit, FleetError};

/// Watches until `duration` passes (forever when `None`); returns the exit code.
pub fn run(
    settings: &MqttSettings,
    client_id: &str,
    json: bool,
    duration: Option<Duration>,
) -> Result<u8, FleetError> {
    let prefix = settings.config.topic_prefix.clone();
    let mut broker = Broker::connect(settings, client_id)?;
    broker.subscribe(&fleet_filters(&prefix))?;
    // A deadline a century away stands for "no deadline".
    let deadline = Instant::now() + duration.unwrap_or(Duration::from_secs(100 * 365 * 86_400));
    let mut last: HashMap<(String, Component), Status> = HashMap::new();
    while let Some(event) = broker.next(deadline) {
        let message = match event {
            Event::Message(m) => m,
            Event::Reconnected => {
                eprintln!("reconnected to the broker (messages may have been missed)");
                continue;
            }
        };
        let Some((device, component, kind)) = split_device_topic(&prefix, &message.topic) else { continue };
        let Ok(payload) = serde_json::from_slice::<Value>(&message.payload) else { continue };
        let line = match kind {
            "status" => {
                let Ok(status) = serde_json::from_value::<Status>(payload.clone()) else { continue };
                let key = (device.to_owned(), component);
                let changed = last.get(&key).is_none_or(|old| !same_but_time(old, &status));
                last.insert(key, status.clone());
                if message.retain || !changed {
                    continue;
                }
                describe_status(&status)
            }
            "result" => match serde_json::from_value::<JobResult>(payload.clone()) {
                Ok(r) => format!("result  {}", crate::job::describe(&r)),
                Err(_) => continue,
            },
            "telemetry" => match serde_json::from_value::<Telemetry>(payload.clone()) {
                Ok(t) => describe_telemetry(device, &t),
                Err(_) => continue,
            },
            _ => continue,
        };
        if json {
            let object =
                json!({ "kind": kind, "device": device, "component": component, "payload": payload });
            println!("{object}");
        } else if kind == "status" {
            println!("status  {device:<16} {:<8} {line}", component.as_str());
        } else {
            println!("{line}");
        }
    }
    Ok(exit::OK)
}

fn same_but_time(a: &Status, b: &Status) -> bool {
    let strip = |s: &Status| Status { time: None, ..s.clone() };
    strip(a) == strip(b)
}

fn describe_status(s: &Status) -> String {
    let mut parts = vec![if s.online { "online".to_owned() } else { "offline".to_owned() }];
    if let Some(m) = &s.model {
        parts.push(format!(
            "model={}{}",
            m.id,
            m.version.as_deref().map(|v| format!("@{v}")).unwrap_or_default()
        ));
    }
    let fields = [
        ("power", &s.power_mode),
        ("current", &s.current_version),
        ("previous", &s.previous_version),
        ("connectivity", &s.connectivity),
    ];
    for (name, value) in fields {
        if let Some(v) = value {
            parts.push(format!("{name}={v}"));
        }
    }
    if let Some(u) = &s.update {
        parts.push(format!("update={}", u.step));
    }
    parts.join(" ")
}

fn describe_telemetry(device: &str, t: &Telemetry) -> String {
    let requests: Vec<String> = t.requests.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}ms"));
    format!(
        "telem   {device:<16} seq={} requests={} p50={} p95={} power={}{}",
        t.seq,
        if requests.is_empty() { "-".into() } else { requests.join(",") },
        ms(t.latency_p50_ms),
        ms(t.latency_p95_ms),
        t.power_mode,
        if t.dropped > 0 { format!(" dropped={}", t.dropped) } else { String::new() },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_changes_count() {
        let a =
            Status { online: true, time: Some(1), current_version: Some("1".into()), ..Status::default() };
        let b = Status { time: Some(2), ..a.clone() };
        assert!(same_but_time(&a, &b));
        let c = Status { current_version: Some("2".into()), ..b };
        assert!(!same_but_time(&a, &c));
        assert_eq!(describe_status(&c), "online current=2");
        let t = Telemetry { seq: 4, power_mode: "low".into(), dropped: 2, ..Telemetry::default() };
        assert_eq!(
            describe_telemetry("d1", &t),
            "telem   d1               seq=4 requests=- p50=- p95=- power=low dropped=2"
        );
    }
}
