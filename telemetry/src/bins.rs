//! Frozen bin edges and exact fixed-bin counters.

use serde::{Deserialize, Serialize};

use crate::error::{InvalidReason, MergeError};

/// Frozen bin edges for one numeric column, computed once from reference
/// data and shipped in the model package.
///
/// `cuts` are finite and strictly increasing; they define `cuts.len() + 1`
/// left-closed bins `(-inf, c₁), [c₁, c₂), …, [c_last, +inf)`. The open outer
/// bins catch every finite value, so a window never loses a value to "outside
/// the edges": shifts past the reference's range land in the outer bins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinEdges {
    cuts: Vec<f64>,
}

impl BinEdges {
    /// Equal-mass edges from reference values: cut `j` is the value at rank
    /// `⌊j·n/B⌋` of the sorted finite values, for `j = 1 … B-1`.
    ///
    /// Ties (discrete or heavily repeated values) merge cuts, so a column may
    /// end up with fewer than `bins` bins; a constant column has one bin.
    /// Non-finite values are ignored (completeness counts them).
    pub fn equal_mass(values: &[f64], bins: usize) -> Self {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let Some(&min) = sorted.first() else {
            return Self { cuts: Vec::new() };
        };
        let mut cuts: Vec<f64> = Vec::with_capacity(bins.saturating_sub(1));
        for j in 1..bins {
            // j·n/B < n for j < B, so the index is in range.
            let cut = sorted[(j * n) / bins];
            // A cut at the minimum would leave the first bin empty in the
            // reference; a repeated cut would make an empty bin.
            if cut > min && cuts.last().is_none_or(|&last| cut > last) {
                cuts.push(cut);
            }
        }
        Self { cuts }
    }

    /// Edges from explicit cut points.
    ///
    /// # Errors
    /// [`InvalidReason::Edges`] when the cuts are not finite and strictly increasing.
    pub fn from_cuts(column: &str, cuts: Vec<f64>) -> Result<Self, InvalidReason> {
        let edges = Self { cuts };
        edges.validate(column)?;
        Ok(edges)
    }

    /// The interior cut points.
    pub fn cuts(&self) -> &[f64] {
        &self.cuts
    }

    /// Number of bins (`cuts + 1`).
    pub fn bins(&self) -> usize {
        self.cuts.len() + 1
    }

    /// Bin of a finite value.
    pub fn locate(&self, value: f64) -> usize {
        self.cuts.partition_point(|&cut| cut <= value)
    }

    pub(crate) fn validate(&self, column: &str) -> Result<(), InvalidReason> {
        let finite = self.cuts.iter().all(|c| c.is_finite());
        let increasing = self.cuts.windows(2).all(|w| w[0] < w[1]);
        if finite && increasing {
            Ok(())
        } else {
            Err(InvalidReason::Edges {
                column: column.to_owned(),
            })
        }
    }
}

/// Adds `right` into `left` element-wise, saturating: counters are exact and
/// merge associatively and commutatively; saturation (never reached in
/// practice) keeps hostile inputs from panicking.
pub(crate) fn add_counts(left: &mut [u64], right: &[u64]) {
    for (l, r) in left.iter_mut().zip(right) {
        *l = l.saturating_add(*r);
    }
}

/// Number of equal-width bins of the prediction-confidence histogram.
pub const CONFIDENCE_BINS: usize = 20;

/// Prediction confidence (e.g. top-class probability) in 20 equal-width bins
/// over `[0, 1]`: exact, mergeable, and fine enough for a confidence-drop
/// check (0.05 per bin). Values outside `[0, 1]` or NaN are counted as invalid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfidenceHistogram {
    counts: Vec<u64>,
    invalid: u64,
}

impl Default for ConfidenceHistogram {
    fn default() -> Self {
        Self {
            counts: vec![0; CONFIDENCE_BINS],
            invalid: 0,
        }
    }
}

impl ConfidenceHistogram {
    /// Counts one confidence value.
    pub fn record(&mut self, confidence: f64) {
        if !(0.0..=1.0).contains(&confidence) {
            self.invalid = self.invalid.saturating_add(1);
            return;
        }
        // 1.0 belongs to the last bin (closed on the right).
        let bin = ((confidence * CONFIDENCE_BINS as f64) as usize).min(CONFIDENCE_BINS - 1);
        if let Some(count) = self.counts.get_mut(bin) {
            *count = count.saturating_add(1);
        }
    }

    /// Counts per bin; bin `i` covers `[i/20, (i+1)/20)`.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Values that were NaN or outside `[0, 1]`.
    pub fn invalid(&self) -> u64 {
        self.invalid
    }

    /// Total valid values.
    pub fn total(&self) -> u64 {
        self.counts
            .iter()
            .fold(0u64, |acc, c| acc.saturating_add(*c))
    }

    pub(crate) fn merge(&mut self, other: &Self) -> Result<(), MergeError> {
        if self.counts.len() != other.counts.len() {
            return Err(MergeError::ShapeMismatch("confidence bins".into()));
        }
        add_counts(&mut self.counts, &other.counts);
        self.invalid = self.invalid.saturating_add(other.invalid);
        Ok(())
    }

    pub(crate) fn validate(&self) -> Result<(), InvalidReason> {
        if self.counts.len() == CONFIDENCE_BINS {
            Ok(())
        } else {
            Err(InvalidReason::ConfidenceBins {
                expected: CONFIDENCE_BINS,
                found: self.counts.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn equal_mass_edges_split_reference_evenly() {
        let values: Vec<f64> = (0..1000).map(f64::from).collect();
        let edges = BinEdges::equal_mass(&values, 10);
        assert_eq!(edges.bins(), 10);
        let mut counts = vec![0u64; edges.bins()];
        values.iter().for_each(|&v| counts[edges.locate(v)] += 1);
        assert!(counts.iter().all(|&c| c == 100), "{counts:?}");
        // Outer bins are open: anything finite lands somewhere.
        assert_eq!(edges.locate(-1e300), 0);
        assert_eq!(edges.locate(1e300), 9);
    }

    #[test]
    fn ties_merge_edges_and_constant_columns_get_one_bin() {
        let values: Vec<f64> = (0..1000).map(|i| f64::from(i % 3)).collect();
        let edges = BinEdges::equal_mass(&values, 10);
        assert_eq!(edges.cuts(), &[1.0, 2.0]);
        assert_eq!(BinEdges::equal_mass(&[4.0; 50], 10).bins(), 1);
        assert_eq!(BinEdges::equal_mass(&[f64::NAN], 10).bins(), 1);
    }

    #[test]
    fn explicit_cuts_must_increase() {
        assert!(BinEdges::from_cuts("x", vec![1.0, 2.0]).is_ok());
        assert!(BinEdges::from_cuts("x", vec![2.0, 2.0]).is_err());
        assert!(BinEdges::from_cuts("x", vec![f64::NAN]).is_err());
    }

    #[test]
    fn confidence_bins_are_closed_at_one() {
        let mut h = ConfidenceHistogram::default();
        for c in [0.0, 0.049, 0.05, 0.999, 1.0, 1.2, -0.1, f64::NAN] {
            h.record(c);
        }
        assert_eq!(h.counts()[0], 2);
        assert_eq!(h.counts()[1], 1);
        assert_eq!(h.counts()[19], 2);
        assert_eq!(h.invalid(), 3);
        assert_eq!(h.total(), 5);
    }
}
