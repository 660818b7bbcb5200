//! Accuracy from ground-truth feedback: control vs canary.

use statrs::function::erf::erfc;

use super::{DriftOptions, Inconclusive, Statistic, Test, Verdict, inconclusive};
use crate::confusion::Confusion;
use crate::error::StatsError;

/// Difference in accuracy, `canary − control`, with the pooled two-proportion
/// z-test (two-sided) for "same accuracy".
///
/// `value` is the difference (negative: the canary is less accurate),
/// `error_bound` is 0 (the counts are exact), `threshold` is α, and the
/// verdict is [`Verdict::Drift`] when `p < α`. With fewer than
/// [`DriftOptions::min_count`] labels on a side the verdict is
/// [`Inconclusive::NotEnoughData`]. When every label on both sides is
/// right (or every one wrong) the accuracies are equal and there is no
/// variance: p = 1, [`Verdict::NoDrift`].
///
/// The z-test is the large-sample approximation (both sides need several
/// right and several wrong labels; `min_count` ≥ 100, the default, keeps it
/// honest for accuracies not too close to 0 or 1).
///
/// # Errors
/// [`StatsError::Option`] for α outside (0, 1) or bad thresholds.
pub fn accuracy_difference(
    control: &Confusion,
    canary: &Confusion,
    options: &DriftOptions,
) -> Result<Statistic, StatsError> {
    options.check()?;
    let (n1, n2) = (control.total(), canary.total());
    let (c1, c2) = (control.correct() as f64, canary.correct() as f64);
    let value = match (control.accuracy(), canary.accuracy()) {
        (Some(a1), Some(a2)) => a2 - a1,
        _ => 0.0,
    };
    let min = options.min_count.max(1);
    if n1 < min || n2 < min {
        return Ok(inconclusive(
            Test::AccuracyDifference,
            value,
            0.0,
            Inconclusive::NotEnoughData,
        ));
    }
    let (n1, n2) = (n1 as f64, n2 as f64);
    let pooled = (c1 + c2) / (n1 + n2);
    let variance = pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2);
    let p_value = if variance > 0.0 {
        let z = value / variance.sqrt();
        // Two-sided: 2·(1 − Φ(|z|)) = erfc(|z|/√2).
        erfc(z.abs() / std::f64::consts::SQRT_2).clamp(0.0, 1.0)
    } else {
        1.0
    };
    let verdict = if p_value < options.alpha {
        Verdict::Drift
    } else {
        Verdict::NoDrift
    };
    Ok(Statistic {
        test: Test::AccuracyDifference,
        value,
        error_bound: 0.0,
        p_value: Some(p_value),
        threshold: options.alpha,
        verdict,
    })
}
