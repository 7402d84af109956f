//! Power rails and temperatures, sampled while `outpost bench` runs.
//!
//! All read from sysfs under a root directory (`/` on a device, a fake tree in tests):
//!
//! - **Power rails**: hwmon devices of INA3221 monitors (Jetson: `sys/bus/i2c/drivers/ina3221*/
//!   */hwmon/hwmon*`, labelled `VDD_IN`, `VDD_CPU_GPU_CV`, `VDD_SOC`) and any other hwmon device
//!   under `sys/class/hwmon` with power inputs. A channel `i` with `in{i}_input` (mV) and
//!   `curr{i}_input` (mA) gives volts × amps; `power{i}_input` (µW) gives watts directly. Labels
//!   come from `in{i}_label` / `power{i}_label`, else `<hwmon name>-<i>`.
//! - **Power supplies**: `sys/class/power_supply/*` with `power_now` (µW) or `voltage_now` (µV)
//!   × `current_now` (µA), labelled `supply:<name>`.
//! - **Temperatures**: `sys/class/thermal/thermal_zone*/temp` (m°C), named by the zone's `type`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

/// How one sensor is read.
#[derive(Clone, Debug, PartialEq)]
enum Source {
    /// Millivolts and milliamps.
    VoltsAmps { volts: PathBuf, amps: PathBuf },
    /// Microwatts.
    Microwatts(PathBuf),
    /// Microvolts and microamps (power_supply).
    SupplyVoltsAmps { volts: PathBuf, amps: PathBuf },
    /// Millidegrees Celsius.
    MilliCelsius(PathBuf),
}

/// A sensor found under the root.
#[derive(Clone, Debug, PartialEq)]
pub struct Sensor {
    /// Its name (a rail label, `supply:<name>`, or a thermal zone's type).
    pub name: String,
    source: Source,
}

fn read_f64(path: &Path) -> Option<f64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_str(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    v.sort();
    v
}

impl Sensor {
    /// Watts for a rail, °C for a temperature; `None` if unreadable now.
    pub fn read(&self) -> Option<f64> {
        match &self.source {
            Source::VoltsAmps { volts, amps } => Some(read_f64(volts)? * read_f64(amps)? / 1e6),
            Source::Microwatts(p) => Some(read_f64(p)? / 1e6),
            Source::SupplyVoltsAmps { volts, amps } => Some(read_f64(volts)? * read_f64(amps)?.abs() / 1e12),
            Source::MilliCelsius(p) => Some(read_f64(p)? / 1e3),
        }
    }

    /// Whether it measures power (else temperature).
    pub fn is_power(&self) -> bool {
        !matches!(self.source, Source::MilliCelsius(_))
    }
}

/// The hwmon directories that may hold power rails.
fn hwmon_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for driver in entries(&root.join("sys/bus/i2c/drivers")) {
        let name = driver.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !name.starts_with("ina3221") {
            continue;
        }
        for device in entries(&driver) {
            dirs.extend(entries(&device.join("hwmon")));
        }
    }
    dirs.extend(entries(&root.join("sys/class/hwmon")));
    // The driver's view and the class's are the same device: keep one of each.
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(std::fs::canonicalize(d).unwrap_or_else(|_| d.clone())));
    dirs
}

fn hwmon_rails(dir: &Path) -> Vec<Sensor> {
    let chip = read_str(&dir.join("name")).unwrap_or_else(|| "hwmon".into());
    let mut rails = Vec::new();
    for i in 1..=16 {
        let label = |kind: &str| read_str(&dir.join(format!("{kind}{i}_label")));
        let (volts, amps, micro) = (
            dir.join(format!("in{i}_input")),
            dir.join(format!("curr{i}_input")),
            dir.join(format!("power{i}_input")),
        );
        if micro.exists() {
            let name = label("power").or_else(|| label("in")).unwrap_or_else(|| format!("{chip}-{i}"));
            rails.push(Sensor { name, source: Source::Microwatts(micro) });
        } else if volts.exists() && amps.exists() {
            let name = label("in").or_else(|| label("curr")).unwrap_or_else(|| format!("{chip}-{i}"));
            rails.push(Sensor { name, source: Source::VoltsAmps { volts, amps } });
        }
    }
    rails
}

/// Every power rail, supply and thermal zone under `root`.
pub fn discover(root: &Path) -> Vec<Sensor> {
    let mut sensors: Vec<Sensor> = hwmon_dirs(root).iter().flat_map(|d| hwmon_rails(d)).collect();
    for supply in entries(&root.join("sys/class/power_supply")) {
        let name = format!("supply:{}", supply.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
        let power = supply.join("power_now");
        let (volts, amps) = (supply.join("voltage_now"), supply.join("current_now"));
        if power.exists() {
            sensors.push(Sensor { name, source: Source::Microwatts(power) });
        } else if volts.exists() && amps.exists() {
            sensors.push(Sensor { name, source: Source::SupplyVoltsAmps { volts, amps } });
        }
    }
    for zone in entries(&root.join("sys/class/thermal")) {
        let is_zone = zone.file_name().is_some_and(|n| n.to_string_lossy().starts_with("thermal_zone"));
        let temp = zone.join("temp");
        if is_zone && temp.exists() {
            let name = read_str(&zone.join("type")).unwrap_or_else(|| {
                zone.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            });
            sensors.push(Sensor { name, source: Source::MilliCelsius(temp) });
        }
    }
    sensors
}

/// One sensor's readings over the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// The sensor.
    pub name: String,
    /// `W` or `°C`.
    pub unit: &'static str,
    /// Mean of the samples.
    pub mean: f64,
    /// Largest sample.
    pub max: f64,
    /// Samples taken.
    pub samples: u32,
}

/// Samples sensors on a thread until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Summary>>>,
}

impl Sampler {
    /// Starts sampling `sensors` every `period` (the first sample at once).
    pub fn start(sensors: Vec<Sensor>, period: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("outpost-sensors".into())
            .spawn(move || {
                let mut acc: BTreeMap<usize, (f64, f64, u32)> = BTreeMap::new();
                loop {
                    for (i, s) in sensors.iter().enumerate() {
                        if let Some(v) = s.read() {
                            let e = acc.entry(i).or_insert((0.0, f64::MIN, 0));
                            *e = (e.0 + v, e.1.max(v), e.2 + 1);
                        }
                    }
                    // Sleep in short steps so that stopping is prompt.
                    let mut slept = Duration::ZERO;
                    while slept < period && !flag.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(20));
                        slept += Duration::from_millis(20);
                    }
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                }
                acc.into_iter()
                    .map(|(i, (sum, max, n))| Summary {
                        name: sensors[i].name.clone(),
                        unit: if sensors[i].is_power() { "W" } else { "°C" },
                        mean: sum / f64::from(n),
                        max,
                        samples: n,
                    })
                    .collect()
            })
            .ok();
        Self { stop, thread }
    }

    /// Stops and returns each sensor's summary (none if the thread could not start).
    pub fn finish(mut self) -> Vec<Summary> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use super::super::test_write as write;

    /// A Jetson-like tree: an INA3221 with two labelled rails, a battery, two thermal zones.
    fn fake_tree(root: &Path) {
        let hw = "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3";
        write(root, &format!("{hw}/name"), "ina3221\n");
        write(root, &format!("{hw}/in1_label"), "VDD_IN\n");
        write(root, &format!("{hw}/in1_input"), "5000\n");
        write(root, &format!("{hw}/curr1_input"), "1200\n");
        write(root, &format!("{hw}/in2_label"), "VDD_CPU_GPU_CV\n");
        write(root, &format!("{hw}/in2_input"), "5000\n");
        write(root, &format!("{hw}/curr2_input"), "400\n");
        write(root, "sys/class/power_supply/battery/voltage_now", "7400000\n");
        write(root, "sys/class/power_supply/battery/current_now", "-500000\n");
        write(root, "sys/class/power_supply/usb/power_now", "2500000\n");
        write(root, "sys/class/thermal/thermal_zone0/type", "cpu-thermal\n");
        write(root, "sys/class/thermal/thermal_zone0/temp", "48500\n");
        write(root, "sys/class/thermal/thermal_zone1/type", "gpu-thermal\n");
        write(root, "sys/class/thermal/thermal_zone1/temp", "45000\n");
        write(root, "sys/class/thermal/cooling_device0/type", "fan\n");
    }

    #[test]
    fn finds_rails_supplies_and_zones_and_converts_units() {
        let dir = tempfile::tempdir().unwrap();
        fake_tree(dir.path());
        let sensors = discover(dir.path());
        let get = |name: &str| sensors.iter().find(|s| s.name == name).and_then(Sensor::read).unwrap();
        assert!((get("VDD_IN") - 6.0).abs() < 1e-9);
        assert!((get("VDD_CPU_GPU_CV") - 2.0).abs() < 1e-9);
        assert!((get("supply:battery") - 3.7).abs() < 1e-9, "discharging current counts as power");
        assert!((get("supply:usb") - 2.5).abs() < 1e-9);
        assert!((get("cpu-thermal") - 48.5).abs() < 1e-9);
        assert_eq!(sensors.len(), 6, "{sensors:?}");
        assert!(discover(&dir.path().join("nothing")).is_empty());
    }

    #[test]
    fn the_sampler_summarizes_each_sensor() {
        let dir = tempfile::tempdir().unwrap();
        fake_tree(dir.path());
        let sampler = Sampler::start(discover(dir.path()), Duration::from_millis(10));
        std::thread::sleep(Duration::from_millis(30));
        write(dir.path(), "sys/class/thermal/thermal_zone0/temp", "60000\n");
        std::thread::sleep(Duration::from_millis(60));
        let summary = sampler.finish();
        let cpu = summary.iter().find(|s| s.name == "cpu-thermal").unwrap();
        assert_eq!(cpu.unit, "°C");
        assert!((cpu.max - 60.0).abs() < 1e-9, "{cpu:?}");
        assert!(cpu.mean < 60.0 && cpu.samples >= 2, "{cpu:?}");
        let vdd = summary.iter().find(|s| s.name == "VDD_IN").unwrap();
        assert_eq!(vdd.unit, "W");
    }
}
