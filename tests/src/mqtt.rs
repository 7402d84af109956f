//! A real mosquitto for the fleet tests: TLS with certificates from
//! `packaging/mosquitto/make-certs.sh`, its ACL, persistence (sessions survive a restart), on a
//! free port; and an operator-side observer (a rumqttc client built by the same code the
//! daemons use) that records every message under the prefix.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use outpost_common::mqtt::{connect, MqttConfig, MqttSettings};
use rumqttc::{Client, Event, Incoming, QoS};
use serde_json::Value;

/// Certificates and the ACL, made by the packaging script.
pub struct Certs {
    /// The directory holding them.
    pub dir: PathBuf,
}

impl Certs {
    /// Runs `make-certs.sh` for `operator` and `devices` (`name` or `name:group,group`).
    pub fn make(dir: &Path, operator: &str, devices: &[&str]) -> Self {
        let script = crate::repo_root().join("packaging/mosquitto/make-certs.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(dir)
            .arg("127.0.0.1")
            .arg(operator)
            .args(devices)
            .output()
            .unwrap();
        assert!(out.status.success(), "make-certs.sh: {}", String::from_utf8_lossy(&out.stderr));
        Self { dir: dir.to_path_buf() }
    }

    /// The `[mqtt]` section for `device` against `broker` (TLS, its certificate).
    pub fn mqtt_section(&self, broker: &Broker, device: &str, extra: &str) -> String {
        format!(
            "[mqtt]\nurl = \"mqtts://127.0.0.1:{}\"\ndevice_id = \"{device}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nkeepalive = \"5s\"\n{extra}\n",
            broker.port,
            self.dir.join("ca.pem").display(),
            self.dir.join(format!("{device}.pem")).display(),
            self.dir.join(format!("{device}.key")).display(),
        )
    }
}

/// A mosquitto process.
pub struct Broker {
    /// Its TLS port.
    pub port: u16,
    config: PathBuf,
    child: Option<Child>,
    /// Its working directory (config, persistence, log).
    pub dir: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Broker {
    /// Starts mosquitto with the certificates and ACL in `certs`, state in `dir`.
    pub fn start(certs: &Certs, dir: &Path) -> Self {
        let port = free_port();
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                // `user root`: started as root (CI is), mosquitto would otherwise switch to the
                // `mosquitto` user, which cannot read the test's keys (0600) or write its state.
                "user root\nper_listener_settings false\npersistence true\npersistence_location {dir}/\nautosave_interval 1\n\
                 listener {port} 127.0.0.1\ncafile {c}/ca.pem\ncertfile {c}/server.pem\nkeyfile {c}/server.key\n\
                 require_certificate true\nuse_identity_as_username true\nallow_anonymous false\nacl_file {c}/acl\n\
                 message_size_limit 2097152\nlog_dest file {dir}/mosquitto.log\nlog_type all\n",
                dir = dir.display(),
                c = certs.dir.display()
            ),
        )
        .unwrap();
        let mut broker = Self { port, config, child: None, dir: dir.to_path_buf() };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        // Debian installs it in /usr/sbin, which a user's PATH may lack.
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"].into_iter().find(|p| Path::new(p).exists());
        let child = Command::new(bin.unwrap_or("mosquitto"))
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (Debian package `mosquitto`) is installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it (SIGTERM: it saves its persistence file).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same state.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One received message.
#[derive(Clone, Debug)]
pub struct Message {
    /// Its topic.
    pub topic: String,
    /// Its payload as JSON (`Null` if it is not JSON).
    pub json: Value,
    /// The retained flag.
    pub retain: bool,
}

/// A client that records what it receives on `filters`.
pub struct Observer {
    client: Client,
    messages: Arc<(Mutex<Vec<Message>>, Condvar)>,
}

/// Settings for a client named `name` (its certificate) on `broker`.
pub fn settings(certs: &Certs, broker: &Broker, name: &str) -> MqttSettings {
    let config: MqttConfig =
        toml::from_str(certs.mqtt_section(broker, name, "").strip_prefix("[mqtt]\n").unwrap()).unwrap();
    config.check(&certs.dir.join("state")).unwrap()
}

impl Observer {
    /// Connects as `name` (a certificate made by [`Certs::make`]) and subscribes to `filters`.
    pub fn connect(certs: &Certs, broker: &Broker, name: &str, filters: &[&str]) -> Self {
        let settings = settings(certs, broker, name);
        let options =
            connect::options(&settings, &format!("{name}-observer-{}", std::process::id()), true, None)
                .unwrap();
        let (client, mut connection) = Client::new(options, 64);
        let messages: Arc<(Mutex<Vec<Message>>, Condvar)> = Arc::default();
        let sink = messages.clone();
        let subscribed = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = subscribed.clone();
        let resubscriber = client.clone();
        let filters_owned: Vec<String> = filters.iter().map(|f| (*f).to_owned()).collect();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    // (Re)subscribe on every connection: the session is clean.
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        for f in &filters_owned {
                            let _ = resubscriber.try_subscribe(f.clone(), QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        *flag.0.lock().unwrap() = true;
                        flag.1.notify_all();
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let json = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        sink.0.lock().unwrap().push(Message { topic: p.topic, json, retain: p.retain });
                        sink.1.notify_all();
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
                if Arc::strong_count(&sink) == 1 {
                    return;
                }
            }
        });
        if !filters.is_empty() {
            let guard = subscribed.0.lock().unwrap();
            let (guard, timeout) =
                subscribed.1.wait_timeout_while(guard, Duration::from_secs(10), |s| !*s).unwrap();
            assert!(*guard && !timeout.timed_out(), "no SUBACK within 10 s");
        }
        Self { client, messages }
    }

    /// Forgets what was received so far.
    pub fn clear(&self) {
        self.messages.0.lock().unwrap().clear();
    }

    /// Publishes JSON (QoS 1).
    pub fn publish(&self, topic: &str, payload: &Value, retain: bool) {
        self.client.publish(topic, QoS::AtLeastOnce, retain, payload.to_string().into_bytes()).unwrap();
    }

    /// Every message so far.
    pub fn messages(&self) -> Vec<Message> {
        self.messages.0.lock().unwrap().clone()
    }

    /// Waits for a message matching `pred` (panics with what arrived if none does).
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Message) -> bool) -> Message {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.messages;
        let mut messages = lock.lock().unwrap();
        loop {
            if let Some(m) = messages.iter().find(|m| pred(m)) {
                return m.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                let seen: Vec<String> = messages.iter().map(|m| format!("{} {}", m.topic, m.json)).collect();
                panic!("no {what} within {timeout:?}; received:\n{}", seen.join("\n"));
            }
            messages = cvar.wait_timeout(messages, deadline - now).unwrap().0;
        }
    }

    /// The final result of job `id` on `topic`'s device (waits for it).
    pub fn result(&self, result_topic: &str, id: &str, timeout: Duration) -> Value {
        self.wait_for(&format!("final result of {id}"), timeout, |m| {
            m.topic == result_topic && m.json["id"] == id && m.json["status"] != "in_progress"
        })
        .json
    }
}
