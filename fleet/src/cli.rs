//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use outpost_common::fleet::Component;

use crate::connection::ConnectionArgs;
use crate::rollout::plan::Size;
use crate::send::Target;

/// Operate an Outpost fleet through its MQTT broker.
///
/// Exit codes: 0 success; 1 a job failed or was rejected, or a rollout aborted or finished with
/// failures; 2 `send` timed out waiting for results; 64 bad arguments; 69 the broker could
/// not be reached or refused us; 74 the rollout state file could not be used; 78 bad
/// connection settings.
#[derive(Debug, Parser)]
#[command(name = "outpost-fleet", version)]
pub struct Cli {
    /// How to reach the broker.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// A component, on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ComponentArg {
    /// `outpost`.
    Runtime,
    /// `outpost-updater`.
    Updater,
}

impl From<ComponentArg> for Component {
    fn from(c: ComponentArg) -> Self {
        match c {
            ComponentArg::Runtime => Component::Runtime,
            ComponentArg::Updater => Component::Updater,
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// One line per device, from the retained statuses.
    Devices {
        /// A JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// How long to collect statuses.
        #[arg(long, default_value = "2s", value_parser = duration)]
        wait: Duration,
    },
    /// Send one command to a device or a group and print its results.
    ///
    /// For a group, waits for `--expect N` final results; by default N is the number of
    /// devices whose retained status for the component is online and lists the group.
    Send {
        /// `DEVICE CMD`, or `CMD` with --group. CMD is the command's name (`reload`,
        /// `config.set`, `update`, ...).
        #[arg(num_args = 1..=2, required = true, value_name = "DEVICE CMD")]
        words: Vec<String>,
        /// Send to this group instead of one device.
        #[arg(long)]
        group: Option<String>,
        /// Which daemon takes it.
        #[arg(long, value_enum, default_value = "runtime")]
        component: ComponentArg,
        /// An argument, `KEY=VALUE` (a string); repeatable.
        #[arg(long = "arg", value_name = "KEY=VALUE")]
        args: Vec<String>,
        /// Arguments as a JSON object (`--arg` values are set over it).
        #[arg(long, value_name = "JSON")]
        args_json: Option<String>,
        /// How long to wait for the results.
        #[arg(long, default_value = "30s", value_parser = duration)]
        timeout: Duration,
        /// For a group: how many final results to wait for.
        #[arg(long, requires = "group")]
        expect: Option<usize>,
        /// For a group without --expect: how long to collect statuses to count its members.
        #[arg(long, default_value = "2s", value_parser = duration)]
        wait: Duration,
        /// Print each result as a JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Update a group in waves, stopping when failures reach a threshold; resumable.
    Rollout {
        /// The group.
        #[arg(long)]
        group: String,
        /// The release's manifest URL, sent to each device.
        #[arg(long)]
        manifest: String,
        /// Devices per wave: N or P% of the group (default 10%, at least 1).
        #[arg(long, value_parser = size)]
        wave: Option<Size>,
        /// Failures that stop the rollout: N or P% of the group (default 10%, at least 1).
        #[arg(long, value_parser = size)]
        abort_at: Option<Size>,
        /// The state file (SQLite); an interrupted rollout resumes from it.
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
        /// How long each device's update may take.
        #[arg(long, default_value = "10m", value_parser = duration)]
        timeout_per_device: Duration,
        /// How long to collect statuses to find the group's devices.
        #[arg(long, default_value = "2s", value_parser = duration)]
        wait: Duration,
    },
    /// Print results, telemetry and status changes as they arrive.
    Watch {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Stop after this long (default: run until interrupted).
        #[arg(long = "for", value_parser = duration, value_name = "DURATION")]
        duration: Option<Duration>,
    },
}

/// `send`'s target and command from its words: `DEVICE CMD`, or `CMD` with `--group`.
pub fn send_target(words: &[String], group: Option<&str>) -> Result<(Target, String), String> {
    match (words, group) {
        ([cmd], Some(group)) => Ok((Target::Group(group.to_owned()), cmd.clone())),
        ([device, cmd], None) => Ok((Target::Device(device.clone()), cmd.clone())),
        ([_, _], Some(_)) => Err("with --group, give only the command (no device)".into()),
        _ => Err("give DEVICE CMD, or --group GROUP CMD".into()),
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 500ms, 30s, 10m)"))
}

fn size(s: &str) -> Result<Size, String> {
    s.parse()
}

/// The default state file of a rollout to `group`: in the working directory.
pub fn default_state(group: &str) -> PathBuf {
    PathBuf::from(format!("outpost-rollout-{group}.sqlite"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("outpost-fleet").chain(args.iter().copied()))
    }

    #[test]
    fn send_takes_a_device_or_a_group() {
        let cli = parse(&["--url", "mqtt://b", "send", "pi-1", "reload"]).unwrap();
        assert_eq!(cli.connection.url.as_deref(), Some("mqtt://b"));
        let Cmd::Send { words, group, component, timeout, .. } = cli.command else { panic!() };
        assert_eq!(
            send_target(&words, group.as_deref()).unwrap(),
            (Target::Device("pi-1".into()), "reload".into())
        );
        assert_eq!((component, timeout), (ComponentArg::Runtime, Duration::from_secs(30)));

        let cli = parse(&[
            "send",
            "--group",
            "kitchen",
            "--component",
            "updater",
            "update",
            "--arg",
            "manifest_url=http://h/m",
            "--expect",
            "3",
            "--timeout",
            "2m",
            "--url",
            "mqtt://b",
        ])
        .unwrap();
        let Cmd::Send { words, group, expect, args, timeout, .. } = cli.command else { panic!() };
        assert_eq!(
            send_target(&words, group.as_deref()).unwrap(),
            (Target::Group("kitchen".into()), "update".into())
        );
        assert_eq!(expect, Some(3));
        assert_eq!((args, timeout), (vec!["manifest_url=http://h/m".to_owned()], Duration::from_secs(120)));

        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(send_target(&words(&["reload"]), None).is_err(), "no device, no group");
        assert!(send_target(&words(&["pi-1", "reload"]), Some("g")).is_err());
        assert!(parse(&["send", "pi-1", "reload", "extra"]).is_err());
        assert!(parse(&["send", "pi-1", "reload", "--expect", "2"]).is_err(), "--expect needs --group");
        assert!(parse(&["send", "pi-1", "reload", "--timeout", "soon"]).is_err());
    }

    #[test]
    fn rollout_sizes_and_defaults() {
        let cli = parse(&[
            "rollout",
            "--group",
            "wave",
            "--manifest",
            "http://h/m.json",
            "--wave",
            "1",
            "--abort-at",
            "5%",
        ])
        .unwrap();
        let Cmd::Rollout { wave, abort_at, state, timeout_per_device, .. } = cli.command else { panic!() };
        assert_eq!((wave, abort_at, state), (Some(Size::Count(1)), Some(Size::Percent(5.0)), None));
        assert_eq!(timeout_per_device, Duration::from_secs(600));
        assert!(parse(&["rollout", "--group", "g", "--manifest", "m", "--wave", "0"]).is_err());
        assert!(parse(&["rollout", "--group", "g", "--manifest", "m", "--abort-at", "200%"]).is_err());
        assert_eq!(default_state("wave"), PathBuf::from("outpost-rollout-wave.sqlite"));
        let cli = parse(&["watch", "--json", "--for", "5s"]).unwrap();
        assert!(
            matches!(cli.command, Cmd::Watch { json: true, duration: Some(d) } if d == Duration::from_secs(5))
        );
    }
}
