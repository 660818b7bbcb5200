//! PSI, Jensen-Shannon and chi-square on a window's noisy (differentially
//! private) bins, with the noise in the error bound.
//!
//! How the noise is accounted for: with probability ≥ 99 % every noisy
//! count is within `Δ =` [`LaplaceNoise::count_bound`] of the true count
//! (a union bound over the bins). Each statistic is a sum of per-bin terms
//! that depend on one bin's current proportion (and, for chi-square, the
//! current total), and each term is convex in that proportion with its
//! minimum, 0, at the reference proportion. So from the box of true counts
//! `[c' − Δ, c' + Δ]` each term's range is exact at the box's ends, and
//! the true statistic lies in `[Σ minᵢ, Σ maxᵢ]` (for JS, the divergence
//! does; the distance is its increasing square root). `error_bound` is the
//! larger distance from the reported value to those ends. The verdict is
//! drift only if the low end is drift, no drift only if the high end is
//! not, and [`Inconclusive::WithinErrorBound`] otherwise, so noise can make
//! the tests more cautious, never more alarmed (beyond the 1 % of windows
//! where the noise exceeds its bound).
//!
//! Unlike [`super::psi`], the PSI here keeps every bin (with noise, a
//! "bin empty on both sides" is not known to be empty); with no such bin
//! the two agree.

use statrs::distribution::{ChiSquared, ContinuousCDF};

use super::{DriftOptions, Inconclusive, Statistic, Test, Verdict, inconclusive};
use crate::error::StatsError;
use crate::privacy::LaplaceNoise;

/// Reference counts, noisy current counts, and the box of true counts.
struct Noisy {
    reference: Vec<f64>,
    current: Vec<f64>,
    low: Vec<f64>,
    high: Vec<f64>,
    n: f64,
    m: f64,
}

impl Noisy {
    fn new(reference: &[u64], current: &[u64], noise: &LaplaceNoise) -> Result<Self, StatsError> {
        if reference.len() != current.len() {
            return Err(StatsError::BinMismatch {
                left: reference.len(),
                right: current.len(),
            });
        }
        let delta = noise.count_bound(current.len());
        let current: Vec<f64> = current.iter().map(|&c| c as f64).collect();
        Ok(Self {
            reference: reference.iter().map(|&r| r as f64).collect(),
            low: current.iter().map(|c| (c - delta).max(0.0)).collect(),
            high: current.iter().map(|c| c + delta).collect(),
            n: reference.iter().map(|&r| r as f64).sum(),
            m: current.iter().sum(),
            current,
        })
    }

    fn too_small(&self, options: &DriftOptions) -> bool {
        let min = options.min_count.max(1) as f64;
        self.n < min || self.m < min
    }

    /// Range of bin `i`'s count share `(cᵢ + k)/(m + k·B)` over the box
    /// (`k` is a pseudo-count): lowest with this bin low and the rest high.
    fn share_range(&self, i: usize, k: f64) -> (f64, f64) {
        let b = self.current.len() as f64;
        let (sum_low, sum_high): (f64, f64) = (self.low.iter().sum(), self.high.iter().sum());
        let share = |count: f64, total: f64| if total > 0.0 { count / total } else { 0.0 };
        let lo = share(
            self.low[i] + k,
            self.low[i] + sum_high - self.high[i] + k * b,
        );
        let hi = share(
            self.high[i] + k,
            self.high[i] + sum_low - self.low[i] + k * b,
        );
        (lo, hi)
    }

    fn chi_square_df(&self) -> f64 {
        let bins = self
            .reference
            .iter()
            .zip(&self.high)
            .filter(|(r, h)| **r > 0.0 || **h > 0.0)
            .count();
        bins.saturating_sub(1) as f64
    }
}

/// Range of a convex term `f` over `[lo, hi]` whose minimum, 0, is at `at`.
fn term_range(f: impl Fn(f64) -> f64, lo: f64, hi: f64, at: f64) -> (f64, f64) {
    let (a, b) = (f(lo), f(hi));
    let min = if (lo..=hi).contains(&at) {
        0.0
    } else {
        a.min(b)
    };
    (min, a.max(b))
}

fn sf(df: f64, x: f64) -> Option<f64> {
    ChiSquared::new(df).ok().map(|d| d.sf(x.max(0.0)))
}

/// [`super::psi`] on noisy current counts (every bin kept, Jeffreys
/// pseudo-count ½ on both sides), its error bound covering the noise.
///
/// # Errors
/// [`StatsError::BinMismatch`], [`StatsError::Option`].
pub fn psi_noisy(
    reference: &[u64],
    current: &[u64],
    noise: &LaplaceNoise,
    options: &DriftOptions,
) -> Result<Statistic, StatsError> {
    options.check()?;
    let s = Noisy::new(reference, current, noise)?;
    let b = s.current.len() as f64;
    let p: Vec<f64> = s
        .reference
        .iter()
        .map(|r| (r + 0.5) / (s.n + 0.5 * b))
        .collect();
    let term = |p: f64| move |q: f64| (q - p) * (q / p).ln();
    let value: f64 = (0..p.len())
        .map(|i| term(p[i])((s.current[i] + 0.5) / (s.m + 0.5 * b)))
        .sum();
    let (mut low, mut high) = (0.0, 0.0);
    for (i, &pi) in p.iter().enumerate() {
        let (lo, hi) = s.share_range(i, 0.5);
        let (a, z) = term_range(term(pi), lo, hi, pi);
        low += a;
        high += z;
    }
    let error_bound = (value - low).max(high - value).max(0.0);
    if s.too_small(options) || p.len() < 2 {
        return Ok(inconclusive(
            Test::Psi,
            value,
            error_bound,
            Inconclusive::NotEnoughData,
        ));
    }
    let n_eff = s.n * s.m / (s.n + s.m);
    let df = (p.len() - 1) as f64;
    let p_at = |x: f64| sf(df, n_eff * x).unwrap_or(1.0);
    let threshold = options.psi_threshold;
    let verdict = if low >= threshold && p_at(low) < options.alpha {
        Verdict::Drift
    } else if high < threshold || p_at(high) >= options.alpha {
        Verdict::NoDrift
    } else {
        Verdict::Inconclusive(Inconclusive::WithinErrorBound)
    };
    Ok(Statistic {
        test: Test::Psi,
        value,
        error_bound,
        p_value: Some(p_at(value)),
        threshold,
        verdict,
    })
}

/// [`super::jensen_shannon`] on noisy current counts, its error bound
/// covering the noise. The divergence (nats) is `Σ ½·[pᵢ·ln(2pᵢ/(pᵢ+qᵢ)) +
/// qᵢ·ln(2qᵢ/(pᵢ+qᵢ))]`; each term is `pᵢ·φ(qᵢ/pᵢ)` with `φ` convex (an
/// f-divergence term) and zero at `qᵢ = pᵢ`, so its range over the box is
/// at the box's ends; the distance `√(JSD/ln 2)` is increasing in the sum,
/// so its range is the square roots of the sum's. No pseudo-counts, as in
/// the plain JS: a bin empty on both sides adds 0 there, and its box term
/// covers the counts the noise may hide. The p-value and verdict are as
/// for [`psi_noisy`], with `8·nₑ·JSD ≈ X²` on every bin (each bin's box can
/// hold data, so none is dropped from the degrees of freedom).
///
/// # Errors
/// [`StatsError::BinMismatch`], [`StatsError::Option`].
pub fn jensen_shannon_noisy(
    reference: &[u64],
    current: &[u64],
    noise: &LaplaceNoise,
    options: &DriftOptions,
) -> Result<Statistic, StatsError> {
    options.check()?;
    let s = Noisy::new(reference, current, noise)?;
    let term = |p: f64| {
        move |q: f64| {
            let mid = 0.5 * (p + q);
            // 0·ln 0 = 0; `mid` > 0 whenever p or q is.
            [p, q]
                .into_iter()
                .filter(|&x| x > 0.0)
                .map(|x| 0.5 * x * (x / mid).ln())
                .sum::<f64>()
        }
    };
    let shares = |counts: &[f64], total: f64| -> Vec<f64> {
        counts.iter().map(|c| c / total.max(1.0)).collect()
    };
    let p = shares(&s.reference, s.n);
    let q = shares(&s.current, s.m);
    // The plain JS is 0 when either side is empty; keep that convention.
    let value_nats: f64 = if s.n > 0.0 && s.m > 0.0 {
        p.iter().zip(&q).map(|(&pi, &qi)| term(pi)(qi)).sum()
    } else {
        0.0
    };
    let (mut low, mut high) = (0.0, 0.0);
    if s.n > 0.0 {
        for (i, &pi) in p.iter().enumerate() {
            let (lo, hi) = s.share_range(i, 0.0);
            let (a, z) = term_range(term(pi), lo, hi, pi);
            low += a;
            high += z;
        }
    }
    // The box may hold an empty window (every low end 0), where the true
    // JS is 0 by the convention above, which the per-bin minima miss.
    if s.low.iter().sum::<f64>() <= 0.0 {
        low = 0.0;
    }
    let distance = |nats: f64| (nats.max(0.0) / std::f64::consts::LN_2).sqrt().min(1.0);
    let value = distance(value_nats);
    let (d_low, d_high) = (distance(low), distance(high));
    let error_bound = (value - d_low).max(d_high - value).max(0.0);
    if s.too_small(options) || p.len() < 2 {
        return Ok(inconclusive(
            Test::JensenShannon,
            value,
            error_bound,
            Inconclusive::NotEnoughData,
        ));
    }
    let n_eff = s.n * s.m / (s.n + s.m);
    let df = (p.len() - 1) as f64;
    let p_at = |nats: f64| sf(df, 8.0 * n_eff * nats).unwrap_or(1.0);
    let threshold = options.js_threshold;
    let verdict = if d_low >= threshold && p_at(low) < options.alpha {
        Verdict::Drift
    } else if d_high < threshold || p_at(high) >= options.alpha {
        Verdict::NoDrift
    } else {
        Verdict::Inconclusive(Inconclusive::WithinErrorBound)
    };
    Ok(Statistic {
        test: Test::JensenShannon,
        value,
        error_bound,
        p_value: Some(p_at(value_nats)),
        threshold,
        verdict,
    })
}

/// [`super::chi_square`] on noisy current counts, its error bound covering
/// the noise. Writing `pᵢ, qᵢ` for the reference and current shares,
/// `X² = Σ n·m·(pᵢ − qᵢ)²/(n·pᵢ + m·qᵢ)`; each term grows with `m` and is
/// convex in `qᵢ` with its zero at `pᵢ`, so its range over the box is at
/// the box's ends. Degrees of freedom: every bin the reference or the
/// box can hold data in, minus one.
///
/// # Errors
/// [`StatsError::BinMismatch`], [`StatsError::Option`].
pub fn chi_square_noisy(
    reference: &[u64],
    current: &[u64],
    noise: &LaplaceNoise,
    options: &DriftOptions,
) -> Result<Statistic, StatsError> {
    options.check()?;
    let s = Noisy::new(reference, current, noise)?;
    let term = |p: f64, m: f64| {
        let n = s.n;
        move |q: f64| {
            let denominator = n * p + m * q;
            if denominator > 0.0 {
                n * m * (p - q).powi(2) / denominator
            } else {
                0.0
            }
        }
    };
    let shares = |counts: &[f64], total: f64| -> Vec<f64> {
        counts.iter().map(|c| c / total.max(1.0)).collect()
    };
    let p = shares(&s.reference, s.n);
    let q = shares(&s.current, s.m);
    let value: f64 = p.iter().zip(&q).map(|(&pi, &qi)| term(pi, s.m)(qi)).sum();
    let (m_low, m_high) = (s.low.iter().sum::<f64>(), s.high.iter().sum::<f64>());
    let (mut low, mut high) = (0.0, 0.0);
    for (i, &pi) in p.iter().enumerate() {
        let (lo, hi) = s.share_range(i, 0.0);
        low += term_range(term(pi, m_low), lo, hi, pi).0;
        high += term_range(term(pi, m_high), lo, hi, pi).1;
    }
    let error_bound = (value - low).max(high - value).max(0.0);
    let df = s.chi_square_df();
    if s.too_small(options) || df < 1.0 {
        return Ok(inconclusive(
            Test::ChiSquare,
            value,
            error_bound,
            Inconclusive::NotEnoughData,
        ));
    }
    let p_at = |x: f64| sf(df, x).unwrap_or(1.0);
    let verdict = if p_at(low) < options.alpha {
        Verdict::Drift
    } else if p_at(high) >= options.alpha {
        Verdict::NoDrift
    } else {
        Verdict::Inconclusive(Inconclusive::WithinErrorBound)
    };
    Ok(Statistic {
        test: Test::ChiSquare,
        value,
        error_bound,
        p_value: Some(p_at(value)),
        threshold: options.alpha,
        verdict,
    })
}
