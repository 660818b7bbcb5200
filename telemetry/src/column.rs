//! Per-column window counters: completeness, fixed bins, KLL, categories.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::bins::{BinEdges, add_counts};
use crate::error::MergeError;
use crate::kll::Kll;
use crate::reference::ValidRange;

/// Completeness counters of one column. `count` is every observation,
/// including the missing and invalid ones counted below.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completeness {
    /// Observations, of any kind.
    pub count: u64,
    /// Values absent from the request (null, empty, not supplied).
    pub missing: u64,
    /// NaN values (not binned, not sketched).
    pub nan: u64,
    /// +inf values (not binned, not sketched).
    pub pos_inf: u64,
    /// -inf values (not binned, not sketched).
    pub neg_inf: u64,
    /// Finite values outside the column's valid range from the manifest.
    /// They are still binned and sketched: being out of range is also drift.
    pub out_of_range: u64,
    /// Categories not in the reference vocabulary (counted in the `other` bin).
    pub unseen_category: u64,
}

impl Completeness {
    pub(crate) fn merge(&mut self, other: &Self) {
        let pairs = [
            (&mut self.count, other.count),
            (&mut self.missing, other.missing),
            (&mut self.nan, other.nan),
            (&mut self.pos_inf, other.pos_inf),
            (&mut self.neg_inf, other.neg_inf),
            (&mut self.out_of_range, other.out_of_range),
            (&mut self.unseen_category, other.unseen_category),
        ];
        for (left, right) in pairs {
            *left = left.saturating_add(right);
        }
    }
}

/// Window counters of a numeric column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericProfile {
    /// Exact counts of finite values on the reference's frozen edges.
    pub bins: Vec<u64>,
    /// Missing, NaN, infinite and out-of-range counts.
    pub completeness: Completeness,
    /// KLL sketch of the finite values, when the profile options ask for one.
    pub kll: Option<Kll>,
}

impl NumericProfile {
    pub(crate) fn new(edges: &BinEdges, kll: Option<Kll>) -> Self {
        Self {
            bins: vec![0; edges.bins()],
            completeness: Completeness::default(),
            kll,
        }
    }

    pub(crate) fn record(
        &mut self,
        value: Option<f64>,
        edges: &BinEdges,
        valid: Option<&ValidRange>,
    ) {
        let c = &mut self.completeness;
        c.count = c.count.saturating_add(1);
        let counter = match value {
            None => &mut c.missing,
            Some(v) if v.is_nan() => &mut c.nan,
            Some(v) if v == f64::INFINITY => &mut c.pos_inf,
            Some(v) if v == f64::NEG_INFINITY => &mut c.neg_inf,
            Some(v) => {
                if valid.is_some_and(|r| !r.contains(v)) {
                    c.out_of_range = c.out_of_range.saturating_add(1);
                }
                if let Some(bin) = self.bins.get_mut(edges.locate(v)) {
                    *bin = bin.saturating_add(1);
                }
                if let Some(kll) = &mut self.kll {
                    kll.update(v);
                }
                return;
            }
        };
        *counter = counter.saturating_add(1);
    }
}

/// Window counters of a categorical column.
///
/// Design: categories of the reference vocabulary are counted in a vector
/// indexed like the vocabulary (no names on the wire, and the drift bins
/// are always exact). Unseen categories are counted by name up to the
/// profile's cap of distinct names per window; beyond it they are counted in
/// `overflow` only. Both feed the `other` bin, so the cap never changes a
/// drift statistic, only how much a window says about *which* new values came.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoricalProfile {
    /// Counts per reference vocabulary entry, in vocabulary order.
    pub vocabulary: Vec<u64>,
    /// Counts of unseen categories, by name, at most `category_cap` names per
    /// recorded window (a merged profile holds the union).
    pub unseen: BTreeMap<String, u64>,
    /// Unseen values whose name was not kept because the cap was reached.
    pub overflow: u64,
    /// Missing and unseen-category counts.
    pub completeness: Completeness,
}

impl CategoricalProfile {
    pub(crate) fn new(vocabulary_len: usize) -> Self {
        Self {
            vocabulary: vec![0; vocabulary_len],
            unseen: BTreeMap::new(),
            overflow: 0,
            completeness: Completeness::default(),
        }
    }

    pub(crate) fn record(
        &mut self,
        value: Option<&str>,
        index: &HashMap<String, usize>,
        cap: usize,
    ) {
        let c = &mut self.completeness;
        c.count = c.count.saturating_add(1);
        let Some(category) = value else {
            c.missing = c.missing.saturating_add(1);
            return;
        };
        if let Some(count) = index
            .get(category)
            .and_then(|&i| self.vocabulary.get_mut(i))
        {
            *count = count.saturating_add(1);
            return;
        }
        c.unseen_category = c.unseen_category.saturating_add(1);
        if let Some(count) = self.unseen.get_mut(category) {
            *count = count.saturating_add(1);
        } else if self.unseen.len() < cap {
            self.unseen.insert(category.to_owned(), 1);
        } else {
            self.overflow = self.overflow.saturating_add(1);
        }
    }

    /// Drift bins: vocabulary counts, then one `other` bin (unseen + overflow).
    pub fn bins(&self) -> Vec<u64> {
        let other = self
            .unseen
            .values()
            .fold(self.overflow, |acc, c| acc.saturating_add(*c));
        let mut bins = self.vocabulary.clone();
        bins.push(other);
        bins
    }
}

/// Window counters of one column (input feature or model output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ColumnProfile {
    /// A numeric column.
    Numeric(NumericProfile),
    /// A categorical column.
    Categorical(CategoricalProfile),
}

impl ColumnProfile {
    /// Completeness counters.
    pub fn completeness(&self) -> &Completeness {
        match self {
            ColumnProfile::Numeric(p) => &p.completeness,
            ColumnProfile::Categorical(p) => &p.completeness,
        }
    }

    /// Exact drift bins: numeric bins, or vocabulary + `other`.
    pub fn bins(&self) -> Vec<u64> {
        match self {
            ColumnProfile::Numeric(p) => p.bins.clone(),
            ColumnProfile::Categorical(p) => p.bins(),
        }
    }

    /// The KLL sketch, for numeric columns profiled with one.
    pub fn kll(&self) -> Option<&Kll> {
        match self {
            ColumnProfile::Numeric(p) => p.kll.as_ref(),
            ColumnProfile::Categorical(_) => None,
        }
    }

    /// Checks that `other` can be merged into `self` without changing anything.
    pub(crate) fn check_merge(&self, other: &Self, column: usize) -> Result<(), MergeError> {
        let mismatch = |what: &str| {
            Err(MergeError::ShapeMismatch(format!(
                "column {column}: {what}"
            )))
        };
        match (self, other) {
            (ColumnProfile::Numeric(a), ColumnProfile::Numeric(b)) => {
                if a.bins.len() != b.bins.len() {
                    return mismatch("bin count");
                }
                if a.kll.is_some() != b.kll.is_some() {
                    return mismatch("one side has a KLL sketch, the other not");
                }
                Ok(())
            }
            (ColumnProfile::Categorical(a), ColumnProfile::Categorical(b)) => {
                if a.vocabulary.len() != b.vocabulary.len() {
                    return mismatch("vocabulary size");
                }
                Ok(())
            }
            _ => mismatch("numeric vs categorical"),
        }
    }

    /// Adds `other` into `self`; call [`ColumnProfile::check_merge`] first.
    pub(crate) fn merge(&mut self, other: &Self) -> Result<(), MergeError> {
        match (self, other) {
            (ColumnProfile::Numeric(a), ColumnProfile::Numeric(b)) => {
                add_counts(&mut a.bins, &b.bins);
                a.completeness.merge(&b.completeness);
                if let (Some(ka), Some(kb)) = (&mut a.kll, &b.kll) {
                    ka.merge(kb)?;
                }
            }
            (ColumnProfile::Categorical(a), ColumnProfile::Categorical(b)) => {
                add_counts(&mut a.vocabulary, &b.vocabulary);
                // Union without re-applying the cap: the cap bounds what one
                // window sends, and truncating on merge would make the result
                // depend on the merge order (not associative).
                for (name, count) in &b.unseen {
                    let entry = a.unseen.entry(name.clone()).or_insert(0);
                    *entry = entry.saturating_add(*count);
                }
                a.overflow = a.overflow.saturating_add(b.overflow);
                a.completeness.merge(&b.completeness);
            }
            _ => return Err(MergeError::ShapeMismatch("numeric vs categorical".into())),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn numeric_record_sorts_values_into_counters() {
        let edges = BinEdges::from_cuts("x", vec![0.0, 10.0]).unwrap();
        let range = ValidRange::new(-5.0, 5.0).unwrap();
        let mut p = NumericProfile::new(&edges, Some(Kll::new(200).unwrap()));
        let values = [
            None,
            Some(f64::NAN),
            Some(f64::INFINITY),
            Some(f64::NEG_INFINITY),
            Some(-1.0),
            Some(3.0),
            Some(50.0),
        ];
        values
            .iter()
            .for_each(|&v| p.record(v, &edges, Some(&range)));
        let c = &p.completeness;
        assert_eq!(
            (c.count, c.missing, c.nan, c.pos_inf, c.neg_inf),
            (7, 1, 1, 1, 1)
        );
        assert_eq!(c.out_of_range, 1);
        assert_eq!(p.bins, vec![1, 1, 1]);
        assert_eq!(p.kll.as_ref().unwrap().n(), 3);
    }

    #[test]
    fn categorical_cap_counts_overflow_and_keeps_the_other_bin_exact() {
        let index: HashMap<String, usize> = [("a".to_owned(), 0)].into_iter().collect();
        let mut p = CategoricalProfile::new(1);
        for v in ["a", "x", "y", "x", "z", "w"] {
            p.record(Some(v), &index, 2);
        }
        p.record(None, &index, 2);
        assert_eq!(p.vocabulary, vec![1]);
        assert_eq!(p.unseen.len(), 2);
        assert_eq!(p.unseen["x"], 2);
        assert_eq!(p.overflow, 2);
        assert_eq!(p.completeness.unseen_category, 5);
        assert_eq!(p.completeness.missing, 1);
        assert_eq!(p.bins(), vec![1, 5]);
    }
}
