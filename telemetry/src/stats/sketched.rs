//! Two-sample statistics on KLL sketches, with the sketch error added.
//!
//! Each sketch stands for a weighted sample whose CDF is within its rank
//! error ε of the true empirical CDF (at 99 % confidence, DataSketches'
//! guarantee). A CDF-based statistic therefore moves by at most ε₁ + ε₂
//! (KS, AUC) or (ε₁ + ε₂)·range (Wasserstein-1), and every decision bound
//! below is widened by that much, so sketching can make a test more
//! conservative but never makes it flag drift more often.

use super::{
    DriftOptions, Inconclusive, Statistic, Test, Verdict, inconclusive, normal_cdf, normal_quantile,
};
use crate::error::StatsError;
use crate::kll::Kll;

/// KS D, Wasserstein-1 and AUC of two sketches, from one merge walk over
/// their weighted samples.
struct Walk {
    ks: f64,
    w1: f64,
    auc: f64,
    n: f64,
    m: f64,
    error: f64,
    range: f64,
}

fn walk(a: &Kll, b: &Kll) -> Walk {
    let (xa, xb) = (a.weighted_items(), b.weighted_items());
    let (n, m) = (a.n() as f64, b.n() as f64);
    let (mut i, mut j) = (0, 0);
    let (mut ca, mut cb) = (0u64, 0u64);
    let (mut ks, mut w1, mut auc) = (0.0f64, 0.0, 0.0);
    let mut previous: Option<(f64, f64)> = None; // (x, Fa(x) − Fb(x))
    while i < xa.len() || j < xb.len() {
        let x = match (xa.get(i), xb.get(j)) {
            (Some(p), Some(q)) => p.0.min(q.0),
            (Some(p), None) => p.0,
            (None, Some(q)) => q.0,
            (None, None) => break,
        };
        let below_a = ca;
        while let Some(&(_, w)) = xa.get(i).filter(|item| item.0 == x) {
            ca += w;
            i += 1;
        }
        let mut weight_b = 0u64;
        while let Some(&(_, w)) = xb.get(j).filter(|item| item.0 == x) {
            weight_b += w;
            j += 1;
        }
        cb += weight_b;
        // P(X < Y) + ½·P(X = Y), Y at x with mass weight_b/m.
        let mass_a_at_x = (ca - below_a) as f64 / n;
        auc += (weight_b as f64 / m) * (below_a as f64 / n + 0.5 * mass_a_at_x);
        let diff = ca as f64 / n - cb as f64 / m;
        if let Some((px, pdiff)) = previous {
            w1 += pdiff.abs() * (x - px);
        }
        ks = ks.max(diff.abs());
        previous = Some((x, diff));
    }
    let lo = [a.min_max(), b.min_max()]
        .iter()
        .flatten()
        .map(|r| r.0)
        .fold(f64::INFINITY, f64::min);
    let hi = [a.min_max(), b.min_max()]
        .iter()
        .flatten()
        .map(|r| r.1)
        .fold(f64::NEG_INFINITY, f64::max);
    Walk {
        ks,
        w1,
        auc,
        n,
        m,
        error: a.rank_error() + b.rank_error(),
        range: if hi > lo { hi - lo } else { 0.0 },
    }
}

fn too_small(w: &Walk, options: &DriftOptions) -> bool {
    let min = options.min_count.max(1) as f64;
    w.n < min || w.m < min
}

/// Two-sample Kolmogorov-Smirnov test between a reference sketch `a` and a
/// current sketch `b`. Drift when
/// `D > c(α)·√((n+m)/(n·m)) + ε₁ + ε₂` with `c(α) = √(−ln(α/2)/2)`,
/// the bound DataSketches' `KolmogorovSmirnov.kolmogorovSmirnovTest` uses
/// (it puts retained-item counts where we put stream counts, n and m, which
/// is the textbook test; the ε terms are the same). The p-value is the
/// asymptotic Kolmogorov tail at `√(nm/(n+m))·max(D − ε₁ − ε₂, 0)`.
///
/// # Errors
/// [`StatsError::Option`] for bad options.
pub fn kolmogorov_smirnov(
    a: &Kll,
    b: &Kll,
    options: &DriftOptions,
) -> Result<Statistic, StatsError> {
    options.check()?;
    let w = walk(a, b);
    if too_small(&w, options) {
        return Ok(inconclusive(
            Test::KolmogorovSmirnov,
            w.ks,
            w.error,
            Inconclusive::NotEnoughData,
        ));
    }
    let scale = ((w.n + w.m) / (w.n * w.m)).sqrt();
    let c_alpha = (-(options.alpha / 2.0).ln() / 2.0).sqrt();
    let threshold = c_alpha * scale + w.error;
    let p_value = kolmogorov_tail((w.ks - w.error).max(0.0) / scale);
    let verdict = if w.ks > threshold {
        Verdict::Drift
    } else {
        Verdict::NoDrift
    };
    Ok(Statistic {
        test: Test::KolmogorovSmirnov,
        value: w.ks,
        error_bound: w.error,
        p_value: Some(p_value),
        threshold,
        verdict,
    })
}

/// Kolmogorov distribution tail `Q(λ) = 2 Σ (−1)^(j−1) e^(−2j²λ²)`, with
/// the dual series `1 − (√(2π)/λ) Σ e^(−(2j−1)²π²/(8λ²))` for small λ
/// where the first converges slowly (Press et al., *Numerical Recipes*,
/// 3rd ed., §6.14).
fn kolmogorov_tail(lambda: f64) -> f64 {
    if lambda <= 0.0 {
        return 1.0;
    }
    if lambda < 1.18 {
        let pi2 = std::f64::consts::PI.powi(2);
        let sum: f64 = (1..=8)
            .map(|j| (-((2 * j - 1) as f64).powi(2) * pi2 / (8.0 * lambda * lambda)).exp())
            .sum();
        (1.0 - (2.0 * std::f64::consts::PI).sqrt() / lambda * sum).clamp(0.0, 1.0)
    } else {
        let sum: f64 = (1..=20)
            .map(|j: i32| {
                let sign = if j % 2 == 1 { 1.0 } else { -1.0 };
                sign * (-2.0 * f64::from(j * j) * lambda * lambda).exp()
            })
            .sum();
        (2.0 * sum).clamp(0.0, 1.0)
    }
}

/// Wasserstein-1 (earth mover's) distance `∫|F_a − F_b| dx` between the
/// sketches, in data units, with error bound `(ε₁ + ε₂)·(max − min)` over
/// both sketches' exact min and max. Drift when the value minus its bound
/// exceeds the threshold ([`DriftOptions::wasserstein_threshold`], else
/// 0.1 × `a`'s interquartile range); no drift when the value plus its bound
/// is below it; inconclusive in between. W1 is an effect size, not a test:
/// pair it with [`kolmogorov_smirnov`] for significance.
///
/// # Errors
/// [`StatsError::Option`] for bad options.
pub fn wasserstein(a: &Kll, b: &Kll, options: &DriftOptions) -> Result<Statistic, StatsError> {
    options.check()?;
    let w = walk(a, b);
    let error_bound = w.error * w.range;
    if too_small(&w, options) {
        return Ok(inconclusive(
            Test::Wasserstein,
            w.w1,
            error_bound,
            Inconclusive::NotEnoughData,
        ));
    }
    let threshold = options.wasserstein_threshold.unwrap_or_else(|| {
        let iqr = a
            .quantile(0.75)
            .zip(a.quantile(0.25))
            .map_or(0.0, |(hi, lo)| hi - lo);
        0.1 * iqr
    });
    let verdict = if w.w1 - error_bound > threshold {
        Verdict::Drift
    } else if w.w1 + error_bound <= threshold {
        Verdict::NoDrift
    } else {
        Verdict::Inconclusive(Inconclusive::WithinErrorBound)
    };
    Ok(Statistic {
        test: Test::Wasserstein,
        value: w.w1,
        error_bound,
        p_value: None,
        threshold,
        verdict,
    })
}

/// Mann-Whitney AUC `P(X < Y) + ½·P(X = Y)`, X from `a`, Y from `b`:
/// 0.5 when neither tends to be larger, above 0.5 when `b` tends larger.
/// Error bound ε₁ + ε₂ (the AUC is an integral of one CDF against the other,
/// each off by at most its ε). Drift when
/// `|AUC − ½| − (ε₁ + ε₂) > z(1−α/2)·√((n+m+1)/(12·n·m))`, the normal
/// approximation of U's null distribution (Mann and Whitney, 1947; without
/// the tie correction, which only shrinks the variance, so this is conservative).
///
/// # Errors
/// [`StatsError::Option`] for bad options.
pub fn mann_whitney(a: &Kll, b: &Kll, options: &DriftOptions) -> Result<Statistic, StatsError> {
    options.check()?;
    let w = walk(a, b);
    if too_small(&w, options) {
        return Ok(inconclusive(
            Test::MannWhitney,
            w.auc,
            w.error,
            Inconclusive::NotEnoughData,
        ));
    }
    let sigma = ((w.n + w.m + 1.0) / (12.0 * w.n * w.m)).sqrt();
    let shift = ((w.auc - 0.5).abs() - w.error).max(0.0);
    let p_value = (2.0 * (1.0 - normal_cdf(shift / sigma))).clamp(0.0, 1.0);
    let threshold = normal_quantile(1.0 - options.alpha / 2.0) * sigma + w.error;
    let verdict = if (w.auc - 0.5).abs() > threshold {
        Verdict::Drift
    } else {
        Verdict::NoDrift
    };
    Ok(Statistic {
        test: Test::MannWhitney,
        value: w.auc,
        error_bound: w.error,
        p_value: Some(p_value),
        threshold,
        verdict,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sketch(values: impl IntoIterator<Item = f64>) -> Kll {
        let mut kll = Kll::new(200).unwrap();
        values.into_iter().for_each(|v| kll.update(v));
        kll
    }

    fn options() -> DriftOptions {
        DriftOptions {
            min_count: 1,
            ..Default::default()
        }
    }

    #[test]
    fn exact_mode_values_match_hand_computation() {
        // Exact mode (few items): ε = 0, the statistics are the textbook ones.
        let a = sketch([1.0, 2.0, 3.0, 4.0]);
        let b = sketch([3.0, 4.0, 5.0, 6.0]);
        let ks = kolmogorov_smirnov(&a, &b, &options()).unwrap();
        assert_eq!((ks.value, ks.error_bound), (0.5, 0.0));
        let w1 = wasserstein(&a, &b, &options()).unwrap();
        assert!((w1.value - 2.0).abs() < 1e-12, "{w1:?}");
        // Of the 16 pairs (x, y), 13 have x < y and 2 are ties: (13 + 2·½)/16.
        let mw = mann_whitney(&a, &b, &options()).unwrap();
        assert!((mw.value - 14.0 / 16.0).abs() < 1e-12, "{mw:?}");
    }

    #[test]
    fn kolmogorov_tail_matches_known_points() {
        // Q(1.3581) = 0.05, Q(1.6276) = 0.01 (Kolmogorov distribution tables).
        assert!((kolmogorov_tail(1.3581) - 0.05).abs() < 1e-4);
        assert!((kolmogorov_tail(1.6276) - 0.01).abs() < 1e-4);
        assert!((kolmogorov_tail(0.5) - 0.9639).abs() < 1e-4);
        assert_eq!(kolmogorov_tail(0.0), 1.0);
    }

    #[test]
    fn sketch_error_widens_the_bound() {
        let a = sketch((0..50_000).map(|i| f64::from(i % 997)));
        let b = sketch((0..50_000).map(|i| f64::from(i % 991)));
        let ks = kolmogorov_smirnov(&a, &b, &options()).unwrap();
        assert!(ks.error_bound > 0.02, "{ks:?}");
        assert!(ks.threshold > ks.error_bound);
        assert_eq!(ks.verdict, Verdict::NoDrift);
        let w1 = wasserstein(&a, &b, &options()).unwrap();
        assert!(
            (w1.error_bound - ks.error_bound * 996.0).abs() < 1e-6,
            "{w1:?}"
        );
    }

    #[test]
    fn empty_sketches_are_inconclusive() {
        let empty = Kll::new(200).unwrap();
        for f in [kolmogorov_smirnov, wasserstein, mann_whitney] {
            let s = f(&empty, &empty, &options()).unwrap();
            assert_eq!(
                s.verdict,
                Verdict::Inconclusive(Inconclusive::NotEnoughData)
            );
        }
    }
}
