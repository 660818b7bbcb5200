//! Gates: each compares the canary cohort's merged profile with the
//! control's (or, for drift, with the new version's reference) and says
//! pass, fail or inconclusive, with its statistic and error bound.
//!
//! The statistics are outpost-telemetry's:
//! - latency: [`canary_judge`] on the merged latency histograms (relative
//!   scale, Hodges-Lehmann shift with the histogram's error in the bounds);
//! - error rate: the anytime-valid [`SequentialCanary`] confidence sequence
//!   on the difference of error rates, so looking at every evaluation does
//!   not inflate the false-halt rate;
//! - confidence: [`canary_judge`] on the confidence histograms (absolute
//!   scale, lower is worse); the histogram's bin width is added to both
//!   bounds, since replacing each value by its bin's midpoint moves every
//!   pairwise difference by at most one bin width;
//! - accuracy: [`accuracy_difference`] of the feedback confusion matrices;
//! - drift: [`psi`] (exact bins) per column, [`kolmogorov_smirnov`]
//!   (sketches, error bound included) reported beside it;
//! - shadow agreement: the agreement rate with a Hoeffding bound (valid
//!   at any sample size; telemetry has no one-sample proportion test).
//!
//! Design: Fail and Pass are both decisions at level α: Fail when the
//! canary is worse than the tolerance with confidence (the lower bound of
//! its regression is above the tolerance), Pass when it is not worse by
//! more than the tolerance with confidence (the upper bound is below it).
//! Accuracy and drift decide on significance and magnitude together (the
//! telemetry verdict is significant, and the estimate is past the
//! tolerance), as PSI does.

use outpost_telemetry::{
    CONFIDENCE_BINS, CanaryInconclusive, CanaryOptions, CanaryReport, CanaryVerdict, Cohort,
    CohortSums, Direction, DriftOptions, Inconclusive, Profile, ReferenceProfile, Scale,
    SequentialCanary, SequentialOptions, Statistic, Verdict, accuracy_difference, canary_judge,
    kolmogorov_smirnov, psi,
};
use serde::{Deserialize, Serialize};

use super::plan::{GateKind, GateSpec};

/// A gate's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateVerdict {
    Pass,
    Fail,
    /// Not decided yet: more data, or a tighter interval, would decide.
    Inconclusive,
}

/// One gate's report, as `outpost rollout status` shows it. Non-finite
/// numbers (an interval not yet bounded) are `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateReport {
    pub gate: GateKind,
    pub verdict: GateVerdict,
    /// Whether an inconclusive verdict holds the stage.
    pub optional: bool,
    /// The estimate: regression of the canary (latency: relative; error
    /// rate, confidence, accuracy: absolute, positive = worse), the largest
    /// PSI (drift), the agreement rate (shadow).
    pub statistic: Option<f64>,
    /// Largest difference between `statistic` and the same statistic on
    /// the raw observations (summaries' error).
    pub error_bound: Option<f64>,
    /// Confidence bounds of the estimate at the gate's α, error bound included.
    pub lower: Option<f64>,
    pub upper: Option<f64>,
    pub p_value: Option<f64>,
    /// What the verdict compared with.
    pub tolerance: f64,
    /// Observations in each cohort (requests, labels, or shadow comparisons).
    pub n_canary: u64,
    pub n_control: u64,
    /// Why inconclusive, or what decided (e.g. the drifting column).
    pub detail: String,
}

/// What the gates look at.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The canary cohort's windows in this stage, merged.
    pub canary: Option<&'a Profile>,
    /// The control cohort's windows in this stage (or the baseline), merged.
    pub control: Option<&'a Profile>,
    /// The new version's reference profile.
    pub reference: &'a ReferenceProfile,
    /// Shadow comparisons and agreements, summed.
    pub shadow: (u64, u64),
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

impl GateReport {
    fn empty(spec: &GateSpec, verdict: GateVerdict, detail: impl Into<String>) -> Self {
        GateReport {
            gate: spec.kind,
            verdict,
            optional: spec.is_optional(),
            statistic: None,
            error_bound: None,
            lower: None,
            upper: None,
            p_value: None,
            tolerance: spec.tolerance(),
            n_canary: 0,
            n_control: 0,
            detail: detail.into(),
        }
    }

    /// Whether this report keeps the stage from passing.
    pub fn holds(&self) -> bool {
        match self.verdict {
            GateVerdict::Pass => false,
            GateVerdict::Fail => true,
            GateVerdict::Inconclusive => !self.optional,
        }
    }
}

/// Evaluates one gate.
pub fn evaluate(spec: &GateSpec, evidence: &Evidence<'_>) -> GateReport {
    if spec.kind == GateKind::ShadowAgreement {
        return shadow(spec, evidence.shadow);
    }
    let Some(canary) = evidence.canary else {
        return GateReport::empty(spec, GateVerdict::Inconclusive, "no canary window yet");
    };
    if spec.kind == GateKind::Drift {
        return drift(spec, canary, evidence.reference);
    }
    let Some(control) = evidence.control else {
        return GateReport::empty(spec, GateVerdict::Inconclusive, "no control window yet");
    };
    let mut report = match spec.kind {
        GateKind::Latency => latency(spec, control, canary),
        GateKind::ErrorRate => error_rate(spec, control, canary),
        GateKind::Confidence => confidence(spec, control, canary),
        GateKind::Accuracy => accuracy(spec, control, canary),
        GateKind::Drift | GateKind::ShadowAgreement => {
            GateReport::empty(spec, GateVerdict::Inconclusive, "")
        }
    };
    report.optional = spec.is_optional();
    report
}

fn canary_options(spec: &GateSpec, direction: Direction, scale: Scale) -> CanaryOptions {
    CanaryOptions {
        direction,
        scale,
        tolerance: spec.tolerance(),
        alpha: spec.alpha,
        min_count: spec.min_count,
    }
}

fn from_canary_report(spec: &GateSpec, r: &CanaryReport, widen: f64, n: (u64, u64)) -> GateReport {
    let t = spec.tolerance();
    let (lower, upper) = (r.lower - widen, r.upper + widen);
    let (verdict, detail) = match r.verdict {
        CanaryVerdict::Inconclusive(CanaryInconclusive::NotEnoughData {
            control,
            canary,
            needed,
        }) => (
            GateVerdict::Inconclusive,
            format!("not enough data: control {control}, canary {canary}, need {needed} each"),
        ),
        _ if lower > t => (
            GateVerdict::Fail,
            format!("canary worse by more than {t}: lower bound {lower:.4}"),
        ),
        _ if upper < t => (
            GateVerdict::Pass,
            format!("not worse by more than {t}: upper bound {upper:.4}"),
        ),
        _ => (
            GateVerdict::Inconclusive,
            format!("interval [{lower:.4}, {upper:.4}] holds the tolerance {t}"),
        ),
    };
    GateReport {
        gate: spec.kind,
        verdict,
        optional: spec.is_optional(),
        statistic: finite(r.regression),
        error_bound: finite(r.error_bound + widen),
        lower: finite(lower),
        upper: finite(upper),
        p_value: finite(r.p_value),
        tolerance: t,
        n_canary: n.1,
        n_control: n.0,
        detail,
    }
}

fn judged(spec: &GateSpec, result: Result<GateReport, String>) -> GateReport {
    result.unwrap_or_else(|e| GateReport::empty(spec, GateVerdict::Inconclusive, e))
}

fn latency(spec: &GateSpec, control: &Profile, canary: &Profile) -> GateReport {
    let (x, y) = (
        Cohort::from_latency(&control.latency),
        Cohort::from_latency(&canary.latency),
    );
    let options = canary_options(spec, Direction::HigherIsWorse, Scale::Relative);
    judged(
        spec,
        canary_judge(&x, &y, &options)
            .map(|r| from_canary_report(spec, &r, 0.0, (x.n(), y.n())))
            .map_err(|e| e.to_string()),
    )
}

fn confidence(spec: &GateSpec, control: &Profile, canary: &Profile) -> GateReport {
    let width = 1.0 / CONFIDENCE_BINS as f64;
    let values = |p: &Profile| -> Vec<f64> {
        p.confidence
            .counts()
            .iter()
            .enumerate()
            .flat_map(|(i, &c)| {
                std::iter::repeat_n((i as f64 + 0.5) * width, usize::try_from(c).unwrap_or(0))
            })
            .collect()
    };
    let (x, y) = (
        Cohort::from_values(&values(control)),
        Cohort::from_values(&values(canary)),
    );
    let options = canary_options(spec, Direction::LowerIsWorse, Scale::Absolute);
    judged(
        spec,
        canary_judge(&x, &y, &options)
            .map(|r| from_canary_report(spec, &r, width, (x.n(), y.n())))
            .map_err(|e| e.to_string()),
    )
}

fn error_rate(spec: &GateSpec, control: &Profile, canary: &Profile) -> GateReport {
    let t = spec.tolerance();
    let (n, m) = (control.requests, canary.requests);
    let mut report = GateReport::empty(spec, GateVerdict::Inconclusive, "");
    report.n_control = n;
    report.n_canary = m;
    let rate = |e: u64, n: u64| if n == 0 { 0.0 } else { e as f64 / n as f64 };
    report.statistic = Some(rate(canary.errors, m) - rate(control.errors, n));
    report.error_bound = Some(0.0);
    if n < spec.min_count || m < spec.min_count {
        report.detail = format!(
            "not enough data: control {n}, canary {m}, need {} each",
            spec.min_count
        );
        return report;
    }
    if canary.errors == 0 {
        // No failure at all: the normal approximation has no variance to
        // work with, but the rule of three bounds the canary's rate (and so
        // its excess over a non-negative control rate) by 3/m at 95 %;
        // in general −ln(α)/m.
        let upper = -spec.alpha.ln() / m as f64;
        report.upper = Some(upper);
        report.lower = Some(-rate(control.errors, n));
        (report.verdict, report.detail) = if upper < t {
            (
                GateVerdict::Pass,
                format!("no canary errors in {m} requests"),
            )
        } else {
            (
                GateVerdict::Inconclusive,
                format!("no canary errors yet; {m} requests bound the rate by {upper:.4} only"),
            )
        };
        return report;
    }
    let options = SequentialOptions {
        direction: Direction::HigherIsWorse,
        alpha: spec.alpha,
        min_count: spec.min_count,
        ..SequentialOptions::default()
    };
    let mut test = match SequentialCanary::new(options) {
        Ok(test) => test,
        Err(e) => {
            report.detail = e.to_string();
            return report;
        }
    };
    // Design: one look at the cumulative sums. The mixture likelihood ratio
    // is a martingale in the cumulative data, so its confidence sequence is
    // valid at every evaluation at once, however often we look, and the
    // state is rebuilt from the profiles after a restart.
    let r = test.update(
        &CohortSums::from_errors(n, control.errors),
        &CohortSums::from_errors(m, canary.errors),
    );
    report.statistic = finite(r.difference);
    report.lower = finite(r.lower);
    report.upper = finite(r.upper);
    report.p_value = finite(r.p_value);
    (report.verdict, report.detail) = if r.lower > t {
        (
            GateVerdict::Fail,
            format!(
                "error rate worse by more than {t}: lower bound {:.4}",
                r.lower
            ),
        )
    } else if r.upper < t {
        (
            GateVerdict::Pass,
            format!("not worse by more than {t}: upper bound {:.4}", r.upper),
        )
    } else {
        (
            GateVerdict::Inconclusive,
            format!(
                "interval [{:.4}, {:.4}] holds the tolerance {t}",
                r.lower, r.upper
            ),
        )
    };
    report
}

fn drift_options(spec: &GateSpec) -> DriftOptions {
    DriftOptions {
        alpha: spec.alpha,
        min_count: spec.min_count,
        psi_threshold: spec.tolerance(),
        ..DriftOptions::default()
    }
}

fn accuracy(spec: &GateSpec, control: &Profile, canary: &Profile) -> GateReport {
    let t = spec.tolerance();
    let mut report = GateReport::empty(spec, GateVerdict::Inconclusive, "");
    report.n_control = control.feedback.total();
    report.n_canary = canary.feedback.total();
    let s = match accuracy_difference(&control.feedback, &canary.feedback, &drift_options(spec)) {
        Ok(s) => s,
        Err(e) => {
            report.detail = e.to_string();
            return report;
        }
    };
    let regression = -s.value;
    report.statistic = Some(regression);
    report.error_bound = Some(s.error_bound);
    report.p_value = s.p_value;
    (report.verdict, report.detail) = match s.verdict {
        Verdict::Inconclusive(_) => (
            GateVerdict::Inconclusive,
            format!(
                "not enough labels: control {}, canary {}, need {} each",
                report.n_control, report.n_canary, spec.min_count
            ),
        ),
        Verdict::Drift if regression > t => (
            GateVerdict::Fail,
            format!(
                "accuracy {:.1} points lower, significant",
                regression * 100.0
            ),
        ),
        _ if regression <= t => (
            GateVerdict::Pass,
            format!("accuracy difference {:+.4} within {t}", s.value),
        ),
        _ => (
            GateVerdict::Inconclusive,
            format!("accuracy {:.4} lower but not significant yet", regression),
        ),
    };
    report
}

/// Per-column drift of `profile` against `reference`: (column, PSI, KS).
pub(crate) fn column_drift<'r>(
    reference: &'r ReferenceProfile,
    profile: &Profile,
    columns: &[String],
    options: &DriftOptions,
) -> Vec<(&'r str, Option<Statistic>, Option<Statistic>)> {
    reference
        .columns()
        .iter()
        .zip(&profile.columns)
        .filter(|(r, _)| columns.is_empty() || columns.iter().any(|c| c == r.name()))
        .map(|(r, p)| {
            let psi = psi(r.bins(), &p.bins(), options).ok();
            let ks = match (r.kind(), p.kll()) {
                (outpost_telemetry::ReferenceKind::Numeric(n), Some(kll)) => {
                    kolmogorov_smirnov(n.kll(), kll, options).ok()
                }
                _ => None,
            };
            (r.name(), psi, ks)
        })
        .collect()
}

fn drift(spec: &GateSpec, canary: &Profile, reference: &ReferenceProfile) -> GateReport {
    let mut report = GateReport::empty(spec, GateVerdict::Inconclusive, "");
    report.n_canary = canary.requests;
    if canary.check_against(reference).is_err() {
        report.detail = "canary windows were not counted on this reference".into();
        return report;
    }
    let columns = column_drift(reference, canary, &spec.columns, &drift_options(spec));
    if columns.is_empty() {
        report.detail = "no column to judge".into();
        return report;
    }
    let drifted: Vec<_> = columns
        .iter()
        .filter(|(_, p, _)| p.is_some_and(|p| p.verdict == Verdict::Drift))
        .collect();
    let waiting = columns.iter().any(|(_, p, _)| {
        !matches!(
            p.map(|p| p.verdict),
            Some(
                Verdict::Drift | Verdict::NoDrift | Verdict::Inconclusive(Inconclusive::Degenerate)
            )
        )
    });
    let worst = columns
        .iter()
        .filter_map(|(name, p, ks)| p.map(|p| (name, p, ks)))
        .max_by(|a, b| a.1.value.total_cmp(&b.1.value));
    if let Some((name, p, ks)) = worst {
        report.statistic = finite(p.value);
        report.error_bound = Some(p.error_bound);
        report.p_value = p.p_value;
        report.detail = format!("largest PSI {:.4} on {name}", p.value);
        if let Some(ks) = ks {
            report.detail += &format!(
                "; KS {:.4} ± {:.4} (critical {:.4})",
                ks.value, ks.error_bound, ks.threshold
            );
        }
    }
    report.verdict = if !drifted.is_empty() {
        let names: Vec<&str> = drifted.iter().map(|(n, _, _)| *n).collect();
        report.detail = format!("drift on {}; {}", names.join(", "), report.detail);
        GateVerdict::Fail
    } else if waiting {
        report.detail = format!("not enough data; {}", report.detail);
        GateVerdict::Inconclusive
    } else {
        GateVerdict::Pass
    };
    report
}

fn shadow(spec: &GateSpec, (compared, agreed): (u64, u64)) -> GateReport {
    let t = spec.tolerance();
    let mut report = GateReport::empty(spec, GateVerdict::Inconclusive, "");
    report.n_canary = compared;
    if compared < spec.min_count {
        report.detail = format!(
            "not enough shadow comparisons: {compared}, need {}",
            spec.min_count
        );
        return report;
    }
    let rate = agreed.min(compared) as f64 / compared as f64;
    // Hoeffding: P(p̂ − p ≥ ε) ≤ exp(−2nε²), one-sided at level α.
    let epsilon = ((1.0 / spec.alpha).ln() / (2.0 * compared as f64)).sqrt();
    report.statistic = Some(rate);
    report.error_bound = Some(0.0);
    report.lower = Some((rate - epsilon).max(0.0));
    report.upper = Some((rate + epsilon).min(1.0));
    (report.verdict, report.detail) = if rate + epsilon < t {
        (
            GateVerdict::Fail,
            format!(
                "agreement {rate:.4} below {t} (upper bound {:.4})",
                rate + epsilon
            ),
        )
    } else if rate - epsilon >= t {
        (
            GateVerdict::Pass,
            format!("agreement {rate:.4} at least {t}"),
        )
    } else {
        (
            GateVerdict::Inconclusive,
            format!("agreement {rate:.4} ± {epsilon:.4} holds {t}"),
        )
    };
    report
}
