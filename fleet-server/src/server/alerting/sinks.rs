//! Delivery: one worker per webhook or MQTT sink takes the JSON bodies in
//! order; a slow or failing sink delays only itself, and every result is
//! counted in `outpost_alert_notifications_total{sink,result}`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::super::App;
use super::super::metrics::SinkLabels;

/// The MQTT publish timeout, and a webhook's when its sink names none.
pub(super) const DEFAULT_TIMEOUT_SECS: u64 = 5;
/// Notifications waiting per sink; more are dropped (and counted).
pub(super) const SINK_QUEUE: usize = 256;

pub(super) fn count(app: &App, sink: &str, result: &str) {
    app.metrics
        .alert_notifications
        .get_or_create(&SinkLabels {
            sink: sink.to_owned(),
            result: result.to_owned(),
        })
        .inc();
}

pub(super) async fn webhook_worker(
    app: Arc<App>,
    name: String,
    url: String,
    timeout: Duration,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .build()
        .into();
    while let Some(body) = rx.recv().await {
        let (agent, url) = (agent.clone(), url.clone());
        // ureq blocks: on the blocking pool, one at a time per sink so a
        // sink sees its notifications in order.
        let sent = tokio::task::spawn_blocking(move || {
            agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(&body[..])
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match sent {
            Ok(()) => count(&app, &name, "sent"),
            Err(e) => {
                tracing::warn!(sink = %name, error = %e, "alert webhook failed");
                count(&app, &name, "failed");
            }
        }
    }
}

pub(super) async fn mqtt_worker(
    app: Arc<App>,
    name: String,
    topic: String,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    while let Some(body) = rx.recv().await {
        let sent = tokio::time::timeout(
            Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            app.mqtt.publish_json(&topic, body),
        )
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
        match sent {
            Ok(()) => count(&app, &name, "sent"),
            Err(e) => {
                tracing::warn!(sink = %name, topic = %topic, error = %e, "alert MQTT publish failed");
                count(&app, &name, "failed");
            }
        }
    }
}
