//! The server's MQTT side (ARCHITECTURE §7): shared subscriptions to every
//! device's birth, death, state, events and telemetry; the inventory and
//! the telemetry store are fed from them; commands go out on
//! `…/devices/{id}/commands`.
//!
//! Never panics on a payload: anything that does not decode is counted in
//! `outpost_mqtt_rejected_total{kind,reason}` and dropped; so is a telemetry
//! window whose profile does not decode (`reason="profile"`) or whose key
//! names another device, model or version than its topic and envelope
//! (`reason="forged"`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use outpost_protocol::messages::{Command, DeviceMessage};
use outpost_protocol::topic::{DeviceId, TopicKind, Topics};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::watch;

use super::metrics::{KindLabels, StatusLabels};
use super::{App, MqttMode, ServeError};
use crate::inventory;
use crate::store::WindowRecord;

/// The shared-subscription group of every fleet server instance.
pub const SHARE_GROUP: &str = "outpost-fleet";

/// The kinds the server subscribes to.
pub const SUBSCRIBED: [TopicKind; 5] = [
    TopicKind::Birth,
    TopicKind::Death,
    TopicKind::State,
    TopicKind::Events,
    TopicKind::Telemetry,
];

/// The client side handlers use to publish.
#[derive(Debug)]
pub(crate) struct MqttHandle {
    client: AsyncClient,
    subscribed: AtomicBool,
    pub(crate) topics: Topics,
    /// Subscribe through `$share/outpost-fleet/…` (external brokers).
    ///
    /// Design: with the embedded broker this server is the only consumer,
    /// so it subscribes plainly; rumqttd 0.20 keys a shared group by its
    /// name alone, so one group over the five device filters would not
    /// deliver them all.
    shared: bool,
}

impl MqttHandle {
    /// Whether the subscriptions are acknowledged on the current connection.
    pub(crate) fn ready(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst)
    }

    /// Publishes a command to one device (QoS 1).
    pub(crate) async fn publish_command(&self, id: &DeviceId, cmd: &Command) -> Result<(), String> {
        let payload = outpost_protocol::codec::encode(cmd).map_err(|e| e.to_string())?;
        self.client
            .publish(
                self.topics.device(id, TopicKind::Commands),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .map_err(|e| e.to_string())
    }

    /// Publishes a JSON document on `topic` (QoS 1, not retained): alert
    /// notifications to an MQTT sink.
    pub(crate) async fn publish_json(&self, topic: &str, payload: Vec<u8>) -> Result<(), String> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| e.to_string())
    }
}

fn read_err(what: &str, p: &Path, e: &dyn std::fmt::Display) -> ServeError {
    ServeError::Config(format!("{what} {}: {e}", p.display()))
}

fn tls(ca: &Path, client: Option<(&Path, &Path)>) -> Result<Arc<rustls::ClientConfig>, ServeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| read_err("--mqtt-ca", ca, &e))? {
        roots
            .add(cert.map_err(|e| read_err("--mqtt-ca", ca, &e))?)
            .map_err(|e| read_err("--mqtt-ca", ca, &e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Config(format!("tls: {e}")))?
        .with_root_certificates(roots);
    Ok(Arc::new(match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .map_err(|e| read_err("--mqtt-client-cert", cert, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| read_err("--mqtt-client-cert", cert, &e))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| read_err("--mqtt-client-key", key, &e))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| ServeError::Config(format!("--mqtt-client-cert: {e}")))?
        }
    }))
}

/// Splits `mqtt://host:port` / `mqtts://host:port`; returns (tls, host, port).
pub fn parse_url(url: &str) -> Result<(bool, String, u16), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(format!(
            "--mqtt-url {url:?}: expected mqtt://HOST:PORT or mqtts://HOST:PORT"
        ));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("--mqtt-url {url:?}: bad port {p:?}"))?,
        ),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err(format!("--mqtt-url {url:?}: no host"));
    }
    Ok((tls, host.to_owned(), port))
}

/// Client options for `mode`; the second value is `host:port`, to print.
///
/// Sessions. With an external broker the server keeps a persistent session
/// (clean session off) under a client id stable across its restarts
/// (`session_id`, derived from its data directory): the broker keeps its
/// subscriptions and queues the devices' QoS 1 messages while the server is
/// away or reconnecting, so nothing a device published (and dropped from
/// its outbox on the broker's acknowledgement) is lost in between — found
/// by the broker-outage scenario (`firmware-tests`): with a clean session,
/// windows published after a broker restart but before the server's
/// re-subscription were dropped. The embedded broker lives and dies with
/// the server, so a clean session with a random id is enough there.
pub(crate) fn options(
    mode: &MqttMode,
    embedded: Option<std::net::SocketAddr>,
    session_id: &str,
) -> Result<(MqttOptions, String), ServeError> {
    let client_id = match mode {
        MqttMode::External { .. } => session_id.to_owned(),
        MqttMode::Embedded { .. } => {
            let mut id = [0u8; 6];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
                .map_err(|_| ServeError::Config("no randomness for the MQTT client id".into()))?;
            format!("outpost-fleet-{}", hex::encode(id))
        }
    };
    let (mut o, shown) = match (mode, embedded) {
        (MqttMode::Embedded { .. }, Some(addr)) => (
            MqttOptions::new(client_id, addr.ip().to_string(), addr.port()),
            addr.to_string(),
        ),
        (
            MqttMode::External {
                url,
                ca,
                client_cert,
                client_key,
            },
            _,
        ) => {
            let (use_tls, host, port) = parse_url(url).map_err(ServeError::Config)?;
            let mut o = MqttOptions::new(client_id, host.clone(), port);
            if use_tls {
                let ca = ca.as_ref().ok_or_else(|| {
                    ServeError::Config(format!("{url} is TLS: give the broker's CA with --mqtt-ca"))
                })?;
                let client = match (client_cert, client_key) {
                    (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
                    (None, None) => None,
                    _ => {
                        return Err(ServeError::Config(
                            "--mqtt-client-cert and --mqtt-client-key go together".into(),
                        ));
                    }
                };
                o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls(
                    ca, client,
                )?)));
            }
            (o, format!("{host}:{port}"))
        }
        (MqttMode::Embedded { bind }, None) => {
            return Err(ServeError::Config(format!(
                "the embedded broker on {bind} did not start"
            )));
        }
    };
    o.set_keep_alive(Duration::from_secs(15));
    o.set_clean_session(matches!(mode, MqttMode::Embedded { .. }));
    o.set_max_packet_size(2 << 20, 2 << 20);
    Ok((o, shown))
}

pub(crate) fn connect(opts: MqttOptions, prefix: &str, shared: bool) -> (MqttHandle, EventLoop) {
    let (client, eventloop) = AsyncClient::new(opts, 64);
    (
        MqttHandle {
            client,
            subscribed: AtomicBool::new(false),
            topics: Topics::with_prefix(prefix),
            shared,
        },
        eventloop,
    )
}

/// The server's persistent-session client id for an external broker:
/// `outpost-fleet-` and 12 hex digits of the SHA-256 of its data directory
/// (canonical path), so a restart resumes its session and two servers with
/// their own stores have their own sessions.
pub(crate) fn session_id(data_dir: &Path) -> String {
    let path = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_owned());
    let digest = ring::digest::digest(&ring::digest::SHA256, path.as_os_str().as_encoded_bytes());
    format!("outpost-fleet-{}", hex::encode(&digest.as_ref()[..6]))
}

/// The driver loop: polls the connection, subscribes on every connect,
/// applies every message; reconnects with a capped backoff.
pub(crate) async fn drive(
    app: Arc<App>,
    mut eventloop: EventLoop,
    mut stop: watch::Receiver<bool>,
) {
    let mut acked = 0usize;
    let mut failures = 0u32;
    loop {
        let mut backoff = None;
        tokio::select! {
            // Cancellation-safe: `wait_for` only reads the watch.
            _ = stop.wait_for(|s| *s) => {
                let _ = app.mqtt.client.try_disconnect();
                return;
            }
            // Cancellation-safe per rumqttc: a dropped `poll` future loses
            // no state (its docs), and we exit right after.
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    failures = 0;
                    acked = 0;
                    app.mqtt.subscribed.store(false, Ordering::SeqCst);
                    for kind in SUBSCRIBED {
                        let filter = if app.mqtt.shared {
                            app.mqtt.topics.shared_subscription(SHARE_GROUP, kind)
                        } else {
                            format!("{}/devices/+/{}", app.config.topic_prefix.trim_matches('/'), kind.as_str())
                        };
                        // try_: the event loop runs in this task; an awaited
                        // request on a full channel would never be drained.
                        if let Err(e) = app.mqtt.client.try_subscribe(filter, QoS::AtLeastOnce) {
                            tracing::warn!(error = %e, "subscribe");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    acked += 1;
                    if acked >= SUBSCRIBED.len() {
                        app.mqtt.subscribed.store(true, Ordering::SeqCst);
                        tracing::info!("subscribed to device topics");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    handle_publish(&app, &p.topic, &p.payload);
                }
                Ok(_) => {}
                Err(e) => {
                    app.mqtt.subscribed.store(false, Ordering::SeqCst);
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_multiple_of(20) {
                        tracing::warn!(error = %e, "MQTT connection lost; reconnecting");
                    }
                    backoff = Some(
                        Duration::from_millis(100u64 << failures.min(5)).min(Duration::from_secs(3)),
                    );
                }
            }
        }
        if let Some(wait) = backoff {
            tokio::select! {
                // Both cancellation-safe: a watch read and a timer.
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Applies one device message; counts and drops anything malformed.
pub(crate) fn handle_publish(app: &App, topic: &str, payload: &[u8]) {
    let (id, kind) = match app.mqtt.topics.parse(topic) {
        Ok(x) => x,
        Err(_) => {
            app.metrics.reject("unknown", "topic");
            return;
        }
    };
    let msg = match DeviceMessage::decode(kind, payload) {
        Ok(m) => m,
        Err(e) => {
            app.metrics.reject(kind.as_str(), "decode");
            tracing::debug!(device = %id, kind = kind.as_str(), error = %e, "refused payload");
            return;
        }
    };
    let now = crate::clock::now_unix();
    // A window is stored only when its profile decodes and its key names the
    // device of the topic and the model of the envelope: a device cannot
    // feed another device's (or another version's) statistics. Decoded
    // once, here; the rollout controller gets the decoded profile.
    let window = match &msg {
        DeviceMessage::Telemetry(w) => {
            let record = WindowRecord {
                device: id.clone(),
                received_at: now,
                window: w.clone(),
            };
            match super::evidence::checked_window(&record) {
                Ok(profile) => Some((record, profile)),
                Err(reason) => {
                    app.metrics.reject(kind.as_str(), reason);
                    tracing::warn!(device = %id, reason, "telemetry window refused");
                    return;
                }
            }
        }
        _ => None,
    };
    if let Err(e) = apply(app, &id, &msg, window, now) {
        app.metrics.reject(kind.as_str(), "store");
        tracing::warn!(device = %id, error = %e, "could not store a device message");
        return;
    }
    app.metrics
        .mqtt_messages
        .get_or_create(&KindLabels {
            kind: kind.as_str().into(),
        })
        .inc();
}

fn apply(
    app: &App,
    id: &DeviceId,
    msg: &DeviceMessage,
    window: Option<(WindowRecord, outpost_telemetry::WindowProfile)>,
    now: u64,
) -> Result<(), crate::store::StoreError> {
    if let Some((record, profile)) = window {
        let stored = app.store.put_window(&record)?;
        // Stored first: after a restart the controller replays from the store.
        app.rollouts
            .send(super::rollouts::Input::Window(Box::new(profile)));
        app.metrics
            .windows
            .get_or_create(&StatusLabels {
                status: if stored { "stored" } else { "duplicate" }.into(),
            })
            .inc();
    }
    match msg {
        DeviceMessage::Event(e) => app.rollouts.send(super::rollouts::Input::Event(
            id.clone(),
            Box::new(e.kind.clone()),
        )),
        DeviceMessage::State(s) => app.rollouts.send(super::rollouts::Input::State(
            id.clone(),
            Box::new(s.clone()),
        )),
        _ => {}
    }
    let _guard = app.devices_lock.lock().unwrap_or_else(|p| p.into_inner());
    let current = app.store.get_device(id.as_str())?;
    if let Some(updated) = inventory::apply(current, id, msg, now) {
        app.store.put_device(&updated)?;
    }
    Ok(())
}
