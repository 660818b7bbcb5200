//! Rollout plans: a TOML list of stages, each with its cohort size, its
//! minimums, its time limits and its gates.
//!
//! ```toml
//! [[stage]]
//! name = "canary"
//! percent = 10            # or: devices = 3
//! min_devices = 2
//! min_windows = 6
//! min_duration = "15m"    # integer seconds, or "90s", "15m", "2h", "1d"
//! max_duration = "2h"
//! max_failed_devices = 0
//!
//! [[stage.gate]]
//! kind = "latency"        # latency | error_rate | drift | confidence | accuracy | shadow_agreement
//! tolerance = 0.10
//! ```
//!
//! Validation errors name the field (`stage[1].gate[0].tolerance`) and why.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Largest plan text accepted (a plan is a few stages; anything bigger is
/// a mistake or hostile).
pub const MAX_PLAN_BYTES: usize = 64 * 1024;

/// A validated rollout plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Free text for people (`outpost rollout status`).
    #[serde(default)]
    pub name: Option<String>,
    /// The stages, in order; cohorts only grow from one to the next.
    #[serde(rename = "stage")]
    pub stages: Vec<Stage>,
}

/// How big a stage's canary cohort is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CohortSize {
    /// A share of the eligible devices, in `(0, 100]`, rounded up.
    Percent(f64),
    /// A device count (capped at the eligible devices).
    Devices(u32),
}

/// One stage of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    #[serde(default)]
    pub name: Option<String>,
    /// Share of the eligible devices in the canary cohort; exactly one of
    /// `percent` and `devices`.
    #[serde(default, deserialize_with = "number::option")]
    pub percent: Option<f64>,
    /// Canary cohort as a device count.
    #[serde(default)]
    pub devices: Option<u32>,
    /// Canary devices that must have reported a window in this stage.
    #[serde(default = "one")]
    pub min_devices: u32,
    /// Canary windows this stage must have counted.
    #[serde(default = "one")]
    pub min_windows: u32,
    /// Shortest time in the stage (bake time), seconds.
    #[serde(default, with = "duration")]
    pub min_duration: u64,
    /// Longest time the gates may stay inconclusive before the rollout
    /// pauses and alerts, seconds.
    #[serde(with = "duration")]
    pub max_duration: u64,
    /// Canary devices that may fail (self-rollback on a health check, a
    /// failed self-test or verification) before the rollout halts.
    #[serde(default)]
    pub max_failed_devices: u32,
    /// How the stage's new devices run the candidate: `canary` (serves
    /// traffic, the default) or `shadow` (runs beside the active model;
    /// callers see only the active one). Devices shadowing from an earlier
    /// stage are promoted when a canary stage starts. Shadow stages come
    /// before canary stages, and the last stage is a canary stage.
    #[serde(default)]
    pub mode: StageMode,
    /// The gates; an empty list passes on the minimums alone.
    #[serde(default, rename = "gate")]
    pub gates: Vec<GateSpec>,
}

fn one() -> u32 {
    1
}

impl Stage {
    /// The cohort size, once validated.
    pub fn size(&self) -> CohortSize {
        match (self.percent, self.devices) {
            (Some(p), _) => CohortSize::Percent(p),
            (None, Some(d)) => CohortSize::Devices(d),
            (None, None) => CohortSize::Percent(100.0),
        }
    }

    /// A label for people: the name, or `stage N`.
    pub fn label(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("stage {}", index + 1))
    }
}

/// How a stage runs the candidate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageMode {
    #[default]
    Canary,
    Shadow,
}

/// What a gate measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateKind {
    /// Request latency, canary vs control (relative: 0.1 = 10 % slower).
    Latency,
    /// Failed requests, canary vs control (absolute: 0.01 = one point).
    ErrorRate,
    /// Canary inputs and outputs vs the new version's reference (PSI, KS).
    Drift,
    /// Prediction confidence, canary vs control (absolute drop).
    Confidence,
    /// Accuracy from ground-truth feedback, canary vs control (absolute drop).
    Accuracy,
    /// Agreement of the shadowed candidate with the active model.
    ShadowAgreement,
}

impl GateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GateKind::Latency => "latency",
            GateKind::ErrorRate => "error_rate",
            GateKind::Drift => "drift",
            GateKind::Confidence => "confidence",
            GateKind::Accuracy => "accuracy",
            GateKind::ShadowAgreement => "shadow_agreement",
        }
    }

    /// Default tolerance: latency 10 % slower, 1 point more errors, PSI
    /// 0.2, 0.1 less confidence, 2 points less accuracy, 95 % agreement.
    pub fn default_tolerance(self) -> f64 {
        match self {
            GateKind::Latency => 0.10,
            GateKind::ErrorRate => 0.01,
            GateKind::Drift => 0.2,
            GateKind::Confidence => 0.10,
            GateKind::Accuracy => 0.02,
            GateKind::ShadowAgreement => 0.95,
        }
    }

    /// Whether the gate needs a control cohort to compare with.
    pub fn compares_with_control(self) -> bool {
        !matches!(self, GateKind::Drift | GateKind::ShadowAgreement)
    }
}

impl fmt::Display for GateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One gate of a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateSpec {
    pub kind: GateKind,
    /// The largest acceptable regression (see [`GateKind`] for its unit);
    /// for `drift` the PSI threshold, for `shadow_agreement` the minimum
    /// agreement. Default: [`GateKind::default_tolerance`].
    #[serde(default, deserialize_with = "number::option")]
    pub tolerance: Option<f64>,
    /// Level of each one-sided decision (default 0.05).
    #[serde(default = "default_alpha", deserialize_with = "number::float")]
    pub alpha: f64,
    /// Fewest observations per cohort before a verdict (default 100).
    #[serde(default = "default_min_count")]
    pub min_count: u64,
    /// An optional gate that stays inconclusive does not hold the stage
    /// (a Fail still halts). Default: true for `accuracy` and
    /// `shadow_agreement` (labels and shadow runs may never come), false
    /// otherwise.
    #[serde(default)]
    pub optional: Option<bool>,
    /// `drift` only: the columns to judge (default: every input and output).
    #[serde(default)]
    pub columns: Vec<String>,
}

fn default_alpha() -> f64 {
    0.05
}

fn default_min_count() -> u64 {
    100
}

impl GateSpec {
    /// A gate with every default.
    pub fn new(kind: GateKind) -> Self {
        GateSpec {
            kind,
            tolerance: None,
            alpha: default_alpha(),
            min_count: default_min_count(),
            optional: None,
            columns: Vec::new(),
        }
    }

    pub fn tolerance(&self) -> f64 {
        self.tolerance
            .unwrap_or_else(|| self.kind.default_tolerance())
    }

    pub fn is_optional(&self) -> bool {
        self.optional.unwrap_or(matches!(
            self.kind,
            GateKind::Accuracy | GateKind::ShadowAgreement
        ))
    }
}

/// Why a plan was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The text is over [`MAX_PLAN_BYTES`].
    #[error("plan is {0} bytes, over the limit of {MAX_PLAN_BYTES}")]
    TooLarge(usize),
    /// Not TOML of the plan's shape (unknown field, wrong type); the
    /// message names the line and the field.
    #[error("plan is not valid TOML: {0}")]
    Parse(#[from] toml::de::Error),
    /// A field has a value the controller cannot run with: fix `field`.
    #[error("plan field {field}: {reason}")]
    Invalid { field: String, reason: Invalid },
}

/// What is wrong with a plan field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    #[error("the plan has no stage")]
    NoStages,
    #[error("give exactly one of percent and devices")]
    CohortSize,
    #[error("{found} is outside {min}..={max}")]
    OutOfRange { found: f64, min: f64, max: f64 },
    #[error("must be at least 1")]
    Zero,
    #[error("cohort {found} is smaller than the previous stage's {previous}: cohorts only grow")]
    Shrinks { found: f64, previous: f64 },
    #[error("min_duration {min}s is over max_duration {max}s")]
    MinOverMax { min: u64, max: u64 },
    #[error("gate {0} appears twice in the stage")]
    DuplicateGate(GateKind),
    #[error("columns only applies to the drift gate")]
    ColumnsOutsideDrift,
    #[error("a shadow stage cannot follow a canary stage, nor end the plan")]
    ShadowAfterCanary,
}

impl Plan {
    /// Parses and validates a plan.
    ///
    /// # Errors
    /// [`PlanError`]: too large, not TOML of this shape, or a field out of
    /// range (named).
    pub fn from_toml(text: &str) -> Result<Plan, PlanError> {
        if text.len() > MAX_PLAN_BYTES {
            return Err(PlanError::TooLarge(text.len()));
        }
        let plan: Plan = toml::from_str(text)?;
        plan.validate()?;
        Ok(plan)
    }

    /// The plan as TOML (what `from_toml` reads back).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// Checks every field; `from_toml` calls it, call it on a plan built
    /// in code.
    ///
    /// # Errors
    /// [`PlanError::Invalid`] naming the first bad field.
    pub fn validate(&self) -> Result<(), PlanError> {
        let bad = |field: String, reason| Err(PlanError::Invalid { field, reason });
        if self.stages.is_empty() {
            return bad("stage".into(), Invalid::NoStages);
        }
        let mut previous: Option<CohortSize> = None;
        for (i, stage) in self.stages.iter().enumerate() {
            let at = |f: &str| format!("stage[{i}].{f}");
            match (stage.percent, stage.devices) {
                (Some(p), None) => {
                    if !(p > 0.0 && p <= 100.0) {
                        return bad(
                            at("percent"),
                            Invalid::OutOfRange {
                                found: p,
                                min: 0.0,
                                max: 100.0,
                            },
                        );
                    }
                }
                (None, Some(0)) => return bad(at("devices"), Invalid::Zero),
                (None, Some(_)) => {}
                _ => return bad(at("percent"), Invalid::CohortSize),
            }
            // Same-kind sizes must not shrink; mixed kinds are resolved
            // against the fleet at start, where a smaller one is raised
            // to the previous stage's cohort.
            match (previous, stage.size()) {
                (Some(CohortSize::Percent(a)), CohortSize::Percent(b)) if b < a => {
                    return bad(
                        at("percent"),
                        Invalid::Shrinks {
                            found: b,
                            previous: a,
                        },
                    );
                }
                (Some(CohortSize::Devices(a)), CohortSize::Devices(b)) if b < a => {
                    return bad(
                        at("devices"),
                        Invalid::Shrinks {
                            found: f64::from(b),
                            previous: f64::from(a),
                        },
                    );
                }
                _ => {}
            }
            previous = Some(stage.size());
            let last = i + 1 == self.stages.len();
            let canary_before = self.stages[..i].iter().any(|s| s.mode == StageMode::Canary);
            if stage.mode == StageMode::Shadow && (last || canary_before) {
                return bad(at("mode"), Invalid::ShadowAfterCanary);
            }
            if stage.min_devices == 0 {
                return bad(at("min_devices"), Invalid::Zero);
            }
            if stage.max_duration == 0 {
                return bad(at("max_duration"), Invalid::Zero);
            }
            if stage.min_duration > stage.max_duration {
                return bad(
                    at("min_duration"),
                    Invalid::MinOverMax {
                        min: stage.min_duration,
                        max: stage.max_duration,
                    },
                );
            }
            let mut kinds = BTreeSet::new();
            for (g, gate) in stage.gates.iter().enumerate() {
                let at = |f: &str| format!("stage[{i}].gate[{g}].{f}");
                if !kinds.insert(gate.kind) {
                    return bad(at("kind"), Invalid::DuplicateGate(gate.kind));
                }
                let (min, max) = match gate.kind {
                    GateKind::ShadowAgreement => (0.0, 1.0),
                    GateKind::ErrorRate | GateKind::Accuracy | GateKind::Confidence => (0.0, 1.0),
                    GateKind::Latency | GateKind::Drift => (0.0, 100.0),
                };
                let t = gate.tolerance();
                if !(t.is_finite() && t >= min && t <= max) {
                    return bad(at("tolerance"), Invalid::OutOfRange { found: t, min, max });
                }
                if !(gate.alpha > 0.0 && gate.alpha < 0.5) {
                    return bad(
                        at("alpha"),
                        Invalid::OutOfRange {
                            found: gate.alpha,
                            min: 0.0,
                            max: 0.5,
                        },
                    );
                }
                if gate.min_count == 0 {
                    return bad(at("min_count"), Invalid::Zero);
                }
                if !gate.columns.is_empty() && gate.kind != GateKind::Drift {
                    return bad(at("columns"), Invalid::ColumnsOutsideDrift);
                }
            }
        }
        Ok(())
    }
}

/// Numbers in a plan: `percent = 25` and `percent = 25.0` alike.
mod number {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(i64),
        Float(f64),
    }

    pub(super) fn float<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(match Raw::deserialize(d)? {
            Raw::Int(i) => i as f64,
            Raw::Float(f) => f,
        })
    }

    /// `null` (how a plan inside a JSON snapshot writes an absent number)
    /// is `None`.
    pub(super) fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Ok(Option::<Raw>::deserialize(d)?.map(|r| match r {
            Raw::Int(i) => i as f64,
            Raw::Float(f) => f,
        }))
    }
}

/// Durations in a plan: integer seconds, or text with a unit suffix
/// (`90s`, `15m`, `2h`, `1d`). Written back as integer seconds.
mod duration {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }

    pub(super) fn serialize<S: Serializer>(secs: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*secs)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(s),
            Raw::Text(t) => parse(&t).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "duration {t:?} is not seconds or a number with s, m, h or d"
                ))
            }),
        }
    }

    pub(super) fn parse(text: &str) -> Option<u64> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit())?;
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().ok()?;
        let scale = match unit.trim() {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => return None,
        };
        number.checked_mul(scale)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PLAN: &str = r#"
        name = "digits 1.1"
        [[stage]]
        percent = 10
        min_devices = 2
        max_duration = "2h"
        [[stage.gate]]
        kind = "latency"
        tolerance = 0.2
        [[stage.gate]]
        kind = "drift"
        columns = ["pixel_0"]
        [[stage]]
        percent = 100
        min_duration = 900
        max_duration = "1d"
    "#;

    #[test]
    fn a_plan_parses_with_defaults_and_round_trips() {
        let plan = Plan::from_toml(PLAN).unwrap();
        assert_eq!(plan.stages.len(), 2);
        let s = &plan.stages[0];
        assert_eq!(
            (s.max_duration, s.min_windows, s.min_duration),
            (7_200, 1, 0)
        );
        assert_eq!(s.gates[0].tolerance(), 0.2);
        assert_eq!(s.gates[1].tolerance(), 0.2);
        assert!(!s.gates[0].is_optional());
        assert_eq!(plan.stages[1].max_duration, 86_400);
        assert_eq!(Plan::from_toml(&plan.to_toml().unwrap()).unwrap(), plan);
    }

    #[test]
    fn errors_name_the_field() {
        let field = |text: &str| match Plan::from_toml(text) {
            Err(PlanError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let shrink = "[[stage]]\npercent = 50\nmax_duration = 60\n[[stage]]\npercent = 10\nmax_duration = 60\n";
        assert_eq!(field(shrink), "stage[1].percent");
        let both = "[[stage]]\npercent = 5\ndevices = 2\nmax_duration = 60\n";
        assert_eq!(field(both), "stage[0].percent");
        let tol = "[[stage]]\ndevices = 2\nmax_duration = 60\n[[stage.gate]]\nkind = \"accuracy\"\ntolerance = 2.0\n";
        assert_eq!(field(tol), "stage[0].gate[0].tolerance");
        let dup = "[[stage]]\ndevices = 2\nmax_duration = 60\n[[stage.gate]]\nkind = \"drift\"\n[[stage.gate]]\nkind = \"drift\"\n";
        assert_eq!(field(dup), "stage[0].gate[1].kind");
        let minmax = "[[stage]]\ndevices = 2\nmin_duration = \"2h\"\nmax_duration = \"1h\"\n";
        assert_eq!(field(minmax), "stage[0].min_duration");
        assert_eq!(field("stage = []"), "stage");
        let shadow_last = "[[stage]]\ndevices = 2\nmax_duration = 60\nmode = \"shadow\"\n";
        assert_eq!(field(shadow_last), "stage[0].mode");
        let unknown = "[[stage]]\ndevices = 2\nmax_duration = 60\ncolour = 1\n";
        let err = Plan::from_toml(unknown).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
        let unit = "[[stage]]\ndevices = 2\nmax_duration = \"2 weeks\"\n";
        assert!(matches!(Plan::from_toml(unit), Err(PlanError::Parse(_))));
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(duration::parse("90s"), Some(90));
        assert_eq!(duration::parse("15m"), Some(900));
        assert_eq!(duration::parse("2h"), Some(7_200));
        assert_eq!(duration::parse("1d"), Some(86_400));
        assert_eq!(duration::parse("h"), None);
        assert_eq!(duration::parse("3w"), None);
    }
}
