//! Exact statistics on fixed-bin counts (same edges on both sides).
//!
//! The counts are exact, so `error_bound` is 0. The p-values come from the
//! chi-square test of homogeneity and from the asymptotics of PSI and JS
//! that match it to second order: with `nₑ = n·m/(n+m)`,
//! `nₑ·PSI ≈ X²` (Yurdakul and Naranjo, "Statistical properties of the
//! population stability index", J. Risk Model Validation 14(4), 2020) and
//! `8·nₑ·JSD ≈ X²` (JSD in nats; the same Taylor expansion of KL divergence
//! around the mixture), each `~ χ²(B−1)` when nothing changed.
//!
//! PSI and JS report drift only when the shift is both significant (p < α)
//! and large enough to matter (at or above the threshold), so that big
//! windows do not flag negligible shifts and small windows do not flag noise.

use statrs::distribution::{ChiSquared, ContinuousCDF};

use super::{DriftOptions, Inconclusive, Statistic, Test, Verdict, inconclusive};
use crate::error::StatsError;

/// Counts on both sides, checked, with the bins where either side has data.
struct Pair {
    /// `(reference count, current count)` per bin with data.
    bins: Vec<(f64, f64)>,
    n: f64,
    m: f64,
}

impl Pair {
    fn new(reference: &[u64], current: &[u64]) -> Result<Self, StatsError> {
        if reference.len() != current.len() {
            return Err(StatsError::BinMismatch {
                left: reference.len(),
                right: current.len(),
            });
        }
        let bins: Vec<(f64, f64)> = reference
            .iter()
            .zip(current)
            .filter(|(a, b)| **a > 0 || **b > 0)
            .map(|(&a, &b)| (a as f64, b as f64))
            .collect();
        let n = bins.iter().map(|b| b.0).sum();
        let m = bins.iter().map(|b| b.1).sum();
        Ok(Self { bins, n, m })
    }

    /// Why there can be no verdict, if there is a reason.
    fn unusable(&self, options: &DriftOptions) -> Option<Inconclusive> {
        let min = options.min_count.max(1) as f64;
        if self.n < min || self.m < min {
            Some(Inconclusive::NotEnoughData)
        } else if self.bins.len() < 2 {
            Some(Inconclusive::Degenerate)
        } else {
            None
        }
    }

    fn effective_n(&self) -> f64 {
        self.n * self.m / (self.n + self.m)
    }

    /// Upper-tail χ²(B−1) probability of `x`.
    fn chi_square_sf(&self, x: f64) -> Option<f64> {
        let df = self.bins.len().saturating_sub(1) as f64;
        ChiSquared::new(df).ok().map(|d| d.sf(x.max(0.0)))
    }
}

fn magnitude_verdict(value: f64, threshold: f64, p: Option<f64>, alpha: f64) -> Verdict {
    match p {
        Some(p) if p < alpha && value >= threshold => Verdict::Drift,
        Some(_) => Verdict::NoDrift,
        None => Verdict::Inconclusive(Inconclusive::Degenerate),
    }
}

/// Population stability index `Σ (qᵢ − pᵢ)·ln(qᵢ/pᵢ)` between reference
/// counts and current counts on the same bins.
///
/// Empty bins would make PSI infinite; each bin gets half a count on both
/// sides before normalizing (the Jeffreys pseudo-count), which biases PSI
/// down by at most `O(B/n)`.
///
/// # Errors
/// [`StatsError::BinMismatch`] when the count vectors differ in length;
/// [`StatsError::Option`] for bad options.
pub fn psi(
    reference: &[u64],
    current: &[u64],
    options: &DriftOptions,
) -> Result<Statistic, StatsError> {
    options.check()?;
    let pair = Pair::new(reference, current)?;
    let b = pair.bins.len() as f64;
    let value: f64 = pair
        .bins
        .iter()
        .map(|&(r, c)| {
            let p = (r + 0.5) / (pair.n + 0.5 * b);
            let q = (c + 0.5) / (pair.m + 0.5 * b);
            (q - p) * (q / p).ln()
        })
        .sum();
    if let Some(why) = pair.unusable(options) {
        return Ok(inconclusive(Test::Psi, value, 0.0, why));
    }
    let p_value = pair.chi_square_sf(pair.effective_n() * value);
    Ok(Statistic {
        test: Test::Psi,
        value,
        error_bound: 0.0,
        p_value,
        threshold: options.psi_threshold,
        verdict: magnitude_verdict(value, options.psi_threshold, p_value, options.alpha),
    })
}

/// Jensen-Shannon distance (square root of the base-2 JS divergence, in
/// `[0, 1]`) between reference and current bin distributions.
///
/// # Errors
/// As for [`psi`].
pub fn jensen_shannon(
    reference: &[u64],
    current: &[u64],
    options: &DriftOptions,
) -> Result<Statistic, StatsError> {
    options.check()?;
    let pair = Pair::new(reference, current)?;
    let mut divergence_nats = 0.0;
    if pair.n > 0.0 && pair.m > 0.0 {
        for &(r, c) in &pair.bins {
            let (p, q) = (r / pair.n, c / pair.m);
            let mid = 0.5 * (p + q);
            // 0·ln 0 = 0; `mid` > 0 whenever p or q is.
            for x in [p, q] {
                if x > 0.0 {
                    divergence_nats += 0.5 * x * (x / mid).ln();
                }
            }
        }
    }
    let value = (divergence_nats.max(0.0) / std::f64::consts::LN_2)
        .sqrt()
        .min(1.0);
    if let Some(why) = pair.unusable(options) {
        return Ok(inconclusive(Test::JensenShannon, value, 0.0, why));
    }
    let p_value = pair.chi_square_sf(8.0 * pair.effective_n() * divergence_nats);
    Ok(Statistic {
        test: Test::JensenShannon,
        value,
        error_bound: 0.0,
        p_value,
        threshold: options.js_threshold,
        verdict: magnitude_verdict(value, options.js_threshold, p_value, options.alpha),
    })
}

/// Chi-square test of homogeneity on the 2 × B table of reference and
/// current counts (Pearson; bins empty on both sides are dropped). Reports
/// drift when p < α. With large windows this flags even tiny shifts: use it
/// as the significance test next to PSI or JS, which carry the magnitude.
///
/// # Errors
/// As for [`psi`].
pub fn chi_square(
    reference: &[u64],
    current: &[u64],
    options: &DriftOptions,
) -> Result<Statistic, StatsError> {
    options.check()?;
    let pair = Pair::new(reference, current)?;
    let total = pair.n + pair.m;
    let mut value = 0.0;
    if pair.n > 0.0 && pair.m > 0.0 {
        for &(r, c) in &pair.bins {
            let pooled = (r + c) / total;
            for (observed, side) in [(r, pair.n), (c, pair.m)] {
                let expected = pooled * side;
                value += (observed - expected).powi(2) / expected;
            }
        }
    }
    if let Some(why) = pair.unusable(options) {
        return Ok(inconclusive(Test::ChiSquare, value, 0.0, why));
    }
    let p_value = pair.chi_square_sf(value);
    let verdict = match p_value {
        Some(p) if p < options.alpha => Verdict::Drift,
        Some(_) => Verdict::NoDrift,
        None => Verdict::Inconclusive(Inconclusive::Degenerate),
    };
    Ok(Statistic {
        test: Test::ChiSquare,
        value,
        error_bound: 0.0,
        p_value,
        threshold: options.alpha,
        verdict,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn options() -> DriftOptions {
        DriftOptions {
            min_count: 1,
            ..Default::default()
        }
    }

    #[test]
    fn identical_distributions_score_zero() {
        let a = [100, 200, 300, 400];
        for f in [psi, jensen_shannon, chi_square] {
            let s = f(&a, &a, &options()).unwrap();
            assert!(s.value.abs() < 1e-12, "{s:?}");
            assert_eq!(s.verdict, Verdict::NoDrift, "{s:?}");
            assert_eq!(s.error_bound, 0.0);
        }
    }

    #[test]
    fn hand_computed_values() {
        // PSI with large counts (pseudo-counts negligible): p = (.5,.5), q = (.25,.75).
        let s = psi(&[500_000, 500_000], &[250_000, 750_000], &options()).unwrap();
        let expected = (0.25 - 0.5) * (0.5f64).ln() + (0.75 - 0.5) * (1.5f64).ln();
        assert!(
            (s.value - expected).abs() < 1e-5,
            "{} vs {expected}",
            s.value
        );
        assert_eq!(s.verdict, Verdict::Drift);
        // Disjoint supports: JS distance 1.
        let s = jensen_shannon(&[10, 0], &[0, 10], &options()).unwrap();
        assert!((s.value - 1.0).abs() < 1e-12);
        // 2×2 table [[30,10],[10,30]]: X² = 20, p = 7.74e-6.
        let s = chi_square(&[30, 10], &[10, 30], &options()).unwrap();
        assert!((s.value - 20.0).abs() < 1e-9);
        assert!((s.p_value.unwrap() - 7.744e-6).abs() < 1e-8, "{s:?}");
    }

    #[test]
    fn small_or_degenerate_inputs_are_inconclusive_and_mismatches_are_errors() {
        let s = psi(&[5, 5], &[1, 0], &DriftOptions::default()).unwrap();
        assert_eq!(
            s.verdict,
            Verdict::Inconclusive(Inconclusive::NotEnoughData)
        );
        let s = chi_square(&[500, 0], &[400, 0], &options()).unwrap();
        assert_eq!(s.verdict, Verdict::Inconclusive(Inconclusive::Degenerate));
        assert!(matches!(
            jensen_shannon(&[1, 2], &[1, 2, 3], &options()),
            Err(StatsError::BinMismatch { left: 2, right: 3 })
        ));
        let s = jensen_shannon(&[0, 0], &[0, 0], &options()).unwrap();
        assert_eq!(s.value, 0.0);
    }
}
