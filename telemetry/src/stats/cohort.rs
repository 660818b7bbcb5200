//! A cohort of observations of one metric, as the canary judge sees it: a
//! sorted weighted sample plus what its summary may have cost in accuracy.
//!
//! Three sources, three kinds of error:
//! - raw values: exact;
//! - a KLL sketch: exact values, ranks off by at most its ε (at 99 %
//!   confidence, DataSketches' guarantee), so any probability computed
//!   from it, the Mann-Whitney AUC included, is off by at most ε;
//! - a [`LatencyHistogram`]: every latency is replaced by its bucket's
//!   representative, within relative error α of it (DDSketch), so values
//!   are off by a factor in `[1 − α, 1 + α]` and ranks are right between
//!   buckets.

use crate::kll::Kll;
use crate::latency::LatencyHistogram;

/// One cohort's observations of a metric (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Cohort {
    /// `(value, weight)`, sorted by value, distinct values, weights > 0.
    items: Vec<(f64, u64)>,
    n: u64,
    rank_error: f64,
    relative_error: f64,
}

impl Cohort {
    /// Raw values, exact. Non-finite values are dropped: a metric that can
    /// be NaN or infinite should count those separately (as errors).
    pub fn from_values(values: &[f64]) -> Self {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let mut items: Vec<(f64, u64)> = Vec::new();
        for v in sorted {
            match items.last_mut() {
                Some(last) if last.0 == v => last.1 += 1,
                _ => items.push((v, 1)),
            }
        }
        Self::from_items(items, 0.0, 0.0)
    }

    /// A KLL sketch: its retained items with their weights; rank error ε
    /// ([`Kll::rank_error`], zero while the sketch is exact).
    pub fn from_kll(kll: &Kll) -> Self {
        Self::from_items(kll.weighted_items(), kll.rank_error(), 0.0)
    }

    /// Latencies in microseconds from a latency histogram: one item per
    /// bucket at the bucket's representative, relative error α
    /// ([`LatencyHistogram::relative_accuracy`]). The bound holds above
    /// 1 µs; everything at or below 1 µs is taken as 1 µs.
    pub fn from_latency(histogram: &LatencyHistogram) -> Self {
        let items = histogram
            .buckets()
            .filter(|&(_, count)| count > 0)
            .map(|(index, count)| (histogram.representative_micros(index), count))
            .collect();
        Self::from_items(items, 0.0, histogram.relative_accuracy())
    }

    fn from_items(items: Vec<(f64, u64)>, rank_error: f64, relative_error: f64) -> Self {
        let n = items.iter().fold(0u64, |acc, i| acc.saturating_add(i.1));
        Self {
            items,
            n,
            rank_error,
            relative_error,
        }
    }

    /// Number of observations.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// Rank error ε of the summary (0 unless a KLL sketch in estimation mode).
    pub fn rank_error(&self) -> f64 {
        self.rank_error
    }

    /// Relative error of each value (0 unless a latency histogram).
    pub fn relative_error(&self) -> f64 {
        self.relative_error
    }

    pub(crate) fn items(&self) -> &[(f64, u64)] {
        &self.items
    }
}

/// A cohort after the judge's transform (negated and/or logged), sorted.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) items: Vec<(f64, f64)>,
    pub(crate) n: f64,
}

impl Sample {
    /// Applies `f` to every value and sorts again (a negation reverses the order).
    pub(crate) fn map(cohort: &Cohort, f: impl Fn(f64) -> f64) -> Self {
        let mut items: Vec<(f64, f64)> = cohort
            .items()
            .iter()
            .map(|&(v, w)| (f(v), w as f64))
            .collect();
        items.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self {
            items,
            n: cohort.n() as f64,
        }
    }

    fn first(&self) -> f64 {
        self.items.first().map_or(0.0, |i| i.0)
    }

    fn last(&self) -> f64 {
        self.items.last().map_or(0.0, |i| i.0)
    }
}

/// `(P(X < Y − d), P(X = Y − d))` for X from `x` and Y from `y`, in one
/// merge walk over the sorted samples: O(|x| + |y|).
pub(crate) fn order_probabilities(x: &Sample, y: &Sample, d: f64) -> (f64, f64) {
    let (mut i_lt, mut i_le) = (0usize, 0usize);
    let (mut w_lt, mut w_le) = (0.0f64, 0.0f64);
    let (mut lt, mut eq) = (0.0f64, 0.0f64);
    for &(v, wy) in &y.items {
        let t = v - d;
        while let Some(&(_, wx)) = x.items.get(i_lt).filter(|item| item.0 < t) {
            w_lt += wx;
            i_lt += 1;
        }
        while let Some(&(_, wx)) = x.items.get(i_le).filter(|item| item.0 <= t) {
            w_le += wx;
            i_le += 1;
        }
        lt += wy * w_lt;
        eq += wy * (w_le - w_lt);
    }
    let pairs = x.n * y.n;
    if pairs > 0.0 {
        (lt / pairs, eq / pairs)
    } else {
        (0.0, 0.0)
    }
}

/// The AUC of `Y − d` against X: `P(X < Y − d) + ½·P(X = Y − d)`. It does
/// not increase with `d`; it is ½ at the Hodges-Lehmann shift.
pub(crate) fn auc(x: &Sample, y: &Sample, d: f64) -> f64 {
    let (lt, eq) = order_probabilities(x, y, d);
    lt + 0.5 * eq
}

/// Where `auc(d)` crosses `target`: `(a, b)` with `auc > target` on
/// `(−∞, a)` and `auc < target` on `(b, ∞)`, found by bisection (60 halvings
/// of the range of pairwise differences: far below any data resolution).
/// A target of 1 or more has no `a` (−∞), one of 0 or less no `b` (+∞).
pub(crate) fn crossing(x: &Sample, y: &Sample, target: f64) -> (f64, f64) {
    // Beyond these, every Y − d lies above (below) every X: auc is 1 (0).
    let low = y.first() - x.last() - 1.0;
    let high = y.last() - x.first() + 1.0;
    let bisect = |above: &dyn Fn(f64) -> bool| {
        let (mut lo, mut hi) = (low, high);
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            if above(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        0.5 * (lo + hi)
    };
    let a = if target < 1.0 {
        bisect(&|d| auc(x, y, d) > target)
    } else {
        f64::NEG_INFINITY
    };
    let b = if target > 0.0 {
        bisect(&|d| auc(x, y, d) >= target)
    } else {
        f64::INFINITY
    };
    (a, b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample(values: &[f64]) -> Sample {
        Sample::map(&Cohort::from_values(values), |v| v)
    }

    #[test]
    fn auc_counts_pairs_and_ties() {
        let x = sample(&[1.0, 2.0, 3.0, 4.0]);
        let y = sample(&[3.0, 4.0, 5.0, 6.0]);
        // 13 of 16 pairs have x < y, 2 are ties (as in the Mann-Whitney test).
        assert!((auc(&x, &y, 0.0) - 14.0 / 16.0).abs() < 1e-12);
        assert_eq!(auc(&x, &y, -100.0), 1.0);
        assert_eq!(auc(&x, &y, 100.0), 0.0);
    }

    #[test]
    fn crossing_at_one_half_is_the_median_of_pairwise_differences() {
        let xv = [1.0, 2.5, 4.0, 7.0, 7.5];
        let yv = [3.0, 3.5, 9.0, 11.0];
        let mut diffs: Vec<f64> = yv
            .iter()
            .flat_map(|y| xv.iter().map(move |x| y - x))
            .collect();
        diffs.sort_by(f64::total_cmp);
        let median = 0.5 * (diffs[9] + diffs[10]); // 20 differences
        let (a, b) = crossing(&sample(&xv), &sample(&yv), 0.5);
        assert!((0.5 * (a + b) - median).abs() < 1e-9, "{a} {b} {median}");
    }

    #[test]
    fn cohorts_from_summaries_keep_counts_and_errors() {
        let mut h = LatencyHistogram::default();
        for us in [10u64, 10, 200, 3_000] {
            h.record(std::time::Duration::from_micros(us));
        }
        let c = Cohort::from_latency(&h);
        assert_eq!(c.n(), 4);
        assert_eq!(c.items().len(), 3);
        assert!((c.relative_error() - 0.01).abs() < 1e-12);
        for (&(v, _), truth) in c.items().iter().zip([10.0, 200.0, 3000.0]) {
            assert!((v / truth - 1.0).abs() <= 0.01, "{v} vs {truth}");
        }
        let c = Cohort::from_values(&[2.0, f64::NAN, 2.0, 1.0]);
        assert_eq!((c.n(), c.items()), (3, &[(1.0, 1), (2.0, 2)][..]));
    }
}
