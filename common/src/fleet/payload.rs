//! The JSON payloads, schema 1. Fields that do not apply are left out (`null` never means
//! "zero"). Receivers ignore fields they do not know, so later schema-1 additions stay
//! compatible; an incompatible change bumps [`SCHEMA`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The payload schema version.
pub const SCHEMA: u32 = 1;

/// Which daemon of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    /// `outpost`, the runtime.
    Runtime,
    /// `outpost-updater`.
    Updater,
}

impl Component {
    /// The topic level.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Runtime => "runtime",
            Self::Updater => "updater",
        }
    }

    /// The component named by a topic level.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "runtime" => Some(Self::Runtime),
            "updater" => Some(Self::Updater),
            _ => None,
        }
    }
}

/// A job sent to a device or a group: `P/.../cmd/<name>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// The job id: acted on at most once per device.
    pub id: String,
    /// The command's arguments (an object; `{}` when it takes none).
    #[serde(default = "empty_object")]
    pub args: Value,
    /// Unix seconds after which the job must not start (it is then `rejected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// A job's state, as reported in a [`JobResult`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Started; `result` holds progress. More results follow.
    InProgress,
    /// Done.
    Succeeded,
    /// Tried and failed; `error` says why.
    Failed,
    /// Not acted on: malformed, unknown command, bad arguments or expired; `error` says why.
    Rejected,
    /// This job id was seen before; `result`/`error` repeat the first outcome.
    Duplicate,
}

impl JobStatus {
    /// Whether no further result follows for this job.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::InProgress)
    }
}

/// A job's result: `P/D/C/result`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// [`SCHEMA`].
    pub schema: u32,
    /// The job id (empty when the command was too malformed to carry one).
    pub id: String,
    /// The command's name.
    pub cmd: String,
    /// The device that ran it.
    pub device: String,
    /// The component that ran it.
    pub component: Component,
    /// Where it stands.
    pub status: JobStatus,
    /// What it produced (or its progress, while `in_progress`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why it failed or was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `duplicate`: the status of the first run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_status: Option<JobStatus>,
    /// Unix seconds when this result was made.
    pub time: u64,
}

/// The model the runtime serves.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelStatus {
    /// Its id (file name or `general.name`).
    pub id: String,
    /// Its version, when the updater installed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The file's sha256, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// An update in progress, in the updater's status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateProgress {
    /// The job that asked for it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The step: `fetching`, `verifying`, `staging`, `trial`, ...
    pub step: String,
    /// Bytes fetched so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<u64>,
    /// Bytes to fetch in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
}

/// A component's status: `P/D/C/status`, retained, republished on change.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// [`SCHEMA`].
    pub schema: u32,
    /// `false` in the last will.
    pub online: bool,
    /// Which daemon.
    pub component: Option<Component>,
    /// The daemon's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Unix seconds when this status was published (the operator's "last seen").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
    /// Runtime: the model served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelStatus>,
    /// Runtime: the router's version (absent when it did not load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_version: Option<String>,
    /// Runtime: `high`, `balanced` or `low`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_mode: Option<String>,
    /// Runtime: battery percent, when there is a battery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery: Option<u8>,
    /// Runtime: the cloud's connectivity (`online`, `offline`, `unknown`, `not_configured`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connectivity: Option<String>,
    /// Runtime: entries in the response cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_entries: Option<u64>,
    /// Updater: the version `current` points at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    /// Updater: the version before it (a rollback goes there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    /// Updater: the update in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateProgress>,
    /// The groups whose commands this component takes (`[mqtt] groups`), so that an operator
    /// can tell a group's members from the retained statuses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

impl Status {
    /// The last will of `component`: offline, nothing else.
    pub fn offline(component: Component) -> Self {
        Self { schema: SCHEMA, online: false, component: Some(component), ..Self::default() }
    }
}

/// The runtime's periodic report: `P/D/runtime/telemetry`. Counts cover the interval since the
/// previous report (`from`..`to`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// [`SCHEMA`].
    pub schema: u32,
    /// Increases by one per report, across restarts (a gap means reports were dropped).
    pub seq: u64,
    /// Unix seconds: the interval's start.
    pub from: u64,
    /// Unix seconds: the interval's end.
    pub to: u64,
    /// Requests answered, by route (`local`, `cloud`, `cache`, `refuse`).
    pub requests: BTreeMap<String, u64>,
    /// Prompt tokens of local answers.
    pub prompt_tokens: u64,
    /// Completion tokens of local answers.
    pub completion_tokens: u64,
    /// Median request latency in milliseconds (absent with no requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p50_ms: Option<f64>,
    /// 95th-percentile request latency in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p95_ms: Option<f64>,
    /// Cascaded answers over confidence-checked local answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cascade_rate: Option<f64>,
    /// Cache hits over cache lookups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_hit_rate: Option<f64>,
    /// Dollars of cloud calls avoided by local and cached answers.
    pub cloud_cost_avoided: f64,
    /// `high`, `balanced` or `low` at the end of the interval.
    pub power_mode: String,
    /// Battery percent, when there is a battery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery: Option<u8>,
    /// Reports dropped from the on-disk buffer while disconnected (oldest first), in all.
    pub dropped: u64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_strictly() {
        let c: Command = serde_json::from_str(r#"{"id":"j1","args":{"toml":"x"}}"#).unwrap();
        assert_eq!((c.id.as_str(), c.expires_at), ("j1", None));
        let c: Command = serde_json::from_str(r#"{"id":"j2"}"#).unwrap();
        assert!(c.args.as_object().unwrap().is_empty());
        assert!(serde_json::from_str::<Command>(r#"{"args":{}}"#).is_err(), "id is required");
        assert!(serde_json::from_str::<Command>(r#"{"id":"j","arg":{}}"#).is_err(), "typo");
    }

    #[test]
    fn the_last_will_says_offline_only() {
        let will = serde_json::to_value(Status::offline(Component::Updater)).unwrap();
        assert_eq!(will, serde_json::json!({"schema":1,"online":false,"component":"updater"}));
    }
}
