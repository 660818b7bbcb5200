//! The alerting shell around the sans-IO [`Alerts`] core: one task owns
//! the engine, is fed observations (the fleet tick below, the rollout
//! controller through [`AlertingHandle::observe`]) and acknowledgements
//! from the API, escalates on a timer at [`Alerts::poll_timeout`], and
//! delivers each [`AlertAction::Notify`] to its sink.
//!
//! ```text
//!  fleet tick (every --alerts-every s) ─┐
//!  rollout controller (observe) ────────┼─▶ channel ─▶ task: Alerts ─▶ sinks (webhook · MQTT · log)
//!  API (POST /v1/alerts/ack) ───────────┘       ▲ timer    └─▶ alerts/firing (store) · view (GET /v1/alerts)
//! ```
//!
//! # The `--alerts` file (TOML)
//!
//! ```toml
//! # A webhook: HTTP POST of {"kind": "firing"|"escalated"|"resolved", "alert": {…}}.
//! [[sink]]
//! name = "ops"
//! kind = "webhook"
//! url = "https://hooks.example.com/outpost"
//! timeout = "5s"            # optional, default 5 s
//!
//! # The same JSON published (QoS 1) on a topic through the server's MQTT client.
//! [[sink]]
//! name = "pager"
//! kind = "mqtt"
//! topic = "ops/alerts"
//!
//! # A warning in the server's log.
//! [[sink]]
//! name = "console"
//! kind = "log"
//!
//! [[rule]]
//! name = "fleet-offline"
//! sink = "ops"
//! condition = { kind = "devices_offline", max = 0 }
//! escalate = { after = "10m", sink = "pager" }   # optional; seconds or 90s, 10m, 1h, 2d
//!
//! [[rule]]
//! name = "digits-drift"
//! sink = "ops"
//! condition = { kind = "drift", model = "digits", psi = 0.2 }
//! ```
//!
//! Conditions ([`Condition`]): `metric_above`/`metric_below` `{metric,
//! threshold}` on a fleet metric — `devices_online`, `devices_offline`, or
//! per model over the last hour's windows of every version
//! `MODEL/requests`, `MODEL/error_rate`, `MODEL/accuracy` (labelled
//! requests), `MODEL/latency_p50_ms`, `MODEL/latency_p99_ms` (an unknown
//! name is a configuration error); `drift {model, psi}`, `completeness {model, min_rate}`,
//! `devices_offline {max}`, `rollout_halted`, `rollout_paused`. Sink and
//! rule names are unique; every sink a rule or escalation names must
//! exist: anything else is a configuration error at start (exit 2).
//!
//! # Observations
//!
//! Every `--alerts-every` seconds (default 30), only for what some rule
//! watches: the named fleet metrics (none when there is no data yet, so
//! nothing fires or resolves on no evidence); the number of devices
//! offline in the inventory; for each model
//! a `drift` or `completeness` rule names, the fleet drift report of each of
//! its canary and deployed versions over the last hour's windows, combined
//! per column over those versions (the largest PSI, drift if any version
//! drifts, the lowest complete share) with subject `model/column`. A column
//! whose PSI is not decisive (too little data, degenerate) gives no drift
//! observation, so an alert neither fires nor resolves on no evidence.
//! The rollout controller reports halts, pauses and resumptions itself.
//!
//! # Persistence
//!
//! The firing alerts are stored as JSON under `alerts/firing` after every
//! change. After a restart they are listed (and may be acknowledged) as
//! before; the first observation that concerns one either fires it again
//! in the engine (it takes the place of the stored one, keeps its
//! acknowledgement, and is not notified twice) or resolves it (a
//! `resolved` notification). Design: the core has no restore input, so an
//! alert that fires again gets a new `since` and, unacknowledged, its
//! escalation period starts over.

mod config;
mod observe;
mod sinks;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};

pub(crate) use config::AlertsConfig;
use config::SinkConfig;

use super::App;
use super::http::{ApiError, ApiResult, authorize};
use crate::alerts::{
    Alert, AlertAction, AlertError, AlertId, Alerts, Condition, NotifyKind, Observation, Rule,
};
use crate::auth::Permission;
use crate::clock::now_unix;
use crate::store::Store;

/// Where the firing alerts are persisted (the store's generic state).
const STATE_KEY: &str = "alerts/firing";

// ---- the handle -----------------------------------------------------------------

enum Input {
    Observe(Observation),
    Ack {
        id: AlertId,
        actor: String,
        reply: oneshot::Sender<Result<Alert, AlertError>>,
    },
}

/// What the API shows besides the alerts.
#[derive(Debug, Serialize)]
struct Info {
    rules: Vec<Rule>,
    /// Name and kind (never a URL: it may carry a secret).
    sinks: Vec<(String, &'static str)>,
}

/// The handle the API and the rollout controller use; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct AlertingHandle {
    tx: mpsc::UnboundedSender<Input>,
    view: Arc<Mutex<Vec<Alert>>>,
    info: Arc<Info>,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Observe(o) => f.debug_tuple("Observe").field(o).finish(),
            Input::Ack { id, actor, .. } => f
                .debug_struct("Ack")
                .field("id", id)
                .field("actor", actor)
                .finish(),
        }
    }
}

/// The receiving end, for [`run`].
#[derive(Debug)]
pub(crate) struct Inbox {
    rx: mpsc::UnboundedReceiver<Input>,
    view: Arc<Mutex<Vec<Alert>>>,
}

/// Why an acknowledgement did not happen.
#[derive(Debug)]
pub(crate) enum AckRefused {
    NotFiring(AlertId),
    /// The alerting task has stopped (shutdown).
    Stopped,
}

impl AlertingHandle {
    pub(crate) fn new(config: &AlertsConfig) -> (AlertingHandle, Inbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        let view: Arc<Mutex<Vec<Alert>>> = Arc::default();
        let info = Info {
            rules: config.rules.clone(),
            sinks: config
                .sinks
                .iter()
                .map(|s| (s.name().to_owned(), s.kind()))
                .collect(),
        };
        (
            AlertingHandle {
                tx,
                view: view.clone(),
                info: Arc::new(info),
            },
            Inbox { rx, view },
        )
    }

    /// Feeds an observation to the rules (never blocks).
    pub(crate) fn observe(&self, obs: Observation) {
        // The receiver lives as long as the server; after shutdown the
        // observation has nobody to go to.
        let _ = self.tx.send(Input::Observe(obs));
    }

    /// Acknowledges a firing alert as `actor`; returns it.
    pub(crate) async fn ack(&self, id: AlertId, actor: &str) -> Result<Alert, AckRefused> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Ack {
                id,
                actor: actor.to_owned(),
                reply,
            })
            .map_err(|_| AckRefused::Stopped)?;
        match rx.await {
            Ok(Ok(alert)) => Ok(alert),
            Ok(Err(AlertError::NotFiring(id))) => Err(AckRefused::NotFiring(id)),
            Err(_) => Err(AckRefused::Stopped),
        }
    }

    /// The alerts firing now, in id order.
    pub(crate) fn firing(&self) -> Vec<Alert> {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
// ---- the task -------------------------------------------------------------------

/// A sink as the task delivers to it.
enum Sink {
    /// A worker (webhook or MQTT) takes JSON bodies in order.
    Queue(mpsc::Sender<Vec<u8>>),
    Log,
}

struct Shell {
    app: Arc<App>,
    engine: Alerts,
    rules: BTreeMap<String, Rule>,
    /// Firing before the last restart and not yet seen by the engine.
    carried: BTreeMap<AlertId, Alert>,
    sinks: BTreeMap<String, Sink>,
    view: Arc<Mutex<Vec<Alert>>>,
    /// What `alerts/firing` holds.
    persisted: Vec<Alert>,
}

/// How long until Unix second `at` (a few ms late rather than early: the
/// core compares whole seconds).
fn until(at: u64) -> Duration {
    let target = UNIX_EPOCH + Duration::from_secs(at);
    target
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
        + Duration::from_millis(20)
}

/// Runs the alerting task until `stop`.
pub(crate) async fn run(
    app: Arc<App>,
    config: AlertsConfig,
    inbox: Inbox,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let Inbox { mut rx, view } = inbox;
    let mut by_name = BTreeMap::new();
    for s in &config.sinks {
        let sink = match s {
            SinkConfig::Webhook {
                name, url, timeout, ..
            } => {
                let (tx, rx) = mpsc::channel(sinks::SINK_QUEUE);
                let secs = timeout.map_or(sinks::DEFAULT_TIMEOUT_SECS, |t| t.0);
                tokio::spawn(sinks::webhook_worker(
                    app.clone(),
                    name.clone(),
                    url.clone(),
                    Duration::from_secs(secs),
                    rx,
                ));
                Sink::Queue(tx)
            }
            SinkConfig::Mqtt { name, topic } => {
                let (tx, rx) = mpsc::channel(sinks::SINK_QUEUE);
                tokio::spawn(sinks::mqtt_worker(
                    app.clone(),
                    name.clone(),
                    topic.clone(),
                    rx,
                ));
                Sink::Queue(tx)
            }
            SinkConfig::Log { .. } => Sink::Log,
        };
        by_name.insert(s.name().to_owned(), sink);
    }
    let rules: BTreeMap<String, Rule> = config
        .rules
        .iter()
        .map(|r| (r.name.clone(), r.clone()))
        .collect();
    let persisted = load_firing(app.store.as_ref());
    let carried = persisted
        .iter()
        .filter(|a| {
            let known = rules.contains_key(&a.id.rule);
            if !known {
                tracing::info!(alert = %a.id, "stored alert of a rule no longer configured: dropped");
            }
            known
        })
        .map(|a| (a.id.clone(), a.clone()))
        .collect();
    let mut shell = Shell {
        engine: Alerts::new(config.rules.clone()),
        app: app.clone(),
        rules,
        carried,
        sinks: by_name,
        view,
        persisted,
    };
    shell.publish();
    let ticker = tokio::spawn(observe::tick(
        app,
        observe::watched(&config.rules),
        every,
        stop.clone(),
    ));
    loop {
        let wake = shell.engine.poll_timeout().map(until);
        let escalation = async move {
            match wake {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // All cancellation-safe: a watch read, a channel receive, and a
            // timer that is made anew from the core on every turn.
            _ = stop.wait_for(|s| *s) => break,
            input = rx.recv() => match input {
                Some(input) => shell.handle(input),
                None => break,
            },
            () = escalation => {
                shell.engine.handle_timeout(now_unix());
                shell.drain();
            }
        }
        shell.publish();
    }
    let _ = ticker.await;
}

fn load_firing(store: &dyn Store) -> Vec<Alert> {
    match store.get_state(STATE_KEY) {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "stored alerts/firing does not decode: starting without it");
            Vec::new()
        }),
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::warn!(error = %e, "reading alerts/firing");
            Vec::new()
        }
    }
}

/// Whether `obs` is about the alert `subject` of a rule with `cond` (so it
/// would fire or resolve it).
fn concerns(cond: &Condition, subject: &str, obs: &Observation) -> bool {
    match (cond, obs) {
        (
            Condition::MetricAbove { metric, .. } | Condition::MetricBelow { metric, .. },
            Observation::Metric { name, .. },
        ) => metric == name && subject == name,
        (
            Condition::Drift { model, .. },
            Observation::Drift {
                model: m, feature, ..
            },
        )
        | (
            Condition::Completeness { model, .. },
            Observation::Completeness {
                model: m, feature, ..
            },
        ) => model == m && subject == format!("{m}/{feature}"),
        (Condition::DevicesOffline { .. }, Observation::DevicesOffline { .. }) => true,
        (
            Condition::RolloutHalted | Condition::RolloutPaused,
            Observation::RolloutRunning { rollout }
            | Observation::RolloutHalted { rollout, .. }
            | Observation::RolloutPaused { rollout, .. },
        ) => subject == rollout,
        _ => false,
    }
}

impl Shell {
    fn handle(&mut self, input: Input) {
        let now = now_unix();
        match input {
            Input::Observe(obs) => {
                self.engine.handle_observation(now, &obs);
                self.drain();
                self.resolve_carried(&obs);
            }
            Input::Ack { id, actor, reply } => {
                let result = if let Some(c) = self.carried.get_mut(&id) {
                    if c.acknowledged.is_none() {
                        c.acknowledged = Some((now, actor));
                    }
                    Ok(c.clone())
                } else {
                    self.engine.handle_ack(now, &id, &actor).and_then(|()| {
                        self.engine
                            .firing()
                            .find(|a| a.id == id)
                            .cloned()
                            .ok_or(AlertError::NotFiring(id))
                    })
                };
                let _ = reply.send(result);
            }
        }
    }

    /// Delivers the core's notifications.
    fn drain(&mut self) {
        while let Some(AlertAction::Notify { sink, kind, alert }) = self.engine.poll_action() {
            if kind == NotifyKind::Firing
                && let Some(old) = self.carried.remove(&alert.id)
            {
                // Notified before the restart: the engine takes it over.
                if let Some((at, actor)) = &old.acknowledged {
                    let _ = self.engine.handle_ack(*at, &alert.id, actor);
                }
                tracing::info!(alert = %alert.id, "an alert from before the restart still fires");
                continue;
            }
            self.deliver(&sink, kind, &alert);
        }
    }

    /// Carried alerts `obs` concerns that the engine does not fire: the
    /// condition holds again.
    fn resolve_carried(&mut self, obs: &Observation) {
        let gone: Vec<AlertId> = self
            .carried
            .keys()
            .filter(|id| {
                self.rules
                    .get(&id.rule)
                    .is_some_and(|r| concerns(&r.condition, &id.subject, obs))
                    && !self.engine.firing().any(|a| a.id == **id)
            })
            .cloned()
            .collect();
        for id in gone {
            let (Some(alert), Some(rule)) = (self.carried.remove(&id), self.rules.get(&id.rule))
            else {
                continue;
            };
            let (sink, escalation) = (
                rule.sink.clone(),
                rule.escalate.as_ref().map(|e| e.sink.clone()),
            );
            self.deliver(&sink, NotifyKind::Resolved, &alert);
            if let (true, Some(e)) = (alert.escalated, escalation) {
                self.deliver(&e, NotifyKind::Resolved, &alert);
            }
        }
    }

    fn deliver(&self, sink: &str, kind: NotifyKind, alert: &Alert) {
        match self.sinks.get(sink) {
            Some(Sink::Log) => {
                tracing::warn!(sink, kind = ?kind, alert = %alert.id, "{}", alert.message);
                sinks::count(&self.app, sink, "sent");
            }
            Some(Sink::Queue(tx)) => {
                let body = match serde_json::to_vec(&json!({"kind": kind, "alert": alert})) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(sink, error = %e, "alert notification does not encode");
                        sinks::count(&self.app, sink, "failed");
                        return;
                    }
                };
                if tx.try_send(body).is_err() {
                    tracing::warn!(sink, alert = %alert.id, "alert sink queue full: notification dropped");
                    sinks::count(&self.app, sink, "dropped");
                }
            }
            None => {
                // Checked at start; kept for a rule whose sink vanished.
                tracing::warn!(sink, alert = %alert.id, "alert sink not configured");
                sinks::count(&self.app, sink, "failed");
            }
        }
    }

    /// Updates the view and the store when the firing set changed.
    fn publish(&mut self) {
        let mut all: Vec<Alert> = self
            .engine
            .firing()
            .chain(self.carried.values())
            .cloned()
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        self.app.metrics.alerts_firing.set(all.len() as i64);
        {
            let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner());
            if *view != all {
                view.clone_from(&all);
            }
        }
        if all == self.persisted {
            return;
        }
        match serde_json::to_vec(&all) {
            Ok(bytes) => {
                if let Err(e) = self.app.store.put_state(STATE_KEY, &bytes) {
                    tracing::warn!(error = %e, "persisting alerts/firing");
                }
            }
            Err(e) => tracing::warn!(error = %e, "encoding alerts/firing"),
        }
        self.persisted = all;
    }
}
// ---- HTTP handlers --------------------------------------------------------------

pub(crate) async fn list_alerts(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    authorize(&app, &headers, Permission::Read)?;
    let info = &app.alerting.info;
    let sinks: Vec<Value> = info
        .sinks
        .iter()
        .map(|(name, kind)| json!({"name": name, "kind": kind}))
        .collect();
    Ok(Json(json!({
        "alerts": app.alerting.firing(),
        "rules": info.rules,
        "sinks": sinks,
    })))
}

/// The body of `POST /v1/alerts/ack`.
#[derive(Debug, Deserialize)]
pub(crate) struct AckReq {
    rule: String,
    subject: String,
}

pub(crate) async fn ack_alert(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(req): Json<AckReq>,
) -> ApiResult<Json<Value>> {
    let caller = authorize(&app, &headers, Permission::Operate)?;
    let id = AlertId {
        rule: req.rule,
        subject: req.subject,
    };
    let alert = app
        .alerting
        .ack(id, &caller.name)
        .await
        .map_err(|e| match e {
            AckRefused::NotFiring(id) => {
                ApiError::not_found(format!("no firing alert {id} (see `outpost alerts list`)"))
            }
            AckRefused::Stopped => ApiError::internal("the alerting task has stopped"),
        })?;
    app.audit.append(
        now_unix(),
        &caller.name,
        "alert.ack",
        json!({"rule": alert.id.rule, "subject": alert.id.subject, "message": alert.message}),
    )?;
    Ok(Json(json!({"alert": alert})))
}
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn concerns_matches_what_the_core_keys_alerts_by() {
        let drift = Condition::Drift {
            model: "digits".into(),
            psi: 0.2,
        };
        let obs = Observation::Drift {
            model: "digits".into(),
            feature: "x3".into(),
            psi: 0.0,
            drift: false,
        };
        assert!(concerns(&drift, "digits/x3", &obs));
        assert!(!concerns(&drift, "digits/x4", &obs));
        let running = Observation::RolloutRunning {
            rollout: "r1".into(),
        };
        assert!(concerns(&Condition::RolloutPaused, "r1", &running));
        assert!(!concerns(&Condition::RolloutPaused, "r2", &running));
        assert!(!concerns(
            &Condition::DevicesOffline { max: 0 },
            "fleet",
            &running
        ));
    }
}
