//! The MQTT side (ARCHITECTURE §7): birth on every connection, death as
//! the last will (same session number), retained state, events, and the
//! signed commands. Reconnects with exponential backoff and jitter.
//!
//! Events go through a persistent outbox like telemetry windows: stored
//! (with their sequence number) before anything is sent, published in
//! sequence order while connected, deleted on the broker's PUBACK, and
//! published again from the oldest unacknowledged one after a reconnect or
//! a restart. The server drops duplicates by sequence number.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use outpost_protocol::messages::{
    Birth, Death, DeviceMessage, Encoding, Event, EventKind, Health, HealthStatus, InstalledModel,
    ModelRef, ModelState, Phase, ReportedState, Slot,
};
use outpost_protocol::topic::{TopicKind, Topics};
use rumqttc::{
    AsyncClient, Event as MqttEvent, EventLoop, LastWill, MqttOptions, Packet, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::watch;

use crate::AgentState;
use crate::config::{MqttConfig, TlsConfig};

/// Why the MQTT side could not be set up (bad TLS files, say).
#[derive(Debug, thiserror::Error)]
#[error("mqtt: {0}")]
pub struct MqttSetupError(String);

/// A rustls client config (ring provider) from PEM files: the CA to trust
/// and, for mutual TLS, the client certificate chain and key.
pub fn tls_config(tls: &TlsConfig) -> Result<Arc<rustls::ClientConfig>, MqttSetupError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let err = |what: &str, e: &dyn std::fmt::Display| MqttSetupError(format!("{what}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&tls.ca).map_err(|e| err("mqtt.ca", &e))? {
        roots
            .add(cert.map_err(|e| err("mqtt.ca", &e))?)
            .map_err(|e| err("mqtt.ca", &e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("tls", &e))?
        .with_root_certificates(roots);
    let config = match &tls.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .map_err(|e| err("mqtt.client_cert", &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err("mqtt.client_cert", &e))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| err("mqtt.client_key", &e))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| err("mqtt.client_cert", &e))?
        }
    };
    Ok(Arc::new(config))
}

fn options(
    cfg: &MqttConfig,
    client_id: &str,
    will: LastWill,
) -> Result<MqttOptions, MqttSetupError> {
    let mut o = MqttOptions::new(client_id, &cfg.host, cfg.port);
    o.set_keep_alive(Duration::from_secs(cfg.keep_alive_secs.into()));
    o.set_clean_session(true);
    o.set_last_will(will);
    o.set_max_packet_size(2 << 20, 2 << 20);
    if let Some(tls) = &cfg.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls_config(tls)?,
        )));
    }
    Ok(o)
}

impl AgentState {
    fn encoding(&self) -> Encoding {
        if self.config.mqtt.json {
            Encoding::Json
        } else {
            Encoding::Postcard
        }
    }

    fn encode(&self, msg: &DeviceMessage) -> Vec<u8> {
        // Our own messages always encode; an empty payload would be refused
        // by every decoder, so the failure is visible on the server.
        msg.encode(self.encoding()).unwrap_or_default()
    }

    fn model_refs(&self) -> Vec<(ModelRef, Option<ModelRef>)> {
        let r = |m: &crate::serve::LoadedModel| ModelRef {
            name: m.name.clone(),
            version: m.version.clone(),
            sha256: m.sha256,
        };
        self.host
            .list()
            .into_iter()
            .map(|(a, p)| (r(&a), p.as_deref().map(r)))
            .collect()
    }

    fn birth(&self, session: u64) -> DeviceMessage {
        let (root_version, last_directive) = self.trust_summary();
        DeviceMessage::Birth(Birth {
            session,
            at: crate::unix_now(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            target: self.config.target.name.clone(),
            arch: self.config.target.arch.clone(),
            models: self
                .model_refs()
                .into_iter()
                .flat_map(|(a, p)| {
                    std::iter::once(InstalledModel {
                        model: a,
                        slot: Slot::Active,
                    })
                    .chain(p.map(|p| InstalledModel {
                        model: p,
                        slot: Slot::Previous,
                    }))
                })
                .collect(),
            root_version,
            last_directive,
        })
    }

    fn reported_state(&self, session: u64) -> DeviceMessage {
        let (root_version, last_directive) = self.trust_summary();
        let open: Vec<String> = self
            .host
            .list()
            .into_iter()
            .filter(|(m, _)| m.breaker_open())
            .map(|(m, _)| m.name.clone())
            .collect();
        let health = if self.host.is_empty() {
            Health {
                status: HealthStatus::Failing,
                detail: Some("no verified model is loaded".into()),
            }
        } else if !open.is_empty() {
            Health {
                status: HealthStatus::Degraded,
                detail: Some(format!("circuit breaker open: {}", open.join(", "))),
            }
        } else {
            Health {
                status: HealthStatus::Healthy,
                detail: None,
            }
        };
        DeviceMessage::State(ReportedState {
            session,
            at: crate::unix_now(),
            models: {
                let view = self
                    .update_view
                    .lock()
                    .map(|v| v.clone())
                    .unwrap_or_default();
                self.model_refs()
                    .into_iter()
                    .map(|(a, p)| {
                        // The update core's view says what is in flight.
                        let (candidate, phase) = view
                            .get(&a.name)
                            .map(|s| (s.candidate.clone(), s.phase))
                            .unwrap_or((None, Phase::Serving));
                        ModelState {
                            name: a.name.clone(),
                            active: Some(a),
                            candidate,
                            previous: p,
                            phase,
                        }
                    })
                    .collect()
            },
            health,
            root_version,
            last_directive,
        })
    }
}

/// Publishes through the client without waiting (the event loop runs in
/// the same task, so an awaited publish on a full channel would deadlock),
/// and remembers, in order, which outbox window each publish carries.
///
/// Design: rumqttc reports `Outgoing::Publish(pkid)` in the order requests
/// were queued, so the FIFO maps each packet id to its window; with a clean
/// session, a dropped connection discards every queued request
/// (`EventLoop::clean` + `session_present = false`), so the FIFO is reset on
/// every disconnect and the outbox is published again from its oldest
/// window. Duplicates are possible (an ack lost with the connection); the
/// server merges windows idempotently by (device, model, window).
///
/// Events work the same way, from the event outbox: they are queued in
/// sequence order (`last_event` is the newest queued on this connection),
/// so the broker receives them in order.
struct Publisher {
    client: AsyncClient,
    fifo: VecDeque<Option<Tracked>>,
    inflight: HashMap<u16, Tracked>,
    sent: HashSet<Vec<u8>>,
    events_topic: String,
    events_in_flight: usize,
    last_event: Option<u64>,
}

/// What a publish carries that must be deleted from an outbox on PUBACK.
#[derive(Debug)]
enum Tracked {
    /// A telemetry window, by its outbox key.
    Window(Vec<u8>),
    /// An event, by its sequence number.
    Event(u64),
}

/// Windows in flight at once (well under the client's 64-request channel).
const MAX_WINDOWS_IN_FLIGHT: usize = 8;

/// Events in flight at once.
const MAX_EVENTS_IN_FLIGHT: usize = 8;

/// Events kept unsent at most (an outage of days with a probation
/// reporting every window); beyond it the oldest are dropped and counted
/// in `events_dropped`.
pub const EVENT_OUTBOX_CAP: usize = 1000;

impl Publisher {
    fn publish(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        tracked: Option<Tracked>,
    ) -> bool {
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => {
                self.fifo.push_back(tracked);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "publish not queued");
                false
            }
        }
    }

    fn reset(&mut self) {
        self.fifo.clear();
        self.inflight.clear();
        self.sent.clear();
        self.events_in_flight = 0;
        self.last_event = None;
    }

    /// Queues unsent events in sequence order, up to the in-flight limit.
    /// Only while connected: with a clean session, requests queued while
    /// disconnected are discarded at the next connection.
    fn drain_events(&mut self, state: &AgentState) {
        let Ok(outbox) = state.store.events() else {
            return;
        };
        while self.events_in_flight < MAX_EVENTS_IN_FLIGHT {
            let next = outbox.after(
                self.last_event,
                MAX_EVENTS_IN_FLIGHT - self.events_in_flight,
            );
            if next.is_empty() {
                return;
            }
            for (seq, payload) in next {
                let topic = self.events_topic.clone();
                if !self.publish(topic, payload, false, Some(Tracked::Event(seq))) {
                    return;
                }
                self.last_event = Some(seq);
                self.events_in_flight += 1;
            }
        }
    }

    /// A PUBACK for `tracked`: it leaves its outbox.
    fn acked(&mut self, state: &AgentState, tracked: Tracked) {
        match tracked {
            Tracked::Window(key) => {
                state.telemetry.outbox().remove(&key);
                self.sent.remove(&key);
                state.metrics.windows_published.inc();
            }
            Tracked::Event(seq) => {
                if let Ok(outbox) = state.store.events() {
                    outbox.remove(seq);
                }
                self.events_in_flight = self.events_in_flight.saturating_sub(1);
            }
        }
    }

    /// Queues unsent events, then unsent windows, oldest first, up to the
    /// in-flight limits.
    fn drain(&mut self, state: &AgentState, topic: &str) {
        self.drain_events(state);
        let in_flight = self.sent.len();
        if in_flight >= MAX_WINDOWS_IN_FLIGHT {
            return;
        }
        for (key, payload) in state.telemetry.outbox().oldest_first() {
            if self.sent.len() >= MAX_WINDOWS_IN_FLIGHT {
                break;
            }
            if self.sent.contains(&key) {
                continue;
            }
            if !self.publish(
                topic.to_owned(),
                payload,
                false,
                Some(Tracked::Window(key.clone())),
            ) {
                break;
            }
            self.sent.insert(key);
        }
    }
}

/// Runs the MQTT side until `shutdown` turns true; then publishes death
/// (a clean disconnect does not fire the last will) and disconnects. Also
/// seals ended telemetry windows every second and publishes the outbox.
pub async fn run(
    state: Arc<AgentState>,
    mut shutdown: watch::Receiver<bool>,
    updates: Option<crate::update_task::Updates>,
    mut published: tokio::sync::mpsc::UnboundedReceiver<crate::update_shell::Published>,
) -> Result<(), MqttSetupError> {
    let cfg = &state.config.mqtt;
    let topics = Topics::with_prefix(cfg.prefix.clone());
    let id = state.config.device_id.clone();
    let topic = |k| topics.device(&id, k);
    let telemetry_topic = topic(TopicKind::Telemetry);
    let will = |session: u64| {
        LastWill::new(
            topic(TopicKind::Death),
            state.encode(&DeviceMessage::Death(Death { session })),
            QoS::AtLeastOnce,
            false,
        )
    };
    let mut session = state.new_session();
    let (client, mut eventloop): (AsyncClient, EventLoop) =
        AsyncClient::new(options(cfg, id.as_str(), will(session))?, 64);
    let mut out = Publisher {
        client: client.clone(),
        fifo: VecDeque::new(),
        inflight: HashMap::new(),
        sent: HashSet::new(),
        events_topic: topic(TopicKind::Events),
        events_in_flight: 0,
        last_event: None,
    };
    let mut connected = false;
    let mut failures: u32 = 0;
    // Engine decisions reported in this session (all again at each start).
    let mut engines_reported: Vec<outpost_protocol::messages::EngineReport> = vec![];
    let mut rng = crate::jitter_seed();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            // Cancellation-safe: `changed` only observes the watch.
            _ = shutdown.changed() => {
                // Partial windows too: they wait in the outbox for the next run.
                state.seal_all();
                let death = state.encode(&DeviceMessage::Death(Death { session }));
                let _ = client.try_publish(topic(TopicKind::Death), QoS::AtLeastOnce, false, death);
                let _ = client.try_disconnect();
                // Drive the loop until the disconnect is sent (bounded).
                let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
                while tokio::time::Instant::now() < deadline {
                    match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                        Ok(Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => break,
                        Ok(Ok(_)) => {}
                    }
                }
                state.mqtt_connected.store(false, Ordering::SeqCst);
                return Ok(());
            }
            // Cancellation-safe: an interval tick that loses the race is
            // simply taken at the next turn.
            _ = tick.tick() => {
                state.seal_due();
                if connected {
                    report_drops(&state, &mut out, &topic);
                    report_engines(&state, &mut out, &topic, &mut engines_reported);
                    out.drain(&state, &telemetry_topic);
                }
            }
            // Cancellation-safe: a message not taken stays in the channel.
            Some(p) = published.recv() => {
                for kind in p.events {
                    publish_event(&state, &mut out, &topic, kind);
                }
                if p.rebirth {
                    publish_birth_and_state(&state, &mut out, &topic, session);
                } else if !p.states.is_empty() || !p.retired.is_empty() {
                    let st = state.encode(&state.reported_state(session));
                    out.publish(topic(TopicKind::State), st, true, None);
                }
            }
            // Cancellation-safe: a notification not consumed here stays
            // stored as the Notify's permit.
            _ = state.telemetry.sealed.notified() => {
                if connected {
                    out.drain(&state, &telemetry_topic);
                }
            }
            // Cancellation-safe per rumqttc: a dropped poll loses no
            // request (they stay queued in the event loop).
            ev = eventloop.poll() => match ev {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    failures = 0;
                    connected = true;
                    out.reset();
                    state.mqtt_connected.store(true, Ordering::SeqCst);
                    state.metrics.mqtt_connected.set(1);
                    tracing::info!(session, host = %cfg.host, port = cfg.port, "connected to the broker");
                    let _ = client.try_subscribe(topic(TopicKind::Commands), QoS::AtLeastOnce);
                    if let Some(u) = &updates {
                        u.send(crate::update_task::Input::Contact);
                    }
                    publish_birth_and_state(&state, &mut out, &topic, session);
                    report_drops(&state, &mut out, &topic);
                    engines_reported.clear();
                    report_engines(&state, &mut out, &topic, &mut engines_reported);
                    out.drain(&state, &telemetry_topic);
                }
                Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                    if let Some(Some(key)) = out.fifo.pop_front() {
                        out.inflight.insert(pkid, key);
                    }
                }
                Ok(MqttEvent::Incoming(Packet::PubAck(ack))) => {
                    if let Some(tracked) = out.inflight.remove(&ack.pkid) {
                        out.acked(&state, tracked);
                        out.drain(&state, &telemetry_topic);
                    }
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) if p.topic == topic(TopicKind::Commands) => {
                    handle_command(&state, &mut out, &topic, updates.as_ref(), &p.payload);
                }
                Ok(_) => {}
                Err(e) => {
                    connected = false;
                    out.reset();
                    if state.mqtt_connected.swap(false, Ordering::SeqCst) {
                        state.metrics.mqtt_reconnects.inc();
                    }
                    state.metrics.mqtt_connect_failures.inc();
                    state.metrics.mqtt_connected.set(0);
                    // The next connection is a new session: its birth and
                    // its last will carry the new number.
                    session = state.new_session();
                    eventloop.mqtt_options.set_last_will(will(session));
                    let delay = backoff(failures, &mut rng);
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, retry_in = ?delay, "broker connection failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => { return Ok(()); }
                    }
                }
            }
        }
    }
}

/// Publishes one `TelemetryDropped` event for the drops not yet reported.
fn report_drops(state: &AgentState, out: &mut Publisher, topic: &impl Fn(TopicKind) -> String) {
    let d = match state.unreported_drops.lock() {
        Ok(mut u) if u.windows > 0 => std::mem::take(&mut *u),
        _ => return,
    };
    publish_event(
        state,
        out,
        topic,
        EventKind::TelemetryDropped {
            windows: d.windows,
            bytes: d.bytes,
        },
    );
}

/// Publishes an `EngineSelected` event for each loaded model (active or
/// candidate) whose engine decision this session has not reported yet.
fn report_engines(
    state: &AgentState,
    out: &mut Publisher,
    topic: &impl Fn(TopicKind) -> String,
    reported: &mut Vec<outpost_protocol::messages::EngineReport>,
) {
    let now = state.host.engines();
    for r in &now {
        if !reported.contains(r) {
            publish_event(state, out, topic, EventKind::EngineSelected(r.clone()));
        }
    }
    // What is loaded now: an unloaded model is forgotten (bounded).
    *reported = now;
}

fn publish_birth_and_state(
    state: &AgentState,
    out: &mut Publisher,
    topic: &impl Fn(TopicKind) -> String,
    session: u64,
) {
    let birth = state.encode(&state.birth(session));
    let st = state.encode(&state.reported_state(session));
    out.publish(topic(TopicKind::Birth), birth, false, None);
    out.publish(topic(TopicKind::State), st, true, None);
}

fn publish_event(
    state: &AgentState,
    out: &mut Publisher,
    topic: &impl Fn(TopicKind) -> String,
    kind: EventKind,
) {
    if let EventKind::VerificationFailed { check, .. } = &kind {
        state
            .metrics
            .commands_refused
            .get_or_create(&crate::metrics::CheckLabels {
                check: check.clone(),
            })
            .inc();
    }
    let seq = state.next_event_seq();
    let ev = state.encode(&DeviceMessage::Event(Event {
        seq,
        at: crate::unix_now(),
        kind,
    }));
    let stored = state
        .store
        .events()
        .and_then(|outbox| outbox.push(seq, &ev, EVENT_OUTBOX_CAP));
    match stored {
        Ok(dropped) => {
            if dropped > 0 {
                state.metrics.events_dropped.inc_by(dropped);
                tracing::warn!(dropped, "event outbox full: oldest events dropped");
            }
            if state.mqtt_connected.load(Ordering::SeqCst) {
                out.drain_events(state);
            }
        }
        Err(e) => {
            // Serving never depends on the store: sent now, if connected,
            // or lost (counted).
            tracing::warn!(error = %e, seq, "event not stored");
            if state.mqtt_connected.load(Ordering::SeqCst) {
                out.publish(topic(TopicKind::Events), ev, false, None);
            } else {
                state.metrics.events_dropped.inc();
            }
        }
    }
}

/// Reports a refused command as a `VerificationFailed` event.
fn refused(
    state: &AgentState,
    out: &mut Publisher,
    topic: &impl Fn(TopicKind) -> String,
    directive: Option<u64>,
    check: &str,
    detail: String,
) {
    let kind = EventKind::VerificationFailed {
        directive,
        check: check.to_owned(),
        detail,
    };
    publish_event(state, out, topic, kind);
}

/// Hands a command to the update task, which verifies it (the core owns
/// the trust state) and acts on it; what it does comes back as
/// [`Published`](crate::update_shell::Published). Undecodable payloads are
/// reported here.
fn handle_command(
    state: &AgentState,
    out: &mut Publisher,
    topic: &impl Fn(TopicKind) -> String,
    updates: Option<&crate::update_task::Updates>,
    payload: &[u8],
) {
    let cmd = match DeviceMessage::decode(TopicKind::Commands, payload) {
        Ok(DeviceMessage::Command(c)) => c,
        Ok(_) => return,
        Err(e) => return refused(state, out, topic, None, "decode", e.to_string()),
    };
    let sent = updates.is_some_and(|u| u.send(crate::update_task::Input::Command(Box::new(cmd))));
    if !sent {
        refused(
            state,
            out,
            topic,
            None,
            "unavailable",
            "the update task is not running on this device".into(),
        );
    }
}

fn backoff(failures: u32, rng: &mut u64) -> Duration {
    let base = 0.5 * 2f64.powi(failures.min(6) as i32);
    let capped = base.min(30.0);
    // xorshift64: enough to spread reconnects of a fleet apart.
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let jitter = 0.5 + (*rng % 1000) as f64 / 2000.0;
    Duration::from_secs_f64(capped * jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let mut rng = 0x9e37_79b9_7f4a_7c15;
        let d0 = backoff(0, &mut rng);
        assert!(d0 >= Duration::from_millis(250) && d0 < Duration::from_millis(500));
        let d3 = backoff(3, &mut rng);
        assert!(d3 >= Duration::from_secs(2) && d3 < Duration::from_secs(4));
        for n in [6, 10, 100] {
            let d = backoff(n, &mut rng);
            assert!(
                d >= Duration::from_secs(15) && d < Duration::from_secs(30),
                "{d:?}"
            );
        }
    }
}
