//! Mergeable latency histogram with logarithmic buckets.
//!
//! Design: the buckets are those of DDSketch (Masson, Rim and Lee, "DDSketch:
//! a fast and fully-mergeable quantile sketch with relative-error
//! guarantees", VLDB 2019): bucket `i` holds latencies in `(γ^(i-1), γ^i]`
//! microseconds with `γ = (1+α)/(1-α)`. We chose it over a KLL or t-digest
//! for latency because
//! - the merge is *exact*: two histograms with the same α have the same
//!   bucket boundaries, so merging is adding integer counts, associative,
//!   commutative and independent of the order windows arrive in;
//! - its guarantee is *relative* error α on every quantile, which is what a
//!   latency SLO needs on a heavy tail (a rank error, as KLL gives, can be
//!   off by a factor on a p99);
//! - its size grows with the log of the latency range, not with traffic: at
//!   α = 1 % a range of 1 ms to 10 s needs at most 461 buckets, typically
//!   a few dozen are occupied in a window.
//!
//! HDR histograms give the same exact merges with a fixed, larger footprint;
//! the `sketches-ddsketch` crate stores float sums, which would break
//! exact merge laws, so the few lines here are our own.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{InvalidReason, MergeError};

/// Default relative accuracy: 1 % (10,000 parts per million).
pub const DEFAULT_LATENCY_ACCURACY_PPM: u32 = 10_000;

/// Latencies at or below this many microseconds share the lowest bucket.
const MIN_MICROS: f64 = 1.0;

/// A log-bucketed latency histogram (see the module docs for why).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    accuracy_ppm: u32,
    /// Bucket index → count. Latencies ≤ 1 µs go to bucket 0.
    buckets: BTreeMap<i32, u64>,
    count: u64,
    /// Integer sum so that merges stay exact (a float sum is not associative).
    sum_nanos: u64,
    max_nanos: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::with_accuracy_ppm(DEFAULT_LATENCY_ACCURACY_PPM)
    }
}

impl LatencyHistogram {
    /// An empty histogram with relative accuracy `ppm / 1e6`; clamped to
    /// `[1, 500_000]` ppm (0.0001 % to 50 %).
    pub fn with_accuracy_ppm(ppm: u32) -> Self {
        Self {
            accuracy_ppm: ppm.clamp(1, 500_000),
            buckets: BTreeMap::new(),
            count: 0,
            sum_nanos: 0,
            max_nanos: 0,
        }
    }

    fn gamma(&self) -> f64 {
        let alpha = f64::from(self.accuracy_ppm) / 1e6;
        (1.0 + alpha) / (1.0 - alpha)
    }

    /// Relative accuracy α of [`LatencyHistogram::quantile`].
    pub fn relative_accuracy(&self) -> f64 {
        f64::from(self.accuracy_ppm) / 1e6
    }

    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let micros = latency.as_secs_f64() * 1e6;
        let index = if micros <= MIN_MICROS {
            0
        } else {
            // ceil(log_γ x) is ≥ 1 here and at most ~1e6 for any Duration.
            (micros.ln() / self.gamma().ln()).ceil() as i32
        };
        let bucket = self.buckets.entry(index).or_insert(0);
        *bucket = bucket.saturating_add(1);
        self.count = self.count.saturating_add(1);
        self.sum_nanos = self.sum_nanos.saturating_add(nanos);
        self.max_nanos = self.max_nanos.max(nanos);
    }

    /// Number of latencies recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Exact mean (from the integer sum); `None` when empty.
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_nanos(self.sum_nanos / self.count))
    }

    /// Exact sum of every latency, in nanoseconds (saturating).
    pub(crate) fn sum_nanos(&self) -> u64 {
        self.sum_nanos
    }

    /// Exact maximum; `None` when empty.
    pub fn max(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_nanos(self.max_nanos))
    }

    /// Latency at quantile `q` in `[0, 1]`, within relative error α (above
    /// 1 µs); `None` when empty or `q` is outside `[0, 1]`.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        // Rank of the wanted item, 0-based, as in DDSketch's `getValueAtQuantile`.
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        for (&index, &count) in &self.buckets {
            seen = seen.saturating_add(count);
            if seen > rank {
                let micros = self.representative_micros(index);
                let estimate = Duration::from_secs_f64((micros / 1e6).min(1e9));
                return Some(estimate.min(Duration::from_nanos(self.max_nanos)));
            }
        }
        self.max()
    }

    /// The value, in microseconds, that stands for bucket `index`: the
    /// bucket's midpoint in relative terms, `2γ^i/(γ+1)`, within relative
    /// error α of every latency in `(γ^(i-1), γ^i]` (DDSketch, §2). Bucket 0
    /// (everything at or below 1 µs) is represented by 1 µs.
    pub(crate) fn representative_micros(&self, index: i32) -> f64 {
        if index <= 0 {
            return MIN_MICROS;
        }
        let gamma = self.gamma();
        2.0 * gamma.powi(index) / (gamma + 1.0)
    }

    /// Buckets as `(index, count)`; bucket `i > 0` covers `(γ^(i-1), γ^i]` µs.
    pub fn buckets(&self) -> impl Iterator<Item = (i32, u64)> + '_ {
        self.buckets.iter().map(|(&i, &c)| (i, c))
    }

    /// Adds `other`'s counts (same accuracy only): merging is exact.
    pub fn merge(&mut self, other: &Self) -> Result<(), MergeError> {
        if self.accuracy_ppm != other.accuracy_ppm {
            return Err(MergeError::LatencyAccuracy {
                left: self.accuracy_ppm,
                right: other.accuracy_ppm,
            });
        }
        for (&index, &count) in &other.buckets {
            let bucket = self.buckets.entry(index).or_insert(0);
            *bucket = bucket.saturating_add(count);
        }
        self.count = self.count.saturating_add(other.count);
        self.sum_nanos = self.sum_nanos.saturating_add(other.sum_nanos);
        self.max_nanos = self.max_nanos.max(other.max_nanos);
        Ok(())
    }

    pub(crate) fn validate(&self) -> Result<(), InvalidReason> {
        if (1..=500_000).contains(&self.accuracy_ppm) {
            Ok(())
        } else {
            Err(InvalidReason::LatencyAccuracy {
                ppm: self.accuracy_ppm,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn quantiles_are_within_relative_accuracy() {
        let mut h = LatencyHistogram::default();
        let mut exact: Vec<u64> = (1..=10_000u64).map(|i| 50 + (i * i) % 100_000).collect();
        exact
            .iter()
            .for_each(|&us| h.record(Duration::from_micros(us)));
        exact.sort_unstable();
        for q in [0.5, 0.9, 0.99, 0.999] {
            let truth = exact[(q * (exact.len() - 1) as f64).floor() as usize] as f64;
            let estimate = h.quantile(q).unwrap().as_secs_f64() * 1e6;
            assert!(
                (estimate - truth).abs() <= 0.0101 * truth,
                "q {q}: {estimate} vs {truth}"
            );
        }
        assert_eq!(h.count(), 10_000);
        assert_eq!(
            h.max().unwrap(),
            Duration::from_micros(*exact.last().unwrap())
        );
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let mut a = LatencyHistogram::default();
        let mut b = LatencyHistogram::default();
        let mut all = LatencyHistogram::default();
        for i in 0..500u64 {
            let latency = Duration::from_nanos(i * 37_411 % 9_000_000);
            if i % 3 == 0 {
                a.record(latency);
            } else {
                b.record(latency);
            }
            all.record(latency);
        }
        a.merge(&b).unwrap();
        assert_eq!(a, all);
        let other = LatencyHistogram::with_accuracy_ppm(20_000);
        assert!(a.merge(&other).is_err());
    }

    #[test]
    fn empty_and_tiny_latencies() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        h.record(Duration::ZERO);
        assert_eq!(h.quantile(0.5), Some(Duration::ZERO));
        h.record(Duration::from_nanos(900));
        h.record(Duration::from_nanos(900));
        assert_eq!(h.quantile(0.5), Some(Duration::from_nanos(900)));
        assert_eq!(h.quantile(1.5), None);
    }
}
