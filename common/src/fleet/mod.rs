//! The fleet contract: MQTT topic names and JSON payloads (schema 1), defined once for the
//! device agents (both daemons) and the operator's CLI. `docs/fleet.md` is its reference.
//!
//! With `P` the topic prefix, `D` the device id and `C` the component (`runtime`, `updater`):
//!
//! | Topic | Direction | QoS, retained | Payload |
//! |---|---|---|---|
//! | `P/D/C/status` | device → | 1, retained | [`Status`]; the last will is `{"schema":1,"online":false,"component":C}` |
//! | `P/D/runtime/telemetry` | device → | 1 | [`Telemetry`] |
//! | `P/D/C/cmd/<name>` | → device | 1 | [`Command`] |
//! | `P/group/<group>/C/cmd/<name>` | → group | 1 | [`Command`] |
//! | `P/D/C/result` | device → | 1 | [`JobResult`] |

mod payload;
mod topics;

pub use payload::{
    Command, Component, JobResult, JobStatus, ModelStatus, Status, Telemetry, UpdateProgress, SCHEMA,
};
pub use topics::{
    check_segment, fleet_filters, group_command, split_device_topic, CommandTopic, Topics, GROUP_LEVEL,
};
