//! The pure parts of a rollout: sizes given as a count or a percentage, the waves, the abort
//! threshold, and what to do with a wave's devices given what the state file says.

use std::fmt;
use std::str::FromStr;

use super::state::{DeviceRow, DeviceState};

/// A number of devices: `N`, or `P%` of the group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Size {
    /// This many devices.
    Count(usize),
    /// This share of the group's devices, rounded up.
    Percent(f64),
}

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| format!("`{s}`: expected N or P%"))?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(format!("`{s}`: a percentage must be above 0 and at most 100"));
            }
            return Ok(Self::Percent(p));
        }
        match s.parse::<usize>() {
            Ok(0) => Err(format!("`{s}`: must be at least 1")),
            Ok(n) => Ok(Self::Count(n)),
            Err(_) => Err(format!("`{s}`: expected N or P%")),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Size {
    /// How many devices of `total` this is: a percentage rounds up, and it is at least 1 (so
    /// `5%` of 10 devices is 1, and a wave is never empty).
    pub fn of(self, total: usize) -> usize {
        let n = match self {
            Self::Count(n) => n,
            // The epsilon keeps 10% of 30 at 3 despite binary fractions.
            Self::Percent(p) => (p / 100.0 * total as f64 - 1e-9).ceil().max(0.0) as usize,
        };
        n.max(1)
    }
}

/// The waves: `devices` sorted by id (duplicates dropped), in chunks of `size`.
pub fn waves(devices: &[String], size: usize) -> Vec<Vec<String>> {
    let mut sorted = devices.to_vec();
    sorted.sort();
    sorted.dedup();
    sorted.chunks(size.max(1)).map(<[String]>::to_vec).collect()
}

/// Whether a rollout with `failures` failed devices stops: when they reach the threshold.
pub fn should_abort(failures: usize, threshold: usize) -> bool {
    failures >= threshold
}

/// What a (possibly resumed) wave needs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WaveWork {
    /// Devices never sent their job: send it.
    pub send: Vec<String>,
    /// Devices sent their job by an earlier run, with no outcome recorded: send the same job
    /// again (the device runs it if it never got it, or answers `duplicate` with its outcome).
    pub reawait: Vec<String>,
}

impl WaveWork {
    /// Sorts a wave's rows; devices with an outcome are skipped.
    pub fn of(rows: &[&DeviceRow]) -> Self {
        let mut work = Self::default();
        for row in rows {
            match row.state {
                DeviceState::Pending => work.send.push(row.device.clone()),
                DeviceState::Sent => work.reawait.push(row.device.clone()),
                DeviceState::Succeeded | DeviceState::Failed | DeviceState::TimedOut => {}
            }
        }
        work
    }

    /// Whether nothing is left to do in the wave.
    pub fn is_empty(&self) -> bool {
        self.send.is_empty() && self.reawait.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_round_up() {
        assert_eq!("3".parse::<Size>().unwrap(), Size::Count(3));
        assert_eq!("10%".parse::<Size>().unwrap(), Size::Percent(10.0));
        assert_eq!(" 2.5 %".parse::<Size>().unwrap(), Size::Percent(2.5));
        for bad in ["0", "0%", "101%", "-1", "x", "%", "1.5", ""] {
            assert!(bad.parse::<Size>().is_err(), "{bad}");
        }
        assert_eq!(Size::Percent(10.0).of(30), 3);
        assert_eq!(Size::Percent(10.0).of(31), 4);
        assert_eq!(Size::Percent(5.0).of(10), 1);
        assert_eq!(Size::Percent(100.0).of(7), 7);
        assert_eq!(Size::Percent(1.0).of(0), 1);
        assert_eq!(Size::Count(5).of(3), 5, "a count is not capped: a wave just takes what is left");
        assert_eq!(Size::Percent(12.5).to_string(), "12.5%");
        assert_eq!(Size::Count(4).to_string(), "4");
    }

    #[test]
    fn waves_are_sorted_and_deterministic() {
        let devices: Vec<String> = ["d3", "d1", "d10", "d2", "d1"].iter().map(|s| s.to_string()).collect();
        assert_eq!(waves(&devices, 2), vec![vec!["d1", "d10"], vec!["d2", "d3"]]);
        assert_eq!(waves(&devices, 10), vec![vec!["d1", "d10", "d2", "d3"]]);
        assert_eq!(waves(&devices, 0).len(), 4);
        assert!(waves(&[], 3).is_empty());
    }

    #[test]
    fn the_threshold_counts_failures_reached() {
        let threshold = Size::Percent(5.0).of(40);
        assert_eq!(threshold, 2);
        assert!(!should_abort(1, threshold));
        assert!(should_abort(2, threshold));
        assert!(should_abort(1, Size::Count(1).of(40)));
    }

    #[test]
    fn a_resumed_wave_skips_finished_devices() {
        let row = |device: &str, state| DeviceRow {
            device: device.into(),
            wave: 0,
            job_id: format!("job-{device}"),
            state,
            detail: None,
        };
        let rows = [
            row("a", DeviceState::Succeeded),
            row("b", DeviceState::Sent),
            row("c", DeviceState::Pending),
            row("d", DeviceState::Failed),
            row("e", DeviceState::TimedOut),
        ];
        let work = WaveWork::of(&rows.iter().collect::<Vec<_>>());
        assert_eq!(work, WaveWork { send: vec!["c".into()], reawait: vec!["b".into()] });
        assert!(WaveWork::of(&[&rows[0], &rows[3]]).is_empty());
    }
}
