//! Jobs from the operator's side: a fresh job id, the command's arguments from the command
//! line, and what a device's results say about a job once duplicates are resolved.

use outpost_common::fleet::{JobResult, JobStatus};
use serde_json::{Map, Value};

use crate::error::FleetError;

/// A new job id: 128 random bits in hex (as unique as a UUID, and a valid topic-free string).
pub fn new_id() -> String {
    crate::random_hex(16)
}

/// A job's state as far as the operator is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not finished: in progress, or a duplicate of a job still running.
    Running,
    /// Done.
    Succeeded,
    /// Tried and failed.
    Failed,
    /// Not acted on.
    Rejected,
}

impl Outcome {
    /// What `result` says. A `duplicate` answers a job id the device saw before (a command
    /// sent again after a reconnection or by a resumed rollout) with the first run's status:
    /// that status is the outcome. A duplicate of a run still in progress is no outcome yet;
    /// the first run's own result follows when it ends.
    pub fn of(result: &JobResult) -> Self {
        match result.status {
            JobStatus::Duplicate => match result.first_status {
                Some(first) if first != JobStatus::Duplicate => Self::from_status(first),
                _ => Self::Running,
            },
            status => Self::from_status(status),
        }
    }

    fn from_status(status: JobStatus) -> Self {
        match status {
            JobStatus::InProgress | JobStatus::Duplicate => Self::Running,
            JobStatus::Succeeded => Self::Succeeded,
            JobStatus::Failed => Self::Failed,
            JobStatus::Rejected => Self::Rejected,
        }
    }

    /// Whether no further result will change it.
    pub fn is_final(self) -> bool {
        self != Self::Running
    }
}

/// The command's arguments: the `--args-json` object (if any), then each `--arg key=value`
/// over it. `--arg` values are strings (the commands' arguments are: a URL, a TOML fragment, a
/// prompt); anything else goes in `--args-json`.
pub fn build_args(args_json: Option<&str>, pairs: &[String]) -> Result<Value, FleetError> {
    let mut args = match args_json {
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(FleetError::Usage("--args-json must be a JSON object".into())),
            Err(e) => return Err(FleetError::Usage(format!("--args-json is not JSON: {e}"))),
        },
        None => Map::new(),
    };
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(FleetError::Usage(format!("--arg `{pair}`: expected KEY=VALUE")));
        };
        args.insert(key.to_owned(), Value::String(value.to_owned()));
    }
    Ok(Value::Object(args))
}

/// One line for a result: device, component, status and what it carries.
pub fn describe(result: &JobResult) -> String {
    let status = match (result.status, result.first_status) {
        (JobStatus::Duplicate, Some(first)) => format!("duplicate (first run: {})", label(first)),
        (status, _) => label(status).to_owned(),
    };
    let detail = match (&result.error, &result.result) {
        (Some(error), _) => error.clone(),
        (None, Some(value)) => value.to_string(),
        (None, None) => String::new(),
    };
    format!("{:<16} {:<8} {:<11} {detail}", result.device, result.component.as_str(), status)
}

fn label(status: JobStatus) -> &'static str {
    match status {
        JobStatus::InProgress => "in_progress",
        JobStatus::Succeeded => "succeeded",
        JobStatus::Failed => "failed",
        JobStatus::Rejected => "rejected",
        JobStatus::Duplicate => "duplicate",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use outpost_common::fleet::Component;
    use serde_json::json;

    fn result(status: JobStatus, first: Option<JobStatus>) -> JobResult {
        JobResult {
            schema: 1,
            id: "j".into(),
            cmd: "update".into(),
            device: "d1".into(),
            component: Component::Updater,
            status,
            result: None,
            error: Some("no".into()),
            first_status: first,
            time: 0,
        }
    }

    #[test]
    fn duplicates_carry_the_first_outcome() {
        use JobStatus::*;
        assert_eq!(Outcome::of(&result(InProgress, None)), Outcome::Running);
        assert_eq!(Outcome::of(&result(Failed, None)), Outcome::Failed);
        assert_eq!(Outcome::of(&result(Duplicate, Some(Succeeded))), Outcome::Succeeded);
        assert_eq!(Outcome::of(&result(Duplicate, Some(Rejected))), Outcome::Rejected);
        assert_eq!(Outcome::of(&result(Duplicate, Some(InProgress))), Outcome::Running);
        assert_eq!(Outcome::of(&result(Duplicate, None)), Outcome::Running);
        assert!(describe(&result(Duplicate, Some(Failed))).contains("duplicate (first run: failed) no"));
    }

    #[test]
    fn args_from_the_command_line() {
        assert_eq!(build_args(None, &[]).unwrap(), json!({}));
        let pairs = vec!["manifest_url=http://h/m.json?a=b".to_owned(), "n=3".to_owned()];
        assert_eq!(
            build_args(Some(r#"{"n":1,"keep":true}"#), &pairs).unwrap(),
            json!({"manifest_url": "http://h/m.json?a=b", "n": "3", "keep": true})
        );
        assert!(build_args(Some("[1]"), &[]).is_err());
        assert!(build_args(Some("{"), &[]).is_err());
        assert!(build_args(None, &["novalue".to_owned()]).is_err());
        assert!(build_args(None, &["=v".to_owned()]).is_err());
        assert_eq!(build_args(None, &["empty=".to_owned()]).unwrap(), json!({"empty": ""}));
        assert_eq!(new_id().len(), 32);
        assert_ne!(new_id(), new_id());
    }
}
