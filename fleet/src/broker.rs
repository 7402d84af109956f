//! The CLI's MQTT client. One thread owns rumqttc's event loop (the blocking `Connection`):
//! it hands messages to the caller through a bounded channel (a slow caller slows the reads,
//! nothing piles up), and after a lost connection it backs off, reconnects, subscribes again
//! (the session is clean: the broker keeps nothing for a CLI) and says so, so that the caller
//! can send again what may have been lost. The caller's thread does everything else (printing,
//! the rollout's SQLite file), so the CLI needs no async runtime of its own.

use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use outpost_common::mqtt::{connect, MqttSettings};
use rumqttc::{
    Client, ConnectionError, Event as RawEvent, Incoming, QoS, SubscribeFilter, SubscribeReasonCode,
};

use crate::error::FleetError;

/// How long the first connection (TCP, TLS, CONNACK) and each SUBACK may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Messages waiting for the caller; the event loop stops reading while this many wait.
const CHANNEL: usize = 4096;

/// A message received on a subscribed topic.
#[derive(Clone, Debug)]
pub struct Message {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Whether the broker sent it from its retained store (at subscription).
    pub retain: bool,
}

/// What the caller is told.
#[derive(Debug)]
pub enum Event {
    /// A message.
    Message(Message),
    /// The connection was lost and is back (subscriptions renewed): anything published or
    /// sent to us meanwhile may be lost.
    Reconnected,
}

/// What the event-loop thread reports.
enum Raw {
    Connected,
    SubAck(Vec<SubscribeReasonCode>),
    Event(Event),
    Error(String),
}

/// A connected client.
pub struct Broker {
    client: Client,
    events: Receiver<Raw>,
    /// Messages that arrived while a subscription was being confirmed.
    pending: VecDeque<Event>,
    /// Every filter subscribed to, renewed after a reconnection.
    filters: Arc<Mutex<Vec<String>>>,
    /// `host:port`, for messages.
    address: String,
}

impl Broker {
    /// Connects as `client_id` with a clean session and waits for the broker's CONNACK. The
    /// first connection is not retried: an unreachable broker or a refused certificate is
    /// reported at once.
    pub fn connect(settings: &MqttSettings, client_id: &str) -> Result<Self, FleetError> {
        let address = format!("{}:{}", settings.host, settings.port);
        let options = connect::options(settings, client_id, true, None)?;
        let (client, mut connection) = Client::new(options, 64);
        // Commands are small and latency matters more than packet count: without this, Nagle
        // and the broker's delayed ACK hold each command back ~40 ms.
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        connection.eventloop.set_network_options(network);
        let (tx, events) = sync_channel(CHANNEL);
        let filters: Arc<Mutex<Vec<String>>> = Arc::default();
        let (resubscribe, renewed) = (client.clone(), filters.clone());
        std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || event_loop(&mut connection, &tx, &resubscribe, &renewed))
            .map_err(|e| FleetError::Connect { broker: address.clone(), reason: e.to_string() })?;
        let mut broker = Self { client, events, pending: VecDeque::new(), filters, address };
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let reason = loop {
            match broker.recv_raw(deadline) {
                Some(Raw::Connected) => return Ok(broker),
                Some(Raw::Error(reason)) => break reason,
                Some(_) => {}
                None => break format!("no CONNACK within {HANDSHAKE_TIMEOUT:?}"),
            }
        };
        Err(FleetError::Connect { broker: broker.address.clone(), reason })
    }

    /// Subscribes to `filters` (QoS 1) and waits for the broker to grant them. Retained
    /// messages on them follow as [`Event::Message`]s with `retain` set.
    pub fn subscribe(&mut self, filters: &[String]) -> Result<(), FleetError> {
        let err = |reason: String| FleetError::Subscribe { filters: filters.join(" "), reason };
        self.filters.lock().unwrap_or_else(PoisonError::into_inner).extend(filters.iter().cloned());
        let subs = filters.iter().map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
        self.client.subscribe_many(subs).map_err(|e| err(e.to_string()))?;
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        loop {
            match self.recv_raw(deadline) {
                Some(Raw::SubAck(codes)) if codes.contains(&SubscribeReasonCode::Failure) => {
                    return Err(err("the broker refused it (its ACL?)".into()));
                }
                Some(Raw::SubAck(_)) => return Ok(()),
                Some(Raw::Event(e)) => self.pending.push_back(e),
                Some(Raw::Connected | Raw::Error(_)) => {}
                None => return Err(err(format!("no SUBACK within {HANDSHAKE_TIMEOUT:?}"))),
            }
        }
    }

    /// Publishes `payload` on `topic` (QoS 1, not retained). The client delivers it, again
    /// after a reconnection if need be.
    pub fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), FleetError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .map_err(|e| FleetError::Publish { topic: topic.to_owned(), reason: e.to_string() })
    }

    /// The next event, or `None` when `deadline` passes first. Connection errors are logged
    /// (the event loop retries them).
    pub fn next(&mut self, deadline: Instant) -> Option<Event> {
        if let Some(e) = self.pending.pop_front() {
            return Some(e);
        }
        loop {
            match self.recv_raw(deadline)? {
                Raw::Event(e) => return Some(e),
                Raw::Error(reason) => {
                    tracing::warn!(broker = %self.address, %reason, "MQTT connection lost; reconnecting")
                }
                Raw::Connected | Raw::SubAck(_) => {}
            }
        }
    }

    fn recv_raw(&mut self, deadline: Instant) -> Option<Raw> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(wait) {
            Ok(raw) => Some(raw),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                // The event loop ended (it does not without a disconnect): wait out the deadline.
                std::thread::sleep(wait);
                None
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // The event loop sends the DISCONNECT, then ends when its channel closes.
        let _ = self.client.try_disconnect();
    }
}

/// The event-loop thread: polls until the caller goes away.
fn event_loop(
    connection: &mut rumqttc::Connection,
    tx: &SyncSender<Raw>,
    client: &Client,
    filters: &Mutex<Vec<String>>,
) {
    let mut connected_before = false;
    let mut backoff = Duration::from_millis(500);
    for event in connection.iter() {
        let raw = match event {
            Ok(RawEvent::Incoming(Incoming::ConnAck(_))) => {
                backoff = Duration::from_millis(500);
                if connected_before {
                    let filters = filters.lock().unwrap_or_else(PoisonError::into_inner).clone();
                    let subs = filters.into_iter().map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce));
                    let _ = client.try_subscribe_many(subs);
                    Raw::Event(Event::Reconnected)
                } else {
                    connected_before = true;
                    Raw::Connected
                }
            }
            Ok(RawEvent::Incoming(Incoming::SubAck(ack))) => Raw::SubAck(ack.return_codes),
            Ok(RawEvent::Incoming(Incoming::Publish(p))) => Raw::Event(Event::Message(Message {
                topic: p.topic,
                payload: p.payload.to_vec(),
                retain: p.retain,
            })),
            Ok(RawEvent::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(ConnectionError::RequestsDone) => return,
            Err(err) => {
                let stop = tx.send(Raw::Error(err.to_string())).is_err() || !connected_before;
                if stop {
                    // Not connected yet: the caller reports the error; nothing to retry.
                    return;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        if tx.send(raw).is_err() {
            return;
        }
    }
}
