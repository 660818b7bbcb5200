//! Anytime-valid canary test: a mixture sequential probability ratio test
//! (mSPRT) on the difference of the cohorts' means, which a rollout may
//! consult after every window without inflating its false-halt rate.
//!
//! Lindon, Sanden and Shirikian, "Rapid Regression Detection in Software
//! Deployments through Sequential Testing" (KDD 2022), monitor canaries with
//! mixture SPRTs and always-valid p-values. The form used here is the
//! normal-mixture SPRT for a difference in means (Robbins, 1970; Johari,
//! Pekelis and Walsh, "Always Valid Inference", Operations Research 2022).
//! With `δ̂ = ȳ − x̄` (canary minus control, oriented so positive is worse),
//! its variance `V = s²_x/n + s²_y/m`, and a `N(0, τ²)` mixture over the
//! true difference,
//!
//! ```text
//! Λ = √(V / (V + τ²)) · exp( τ²·δ̂² / (2·V·(V + τ²)) )
//! p_k = min(p_{k−1}, 1/Λ_k),  p_0 = 1
//! ```
//!
//! `Λ` is the ratio of `N(δ̂; 0, V + τ²)` to `N(δ̂; 0, V)`. In information
//! time `t = 1/V`, `δ̂·t` is a Brownian motion with drift δ, and `Λ` is
//! Robbins' mixture martingale under δ = 0, so by Ville's inequality
//! `P(∃k: Λ_k ≥ 1/α) ≤ α`: the p-value is valid at every look at once.
//! The always-valid (1 − α) confidence sequence is
//! `δ̂ ± √( 2V(V+τ²)/τ² · (ln(1/α) + ½·ln((V+τ²)/V)) )`, intersected over looks.
//!
//! Assumptions, stated: the variances are plug-in estimates (the guarantee is
//! asymptotic, hence [`SequentialOptions::min_count`] before the first look),
//! and means of a few hundred requests are close to normal (the central
//! limit theorem; heavy tails need more). τ is set in units of the pooled
//! standard deviation, near the smallest regression worth halting for.

use super::canary::{CanaryInconclusive, CanaryVerdict, Direction};
use crate::error::StatsError;
use crate::latency::LatencyHistogram;

/// Count, sum and sum of squares of one cohort's metric: what one window
/// contributes (sans-IO: the caller reads them from profiles or counters).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CohortSums {
    /// Observations.
    pub count: u64,
    /// Sum of the values.
    pub sum: f64,
    /// Sum of the squared values.
    pub sum_squares: f64,
}

impl CohortSums {
    /// Sums of raw values; non-finite values are skipped.
    pub fn from_values(values: &[f64]) -> Self {
        values
            .iter()
            .filter(|v| v.is_finite())
            .fold(Self::default(), |acc, &v| Self {
                count: acc.count + 1,
                sum: acc.sum + v,
                sum_squares: acc.sum_squares + v * v,
            })
    }

    /// An error rate: `errors` ones among `requests` Bernoulli values (exact).
    pub fn from_errors(requests: u64, errors: u64) -> Self {
        let errors = errors.min(requests) as f64;
        Self {
            count: requests,
            sum: errors,
            sum_squares: errors,
        }
    }

    /// Latency in microseconds: the exact sum, and a sum of squares from
    /// the bucket representatives (each within relative α, so each square
    /// within a factor `(1 ± α)²`).
    pub fn from_latency(histogram: &LatencyHistogram) -> Self {
        let sum_squares = histogram
            .buckets()
            .map(|(index, count)| histogram.representative_micros(index).powi(2) * count as f64)
            .sum();
        Self {
            count: histogram.count(),
            sum: histogram.sum_nanos() as f64 / 1e3,
            sum_squares,
        }
    }

    /// Adds another window's sums.
    pub fn add(&mut self, other: &Self) {
        self.count = self.count.saturating_add(other.count);
        self.sum += other.sum;
        self.sum_squares += other.sum_squares;
    }

    fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }

    /// Unbiased sample variance (count ≥ 2), never negative.
    fn variance(&self) -> f64 {
        let n = self.count as f64;
        ((self.sum_squares - self.sum * self.sum / n) / (n - 1.0)).max(0.0)
    }
}

/// Settings of [`SequentialCanary`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SequentialOptions {
    /// Which way the metric gets worse (default higher is worse).
    pub direction: Direction,
    /// Level α: the chance of ever failing an equal canary (default 0.05).
    pub alpha: f64,
    /// Mixture standard deviation τ in pooled standard deviations of the
    /// metric (default 0.1): power is best near regressions of this size.
    pub mixture_sd: f64,
    /// Largest acceptable regression as a fraction of the control mean,
    /// for Pass (default 0.05).
    pub tolerance: f64,
    /// Fewest observations per cohort before the first look (default 100).
    pub min_count: u64,
}

impl Default for SequentialOptions {
    fn default() -> Self {
        Self {
            direction: Direction::HigherIsWorse,
            alpha: 0.05,
            mixture_sd: 0.1,
            tolerance: 0.05,
            min_count: 100,
        }
    }
}

/// What one look at the sequential test says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SequentialReport {
    /// Canary mean minus control mean, positive when the canary is worse.
    pub difference: f64,
    /// ln Λ at this look.
    pub log_likelihood_ratio: f64,
    /// Always-valid p-value of "no difference".
    pub p_value: f64,
    /// Always-valid (1 − α) confidence sequence on `difference`.
    pub lower: f64,
    /// Upper end of the confidence sequence.
    pub upper: f64,
    /// Looks so far (windows given to [`SequentialCanary::update`]).
    pub looks: u64,
    /// Fail at `p ≤ α` with the canary worse; Pass when the sequence's upper
    /// end is below `tolerance × |control mean|`; both final once reached.
    pub verdict: CanaryVerdict,
}

/// The state of one sequential canary comparison: feed it each window's
/// sums ([`SequentialCanary::update`]) and act on the verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct SequentialCanary {
    options: SequentialOptions,
    control: CohortSums,
    canary: CohortSums,
    p_value: f64,
    lower: f64,
    upper: f64,
    looks: u64,
    decided: Option<CanaryVerdict>,
}

impl SequentialCanary {
    /// A fresh comparison.
    ///
    /// # Errors
    /// [`StatsError::Option`] for α outside (0, 1), a mixture sd or a
    /// tolerance that is not finite and positive (non-negative).
    pub fn new(options: SequentialOptions) -> Result<Self, StatsError> {
        if !(options.alpha > 0.0 && options.alpha < 1.0) {
            return Err(StatsError::Option("sequential alpha must be in (0, 1)"));
        }
        if !(options.mixture_sd.is_finite() && options.mixture_sd > 0.0) {
            return Err(StatsError::Option("mixture sd must be finite and positive"));
        }
        if !(options.tolerance.is_finite() && options.tolerance >= 0.0) {
            return Err(StatsError::Option(
                "sequential tolerance must be finite and non-negative",
            ));
        }
        Ok(Self {
            options,
            control: CohortSums::default(),
            canary: CohortSums::default(),
            p_value: 1.0,
            lower: f64::NEG_INFINITY,
            upper: f64::INFINITY,
            looks: 0,
            decided: None,
        })
    }

    /// Adds one window of each cohort and looks.
    pub fn update(&mut self, control: &CohortSums, canary: &CohortSums) -> SequentialReport {
        self.control.add(control);
        self.canary.add(canary);
        self.looks += 1;
        let sign = match self.options.direction {
            Direction::HigherIsWorse => 1.0,
            Direction::LowerIsWorse => -1.0,
        };
        let (x, y) = (&self.control, &self.canary);
        let needed = self.options.min_count.max(2);
        let difference = if x.count > 0 && y.count > 0 {
            sign * (y.mean() - x.mean())
        } else {
            0.0
        };
        let v = if x.count >= needed && y.count >= needed {
            x.variance() / x.count as f64 + y.variance() / y.count as f64
        } else {
            0.0
        };
        let waiting = CanaryVerdict::Inconclusive(CanaryInconclusive::NotEnoughData {
            control: x.count,
            canary: y.count,
            needed,
        });
        if !(v > 0.0 && v.is_finite()) {
            return self.report(difference, 0.0, self.decided.unwrap_or(waiting));
        }
        let tau2 = self.options.mixture_sd.powi(2) * 0.5 * (x.variance() + y.variance());
        let log_lambda =
            0.5 * (v / (v + tau2)).ln() + tau2 * difference * difference / (2.0 * v * (v + tau2));
        self.p_value = self.p_value.min((-log_lambda).exp().min(1.0));
        let radius = (2.0 * v * (v + tau2) / tau2
            * ((1.0 / self.options.alpha).ln() + 0.5 * ((v + tau2) / v).ln()))
        .sqrt();
        self.lower = self.lower.max(difference - radius);
        self.upper = self.upper.min(difference + radius);
        let verdict = self.decided.unwrap_or_else(|| {
            if self.p_value <= self.options.alpha && difference > 0.0 {
                CanaryVerdict::Fail
            } else if self.upper < self.options.tolerance * x.mean().abs() {
                CanaryVerdict::Pass
            } else {
                CanaryVerdict::Inconclusive(CanaryInconclusive::Undecided)
            }
        });
        if matches!(verdict, CanaryVerdict::Fail | CanaryVerdict::Pass) {
            self.decided = Some(verdict);
        }
        self.report(difference, log_lambda, verdict)
    }

    fn report(&self, difference: f64, log_lambda: f64, verdict: CanaryVerdict) -> SequentialReport {
        SequentialReport {
            difference,
            log_likelihood_ratio: log_lambda,
            p_value: self.p_value,
            lower: self.lower,
            upper: self.upper,
            looks: self.looks,
            verdict,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn likelihood_ratio_matches_the_closed_form_for_equal_sizes() {
        // Johari et al.'s paired form: n pairs, per-pair variance 2σ²:
        // Λ = √(2σ²/(2σ²+nτ²))·exp(n²τ²d²/(4σ²(2σ²+nτ²))).
        let control: Vec<f64> = (0..400).map(|i| f64::from(i % 20)).collect();
        let canary: Vec<f64> = control.iter().map(|v| v + 0.8).collect();
        let options = SequentialOptions {
            mixture_sd: 0.3,
            ..Default::default()
        };
        let mut test = SequentialCanary::new(options).unwrap();
        let report = test.update(
            &CohortSums::from_values(&control),
            &CohortSums::from_values(&canary),
        );
        let s2 = CohortSums::from_values(&control).variance();
        let (n, d, tau2) = (400.0, 0.8, 0.09 * s2);
        let expected = 0.5 * (2.0 * s2 / (2.0 * s2 + n * tau2)).ln()
            + n * n * tau2 * d * d / (4.0 * s2 * (2.0 * s2 + n * tau2));
        assert!((report.log_likelihood_ratio - expected).abs() < 1e-9);
        assert!((report.difference - 0.8).abs() < 1e-12);
        assert!(report.lower < 0.8 && 0.8 < report.upper);
        assert!((report.p_value - (-expected).exp().min(1.0)).abs() < 1e-12);
    }

    #[test]
    fn error_rates_and_waiting_for_data() {
        let mut test = SequentialCanary::new(SequentialOptions::default()).unwrap();
        let r = test.update(
            &CohortSums::from_errors(50, 1),
            &CohortSums::from_errors(50, 2),
        );
        assert!(matches!(
            r.verdict,
            CanaryVerdict::Inconclusive(CanaryInconclusive::NotEnoughData { needed: 100, .. })
        ));
        // 1 % vs 5 % errors over 2,000 requests each: a clear regression.
        let r = test.update(
            &CohortSums::from_errors(2_000, 20),
            &CohortSums::from_errors(2_000, 100),
        );
        assert_eq!(r.verdict, CanaryVerdict::Fail, "{r:?}");
        assert!(r.p_value <= 0.05 && r.difference > 0.03);
        // Final: a later window with no difference does not undo it.
        let r = test.update(
            &CohortSums::from_errors(100, 1),
            &CohortSums::from_errors(100, 1),
        );
        assert_eq!((r.verdict, r.looks), (CanaryVerdict::Fail, 3));
        assert!(
            SequentialCanary::new(SequentialOptions {
                mixture_sd: 0.0,
                ..Default::default()
            })
            .is_err()
        );
    }
}
