//! The power signal: battery level and charging state from sysfs `power_supply`.
//!
//! [`read`] looks at the supply class directory the way the kernel documents it
//! (`Documentation/ABI/testing/sysfs-class-power`): one directory per supply, each with a
//! `type`; external supplies (`Mains`, `USB`, `Wireless`, ...) say in `online` whether they
//! power the board; batteries report `capacity` (percent), `status` (`Charging`,
//! `Discharging`, `Not charging`, `Full`, `Unknown`), `present`, and sometimes `scope`
//! (`Device` marks a peripheral's battery, such as a mouse's, which is not the board's).
//!
//! A missing or garbled attribute never fails a read: it counts as unknown. The only error is a
//! supply directory that exists but cannot be listed. [`spawn_monitor`] reads once at start and
//! then every `poll_interval`, publishing the [`PowerState`] on a watch channel and the gauges.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

mod state;

pub use state::{PowerMode, PowerSource, PowerState};

/// `[power]`: where the battery is read and how its level maps to power modes.
///
/// The mapping ([`PowerConfig::mode`]): on mains, or charging → `high`; on battery above
/// `low_battery` percent (or at an unknown level) → `balanced`; on battery at or below
/// `low_battery` → `low`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PowerConfig {
    /// The sysfs `power_supply` class directory (a test points it at a fake tree).
    pub supply_root: PathBuf,
    /// How often the battery is read (1 s to 1 h).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Battery percent at or below which, on battery, the power mode is `low` (0–100; 0 means
    /// only an empty battery is low).
    pub low_battery: u8,
}

impl Default for PowerConfig {
    fn default() -> Self {
        Self {
            supply_root: PathBuf::from("/sys/class/power_supply"),
            poll_interval: Duration::from_secs(15),
            low_battery: 20,
        }
    }
}

impl PowerConfig {
    /// Checks ranges and consistency; errors name the key inside the section.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.supply_root.as_os_str().is_empty() {
            return Err(("supply_root", "must not be empty".into()));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.poll_interval) {
            return Err((
                "poll_interval",
                format!("must be between 1s and 1h (got {})", humantime::format_duration(self.poll_interval)),
            ));
        }
        if self.low_battery > 100 {
            return Err((
                "low_battery",
                format!("must be a percentage, 0 to 100 (got {})", self.low_battery),
            ));
        }
        Ok(())
    }

    /// The power mode of a power state: `high` on mains or while charging, `low` on battery at
    /// or below `low_battery`, `balanced` on battery otherwise (an unknown level included: a
    /// battery that cannot be read is not assumed to be nearly empty).
    pub fn mode(&self, s: &PowerState) -> PowerMode {
        if s.source == PowerSource::Mains || s.charging {
            return PowerMode::High;
        }
        match s.level {
            Some(level) if level <= self.low_battery => PowerMode::Low,
            _ => PowerMode::Balanced,
        }
    }
}

/// The power supplies could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// The supply class directory exists but cannot be listed.
    #[error("cannot list power supplies in {path}: {source}")]
    ListSupplies {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// Reads the power state from a sysfs `power_supply` class directory.
///
/// - Batteries that count: `type` `Battery` or `UPS`, not `present` = 0, not `scope` =
///   `Device`. No such battery (or no directory at all, as on most single-board computers):
///   mains.
/// - On mains when any external supply (`Mains`, `USB*`, `Wireless`, `BrickID`, `UPS`) has a
///   non-zero `online`, or a battery says `Charging`, `Full` or `Not charging` (all of which mean
///   a charger is connected).
/// - `charging` when a battery says `Charging` or `Full`.
/// - The level is the mean of the batteries' levels, each from `capacity`, else from
///   `energy_now / energy_full` or `charge_now / charge_full`, clamped to 0–100; `None` when
///   no battery has a readable one.
///
/// Attributes that are missing, unreadable or garbled count as unknown; the only error is a
/// directory that exists but cannot be listed.
pub fn read(root: &Path) -> Result<PowerState, PowerError> {
    let list_error = |source| PowerError::ListSupplies { path: root.to_path_buf(), source };
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(PowerState::MAINS),
        Err(err) => return Err(list_error(err)),
    };
    let mut external = false;
    let mut charging = false;
    let mut batteries = 0_u32;
    let mut levels = Vec::new();
    for entry in entries {
        let dir = entry.map_err(list_error)?.path();
        let Some(kind) = attr(&dir, "type") else { continue };
        let is_battery = matches!(kind.as_str(), "Battery" | "UPS");
        if is_external(&kind)
            && attr(&dir, "online").and_then(|v| v.parse::<u32>().ok()).is_some_and(|v| v > 0)
        {
            external = true;
        }
        if !is_battery
            || attr(&dir, "present").as_deref() == Some("0")
            || attr(&dir, "scope").as_deref() == Some("Device")
        {
            continue;
        }
        batteries += 1;
        match attr(&dir, "status").as_deref() {
            Some("Charging" | "Full") => {
                charging = true;
                external = true;
            }
            Some("Not charging") => external = true,
            _ => {}
        }
        if let Some(level) = battery_level(&dir) {
            levels.push(u32::from(level));
        }
    }
    if batteries == 0 {
        return Ok(PowerState::MAINS);
    }
    let level = match u32::try_from(levels.len()) {
        Ok(n) if n > 0 => u8::try_from((levels.iter().sum::<u32>() + n / 2) / n).ok(),
        _ => None,
    };
    let source = if external { PowerSource::Mains } else { PowerSource::Battery };
    Ok(PowerState { source, level, charging })
}

/// Supply types that power the board from outside when `online` (the `USB_*` and `BrickID`
/// types are what kernels before 5.x and vendor kernels report for USB chargers; `Main` is a
/// vendor spelling of `Mains`).
fn is_external(kind: &str) -> bool {
    matches!(kind, "Mains" | "Main" | "USB" | "Wireless" | "BrickID" | "UPS") || kind.starts_with("USB_")
}

/// One attribute, trimmed; `None` if missing, unreadable (drivers may answer EIO or ENODATA)
/// or not UTF-8.
fn attr(dir: &Path, name: &str) -> Option<String> {
    fs::read_to_string(dir.join(name)).ok().map(|s| s.trim().to_owned())
}

/// A battery's level in percent: `capacity`, else the energy or charge ratio.
fn battery_level(dir: &Path) -> Option<u8> {
    let number = |name| attr(dir, name).and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite());
    let percent = number("capacity").or_else(|| {
        [("energy_now", "energy_full"), ("charge_now", "charge_full")].into_iter().find_map(|(now, full)| {
            let (now, full) = (number(now)?, number(full)?);
            (full > 0.0).then(|| now / full * 100.0)
        })
    })?;
    // Firmware reports over 100 % (and, rarely, negative values); clamp rather than discard.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some(percent.round().clamp(0.0, 100.0) as u8)
}

/// Starts watching the power supplies: reads them now, then every `poll_interval` until
/// `shutdown`, publishing each new state on the returned channel and in the power gauges. A
/// failed read keeps the last state and is logged once until a read succeeds again.
///
/// Reads after the first run on the blocking pool: supply attributes are produced by driver
/// callbacks, and on I²C fuel gauges and ACPI embedded controllers one read can take
/// milliseconds to tens of milliseconds, too long to hold an executor thread. One read is in
/// flight at a time, so the pool sees at most one job from here. The first read is done inline
/// so that the first request is routed on a real signal.
///
/// Must be called within a Tokio runtime.
pub fn spawn_monitor(
    config: PowerConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> watch::Receiver<PowerState> {
    let mut failing = false;
    let first = match read(&config.supply_root) {
        Ok(state) => state,
        Err(err) => {
            tracing::warn!(error = %err, "power: cannot read the power supplies; assuming mains");
            failing = true;
            PowerState::MAINS
        }
    };
    let first_mode = config.mode(&first);
    metrics.set_power(&first, first_mode);
    tracing::info!(
        source = ?first.source, level = ?first.level, charging = first.charging, mode = ?first_mode,
        "power: initial state"
    );
    let (tx, rx) = watch::channel(first);
    tasks.spawn(async move {
        let period = config.poll_interval;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let root = config.supply_root.clone();
            let state = match tokio::task::spawn_blocking(move || read(&root)).await {
                Ok(Ok(state)) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("power: the power supplies can be read again");
                    }
                    state
                }
                Ok(Err(err)) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(error = %err, "power: cannot read the power supplies; keeping the last state");
                    }
                    continue;
                }
                // The runtime is shutting down (or the read panicked, which it does not).
                Err(err) => {
                    tracing::debug!(error = %err, "power: read task did not finish");
                    continue;
                }
            };
            let mode = config.mode(&state);
            metrics.set_power(&state, mode);
            let old = *tx.borrow();
            if old == state {
                continue;
            }
            let old_mode = config.mode(&old);
            if old.source != state.source || old.charging != state.charging || old_mode != mode {
                tracing::info!(
                    source = ?state.source, level = ?state.level, charging = state.charging, mode = ?mode,
                    "power: state changed"
                );
            } else {
                tracing::debug!(level = ?state.level, "power: battery level changed");
            }
            tx.send_replace(state);
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Writes one supply directory with the given attributes.
    fn supply(root: &Path, name: &str, attrs: &[(&str, &str)]) -> TestResult {
        let dir = root.join(name);
        fs::create_dir_all(&dir)?;
        for (key, value) in attrs {
            fs::write(dir.join(key), format!("{value}\n"))?;
        }
        Ok(())
    }

    fn battery(root: &Path, name: &str, capacity: &str, status: &str) -> TestResult {
        supply(
            root,
            name,
            &[("type", "Battery"), ("present", "1"), ("capacity", capacity), ("status", status)],
        )
    }

    fn mode(state: &PowerState) -> PowerMode {
        PowerConfig::default().mode(state)
    }

    #[test]
    fn missing_or_empty_root_is_mains() -> TestResult {
        let dir = tempfile::tempdir()?;
        assert_eq!(read(&dir.path().join("absent"))?, PowerState::MAINS);
        assert_eq!(read(dir.path())?, PowerState::MAINS);
        assert_eq!(mode(&PowerState::MAINS), PowerMode::High);
        Ok(())
    }

    #[test]
    fn a_root_that_cannot_be_listed_is_an_error() -> TestResult {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("file");
        fs::write(&file, "")?;
        assert!(matches!(read(&file), Err(PowerError::ListSupplies { .. })));
        Ok(())
    }

    #[test]
    fn online_mains_with_a_discharging_battery_is_mains() -> TestResult {
        let dir = tempfile::tempdir()?;
        supply(dir.path(), "AC", &[("type", "Mains"), ("online", "1")])?;
        battery(dir.path(), "BAT0", "15", "Discharging")?;
        let state = read(dir.path())?;
        assert_eq!(state, PowerState { source: PowerSource::Mains, level: Some(15), charging: false });
        assert_eq!(mode(&state), PowerMode::High);
        Ok(())
    }

    #[test]
    fn offline_mains_and_usb_leave_the_battery_in_charge() -> TestResult {
        let dir = tempfile::tempdir()?;
        supply(dir.path(), "AC", &[("type", "Mains"), ("online", "0")])?;
        supply(dir.path(), "usb", &[("type", "USB"), ("online", "0")])?;
        battery(dir.path(), "BAT0", "50", "Discharging")?;
        let state = read(dir.path())?;
        assert_eq!(state, PowerState { source: PowerSource::Battery, level: Some(50), charging: false });
        assert_eq!(mode(&state), PowerMode::Balanced);
        Ok(())
    }

    #[test]
    fn usb_online_programmable_and_legacy_usb_types_are_mains() -> TestResult {
        for (kind, online) in [("USB", "2"), ("USB_DCP", "1"), ("Wireless", "1")] {
            let dir = tempfile::tempdir()?;
            supply(dir.path(), "charger", &[("type", kind), ("online", online)])?;
            battery(dir.path(), "battery", "40", "Discharging")?;
            assert_eq!(read(dir.path())?.source, PowerSource::Mains, "{kind} online={online}");
        }
        Ok(())
    }

    #[test]
    fn discharging_at_15_percent_is_low() -> TestResult {
        let dir = tempfile::tempdir()?;
        battery(dir.path(), "BAT0", "15", "Discharging")?;
        let state = read(dir.path())?;
        assert_eq!(state, PowerState { source: PowerSource::Battery, level: Some(15), charging: false });
        assert_eq!(mode(&state), PowerMode::Low);
        Ok(())
    }

    #[test]
    fn the_low_threshold_is_inclusive() {
        let config = PowerConfig { low_battery: 20, ..PowerConfig::default() };
        let at = |level| PowerState { source: PowerSource::Battery, level: Some(level), charging: false };
        assert_eq!(config.mode(&at(20)), PowerMode::Low);
        assert_eq!(config.mode(&at(21)), PowerMode::Balanced);
        assert_eq!(config.mode(&at(0)), PowerMode::Low);
        let unknown = PowerState { source: PowerSource::Battery, level: None, charging: false };
        assert_eq!(config.mode(&unknown), PowerMode::Balanced);
    }

    #[test]
    fn discharging_at_50_percent_is_balanced() -> TestResult {
        let dir = tempfile::tempdir()?;
        battery(dir.path(), "BAT0", "50", "Discharging")?;
        assert_eq!(mode(&read(dir.path())?), PowerMode::Balanced);
        Ok(())
    }

    #[test]
    fn charging_at_10_percent_is_high() -> TestResult {
        let dir = tempfile::tempdir()?;
        battery(dir.path(), "BAT0", "10", "Charging")?;
        let state = read(dir.path())?;
        assert_eq!(state, PowerState { source: PowerSource::Mains, level: Some(10), charging: true });
        assert_eq!(mode(&state), PowerMode::High);
        // The mode follows `charging` even if the source were reported as battery.
        assert_eq!(mode(&PowerState { source: PowerSource::Battery, ..state }), PowerMode::High);
        Ok(())
    }

    #[test]
    fn full_and_not_charging_mean_a_charger_is_connected() -> TestResult {
        for (status, charging) in [("Full", true), ("Not charging", false)] {
            let dir = tempfile::tempdir()?;
            battery(dir.path(), "BAT0", "80", status)?;
            let state = read(dir.path())?;
            assert_eq!(
                state,
                PowerState { source: PowerSource::Mains, level: Some(80), charging },
                "{status}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_peripheral_battery_is_ignored() -> TestResult {
        let dir = tempfile::tempdir()?;
        supply(
            dir.path(),
            "hidpp_battery_0",
            &[("type", "Battery"), ("scope", "Device"), ("capacity", "5"), ("status", "Discharging")],
        )?;
        assert_eq!(read(dir.path())?, PowerState::MAINS);
        battery(dir.path(), "BAT0", "60", "Discharging")?;
        assert_eq!(read(dir.path())?.level, Some(60));
        Ok(())
    }

    #[test]
    fn an_absent_battery_is_ignored() -> TestResult {
        let dir = tempfile::tempdir()?;
        supply(dir.path(), "BAT1", &[("type", "Battery"), ("present", "0"), ("status", "Unknown")])?;
        assert_eq!(read(dir.path())?, PowerState::MAINS);
        Ok(())
    }

    #[test]
    fn garbled_or_missing_capacity_gives_an_unknown_level() -> TestResult {
        let dir = tempfile::tempdir()?;
        battery(dir.path(), "BAT0", "lots", "Discharging")?;
        let state = read(dir.path())?;
        assert_eq!(state, PowerState { source: PowerSource::Battery, level: None, charging: false });
        assert_eq!(mode(&state), PowerMode::Balanced);

        // No status, no capacity, garbled type elsewhere: still no error.
        let dir = tempfile::tempdir()?;
        supply(dir.path(), "BAT0", &[("type", "Battery")])?;
        supply(dir.path(), "weird", &[("type", "\u{0}\u{1}"), ("online", "yes")])?;
        fs::create_dir(dir.path().join("no-type"))?;
        fs::write(dir.path().join("stray-file"), "x")?;
        assert_eq!(
            read(dir.path())?,
            PowerState { source: PowerSource::Battery, level: None, charging: false }
        );
        Ok(())
    }

    #[test]
    fn level_falls_back_to_energy_or_charge_and_is_clamped() -> TestResult {
        let dir = tempfile::tempdir()?;
        supply(
            dir.path(),
            "BAT0",
            &[
                ("type", "Battery"),
                ("status", "Discharging"),
                ("energy_now", "30000000"),
                ("energy_full", "40000000"),
            ],
        )?;
        assert_eq!(read(dir.path())?.level, Some(75));

        let dir = tempfile::tempdir()?;
        supply(dir.path(), "BAT0", &[("type", "Battery"), ("charge_now", "1000"), ("charge_full", "0")])?;
        assert_eq!(read(dir.path())?.level, None, "a zero full charge is no ratio");

        let dir = tempfile::tempdir()?;
        battery(dir.path(), "BAT0", "104", "Discharging")?;
        assert_eq!(read(dir.path())?.level, Some(100));
        Ok(())
    }

    #[test]
    fn several_batteries_average_their_levels() -> TestResult {
        let dir = tempfile::tempdir()?;
        battery(dir.path(), "BAT0", "10", "Discharging")?;
        battery(dir.path(), "BAT1", "41", "Discharging")?;
        battery(dir.path(), "BAT2", "garbled", "Discharging")?;
        assert_eq!(read(dir.path())?.level, Some(26)); // (10 + 41) / 2 = 25.5, rounded
        Ok(())
    }

    #[test]
    fn a_ups_counts_as_the_boards_battery_and_its_online_as_mains() -> TestResult {
        let dir = tempfile::tempdir()?;
        supply(
            dir.path(),
            "ups",
            &[("type", "UPS"), ("online", "0"), ("capacity", "12"), ("status", "Discharging")],
        )?;
        let state = read(dir.path())?;
        assert_eq!(state, PowerState { source: PowerSource::Battery, level: Some(12), charging: false });
        assert_eq!(mode(&state), PowerMode::Low);
        fs::write(dir.path().join("ups/online"), "1\n")?;
        assert_eq!(read(dir.path())?.source, PowerSource::Mains);
        Ok(())
    }

    #[test]
    fn validate_names_the_key() {
        let bad = |config: PowerConfig| config.validate().err().map(|(key, _)| key);
        assert_eq!(bad(PowerConfig::default()), None);
        assert_eq!(bad(PowerConfig { low_battery: 101, ..PowerConfig::default() }), Some("low_battery"));
        assert_eq!(
            bad(PowerConfig { poll_interval: Duration::from_millis(10), ..PowerConfig::default() }),
            Some("poll_interval")
        );
        assert_eq!(
            bad(PowerConfig { supply_root: PathBuf::new(), ..PowerConfig::default() }),
            Some("supply_root")
        );
    }

    #[test]
    fn config_keys_parse_and_report_under_power() -> TestResult {
        let path = Path::new("/etc/outpost/outpost.toml");
        let config = crate::config::Config::from_toml_str(
            path,
            "[power]\nlow_battery = 30\npoll_interval = \"5s\"\n",
        )?;
        assert_eq!(config.power.low_battery, 30);
        assert_eq!(config.power.poll_interval, Duration::from_secs(5));
        let err = crate::config::Config::from_toml_str(path, "[power]\nlow_battery = 150\n")
            .err()
            .ok_or("150 % accepted")?;
        assert!(err.to_string().contains("`power.low_battery`"), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn the_monitor_publishes_changes_and_stops_on_shutdown() -> TestResult {
        let dir = tempfile::tempdir()?;
        battery(dir.path(), "BAT0", "50", "Discharging")?;
        let config = PowerConfig {
            supply_root: dir.path().to_path_buf(),
            poll_interval: Duration::from_millis(20),
            ..PowerConfig::default()
        };
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let mut rx = spawn_monitor(config, Arc::clone(&metrics), shutdown.clone(), &TaskTracker::new());
        assert_eq!(rx.borrow_and_update().level, Some(50));
        assert!(metrics.render().contains("outpost_battery_level_percent 50"));

        battery(dir.path(), "BAT0", "12", "Discharging")?;
        tokio::time::timeout(Duration::from_secs(5), rx.changed()).await??;
        assert_eq!(rx.borrow_and_update().level, Some(12));
        let text = metrics.render();
        assert!(text.contains("outpost_power_mode{state=\"low\"} 1"), "{text}");

        shutdown.cancel();
        // The task ends and drops its sender.
        tokio::time::timeout(Duration::from_secs(5), async { while rx.changed().await.is_ok() {} }).await?;
        Ok(())
    }
}
