//! The MQTT side (ARCHITECTURE §7): birth on every connection, death as
//! the last will (same session number), retained state, events, and the
//! signed commands. Reconnects with exponential backoff and jitter.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use outpost_protocol::messages::{
    Birth, Death, DeviceMessage, Encoding, Event, EventKind, Health, HealthStatus, InstalledModel,
    ModelRef, ModelState, Phase, ReportedState, Slot,
};
use outpost_protocol::topic::{TopicKind, Topics};
use outpost_protocol::trust::DirectiveAction;
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

fn tls_config(tls: &TlsConfig) -> Result<Arc<rustls::ClientConfig>, MqttSetupError> {
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
            models: self
                .model_refs()
                .into_iter()
                .map(|(a, p)| ModelState {
                    name: a.name.clone(),
                    active: Some(a),
                    candidate: None,
                    previous: p,
                    phase: Phase::Serving,
                })
                .collect(),
            health,
            root_version,
            last_directive,
        })
    }
}

/// Runs the MQTT side until `shutdown` turns true; then publishes death
/// (a clean disconnect does not fire the last will) and disconnects.
pub async fn run(
    state: Arc<AgentState>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), MqttSetupError> {
    let cfg = &state.config.mqtt;
    let topics = Topics::with_prefix(cfg.prefix.clone());
    let id = state.config.device_id.clone();
    let topic = |k| topics.device(&id, k);
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
    let mut failures: u32 = 0;
    let mut rng = crate::jitter_seed();
    loop {
        tokio::select! {
            // Cancellation-safe: `changed` only observes the watch.
            _ = shutdown.changed() => {
                let death = state.encode(&DeviceMessage::Death(Death { session }));
                let _ = client.publish(topic(TopicKind::Death), QoS::AtLeastOnce, false, death).await;
                let _ = client.disconnect().await;
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
            // Cancellation-safe per rumqttc: a dropped poll loses no
            // request (they stay queued in the event loop).
            ev = eventloop.poll() => match ev {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    failures = 0;
                    state.mqtt_connected.store(true, Ordering::SeqCst);
                    state.metrics.mqtt_connected.set(1);
                    tracing::info!(session, host = %cfg.host, port = cfg.port, "connected to the broker");
                    let _ = client.subscribe(topic(TopicKind::Commands), QoS::AtLeastOnce).await;
                    publish_birth_and_state(&state, &client, &topic, session).await;
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) if p.topic == topic(TopicKind::Commands) => {
                    handle_command(&state, &client, &topic, session, &p.payload).await;
                }
                Ok(_) => {}
                Err(e) => {
                    if state.mqtt_connected.swap(false, Ordering::SeqCst) {
                        state.metrics.mqtt_reconnects.inc();
                    }
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

async fn publish_birth_and_state(
    state: &AgentState,
    client: &AsyncClient,
    topic: &impl Fn(TopicKind) -> String,
    session: u64,
) {
    let birth = state.encode(&state.birth(session));
    let st = state.encode(&state.reported_state(session));
    let _ = client
        .publish(topic(TopicKind::Birth), QoS::AtLeastOnce, false, birth)
        .await;
    let _ = client
        .publish(topic(TopicKind::State), QoS::AtLeastOnce, true, st)
        .await;
}

async fn publish_event(
    state: &AgentState,
    client: &AsyncClient,
    topic: &impl Fn(TopicKind) -> String,
    kind: EventKind,
) {
    let seq = state.next_event_seq();
    let ev = state.encode(&DeviceMessage::Event(Event {
        seq,
        at: crate::unix_now(),
        kind,
    }));
    let _ = client
        .publish(topic(TopicKind::Events), QoS::AtLeastOnce, false, ev)
        .await;
}

/// Verifies a command and acts on what the serving half handles (rebirth).
/// Deploy, shadow, rollback and retire belong to the update half.
async fn handle_command(
    state: &AgentState,
    client: &AsyncClient,
    topic: &impl Fn(TopicKind) -> String,
    session: u64,
    payload: &[u8],
) {
    let cmd = match DeviceMessage::decode(TopicKind::Commands, payload) {
        Ok(DeviceMessage::Command(c)) => c,
        Ok(_) => return,
        Err(e) => {
            publish_event(
                state,
                client,
                topic,
                EventKind::VerificationFailed {
                    directive: None,
                    check: "decode".into(),
                    detail: e.to_string(),
                },
            )
            .await;
            return;
        }
    };
    let decided = state.decide(&cmd);
    match decided {
        Err(e) => {
            tracing::warn!(check = e.check(), error = %e, "command refused");
            let seq = cmd.directive.decode_unverified().ok().map(|d| d.sequence);
            publish_event(
                state,
                client,
                topic,
                EventKind::VerificationFailed {
                    directive: seq,
                    check: e.check().into(),
                    detail: e.to_string(),
                },
            )
            .await;
        }
        Ok(d) => match d.directive.action {
            DirectiveAction::Rebirth => {
                publish_birth_and_state(state, client, topic, session).await
            }
            other => {
                tracing::warn!(action = ?other, sequence = d.directive.sequence,
                    "verified directive needs the update machine, which this build lacks");
            }
        },
    }
}

/// 0.5 s · 2^n, capped at 30 s, times a jitter factor in [0.5, 1).
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
