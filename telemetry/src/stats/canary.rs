//! The canary judge: is the canary cohort worse than the control cohort on
//! one metric by more than a tolerance?
//!
//! Method (a fixed-sample test: look once, or use [`super::SequentialCanary`]
//! to look after every window):
//! - Mann-Whitney: `AUC(d) = P(X < Y − d) + ½·P(X = Y − d)`, X control, Y
//!   canary, after orienting the metric so that larger is worse (and taking
//!   logs on the [`Scale::Relative`] scale). Under "the canary is the control
//!   shifted by d", `AUC(d)` has mean ½ and standard deviation
//!   `σ = √((n+m+1)/(12·n·m))` (Mann and Whitney, 1947; without the tie
//!   correction, which only shrinks σ, so ties make the judge conservative).
//! - Hodges-Lehmann location shift: the `d` where `AUC(d)` crosses ½, i.e.
//!   the median of all pairwise differences `Y − X` (Hodges and Lehmann,
//!   1963). Its one-sided (1 − α) confidence bounds invert the test (Moses;
//!   Lehmann, *Nonparametrics*, 1975, §2.6): `L` where `AUC` crosses
//!   `½ + z₁₋α·σ`, `U` where it crosses `½ − z₁₋α·σ`.
//! - Summary error, added to every bound so that summaries can only make the
//!   judge more cautious: a KLL sketch's rank errors ε₁ + ε₂ move `AUC(d)`
//!   by at most that much for any d, so the targets above move out by ε₁ + ε₂;
//!   a latency histogram moves each value by a factor in `[1 − α, 1 + α]`,
//!   so each pairwise log-difference moves by at most `2δ`,
//!   `δ = −ln(1 − α)`, and the bounds move out by 2δ (on the absolute scale
//!   `δ = α·max|value|`).
//!
//! Verdict, with `T` the tolerance: **Fail** when `L > T` (the canary is
//! worse by more than T: a one-sided test at level α of "regression ≤ T");
//! **Pass** when `U < T` (it is not worse by more than T, also at level α);
//! otherwise **Inconclusive**: the interval `[L, U]` still holds T, and it
//! narrows like `1/√n` as windows arrive.

use super::cohort::{Cohort, Sample, auc, crossing, order_probabilities};
use super::{normal_cdf, normal_quantile};
use crate::error::StatsError;

/// Which way a metric gets worse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Direction {
    /// Latency, error rate, memory: higher is worse.
    HigherIsWorse,
    /// Confidence, accuracy, a score: lower is worse.
    LowerIsWorse,
}

/// How a shift and the tolerance are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scale {
    /// Canary minus control, in the metric's units.
    Absolute,
    /// As a fraction: 0.1 is "10 % worse" (canary/control − 1 when higher is
    /// worse, control/canary − 1 when lower is worse). Computed on logs, so
    /// every value must be positive. The natural scale for latency.
    Relative,
}

/// Settings of [`canary_judge`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CanaryOptions {
    /// Which way the metric gets worse (default higher is worse).
    pub direction: Direction,
    /// Scale of the shift and the tolerance (default relative).
    pub scale: Scale,
    /// Largest acceptable regression, ≥ 0, on `scale` (default 0.05: 5 % worse).
    pub tolerance: f64,
    /// Significance level α of each one-sided decision (default 0.05).
    pub alpha: f64,
    /// Fewest observations in each cohort before any verdict (default 100).
    pub min_count: u64,
}

impl Default for CanaryOptions {
    fn default() -> Self {
        Self {
            direction: Direction::HigherIsWorse,
            scale: Scale::Relative,
            tolerance: 0.05,
            alpha: 0.05,
            min_count: 100,
        }
    }
}

/// Why the judge has no verdict yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CanaryInconclusive {
    /// A cohort has fewer than [`CanaryOptions::min_count`] observations.
    NotEnoughData {
        /// Observations in the control cohort.
        control: u64,
        /// Observations in the canary cohort.
        canary: u64,
        /// The minimum per cohort.
        needed: u64,
    },
    /// The confidence interval `[lower, upper]` still contains the
    /// tolerance: wait for more windows (it narrows like `1/√n`).
    Undecided,
}

/// What the judge decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CanaryVerdict {
    /// Not worse than control by more than the tolerance.
    Pass,
    /// Worse than control by more than the tolerance.
    Fail,
    /// Not decided yet.
    Inconclusive(CanaryInconclusive),
}

/// The judge's report: the estimate with its error bound, the confidence
/// bounds, the test, and the verdict. Shifts are on [`CanaryOptions::scale`],
/// positive when the canary is worse.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CanaryReport {
    /// Hodges-Lehmann estimate of the canary's regression.
    pub regression: f64,
    /// Largest difference between `regression` and the same estimate on the
    /// raw observations (0 for raw values; from ε or α for summaries).
    pub error_bound: f64,
    /// One-sided (1 − α) lower confidence bound, error bound included.
    pub lower: f64,
    /// One-sided (1 − α) upper confidence bound, error bound included.
    pub upper: f64,
    /// `P(control < canary) + ½·P(tie)` on the oriented metric: above ½
    /// when the canary tends to be worse.
    pub auc: f64,
    /// Bound on the AUC's summary error.
    pub auc_error: f64,
    /// One-sided p-value of "regression ≤ tolerance"; Fail when below α.
    pub p_value: f64,
    /// The tolerance the verdict compared with.
    pub tolerance: f64,
    /// The decision.
    pub verdict: CanaryVerdict,
}

impl CanaryOptions {
    fn check(&self) -> Result<(), StatsError> {
        if !(self.alpha > 0.0 && self.alpha < 0.5) {
            return Err(StatsError::Option("canary alpha must be in (0, 0.5)"));
        }
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return Err(StatsError::Option(
                "canary tolerance must be finite and non-negative",
            ));
        }
        Ok(())
    }
}

/// Judges a canary cohort against a control cohort (see the module docs).
///
/// # Errors
/// [`StatsError::Option`] for bad options; [`StatsError::NonPositive`] when
/// the scale is relative and a cohort holds a value ≤ 0.
pub fn canary_judge(
    control: &Cohort,
    canary: &Cohort,
    options: &CanaryOptions,
) -> Result<CanaryReport, StatsError> {
    options.check()?;
    let sign = match options.direction {
        Direction::HigherIsWorse => 1.0,
        Direction::LowerIsWorse => -1.0,
    };
    // Per-value error δ on the transformed scale, and the transform.
    let (x, y, delta, tolerance) = match options.scale {
        Scale::Absolute => {
            let delta = |c: &Cohort| {
                let max = c.items().iter().fold(0.0f64, |m, i| m.max(i.0.abs()));
                c.relative_error() * max
            };
            let d = delta(control).max(delta(canary));
            let (x, y) = (
                Sample::map(control, |v| sign * v),
                Sample::map(canary, |v| sign * v),
            );
            (x, y, d, options.tolerance)
        }
        Scale::Relative => {
            for (name, cohort) in [("control", control), ("canary", canary)] {
                if cohort.items().iter().any(|i| i.0 <= 0.0) {
                    return Err(StatsError::NonPositive { cohort: name });
                }
            }
            let d = [control, canary]
                .iter()
                .map(|c| -(1.0 - c.relative_error().min(0.5)).ln())
                .fold(0.0, f64::max);
            let (x, y) = (
                Sample::map(control, |v| sign * v.ln()),
                Sample::map(canary, |v| sign * v.ln()),
            );
            (x, y, d, options.tolerance.ln_1p())
        }
    };
    let e = control.rank_error() + canary.rank_error();
    let (n, m) = (control.n(), canary.n());
    let (nf, mf) = (n as f64, m as f64);

    let (a, b) = crossing(&x, &y, 0.5);
    let hl = 0.5 * (a + b);
    let sketch_error = if e > 0.0 {
        let (a_hi, _) = crossing(&x, &y, 0.5 + e);
        let (_, b_lo) = crossing(&x, &y, 0.5 - e);
        (hl - a_hi).max(b_lo - hl).max(0.0)
    } else {
        0.0
    };
    let hl_error = sketch_error + 2.0 * delta;
    let auc0 = auc(&x, &y, 0.0);
    let auc_error = e + if delta > 0.0 {
        // Pairs closer than 2δ may be in either order in the raw data.
        let (lt_low, eq_low) = order_probabilities(&x, &y, -2.0 * delta);
        let (lt_high, _) = order_probabilities(&x, &y, 2.0 * delta);
        (lt_low + eq_low - lt_high).max(0.0)
    } else {
        0.0
    };

    let to_scale = |v: f64| match options.scale {
        Scale::Absolute => v,
        Scale::Relative => v.exp_m1(),
    };
    let error_bound = match options.scale {
        Scale::Absolute => hl_error,
        Scale::Relative => hl.exp() * hl_error.exp_m1(),
    };
    if n < options.min_count.max(1) || m < options.min_count.max(1) {
        return Ok(CanaryReport {
            regression: to_scale(hl),
            error_bound,
            lower: f64::NEG_INFINITY,
            upper: f64::INFINITY,
            auc: auc0,
            auc_error,
            p_value: 1.0,
            tolerance: options.tolerance,
            verdict: CanaryVerdict::Inconclusive(CanaryInconclusive::NotEnoughData {
                control: n,
                canary: m,
                needed: options.min_count,
            }),
        });
    }

    let sigma = ((nf + mf + 1.0) / (12.0 * nf * mf)).sqrt();
    let z = normal_quantile(1.0 - options.alpha);
    let (lower, _) = crossing(&x, &y, 0.5 + z * sigma + e);
    let (_, upper) = crossing(&x, &y, 0.5 - z * sigma - e);
    let (lower, upper) = (lower - 2.0 * delta, upper + 2.0 * delta);
    // The decisions evaluate AUC at the tolerance directly (no bisection):
    // L > T ⟺ AUC(T + 2δ) > ½ + zσ + ε, and U < T ⟺ AUC(T − 2δ) < ½ − zσ − ε.
    let auc_fail = auc(&x, &y, tolerance + 2.0 * delta) - e;
    let auc_pass = auc(&x, &y, tolerance - 2.0 * delta) + e;
    let p_value = (1.0 - normal_cdf((auc_fail - 0.5) / sigma)).clamp(0.0, 1.0);
    let verdict = if auc_fail > 0.5 + z * sigma {
        CanaryVerdict::Fail
    } else if auc_pass < 0.5 - z * sigma {
        CanaryVerdict::Pass
    } else {
        CanaryVerdict::Inconclusive(CanaryInconclusive::Undecided)
    };
    Ok(CanaryReport {
        regression: to_scale(hl),
        error_bound,
        lower: to_scale(lower),
        upper: to_scale(upper),
        auc: auc0,
        auc_error,
        p_value,
        tolerance: options.tolerance,
        verdict,
    })
}
