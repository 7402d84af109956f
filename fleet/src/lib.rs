//! `outpost-fleet`, the operator's side of fleet control: a thin client of the fleet's MQTT
//! broker that speaks the contract in `outpost_common::fleet` (topics and schema-1 payloads,
//! never redefined here) and connects with the daemons' own `[mqtt]` code.
//!
//! - [`devices`]: the fleet from the retained statuses;
//! - [`send`]: one command to a device or a group, and its results;
//! - [`rollout`]: a staged, resumable update of a group;
//! - [`watch`]: results, telemetry and status changes as they arrive.
//!
//! The CLI is synchronous: one thread owns the MQTT event loop ([`broker`]), the main thread
//! does the rest (and owns the rollout's SQLite file).

pub mod broker;
pub mod cli;
pub mod connection;
pub mod devices;
pub mod error;
pub mod job;
pub mod rollout;
pub mod send;
pub mod watch;

use cli::{Cli, Cmd};
pub use error::{exit, FleetError};

/// `bytes` random bytes in hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::Rng::fill(&mut rand::thread_rng(), buf.as_mut_slice());
    hex::encode(buf)
}

/// Runs the parsed command line; returns the exit code.
pub fn run(cli: Cli) -> Result<u8, FleetError> {
    let settings = cli.connection.settings()?;
    let client_id = connection::client_id();
    match cli.command {
        Cmd::Devices { json, wait } => {
            let mut broker = broker::Broker::connect(&settings, &client_id)?;
            let fleet = devices::collect(&mut broker, &settings.config.topic_prefix, wait)?;
            if json {
                let list: Vec<&devices::Device> = fleet.devices.values().collect();
                println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
            } else {
                print!("{}", devices::table(&fleet, outpost_common::mqtt::unix_now()));
            }
            Ok(exit::OK)
        }
        Cmd::Send { words, group, component, args, args_json, timeout, expect, wait, json } => {
            let (target, cmd) = cli::send_target(&words, group.as_deref()).map_err(FleetError::Usage)?;
            let request = send::Request {
                target,
                component: component.into(),
                cmd,
                args: job::build_args(args_json.as_deref(), &args)?,
                timeout,
                expect,
                wait,
                json,
            };
            send::run(&settings, &client_id, &request)
        }
        Cmd::Rollout { group, manifest, wave, abort_at, state, timeout_per_device, wait } => {
            let state = state.unwrap_or_else(|| cli::default_state(&group));
            let request =
                rollout::Request { group, manifest, wave, abort_at, state, timeout_per_device, wait };
            rollout::run(&settings, &client_id, &request)
        }
        Cmd::Watch { json, duration } => watch::run(&settings, &client_id, json, duration),
    }
}
