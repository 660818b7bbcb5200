//! KLL quantile sketches from Apache DataSketches, wrapped for profiles.
//!
//! Design: the sketch is `datasketches::kll::KllSketch<KllFloat<f32>>`, so its
//! serialized form is the DataSketches compact image of a *floats* sketch
//! (`kll_floats_sketch` in Python and C++, `KllFloatsSketch` in Java). Items
//! are `f32` because model tensors are `f32`; a retained item costs 4 bytes
//! on the wire instead of 8.
//!
//! Inside profiles the sketch travels as those compact bytes (a postcard byte
//! string), so what a device sends is readable by any DataSketches library.

use std::fmt;

use datasketches::common::SearchCriteria;
use datasketches::kll::{KllFloat, KllSketch};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{KllError, MergeError};

/// DataSketches' default `k`: normalized rank error about 1.33 % (see [`kll_rank_error`]).
pub const DEFAULT_KLL_K: u16 = 200;

/// Smallest `k` DataSketches accepts (its `MIN_K`, equal to the level minimum `m = 8`).
pub const MIN_KLL_K: u16 = 8;

/// Normalized single-sided rank error of a KLL sketch with parameter `k`, at
/// 99 % confidence: `ε(k) = 2.296 / k^0.9723`.
///
/// This is the empirical fit DataSketches publishes and uses in every language
/// (`KllSketch.getNormalizedRankError(k, false)` in Java, `normalized_rank_error`
/// in the Rust crate); it is the `ε` that the KLL-based tests add to their
/// decision bounds.
pub fn kll_rank_error(k: u16) -> f64 {
    2.296 / f64::from(k.max(MIN_KLL_K)).powf(0.9723)
}

/// Smallest `k` whose rank error [`kll_rank_error`] is at most `rank_error`.
///
/// Sizing matters for decisions: a two-sample KS test rejects when
/// `D > c(α)·√((n+m)/(n·m)) + ε₁ + ε₂`. At α = 0.05 and n = m = 10,000 the
/// sampling term is 0.019, while two k = 200 sketches add 2 × 0.0133 = 0.027,
/// more than doubling the smallest detectable shift. To keep the sketch terms
/// below a quarter of the sampling term there, ask for ε ≤ 0.0024, which gives
/// k ≈ 1,200 (about 3·k retained `f32` items at most: roughly 15 KB per sketch).
///
/// Bins derived from a sketch instead of exact counters inherit ε too: the
/// worst-case PSI error grows like 16·B²·ε² for B bins (issue 4), which is why
/// PSI, Jensen-Shannon and chi-square here use exact fixed-bin counters.
///
/// # Errors
/// [`KllError::UnreachableRankError`] when `rank_error` is not a finite
/// positive number, or so small that no `k ≤ 65,535` reaches it (below about
/// 5.1e-5).
pub fn kll_k_for_rank_error(rank_error: f64) -> Result<u16, KllError> {
    if !(rank_error.is_finite() && rank_error > 0.0) {
        return Err(KllError::UnreachableRankError { rank_error });
    }
    // Invert ε = 2.296 / k^0.9723, round down, then step up past rounding.
    let estimate = (2.296 / rank_error).powf(1.0 / 0.9723).floor();
    if estimate > f64::from(u16::MAX) {
        return Err(KllError::UnreachableRankError { rank_error });
    }
    // The float estimate fits u16 here: it is positive and at most u16::MAX.
    let mut k = (estimate as u16).max(MIN_KLL_K);
    while kll_rank_error(k) > rank_error {
        k = k
            .checked_add(1)
            .ok_or(KllError::UnreachableRankError { rank_error })?;
    }
    Ok(k)
}

/// A KLL sketch of finite `f32` values.
#[derive(Clone, PartialEq)]
pub struct Kll {
    sketch: KllSketch<KllFloat<f32>>,
}

impl fmt::Debug for Kll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kll")
            .field("k", &self.sketch.k())
            .field("n", &self.sketch.n())
            .field("retained", &self.sketch.num_retained())
            .finish()
    }
}

impl Kll {
    /// An empty sketch with parameter `k` (see [`kll_k_for_rank_error`]).
    ///
    /// # Errors
    /// [`KllError::InvalidK`] when `k < 8`.
    pub fn new(k: u16) -> Result<Self, KllError> {
        let sketch = KllSketch::new(k).map_err(|_| KllError::InvalidK { k })?;
        Ok(Self { sketch })
    }

    /// Adds one value. Non-finite values are ignored: completeness counters
    /// count them, and a sketch of ±inf would make every distance infinite.
    pub fn update(&mut self, value: f64) {
        let value = value as f32;
        if !value.is_finite() {
            return;
        }
        if let Ok(item) = KllFloat::<f32>::new(value) {
            self.sketch.update(item);
        }
    }

    /// Number of values summarized.
    pub fn n(&self) -> u64 {
        self.sketch.n()
    }

    /// The configured `k`.
    pub fn k(&self) -> u16 {
        self.sketch.k()
    }

    /// Number of items the sketch retains (what its size grows with).
    pub fn retained(&self) -> usize {
        self.sketch.num_retained()
    }

    /// The sketch's rank error ε at 99 % confidence. After merges this is the
    /// error of the smallest `k` that contributed (DataSketches' `min_k`).
    /// Zero while the sketch still holds every value it saw (exact mode).
    pub fn rank_error(&self) -> f64 {
        if self.sketch.is_estimation_mode() {
            self.sketch.normalized_rank_error()
        } else {
            0.0
        }
    }

    /// Smallest and largest value seen (exact, kept outside the compactors).
    pub fn min_max(&self) -> Option<(f64, f64)> {
        let min = self.sketch.min_item()?;
        let max = self.sketch.max_item()?;
        Some((f64::from(**min), f64::from(**max)))
    }

    /// Approximate quantile at normalized `rank` in `[0, 1]`; `None` when the
    /// sketch is empty or `rank` is outside `[0, 1]`.
    pub fn quantile(&self, rank: f64) -> Option<f64> {
        self.sketch
            .quantile(rank, SearchCriteria::Inclusive)
            .ok()
            .flatten()
            .map(|item| f64::from(*item))
    }

    /// Merges `other` into `self` (DataSketches KLL merge).
    pub(crate) fn merge(&mut self, other: &Kll) -> Result<(), MergeError> {
        self.sketch
            .merge(&other.sketch)
            .map_err(|source| MergeError::Sketch {
                reason: source.to_string(),
            })
    }

    /// The DataSketches compact serialized image (`kll_floats_sketch`).
    pub fn to_datasketches_bytes(&self) -> Vec<u8> {
        self.sketch.serialize()
    }

    /// Reads a DataSketches compact image of a floats sketch, from any
    /// DataSketches library.
    ///
    /// # Errors
    /// [`KllError::Malformed`] when the bytes are not a valid floats-sketch image.
    pub fn from_datasketches_bytes(bytes: &[u8]) -> Result<Self, KllError> {
        let sketch = KllSketch::deserialize(bytes).map_err(|source| KllError::Malformed {
            reason: source.to_string(),
        })?;
        Ok(Self { sketch })
    }

    /// The retained items with their weights, sorted by value: the weighted
    /// sample the sketch stands for (weights sum to [`Kll::n`]).
    ///
    /// Design: datasketches 0.6 keeps its sorted view's entries private, and
    /// the sketch-vs-sketch statistics need the whole step CDF, so the items
    /// are read back from the compact image, whose layout is the documented
    /// cross-language format (DataSketches `KllPreambleUtil`): an item at
    /// level `h` has weight `2^h`.
    pub(crate) fn weighted_items(&self) -> Vec<(f64, u64)> {
        let mut items = parse_compact_items(&self.sketch.serialize()).unwrap_or_default();
        items.sort_by(|a, b| a.0.total_cmp(&b.0));
        items
    }
}

/// Reads `(value, weight)` pairs from a compact floats image; `None` when the
/// image does not have the layout below (a unit test pins it to the crate).
fn parse_compact_items(bytes: &[u8]) -> Option<Vec<(f64, u64)>> {
    const FLAG_EMPTY: u8 = 1;
    const FLAG_SINGLE_ITEM: u8 = 4;
    let f32_at = |offset: usize| -> Option<f64> {
        let raw: [u8; 4] = bytes.get(offset..offset + 4)?.try_into().ok()?;
        Some(f64::from(f32::from_le_bytes(raw)))
    };
    let flags = *bytes.get(3)?;
    if flags & FLAG_EMPTY != 0 {
        return Some(Vec::new());
    }
    if flags & FLAG_SINGLE_ITEM != 0 {
        return Some(vec![(f32_at(8)?, 1)]);
    }
    // Full image: 8-byte preamble, n (u64), min_k (u16), num_levels (u8), a
    // spare byte, then num_levels u32 level offsets, min, max, and the items
    // level by level.
    let num_levels = usize::from(*bytes.get(18)?);
    let offset_at = |level: usize| -> Option<usize> {
        let at = 20 + 4 * level;
        let raw: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(raw)).ok()
    };
    let items_start = 20 + 4 * num_levels + 8;
    let total = bytes.len().checked_sub(items_start)? / 4;
    let first = offset_at(0)?;
    let mut items = Vec::with_capacity(total);
    let mut index = 0;
    for level in 0..num_levels {
        let size = if level + 1 < num_levels {
            offset_at(level + 1)?.checked_sub(offset_at(level)?)?
        } else {
            total.checked_sub(offset_at(level)?.checked_sub(first)?)?
        };
        let weight = 1u64.checked_shl(u32::try_from(level).ok()?)?;
        for _ in 0..size {
            items.push((f32_at(items_start + 4 * index)?, weight));
            index += 1;
        }
    }
    Some(items)
}

impl Serialize for Kll {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.sketch.serialize())
    }
}

impl<'de> Deserialize<'de> for Kll {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: Vec<u8> = serde_bytes_vec(deserializer)?;
        Kll::from_datasketches_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// Deserializes a byte string (postcard writes `serialize_bytes` as a length
/// and the raw bytes) without pulling in `serde_bytes`.
fn serde_bytes_vec<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    struct BytesVisitor;
    impl<'de> serde::de::Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a DataSketches KLL image as a byte string")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::new();
            while let Some(byte) = seq.next_element::<u8>()? {
                out.push(byte);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_bytes(BytesVisitor)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn k_for_rank_error_inverts_the_error_fit() {
        assert_eq!(kll_k_for_rank_error(kll_rank_error(200)).unwrap(), 200);
        let k = kll_k_for_rank_error(0.0024).unwrap();
        assert!(kll_rank_error(k) <= 0.0024 && kll_rank_error(k - 1) > 0.0024);
        assert!((1100..1400).contains(&k), "k = {k}");
        assert!(kll_k_for_rank_error(0.0).is_err());
        assert!(kll_k_for_rank_error(f64::NAN).is_err());
        assert!(kll_k_for_rank_error(1e-6).is_err());
        assert_eq!(kll_k_for_rank_error(0.9).unwrap(), MIN_KLL_K);
    }

    #[test]
    fn weighted_items_reproduce_the_sketch_ranks() {
        for n in [0usize, 1, 2, 150, 5_000] {
            let mut kll = Kll::new(64).unwrap();
            for i in 0..n {
                kll.update(((i * 7919) % 1000) as f64 / 10.0);
            }
            let items = kll.weighted_items();
            let total: u64 = items.iter().map(|&(_, w)| w).sum();
            assert_eq!(total, kll.n(), "n = {n}");
            // The parsed weighted sample must give exactly the crate's own ranks.
            for &(value, _) in &items {
                let item = KllFloat::<f32>::new(value as f32).unwrap();
                let expected = kll.sketch.rank(&item, SearchCriteria::Inclusive).unwrap();
                let ours = items
                    .iter()
                    .filter(|&&(v, _)| v <= value)
                    .map(|&(_, w)| w)
                    .sum::<u64>() as f64
                    / kll.n() as f64;
                assert!((ours - expected).abs() < 1e-12, "n = {n}");
            }
        }
    }

    #[test]
    fn non_finite_values_are_not_sketched() {
        let mut kll = Kll::new(200).unwrap();
        kll.update(f64::NAN);
        kll.update(f64::INFINITY);
        kll.update(1e300); // overflows f32 to +inf
        kll.update(1.5);
        assert_eq!(kll.n(), 1);
        assert_eq!(kll.min_max(), Some((1.5, 1.5)));
    }

    #[test]
    fn garbage_images_are_errors() {
        assert!(Kll::from_datasketches_bytes(&[]).is_err());
        assert!(Kll::from_datasketches_bytes(&[5, 1, 15, 0, 200, 0, 8, 0, 1]).is_err());
        let mut kll = Kll::new(32).unwrap();
        (0..1000).for_each(|i| kll.update(f64::from(i)));
        let bytes = kll.to_datasketches_bytes();
        for cut in [1, 8, 20, bytes.len() - 1] {
            assert!(
                Kll::from_datasketches_bytes(&bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        assert_eq!(Kll::from_datasketches_bytes(&bytes).unwrap(), kll);
        assert!(Kll::new(7).is_err());
    }
}
