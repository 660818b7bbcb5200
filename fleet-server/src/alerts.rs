//! Alerts: rules over observations, notifications to sinks, escalation to
//! a second sink when nobody acknowledges in time. A sans-IO core like the
//! rollout controller: observations and acknowledgements in
//! (`handle_*(now, …)`), [`AlertAction::Notify`] out ([`Alerts::poll_action`]),
//! [`Alerts::handle_timeout`] at [`Alerts::poll_timeout`]. The shell
//! delivers notifications (webhook, e-mail, log) by sink name.
//!
//! An alert is identified by its rule and subject (a metric name, a
//! model/feature, a rollout id): while it fires, more observations that
//! breach the rule do not notify again; an observation that no longer
//! breaches resolves it (a `resolved` notification to the sinks it went
//! to); acknowledging it stops its escalation.

use std::collections::{BTreeMap, VecDeque};

use outpost_protocol::trust::UnixSeconds;
use serde::{Deserialize, Serialize};

/// What a rule watches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Condition {
    /// A named metric above a threshold (error rate, latency p99, …).
    MetricAbove {
        metric: String,
        threshold: f64,
    },
    /// A named metric below a threshold (accuracy, throughput, …).
    MetricBelow {
        metric: String,
        threshold: f64,
    },
    /// Any feature of the model drifting (PSI at or above `psi`, significant).
    Drift {
        model: String,
        psi: f64,
    },
    /// Any feature of the model less complete than `min_rate`.
    Completeness {
        model: String,
        min_rate: f64,
    },
    /// More devices offline than `max`.
    DevicesOffline {
        max: u64,
    },
    RolloutHalted,
    RolloutPaused,
}

/// An escalation: if not acknowledged within `after_secs`, notify `sink`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escalation {
    pub after_secs: u64,
    pub sink: String,
}

/// A rule: a condition, the sink it notifies, and an optional escalation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub name: String,
    pub condition: Condition,
    pub sink: String,
    #[serde(default)]
    pub escalate: Option<Escalation>,
}

/// Something measured or something that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Observation {
    Metric {
        name: String,
        value: f64,
    },
    /// A feature's PSI and whether its test called it drift.
    Drift {
        model: String,
        feature: String,
        psi: f64,
        drift: bool,
    },
    Completeness {
        model: String,
        feature: String,
        rate: f64,
    },
    DevicesOffline {
        count: u64,
    },
    RolloutHalted {
        rollout: String,
        reason: String,
    },
    RolloutPaused {
        rollout: String,
        reason: String,
    },
    /// The rollout runs again (resumed) or ended: its pause and halt
    /// alerts resolve.
    RolloutRunning {
        rollout: String,
    },
}

/// Identity of an alert: rule name + subject.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AlertId {
    pub rule: String,
    pub subject: String,
}

impl std::fmt::Display for AlertId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.rule, self.subject)
    }
}

/// A firing alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: AlertId,
    pub message: String,
    pub since: UnixSeconds,
    pub acknowledged: Option<(UnixSeconds, String)>,
    pub escalated: bool,
}

/// Kind of notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyKind {
    Firing,
    /// Not acknowledged in time: sent to the escalation sink.
    Escalated,
    Resolved,
}

/// What the shell does.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AlertAction {
    Notify {
        sink: String,
        kind: NotifyKind,
        alert: Alert,
    },
}

/// Why an input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AlertError {
    /// No firing alert has this id (already resolved, or never fired).
    #[error("no firing alert {0}")]
    NotFiring(AlertId),
}

/// The alert engine. See the module docs.
#[derive(Debug)]
pub struct Alerts {
    rules: Vec<Rule>,
    firing: BTreeMap<AlertId, Alert>,
    actions: VecDeque<AlertAction>,
}

impl Alerts {
    pub fn new(rules: Vec<Rule>) -> Self {
        Alerts {
            rules,
            firing: BTreeMap::new(),
            actions: VecDeque::new(),
        }
    }

    pub fn poll_action(&mut self) -> Option<AlertAction> {
        self.actions.pop_front()
    }

    /// The next escalation due, if any.
    pub fn poll_timeout(&self) -> Option<UnixSeconds> {
        self.firing
            .values()
            .filter(|a| a.acknowledged.is_none() && !a.escalated)
            .filter_map(|a| {
                let rule = self.rules.iter().find(|r| r.name == a.id.rule)?;
                let e = rule.escalate.as_ref()?;
                Some(a.since.saturating_add(e.after_secs))
            })
            .min()
    }

    /// Alerts firing now, in id order.
    pub fn firing(&self) -> impl Iterator<Item = &Alert> {
        self.firing.values()
    }

    /// Applies every rule to an observation.
    pub fn handle_observation(&mut self, now: UnixSeconds, observation: &Observation) {
        let verdicts: Vec<(Rule, String, Option<String>)> = self
            .rules
            .iter()
            .filter_map(|rule| {
                judge(&rule.condition, observation)
                    .map(|(subject, breach)| (rule.clone(), subject, breach))
            })
            .collect();
        for (rule, subject, breach) in verdicts {
            let id = AlertId {
                rule: rule.name.clone(),
                subject,
            };
            match (breach, self.firing.contains_key(&id)) {
                (Some(message), false) => {
                    let alert = Alert {
                        id: id.clone(),
                        message,
                        since: now,
                        acknowledged: None,
                        escalated: false,
                    };
                    self.notify(rule.sink.clone(), NotifyKind::Firing, alert.clone());
                    self.firing.insert(id, alert);
                }
                (None, true) => {
                    if let Some(alert) = self.firing.remove(&id) {
                        self.notify(rule.sink.clone(), NotifyKind::Resolved, alert.clone());
                        if let (true, Some(e)) = (alert.escalated, &rule.escalate) {
                            self.notify(e.sink.clone(), NotifyKind::Resolved, alert);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Someone took the alert: its escalation stops.
    ///
    /// # Errors
    /// [`AlertError::NotFiring`] for an alert that is not firing.
    pub fn handle_ack(
        &mut self,
        now: UnixSeconds,
        id: &AlertId,
        actor: &str,
    ) -> Result<(), AlertError> {
        let alert = self
            .firing
            .get_mut(id)
            .ok_or_else(|| AlertError::NotFiring(id.clone()))?;
        if alert.acknowledged.is_none() {
            alert.acknowledged = Some((now, actor.to_owned()));
        }
        Ok(())
    }

    /// Escalates every unacknowledged alert past its rule's period.
    /// Idempotent: an alert escalates once.
    pub fn handle_timeout(&mut self, now: UnixSeconds) {
        let due: Vec<(AlertId, String)> = self
            .firing
            .values()
            .filter(|a| a.acknowledged.is_none() && !a.escalated)
            .filter_map(|a| {
                let rule = self.rules.iter().find(|r| r.name == a.id.rule)?;
                let e = rule.escalate.as_ref()?;
                (now >= a.since.saturating_add(e.after_secs))
                    .then(|| (a.id.clone(), e.sink.clone()))
            })
            .collect();
        for (id, sink) in due {
            if let Some(alert) = self.firing.get_mut(&id) {
                alert.escalated = true;
                let alert = alert.clone();
                self.notify(sink, NotifyKind::Escalated, alert);
            }
        }
    }

    fn notify(&mut self, sink: String, kind: NotifyKind, alert: Alert) {
        self.actions
            .push_back(AlertAction::Notify { sink, kind, alert });
    }
}

/// Whether `observation` concerns the condition: `Some((subject, breach))`
/// where `breach` is the alert message when the condition is breached and
/// `None` when it holds again; `None` when the observation is unrelated.
fn judge(condition: &Condition, observation: &Observation) -> Option<(String, Option<String>)> {
    let breach = |b: bool, m: String| b.then_some(m);
    match (condition, observation) {
        (Condition::MetricAbove { metric, threshold }, Observation::Metric { name, value })
            if metric == name =>
        {
            Some((
                name.clone(),
                breach(
                    *value > *threshold,
                    format!("{name} is {value} (above {threshold})"),
                ),
            ))
        }
        (Condition::MetricBelow { metric, threshold }, Observation::Metric { name, value })
            if metric == name =>
        {
            Some((
                name.clone(),
                breach(
                    *value < *threshold,
                    format!("{name} is {value} (below {threshold})"),
                ),
            ))
        }
        (
            Condition::Drift { model, psi },
            Observation::Drift {
                model: m,
                feature,
                psi: value,
                drift,
            },
        ) if model == m => Some((
            format!("{m}/{feature}"),
            breach(
                *drift && *value >= *psi,
                format!("{m}: {feature} drifts (PSI {value:.3})"),
            ),
        )),
        (
            Condition::Completeness { model, min_rate },
            Observation::Completeness {
                model: m,
                feature,
                rate,
            },
        ) if model == m => Some((
            format!("{m}/{feature}"),
            breach(
                *rate < *min_rate,
                format!("{m}: {feature} only {:.1}% complete", rate * 100.0),
            ),
        )),
        (Condition::DevicesOffline { max }, Observation::DevicesOffline { count }) => Some((
            "fleet".into(),
            breach(
                *count > *max,
                format!("{count} devices offline (more than {max})"),
            ),
        )),
        (Condition::RolloutHalted, Observation::RolloutHalted { rollout, reason }) => Some((
            rollout.clone(),
            Some(format!("rollout {rollout} halted: {reason}")),
        )),
        (Condition::RolloutPaused, Observation::RolloutPaused { rollout, reason }) => Some((
            rollout.clone(),
            Some(format!("rollout {rollout} paused: {reason}")),
        )),
        (
            Condition::RolloutHalted | Condition::RolloutPaused,
            Observation::RolloutRunning { rollout },
        ) => Some((rollout.clone(), None)),
        _ => None,
    }
}
