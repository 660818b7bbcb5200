//! Drift statistics. Every function returns a [`Statistic`]: the value, the
//! bound on its error, a p-value where one exists, and a [`Verdict`].
//!
//! `error_bound` bounds how far the reported value can be from the value
//! the same statistic would take on the raw samples: zero for the exact
//! fixed-bin statistics, the KLL rank errors for the sketch statistics.
//! Sampling uncertainty is what the p-value and the verdict account for.
//!
//! Exact, from fixed-bin counters ([`psi`], [`jensen_shannon`],
//! [`chi_square`]); from KLL sketches, with the sketch error added to every
//! decision bound ([`kolmogorov_smirnov`], [`wasserstein`], [`mann_whitney`]).
//!
//! Canary judgement: [`canary_judge`] compares a canary [`Cohort`] with a
//! control cohort on one metric (Mann-Whitney, Hodges-Lehmann shift,
//! tolerance band) and says pass, fail or not yet. [`SequentialCanary`] is
//! the anytime-valid option (mixture SPRT on means): look after every window.
//!
//! Ground truth: [`accuracy_difference`] compares the accuracy of two
//! [`crate::Confusion`] matrices (e.g. canary vs control feedback).
//!
//! Differentially private windows: [`psi_noisy`], [`jensen_shannon_noisy`] and [`chi_square_noisy`]
//! take bins noised by [`crate::LaplaceNoise`] and put the noise in the bound.

mod binned;
mod canary;
mod cohort;
mod feedback;
mod private;
mod sequential;
mod sketched;

pub use binned::{chi_square, jensen_shannon, psi};
pub use canary::{
    CanaryInconclusive, CanaryOptions, CanaryReport, CanaryVerdict, Direction, Scale, canary_judge,
};
pub use cohort::Cohort;
pub use feedback::accuracy_difference;
pub use private::{chi_square_noisy, jensen_shannon_noisy, psi_noisy};
pub use sequential::{CohortSums, SequentialCanary, SequentialOptions, SequentialReport};
pub use sketched::{kolmogorov_smirnov, mann_whitney, wasserstein};

use statrs::function::erf::{erfc, erfc_inv};

use crate::error::StatsError;

/// Which statistic a [`Statistic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Test {
    /// Population stability index (exact bins).
    Psi,
    /// Jensen-Shannon distance, base 2, in `[0, 1]` (exact bins).
    JensenShannon,
    /// Chi-square test of homogeneity (exact bins).
    ChiSquare,
    /// Two-sample Kolmogorov-Smirnov D (KLL).
    KolmogorovSmirnov,
    /// Wasserstein-1 distance in data units (KLL).
    Wasserstein,
    /// Mann-Whitney AUC, `P(X < Y) + ½·P(X = Y)` (KLL).
    MannWhitney,
    /// Accuracy difference from feedback, canary − control (two-proportion z-test).
    AccuracyDifference,
}

/// Why a statistic gives no verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inconclusive {
    /// A side has fewer observations than [`DriftOptions::min_count`]: wait
    /// for more windows.
    NotEnoughData,
    /// Fewer than two bins hold data: the distributions cannot differ in shape.
    Degenerate,
    /// The value is closer to the threshold than its error bound: a larger
    /// sketch `k` (or more data) would decide.
    WithinErrorBound,
}

/// The decision a statistic supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// The distributions differ, beyond sampling and sketch error.
    Drift,
    /// No difference that the test can see.
    NoDrift,
    /// Not decided yet.
    Inconclusive(Inconclusive),
}

/// A statistic with its error bound and verdict.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Statistic {
    /// Which statistic.
    pub test: Test,
    /// Its value.
    pub value: f64,
    /// Largest difference between `value` and the statistic on the raw samples.
    pub error_bound: f64,
    /// p-value under "same distribution", where the test has one.
    pub p_value: Option<f64>,
    /// What the verdict compared against: the magnitude threshold for PSI,
    /// JS and Wasserstein, the critical value (error bounds included) for KS
    /// and for `|AUC - ½|`, and α for chi-square.
    pub threshold: f64,
    /// The decision.
    pub verdict: Verdict,
}

/// Decision settings shared by the statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftOptions {
    /// Significance level α (default 0.05).
    pub alpha: f64,
    /// Fewest observations on each side for a verdict (default 100).
    pub min_count: u64,
    /// PSI at or above which a significant shift is drift (default 0.1, the
    /// usual "moderate shift" boundary: Siddiqi, *Credit Risk Scorecards*, 2006).
    pub psi_threshold: f64,
    /// Jensen-Shannon distance at or above which a significant shift is
    /// drift (default 0.1, about PSI 0.055).
    pub js_threshold: f64,
    /// Wasserstein-1 threshold in data units; `None` uses 0.1 × the
    /// reference's interquartile range.
    pub wasserstein_threshold: Option<f64>,
}

impl Default for DriftOptions {
    fn default() -> Self {
        Self {
            alpha: 0.05,
            min_count: 100,
            psi_threshold: 0.1,
            js_threshold: 0.1,
            wasserstein_threshold: None,
        }
    }
}

impl DriftOptions {
    pub(crate) fn check(&self) -> Result<(), StatsError> {
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(StatsError::Option("alpha must be in (0, 1)"));
        }
        let thresholds = [self.psi_threshold, self.js_threshold];
        let wasserstein = self.wasserstein_threshold.unwrap_or(0.0);
        if thresholds
            .iter()
            .chain([&wasserstein])
            .any(|t| !(t.is_finite() && *t >= 0.0))
        {
            return Err(StatsError::Option(
                "thresholds must be finite and non-negative",
            ));
        }
        Ok(())
    }
}

/// Standard normal CDF Φ(x) = ½·erfc(−x/√2).
pub(crate) fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// Standard normal quantile Φ⁻¹(p) = −√2·erfc⁻¹(2p).
pub(crate) fn normal_quantile(p: f64) -> f64 {
    -std::f64::consts::SQRT_2 * erfc_inv(2.0 * p)
}

/// A verdict-less statistic for inputs too small to decide on.
pub(crate) fn inconclusive(
    test: Test,
    value: f64,
    error_bound: f64,
    why: Inconclusive,
) -> Statistic {
    Statistic {
        test,
        value,
        error_bound,
        p_value: None,
        threshold: f64::NAN,
        verdict: Verdict::Inconclusive(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_helpers_match_tables() {
        assert!((normal_cdf(1.959_963_985) - 0.975).abs() < 1e-9);
        assert!((normal_quantile(0.975) - 1.959_963_985).abs() < 1e-8);
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-15);
    }

    #[test]
    fn options_are_checked() {
        assert!(DriftOptions::default().check().is_ok());
        let bad = DriftOptions {
            alpha: 1.0,
            ..Default::default()
        };
        assert!(bad.check().is_err());
        let bad = DriftOptions {
            psi_threshold: f64::NAN,
            ..Default::default()
        };
        assert!(bad.check().is_err());
    }
}
