//! Differential privacy option: Laplace noise on bin counts (Dwork, McSherry,
//! Nissim and Smith, "Calibrating noise to sensitivity", TCC 2006).
//!
//! Sensitivity. Two windows are neighbours when one has one request row
//! more. A row adds 1 to exactly one bin of each column's drift bins (a
//! numeric bin, a vocabulary entry or `other`) or to none (missing, NaN,
//! ±inf), so each column's bin vector has L1 sensitivity 1, and adding
//! `Laplace(1/ε_c)` noise to every bin makes that column ε_c-private. A row
//! is in every column, so by basic composition a window of C columns is
//! `C·ε_c`-private: [`LaplaceNoise::for_window`] splits a per-window ε into
//! `ε_c = ε / C`. Rounding to integers and clamping at 0 afterwards is
//! post-processing and costs no privacy.
//!
//! Scope: only the drift bins are privatized. KLL sketches hold raw values
//! and unseen categories are raw names, so [`LaplaceNoise::privatize`]
//! drops both (unseen counts go to `overflow`, i.e. still to `other`);
//! completeness, latency, confidence and segment counters are left as they
//! are (treat them as public, or do not send them).
//!
//! Randomness comes from the caller's generator (sans-IO): pass a seeded one
//! in tests, an OS-seeded one in production.

use rand::Rng;

use crate::column::ColumnProfile;
use crate::error::StatsError;
use crate::profile::Profile;

/// Probability allowed for the noise to exceed [`LaplaceNoise::count_bound`]
/// in some bin: 1 %, the same confidence as the KLL rank errors.
pub const NOISE_BOUND_FAILURE: f64 = 0.01;

/// The Laplace mechanism at one per-column ε.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LaplaceNoise {
    epsilon: f64,
}

impl LaplaceNoise {
    /// Noise for one bin vector at privacy level `epsilon` (scale 1/ε).
    ///
    /// # Errors
    /// [`StatsError::Option`] unless `epsilon` is finite and positive.
    pub fn new(epsilon: f64) -> Result<Self, StatsError> {
        if epsilon.is_finite() && epsilon > 0.0 {
            Ok(Self { epsilon })
        } else {
            Err(StatsError::Option("epsilon must be finite and positive"))
        }
    }

    /// Noise per column for a window of `columns` columns to be
    /// `epsilon`-private as a whole (basic composition, see the module docs).
    ///
    /// # Errors
    /// As for [`LaplaceNoise::new`]; also when `columns` is 0.
    pub fn for_window(epsilon: f64, columns: usize) -> Result<Self, StatsError> {
        if columns == 0 {
            return Err(StatsError::Option("a window needs at least one column"));
        }
        Self::new(epsilon / columns as f64)
    }

    /// The per-column ε.
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }

    /// Variance of the noise in one bin: `2/ε²` (Laplace with scale `b = 1/ε`).
    pub fn variance(&self) -> f64 {
        2.0 / (self.epsilon * self.epsilon)
    }

    /// One `Laplace(0, 1/ε)` draw by inversion:
    /// `x = −b·sgn(u)·ln(1 − 2|u|)`, `u` uniform on (−½, ½).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        // 53 random bits, centred in their cell: u is never exactly ±½, so
        // the log is finite.
        let unit = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let u = unit - 0.5;
        -u.signum() * (1.0 - 2.0 * u.abs()).ln() / self.epsilon
    }

    /// Noisy counts: `round(c + Laplace(1/ε))`, clamped at 0.
    pub fn privatize_counts<R: Rng + ?Sized>(&self, counts: &[u64], rng: &mut R) -> Vec<u64> {
        counts
            .iter()
            .map(|&c| {
                let noisy = (c as f64 + self.sample(rng)).round();
                // In range by the clamp; f64 → u64 saturates at the top.
                noisy.max(0.0) as u64
            })
            .collect()
    }

    /// Largest difference between a noisy count and the true count over
    /// `bins` bins, with probability at least 1 − [`NOISE_BOUND_FAILURE`]:
    /// `P(|L| > t) = e^(−εt)`, so a union over the bins gives
    /// `t = ln(bins/0.01)/ε`; rounding adds ½; clamping at 0 only moves a
    /// count towards its (non-negative) true value.
    pub fn count_bound(&self, bins: usize) -> f64 {
        (bins.max(1) as f64 / NOISE_BOUND_FAILURE).ln() / self.epsilon + 0.5
    }

    /// Replaces the drift bins of every column of `profile` with noisy
    /// counts, and drops what cannot be privatized by noise on counts: KLL
    /// sketches, and unseen category names (their counts move to
    /// `overflow`, which is noised as the `other` bin).
    pub fn privatize<R: Rng + ?Sized>(&self, profile: &mut Profile, rng: &mut R) {
        for column in &mut profile.columns {
            match column {
                ColumnProfile::Numeric(p) => {
                    p.bins = self.privatize_counts(&p.bins, rng);
                    p.kll = None;
                }
                ColumnProfile::Categorical(p) => {
                    let other = p.bins().last().copied().unwrap_or(0);
                    p.unseen.clear();
                    p.vocabulary = self.privatize_counts(&p.vocabulary, rng);
                    p.overflow = self
                        .privatize_counts(&[other], rng)
                        .first()
                        .copied()
                        .unwrap_or(0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::Xoshiro256PlusPlus;

    fn moments(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var)
    }

    #[test]
    fn noise_variance_is_two_over_epsilon_squared() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
        for epsilon in [0.25, 1.0, 4.0] {
            let noise = LaplaceNoise::new(epsilon).unwrap();
            let draws: Vec<f64> = (0..200_000).map(|_| noise.sample(&mut rng)).collect();
            let (mean, var) = moments(&draws);
            // Sampling sd of the variance of 200,000 Laplace draws is ~0.5 %.
            assert!(
                (var / noise.variance() - 1.0).abs() < 0.03,
                "ε {epsilon}: {var}"
            );
            assert!(mean.abs() < 0.02 / epsilon, "ε {epsilon}: mean {mean}");
            // Rounded counts far from 0: variance 2/ε² + 1/12 (Sheppard's
            // rounding term, which needs a noise scale 1/ε of a count or more).
            if epsilon > 1.0 {
                continue;
            }
            let counts = noise.privatize_counts(&vec![1_000_000; 100_000], &mut rng);
            let counts: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
            let (mean, var) = moments(&counts);
            let expected = noise.variance() + 1.0 / 12.0;
            assert!(
                (var / expected - 1.0).abs() < 0.04,
                "ε {epsilon}: {var} vs {expected}"
            );
            assert!((mean - 1e6).abs() < 0.05 / epsilon + 0.01);
        }
    }

    #[test]
    fn counts_stay_within_the_bound_and_options_are_checked() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(12);
        let noise = LaplaceNoise::new(0.5).unwrap();
        let truth = vec![0u64, 3, 50, 1_000, 7, 0, 0, 12, 400, 90];
        let bound = noise.count_bound(truth.len());
        let mut breaches = 0;
        for _ in 0..2_000 {
            let noisy = noise.privatize_counts(&truth, &mut rng);
            let worst = truth
                .iter()
                .zip(&noisy)
                .map(|(&t, &n)| (t as f64 - n as f64).abs())
                .fold(0.0, f64::max);
            breaches += u32::from(worst > bound);
        }
        // At most 1 % by design; 2,000 trials, so ≤ 20 expected, 40 allowed.
        assert!(breaches <= 40, "{breaches}");
        assert!(LaplaceNoise::new(0.0).is_err());
        assert!(LaplaceNoise::new(f64::INFINITY).is_err());
        assert!(LaplaceNoise::for_window(1.0, 0).is_err());
        let split = LaplaceNoise::for_window(2.0, 8).unwrap();
        assert_eq!(split.epsilon(), 0.25);
    }
}
