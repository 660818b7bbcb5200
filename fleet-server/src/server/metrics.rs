//! `GET /metrics`: Prometheus text exposition of the server's counters.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabels {
    pub(crate) kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RejectLabels {
    pub(crate) kind: String,
    pub(crate) reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StatusLabels {
    pub(crate) status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SinkLabels {
    pub(crate) sink: String,
    /// `sent`, `failed` or `dropped` (the sink's queue was full).
    pub(crate) result: String,
}

/// The server's metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// MQTT messages decoded and applied, by topic kind.
    pub(crate) mqtt_messages: Family<KindLabels, Counter>,
    /// MQTT payloads refused (undecodable, bad topic), by kind and reason.
    pub(crate) mqtt_rejected: Family<RejectLabels, Counter>,
    /// Telemetry windows by result: stored or duplicate.
    pub(crate) windows: Family<StatusLabels, Counter>,
    /// HTTP calls refused by authentication (401) or authorization (403).
    pub(crate) auth_refused: Family<StatusLabels, Counter>,
    /// Versions registered.
    pub(crate) pushes: Counter,
    /// Directives published.
    pub(crate) directives: Counter,
    pub(crate) devices_online: Gauge,
    pub(crate) devices_known: Gauge,
    /// Alert notifications by sink and result.
    pub(crate) alert_notifications: Family<SinkLabels, Counter>,
    /// Alerts firing now (acknowledged or not).
    pub(crate) alerts_firing: Gauge,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("outpost");
        let m = Metrics {
            mqtt_messages: Family::default(),
            mqtt_rejected: Family::default(),
            windows: Family::default(),
            auth_refused: Family::default(),
            pushes: Counter::default(),
            directives: Counter::default(),
            devices_online: Gauge::default(),
            devices_known: Gauge::default(),
            alert_notifications: Family::default(),
            alerts_firing: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "mqtt_messages",
            "MQTT messages applied, by topic kind",
            m.mqtt_messages.clone(),
        );
        registry.register(
            "mqtt_rejected",
            "MQTT payloads refused (garbage, oversize, bad topic), by kind and reason",
            m.mqtt_rejected.clone(),
        );
        registry.register(
            "telemetry_windows",
            "Telemetry windows, stored or duplicate",
            m.windows.clone(),
        );
        registry.register(
            "http_auth_refused",
            "HTTP calls refused, by status (401, 403)",
            m.auth_refused.clone(),
        );
        registry.register(
            "registry_pushes",
            "Model versions registered",
            m.pushes.clone(),
        );
        registry.register(
            "directives_published",
            "Signed directives published",
            m.directives.clone(),
        );
        registry.register(
            "devices_online",
            "Devices online now",
            m.devices_online.clone(),
        );
        registry.register(
            "devices_known",
            "Devices in the inventory",
            m.devices_known.clone(),
        );
        registry.register(
            "alert_notifications",
            "Alert notifications, by sink and result (sent, failed, dropped)",
            m.alert_notifications.clone(),
        );
        registry.register(
            "alerts_firing",
            "Alerts firing now",
            m.alerts_firing.clone(),
        );
        Metrics { registry, ..m }
    }

    pub(crate) fn reject(&self, kind: &str, reason: &str) {
        self.mqtt_rejected
            .get_or_create(&RejectLabels {
                kind: kind.into(),
                reason: reason.into(),
            })
            .inc();
    }

    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
