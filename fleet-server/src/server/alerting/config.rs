//! The `--alerts` file: sinks and rules, checked before the server starts
//! (the format is in the parent module's docs).

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Deserializer};

use super::super::ServeError;
use super::super::drift_api::parse_duration;
use crate::alerts::{Condition, Escalation, Rule};

/// A duration in the file: seconds, or text such as `90s`, `10m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span(pub(crate) u64);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Span;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("seconds, or a duration such as \"90s\", \"10m\", \"1h\", \"2d\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Span, E> {
                Ok(Span(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Span, E> {
                u64::try_from(v)
                    .map(Span)
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Span, E> {
                parse_duration(v).map(Span).ok_or_else(|| {
                    E::custom(format!(
                        "{v:?}: expected a duration such as 90s, 10m, 1h, 2d"
                    ))
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A place notifications go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum SinkConfig {
    /// HTTP POST of the notification as JSON; any answer but 2xx, or none
    /// within `timeout`, is a failed delivery.
    Webhook {
        name: String,
        url: String,
        #[serde(default)]
        timeout: Option<Span>,
    },
    /// Publish the notification as JSON on `topic` (QoS 1).
    Mqtt { name: String, topic: String },
    /// A warning in the server's log.
    Log { name: String },
}

impl SinkConfig {
    pub(crate) fn name(&self) -> &str {
        match self {
            SinkConfig::Webhook { name, .. }
            | SinkConfig::Mqtt { name, .. }
            | SinkConfig::Log { name } => name,
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Webhook { .. } => "webhook",
            SinkConfig::Mqtt { .. } => "mqtt",
            SinkConfig::Log { .. } => "log",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EscalateConfig {
    after: Span,
    sink: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    name: String,
    sink: String,
    condition: Condition,
    #[serde(default)]
    escalate: Option<EscalateConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    sink: Vec<SinkConfig>,
    #[serde(default)]
    rule: Vec<RuleConfig>,
}

/// Rules and sinks, checked. The default has none: observations are
/// accepted and nothing fires.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct AlertsConfig {
    pub(crate) sinks: Vec<SinkConfig>,
    pub(crate) rules: Vec<Rule>,
}

fn check_condition(rule: &str, c: &Condition) -> Result<(), String> {
    let bad = |what: &str| Err(format!("rule {rule:?}: {what}"));
    match c {
        Condition::MetricAbove { metric, threshold }
        | Condition::MetricBelow { metric, threshold } => {
            if super::observe::FleetMetric::parse(metric).is_none() {
                return bad(&format!(
                    "unknown metric {metric:?}: one of {}",
                    super::observe::METRIC_NAMES
                ));
            }
            if !threshold.is_finite() {
                return bad("threshold must be a finite number");
            }
        }
        Condition::Drift { model, psi } => {
            if model.is_empty() {
                return bad("the model name is empty");
            }
            if !(psi.is_finite() && *psi >= 0.0) {
                return bad("psi must be a number ≥ 0");
            }
        }
        Condition::Completeness { model, min_rate } => {
            if model.is_empty() {
                return bad("the model name is empty");
            }
            if !(0.0..=1.0).contains(min_rate) {
                return bad("min_rate must be between 0 and 1");
            }
        }
        Condition::DevicesOffline { .. } | Condition::RolloutHalted | Condition::RolloutPaused => {}
    }
    Ok(())
}

impl AlertsConfig {
    /// Parses and checks the file's text.
    pub(crate) fn parse(text: &str) -> Result<AlertsConfig, String> {
        let file: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut names = BTreeSet::new();
        for s in &file.sink {
            let name = s.name();
            if name.is_empty() {
                return Err("a sink has an empty name".into());
            }
            if !names.insert(name.to_owned()) {
                return Err(format!("sink {name:?} is defined twice"));
            }
            match s {
                SinkConfig::Webhook { url, timeout, .. } => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(format!(
                            "sink {name:?}: url {url:?} must start with http:// or https://"
                        ));
                    }
                    if timeout.is_some_and(|t| t.0 == 0) {
                        return Err(format!("sink {name:?}: timeout must be at least 1 s"));
                    }
                }
                SinkConfig::Mqtt { topic, .. } => {
                    if topic.is_empty()
                        || topic.starts_with('$')
                        || topic.contains(['+', '#', '\0'])
                    {
                        return Err(format!(
                            "sink {name:?}: topic {topic:?} must be a non-empty topic name \
                             without wildcards (+, #) or a leading $"
                        ));
                    }
                }
                SinkConfig::Log { .. } => {}
            }
        }
        let mut rule_names = BTreeSet::new();
        let mut rules = Vec::with_capacity(file.rule.len());
        for r in file.rule {
            if r.name.is_empty() {
                return Err("a rule has an empty name".into());
            }
            if !rule_names.insert(r.name.clone()) {
                return Err(format!("rule {:?} is defined twice", r.name));
            }
            let known = |sink: &str| {
                if names.contains(sink) {
                    Ok(())
                } else {
                    Err(format!(
                        "rule {:?} names sink {sink:?}, which is not defined (sinks: {})",
                        r.name,
                        if names.is_empty() {
                            "none".to_owned()
                        } else {
                            names.iter().cloned().collect::<Vec<_>>().join(", ")
                        }
                    ))
                }
            };
            known(&r.sink)?;
            check_condition(&r.name, &r.condition)?;
            let escalate = match r.escalate {
                Some(e) => {
                    known(&e.sink)?;
                    if e.after.0 == 0 {
                        return Err(format!(
                            "rule {:?}: escalate.after must be at least 1 s",
                            r.name
                        ));
                    }
                    Some(Escalation {
                        after_secs: e.after.0,
                        sink: e.sink,
                    })
                }
                None => None,
            };
            rules.push(Rule {
                name: r.name,
                condition: r.condition,
                sink: r.sink,
                escalate,
            });
        }
        Ok(AlertsConfig {
            sinks: file.sink,
            rules,
        })
    }

    /// Reads and checks the `--alerts` file.
    pub(crate) fn load(path: &Path) -> Result<AlertsConfig, ServeError> {
        let text = std::fs::read_to_string(path).map_err(|e| ServeError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        AlertsConfig::parse(&text)
            .map_err(|e| ServeError::Config(format!("--alerts {}: {e}", path.display())))
    }
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(in super::super) const GOOD: &str = r#"
        [[sink]]
        name = "ops"
        kind = "webhook"
        url = "http://127.0.0.1:9/hook"
        timeout = 3

        [[sink]]
        name = "pager"
        kind = "mqtt"
        topic = "ops/alerts"

        [[sink]]
        name = "console"
        kind = "log"

        [[rule]]
        name = "offline"
        sink = "ops"
        condition = { kind = "devices_offline", max = 0 }
        escalate = { after = "10m", sink = "pager" }

        [[rule]]
        name = "drift"
        sink = "console"
        condition = { kind = "drift", model = "digits", psi = 0.2 }
    "#;

    #[test]
    fn the_documented_file_parses_into_rules() {
        let c = AlertsConfig::parse(GOOD).unwrap();
        assert_eq!(c.sinks.len(), 3);
        assert_eq!(c.rules.len(), 2);
        assert_eq!(
            c.rules[0].escalate,
            Some(Escalation {
                after_secs: 600,
                sink: "pager".into()
            })
        );
        assert_eq!(
            c.rules[1].condition,
            Condition::Drift {
                model: "digits".into(),
                psi: 0.2
            }
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let cases = [
            (
                GOOD.replace("sink = \"pager\" }", "sink = \"pagr\" }"),
                "\"pagr\", which is not defined",
            ),
            (
                GOOD.replace("name = \"console\"", "name = \"ops\""),
                "defined twice",
            ),
            (
                GOOD.replace("http://127", "ftp://127"),
                "must start with http",
            ),
            (GOOD.replace("ops/alerts", "ops/#"), "wildcards"),
            (
                GOOD.replace("\"10m\"", "\"10 parsecs\""),
                "expected a duration",
            ),
            (GOOD.replace("psi = 0.2", "psi = -1.0"), "psi must be"),
            (GOOD.replace("kind = \"log\"", "kind = \"email\""), "email"),
            (GOOD.replace("timeout = 3", "retries = 3"), "retries"),
        ];
        for (text, needle) in cases {
            let e = AlertsConfig::parse(&text).unwrap_err();
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
        }
        assert_eq!(AlertsConfig::parse("").unwrap(), AlertsConfig::default());
    }
}
