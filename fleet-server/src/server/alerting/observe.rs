//! The fleet tick: every `--alerts-every` seconds, the observations the
//! rules need, computed on the blocking pool from the inventory, the
//! registry and the stored windows, and fed to the engine like any other.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::super::App;
use super::super::drift_api::{Selection, version_drift};
use crate::alerts::{Condition, Observation, Rule};
use crate::clock::now_unix;
use crate::registry::Status;
use crate::store::Store;

/// The drift observations look at this much of the recent past.
const DRIFT_LOOKBACK_SECS: u64 = 3_600;

/// What the rules need observed.
#[derive(Debug, Clone, Default)]
pub(super) struct Watched {
    offline: bool,
    /// Models named by drift or completeness rules.
    models: BTreeSet<String>,
    /// Fleet metrics named by metric rules.
    metrics: BTreeSet<String>,
}

/// A fleet metric a `metric_above` / `metric_below` rule may name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum FleetMetric {
    DevicesOnline,
    DevicesOffline,
    /// `{model}/{stat}` over the windows of the last hour, every version.
    Model {
        model: String,
        stat: ModelStat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ModelStat {
    Requests,
    ErrorRate,
    Accuracy,
    LatencyP50Ms,
    LatencyP99Ms,
}

/// The metric names rules may use, for error messages and the docs.
pub(crate) const METRIC_NAMES: &str = "devices_online, devices_offline, or MODEL/requests, \
     MODEL/error_rate, MODEL/accuracy, MODEL/latency_p50_ms, MODEL/latency_p99_ms";

impl FleetMetric {
    pub(crate) fn parse(name: &str) -> Option<FleetMetric> {
        match name {
            "devices_online" => return Some(FleetMetric::DevicesOnline),
            "devices_offline" => return Some(FleetMetric::DevicesOffline),
            _ => {}
        }
        let (model, stat) = name.rsplit_once('/')?;
        let stat = match stat {
            "requests" => ModelStat::Requests,
            "error_rate" => ModelStat::ErrorRate,
            "accuracy" => ModelStat::Accuracy,
            "latency_p50_ms" => ModelStat::LatencyP50Ms,
            "latency_p99_ms" => ModelStat::LatencyP99Ms,
            _ => return None,
        };
        (!model.is_empty()).then(|| FleetMetric::Model {
            model: model.to_owned(),
            stat,
        })
    }
}

pub(super) fn watched(rules: &[Rule]) -> Watched {
    let mut w = Watched::default();
    for r in rules {
        match &r.condition {
            Condition::DevicesOffline { .. } => w.offline = true,
            Condition::Drift { model, .. } | Condition::Completeness { model, .. } => {
                w.models.insert(model.clone());
            }
            Condition::MetricAbove { metric, .. } | Condition::MetricBelow { metric, .. } => {
                w.metrics.insert(metric.clone());
            }
            _ => {}
        }
    }
    w
}

pub(super) async fn tick(
    app: Arc<App>,
    watched: Watched,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    if !watched.offline && watched.models.is_empty() && watched.metrics.is_empty() {
        return;
    }
    let mut interval = tokio::time::interval(every.max(Duration::from_secs(1)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let watched = Arc::new(watched);
    loop {
        tokio::select! {
            // Both cancellation-safe: a watch read and an interval tick.
            _ = stop.wait_for(|s| *s) => return,
            _ = interval.tick() => {}
        }
        let (store, w) = (app.store.clone(), watched.clone());
        let observed =
            tokio::task::spawn_blocking(move || observe_fleet(store.as_ref(), &w, now_unix()))
                .await;
        match observed {
            Ok(list) => {
                for obs in list {
                    app.alerting.observe(obs);
                }
            }
            Err(e) => tracing::warn!(error = %e, "alert observations failed"),
        }
    }
}

/// Per column over a model's live versions: largest decisive PSI, drift
/// anywhere, lowest complete share.
#[derive(Debug, Default)]
struct ColumnSeen {
    psi: Option<f64>,
    drift: bool,
    complete: Option<f64>,
}

/// One model's traffic over the lookback, every version merged.
#[derive(Debug, Default)]
struct Traffic {
    requests: u64,
    errors: u64,
    labelled: u64,
    correct: u64,
    latency: Option<outpost_telemetry::LatencyHistogram>,
}

fn traffic(store: &dyn Store, model: &str, since: u64) -> Option<Traffic> {
    let query = crate::store::WindowQuery {
        model: model.to_owned(),
        version: None,
        device: None,
        from: Some(since),
        to: None,
    };
    let records = match store.windows(&query) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "alerts: reading telemetry windows");
            return None;
        }
    };
    let mut t = Traffic::default();
    for w in records
        .iter()
        .filter_map(super::super::evidence::window_profile)
    {
        let p = &w.profile;
        t.requests += p.requests;
        t.errors += p.errors;
        t.labelled += p.feedback.total();
        t.correct += p.feedback.correct();
        match &mut t.latency {
            None => t.latency = Some(p.latency.clone()),
            Some(l) => {
                // Windows of another latency accuracy are left out.
                let _ = l.merge(&p.latency);
            }
        }
    }
    Some(t)
}

/// The value of `metric` now, when there is data for it.
fn fleet_metric(
    store: &dyn Store,
    metric: &FleetMetric,
    now: u64,
    cache: &mut BTreeMap<String, Option<Traffic>>,
) -> Option<f64> {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    match metric {
        FleetMetric::DevicesOnline | FleetMetric::DevicesOffline => {
            let devices = store.list_devices().ok()?;
            let online = devices.iter().filter(|d| d.online).count();
            Some(if *metric == FleetMetric::DevicesOnline {
                online
            } else {
                devices.len() - online
            } as f64)
        }
        FleetMetric::Model { model, stat } => {
            let t = cache
                .entry(model.clone())
                .or_insert_with(|| traffic(store, model, now.saturating_sub(DRIFT_LOOKBACK_SECS)))
                .as_ref()?;
            match stat {
                ModelStat::Requests => Some(t.requests as f64),
                ModelStat::ErrorRate => {
                    (t.requests > 0).then(|| t.errors as f64 / t.requests as f64)
                }
                ModelStat::Accuracy => {
                    (t.labelled > 0).then(|| t.correct as f64 / t.labelled as f64)
                }
                ModelStat::LatencyP50Ms => t.latency.as_ref()?.quantile(0.5).map(ms),
                ModelStat::LatencyP99Ms => t.latency.as_ref()?.quantile(0.99).map(ms),
            }
        }
    }
}

fn observe_fleet(store: &dyn Store, w: &Watched, now: u64) -> Vec<Observation> {
    let mut out = Vec::new();
    let mut cache = BTreeMap::new();
    for name in &w.metrics {
        // Names were checked when the file was read.
        let Some(metric) = FleetMetric::parse(name) else {
            continue;
        };
        // No data (no request yet, no label yet): nothing fires or resolves.
        if let Some(value) = fleet_metric(store, &metric, now, &mut cache) {
            out.push(Observation::Metric {
                name: name.clone(),
                value,
            });
        }
    }
    if w.offline {
        match store.list_devices() {
            Ok(devices) => out.push(Observation::DevicesOffline {
                count: devices.iter().filter(|d| !d.online).count() as u64,
            }),
            Err(e) => tracing::warn!(error = %e, "alerts: reading the inventory"),
        }
    }
    if w.models.is_empty() {
        return out;
    }
    let versions = match store.list_versions() {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "alerts: reading the registry");
            return out;
        }
    };
    for model in &w.models {
        let mut columns: BTreeMap<String, ColumnSeen> = BTreeMap::new();
        let live = versions
            .iter()
            .filter(|v| v.name == *model && matches!(v.status, Status::Canary | Status::Deployed));
        for v in live {
            let sel = Selection {
                name: v.name.clone(),
                version: v.version.clone(),
                group: None,
                from: Some(now.saturating_sub(DRIFT_LOOKBACK_SECS)),
                to: None,
            };
            let report = match version_drift(store, &sel) {
                Ok(r) => r.report,
                Err(e) => {
                    tracing::debug!(model = %v.name, version = %v.version, error = %e, "alerts: no drift report");
                    continue;
                }
            };
            for c in report.inputs.iter().chain(&report.predictions) {
                let seen = columns.entry(c.name.clone()).or_default();
                let decisive = c
                    .psi
                    .as_ref()
                    .filter(|s| s.verdict == "drift" || s.verdict == "no_drift")
                    .and_then(|s| s.value);
                if let Some(psi) = decisive {
                    seen.psi = Some(seen.psi.map_or(psi, |p| p.max(psi)));
                    seen.drift |= c.drift;
                }
                if let Some(rate) = c.completeness.complete_rate {
                    seen.complete = Some(seen.complete.map_or(rate, |r| r.min(rate)));
                }
            }
        }
        for (feature, seen) in columns {
            if let Some(psi) = seen.psi {
                out.push(Observation::Drift {
                    model: model.clone(),
                    feature: feature.clone(),
                    psi,
                    drift: seen.drift,
                });
            }
            if let Some(rate) = seen.complete {
                out.push(Observation::Completeness {
                    model: model.clone(),
                    feature,
                    rate,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::server::alerting::AlertsConfig;

    #[test]
    fn the_tick_watches_only_what_the_rules_name() {
        let c = AlertsConfig::parse(super::super::config::tests::GOOD).unwrap();
        let w = watched(&c.rules);
        assert!(w.offline);
        assert_eq!(w.models.into_iter().collect::<Vec<_>>(), ["digits"]);
        let w = watched(&[]);
        assert!(!w.offline && w.models.is_empty());
    }
}
