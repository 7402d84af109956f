//! Fleet scale benchmark (not a test): N simulated devices in one process, each running the
//! real device-side code (`outpost_common::mqtt::Agent`, its own rumqttc client and connection)
//! with a trivial handler, in group `bench`, against one local mosquitto (plain TCP). For each
//! N it measures how long all N take to connect and publish their status, the time from
//! publishing one group command (`status`) to having all N results (as `outpost-fleet send`
//! receives them: the operator side is the CLI's own client), and the broker's resident memory
//! (VmRSS of the mosquitto process).
//!
//!     cargo run -p outpost-fleet --example scale -- [--tls] 100 1000
//!
//! `--tls`: the listener is TLS with client certificates required (certificates from
//! `packaging/mosquitto/make-certs.sh`; every simulated device presents the same one), so each
//! connection pays a mutual-TLS handshake as a real board's does.
//!
//! The agents' state (seen job ids, written with fsync on every job) lives under /dev/shm when
//! it exists: on a real fleet each board writes to its own disk, and 1000 boards' fsyncs
//! serialised on this machine's one disk would measure the disk, not the fleet path.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use outpost_common::fleet::{group_command, Command, Component, JobResult, Status};
use outpost_common::mqtt::{Agent, Handler, Job, JobError, MqttConfig, MqttSettings};
use outpost_fleet::broker::{Broker, Event};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const PREFIX: &str = "bench";
const GROUP: &str = "bench";

/// A device that only knows `status`.
struct Trivial;

impl Handler for Trivial {
    fn commands(&self) -> &'static [&'static str] {
        &["status"]
    }
    fn run(&self, _job: Job) -> BoxFuture<'static, Result<Value, JobError>> {
        Box::pin(async { Ok(json!({ "republished": true })) })
    }
    fn status(&self) -> BoxFuture<'static, Status> {
        Box::pin(async { Status::default() })
    }
}

/// One row of the table.
struct Row {
    devices: usize,
    connect: Duration,
    first: Duration,
    p50: Duration,
    all: Duration,
    rss_idle: u64,
    rss_connected: u64,
    rss_after: u64,
}

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let tls = args.iter().any(|a| a == "--tls");
    args.retain(|a| a != "--tls");
    let sizes: Vec<usize> = match args.iter().map(|a| a.parse()).collect::<Result<Vec<_>, _>>()? {
        v if v.is_empty() => vec![100, 1000],
        v => v,
    };
    let mut rows = Vec::new();
    for n in sizes {
        rows.push(bench(n, tls)?);
    }
    println!("\nlistener: {}", if tls { "TLS, client certificates required" } else { "plain TCP" });
    println!("\n| devices | all connected (s) | command → first result (ms) | → median (ms) | → all results (s) | broker VmRSS idle / connected / after (MiB) |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let mib = |kb: u64| kb as f64 / 1024.0;
        println!(
            "| {} | {:.2} | {:.0} | {:.0} | {:.3} | {:.1} / {:.1} / {:.1} |",
            r.devices,
            r.connect.as_secs_f64(),
            r.first.as_secs_f64() * 1e3,
            r.p50.as_secs_f64() * 1e3,
            r.all.as_secs_f64(),
            mib(r.rss_idle),
            mib(r.rss_connected),
            mib(r.rss_after)
        );
    }
    Ok(())
}

/// The broker process, killed when dropped (also when a run fails).
struct Mosquitto(Child);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts mosquitto on a free port with no connection limit; with `tls`, makes certificates
/// in `dir/certs` and requires a client certificate. Also returns the `[mqtt]` keys that reach
/// it as `who` (`device` or `operator`).
fn mosquitto(dir: &Path, tls: bool) -> anyhow::Result<(Mosquitto, impl Fn(&str) -> String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = dir.join("mosquitto.conf");
    let certs = dir.join("certs");
    // `user root`: started as root, mosquitto would switch to a user that cannot read the keys.
    let mut text = format!(
        "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n\
         persistence false\nset_tcp_nodelay true\nlog_dest none\n"
    );
    if tls {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/mosquitto/make-certs.sh");
        let made = Process::new("bash")
            .arg(script)
            .arg(&certs)
            .args(["127.0.0.1", "operator", "device"])
            .output()?;
        anyhow::ensure!(made.status.success(), "make-certs.sh: {}", String::from_utf8_lossy(&made.stderr));
        let c = certs.display();
        text += &format!(
            "cafile {c}/ca.pem\ncertfile {c}/server.pem\nkeyfile {c}/server.key\nrequire_certificate true\n"
        );
    }
    std::fs::write(&config, text)?;
    let keys = move |who: &str| {
        let c = certs.display();
        match tls {
            true => format!(
                "url = \"mqtts://127.0.0.1:{port}\"\nca_file = \"{c}/ca.pem\"\n\
                 cert_file = \"{c}/{who}.pem\"\nkey_file = \"{c}/{who}.key\"\n"
            ),
            false => format!("url = \"mqtt://127.0.0.1:{port}\"\n"),
        }
    };
    let child = Process::new("mosquitto")
        .arg("-c")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "mosquitto did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((Mosquitto(child), keys))
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn settings(text: &str) -> anyhow::Result<MqttSettings> {
    let config: MqttConfig = toml::from_str(text)?;
    config.check(Path::new("/nonexistent")).map_err(|(k, r)| anyhow::anyhow!("{k}: {r}"))
}

fn bench(n: usize, tls: bool) -> anyhow::Result<Row> {
    let shm = Path::new("/dev/shm");
    let tmp = if shm.is_dir() { tempfile::tempdir_in(shm)? } else { tempfile::tempdir()? };
    let (broker_process, keys) = mosquitto(tmp.path(), tls)?;
    let pid = broker_process.0.id();
    let rss_idle = rss_kib(pid);

    // The operator listens for statuses before any device starts.
    let operator =
        settings(&format!("{}device_id = \"operator\"\ntopic_prefix = \"{PREFIX}\"\n", keys("operator")))?;
    let mut op = Broker::connect(&operator, &outpost_fleet::connection::client_id())?;
    op.subscribe(&[format!("{PREFIX}/+/runtime/status"), format!("{PREFIX}/+/runtime/result")])?;

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let tasks = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    {
        let _guard = rt.enter();
        for i in 0..n {
            let s = settings(&format!(
                "{}device_id = \"dev-{i:05}\"\ntopic_prefix = \"{PREFIX}\"\ngroups = [\"{GROUP}\"]\n\
                 telemetry_interval = \"1h\"\nstate_dir = \"{}\"\n",
                keys("device"),
                tmp.path().join(format!("dev-{i:05}")).display()
            ))?;
            Agent::start(&s, Component::Runtime, "bench", Arc::new(Trivial), &tasks, shutdown.clone())?;
        }
    }
    // A device's status follows its SUBSCRIBE on the same connection: once it is seen, the
    // device takes group commands.
    let mut online = HashSet::new();
    let deadline = started + Duration::from_secs(300);
    while online.len() < n {
        match op.next(deadline) {
            Some(Event::Message(m)) if m.topic.ends_with("/status") => {
                if serde_json::from_slice::<Status>(&m.payload).is_ok_and(|s| s.online) {
                    online.insert(m.topic);
                }
            }
            Some(_) => {}
            None => anyhow::bail!("only {} of {n} devices came online", online.len()),
        }
    }
    let connect = started.elapsed();
    let rss_connected = rss_kib(pid);

    let id = outpost_fleet::job::new_id();
    let command = serde_json::to_vec(&Command { id: id.clone(), args: json!({}), expires_at: None })?;
    let sent = Instant::now();
    op.publish(&group_command(PREFIX, GROUP, Component::Runtime, "status"), command)?;
    let mut arrivals = Vec::with_capacity(n);
    let mut answered = HashSet::new();
    let deadline = sent + Duration::from_secs(120);
    while answered.len() < n {
        match op.next(deadline) {
            Some(Event::Message(m)) if m.topic.ends_with("/result") => {
                let Ok(r) = serde_json::from_slice::<JobResult>(&m.payload) else { continue };
                if r.id == id && r.status.is_final() && answered.insert(r.device) {
                    arrivals.push(sent.elapsed());
                }
            }
            Some(_) => {}
            None => anyhow::bail!("only {} of {n} results within 120 s", answered.len()),
        }
    }
    let rss_after = rss_kib(pid);
    let row = Row {
        devices: n,
        connect,
        first: arrivals[0],
        p50: arrivals[n / 2],
        all: arrivals[n - 1],
        rss_idle,
        rss_connected,
        rss_after,
    };
    eprintln!(
        "N={n}: connected in {:.2} s, all results {:.3} s after the command",
        row.connect.as_secs_f64(),
        row.all.as_secs_f64()
    );

    shutdown.cancel();
    tasks.close();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), tasks.wait()).await }).ok();
    drop(op);
    drop(broker_process);
    Ok(row)
}
