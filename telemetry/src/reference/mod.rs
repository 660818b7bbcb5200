//! The reference profile: what the training data looked like, per column.
//!
//! Built once at pack time from reference data (CSV or `.npy`, see
//! `load.rs`) and stored as `reference.bin` in the model package
//! (ARCHITECTURE §3). Devices count their windows on its frozen edges and
//! vocabularies; drift statistics compare windows with it.

mod load;

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::bins::BinEdges;
use crate::codec::{self, Fnv64};
use crate::column::Completeness;
use crate::error::{DecodeError, InvalidReason, ReferenceError};
use crate::kll::Kll;

pub use load::ColumnData;

/// Whether a column is a model input feature or a model output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Role {
    /// An input feature.
    Input,
    /// A model output (score, probability, class).
    Output,
}

/// Inclusive valid range of a numeric column (from the manifest).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ValidRange {
    min: f64,
    max: f64,
}

impl ValidRange {
    /// `[min, max]`; `None` unless both are finite and `min ≤ max`.
    pub fn new(min: f64, max: f64) -> Option<Self> {
        (min.is_finite() && max.is_finite() && min <= max).then_some(Self { min, max })
    }

    /// Whether `value` is inside the range.
    pub fn contains(&self, value: f64) -> bool {
        (self.min..=self.max).contains(&value)
    }
}

/// Reference of a numeric column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericReference {
    pub(crate) edges: BinEdges,
    pub(crate) counts: Vec<u64>,
    pub(crate) kll: Kll,
    pub(crate) valid_range: Option<ValidRange>,
}

impl NumericReference {
    /// Frozen bin edges.
    pub fn edges(&self) -> &BinEdges {
        &self.edges
    }
    /// Reference counts per bin (fractions are `counts / sum`).
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }
    /// KLL sketch of the reference values.
    pub fn kll(&self) -> &Kll {
        &self.kll
    }
    /// Valid range, if the manifest gives one.
    pub fn valid_range(&self) -> Option<&ValidRange> {
        self.valid_range.as_ref()
    }
}

/// Reference of a categorical column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoricalReference {
    pub(crate) vocabulary: Vec<String>,
    /// Counts per vocabulary entry, then one `other` count (categories cut by
    /// the vocabulary cap).
    pub(crate) counts: Vec<u64>,
}

impl CategoricalReference {
    /// The vocabulary, most frequent first.
    pub fn vocabulary(&self) -> &[String] {
        &self.vocabulary
    }
    /// Counts per vocabulary entry, then the `other` count.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }
}

/// What a reference knows about one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ReferenceKind {
    /// A numeric column.
    Numeric(NumericReference),
    /// A categorical column.
    Categorical(CategoricalReference),
}

/// One column of a reference profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnReference {
    pub(crate) name: String,
    pub(crate) role: Role,
    pub(crate) completeness: Completeness,
    pub(crate) kind: ReferenceKind,
}

impl ColumnReference {
    /// Column name (feature or output name from the manifest).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Input or output.
    pub fn role(&self) -> Role {
        self.role
    }
    /// Completeness of the reference data itself.
    pub fn completeness(&self) -> &Completeness {
        &self.completeness
    }
    /// Numeric or categorical details.
    pub fn kind(&self) -> &ReferenceKind {
        &self.kind
    }
    /// Exact reference drift bins (numeric bins, or vocabulary + `other`).
    pub fn bins(&self) -> &[u64] {
        match &self.kind {
            ReferenceKind::Numeric(n) => &n.counts,
            ReferenceKind::Categorical(c) => &c.counts,
        }
    }
}

/// Options for building a reference.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceOptions {
    /// Equal-mass bins per numeric column (at least 2; default 10).
    pub bins: usize,
    /// KLL `k` of the reference sketches (default 1,000: ε ≈ 0.27 %; the
    /// reference is built once and shipped once, so it can afford more
    /// accuracy than a window).
    pub kll_k: u16,
    /// Most categories kept per categorical column; the rest count as `other`.
    pub max_vocabulary: usize,
    /// Columns to treat as categorical (all others are numeric).
    pub categorical: Vec<String>,
    /// Columns that are model outputs (all others are inputs).
    pub outputs: Vec<String>,
    /// Valid ranges of numeric columns, by name.
    pub valid_ranges: Vec<(String, ValidRange)>,
}

impl Default for ReferenceOptions {
    fn default() -> Self {
        Self {
            bins: 10,
            kll_k: 1_000,
            max_vocabulary: 256,
            categorical: Vec::new(),
            outputs: Vec::new(),
            valid_ranges: Vec::new(),
        }
    }
}

/// Default decode limit for a reference: 16 MiB.
pub const REFERENCE_DECODE_LIMIT: usize = 16 << 20;

/// The reference profile of a model: one [`ColumnReference`] per input
/// feature and output, in manifest order (inputs first is not required).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceProfile {
    pub(crate) columns: Vec<ColumnReference>,
}

impl ReferenceProfile {
    /// Builds a reference from in-memory columns `(name, data)`.
    ///
    /// # Errors
    /// [`ReferenceError::NoData`] without columns; [`ReferenceError::Option`]
    /// for bad options; [`ReferenceError::UnknownColumn`] when an option names
    /// a column not in `columns`; [`ReferenceError::Invalid`] for duplicate names.
    pub fn from_columns(
        columns: Vec<(String, ColumnData)>,
        options: &ReferenceOptions,
    ) -> Result<Self, ReferenceError> {
        load::build(columns, options)
    }

    /// Columns in order.
    pub fn columns(&self) -> &[ColumnReference] {
        &self.columns
    }

    /// A column by name.
    pub fn column(&self, name: &str) -> Option<&ColumnReference> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Fingerprint of everything windows are counted against (names, roles,
    /// edges, vocabularies, valid ranges; not the reference counts). Windows
    /// carry it so that merging counts made on different edges is an error.
    pub fn fingerprint(&self) -> u64 {
        let mut h = Fnv64::new();
        for column in &self.columns {
            h.write_str(&column.name);
            h.write(&[column.role as u8]);
            match &column.kind {
                ReferenceKind::Numeric(n) => {
                    h.write(&[0]);
                    h.write(&(n.edges.cuts().len() as u64).to_le_bytes());
                    n.edges
                        .cuts()
                        .iter()
                        .for_each(|c| h.write(&c.to_bits().to_le_bytes()));
                    if let Some(r) = &n.valid_range {
                        h.write(&r.min.to_bits().to_le_bytes());
                        h.write(&r.max.to_bits().to_le_bytes());
                    }
                }
                ReferenceKind::Categorical(c) => {
                    h.write(&[1]);
                    h.write(&(c.vocabulary.len() as u64).to_le_bytes());
                    c.vocabulary.iter().for_each(|v| h.write_str(v));
                }
            }
        }
        h.finish()
    }

    /// Encodes as `reference.bin`: a format-version byte, then postcard.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(codec::REFERENCE_VERSION, self)
    }

    /// Decodes and validates `reference.bin`. Never panics on any input.
    ///
    /// # Errors
    /// [`DecodeError`] when the bytes are over `limit`, of another format
    /// version, undecodable, or break an invariant.
    pub fn from_bytes(bytes: &[u8], limit: usize) -> Result<Self, DecodeError> {
        let reference: Self =
            codec::decode("reference profile", bytes, limit, codec::REFERENCE_VERSION)?;
        reference
            .validate()
            .map_err(|reason| DecodeError::Invalid {
                what: "reference profile",
                reason,
            })?;
        Ok(reference)
    }

    pub(crate) fn validate(&self) -> Result<(), InvalidReason> {
        let mut names = BTreeSet::new();
        for column in &self.columns {
            if !names.insert(column.name.as_str()) {
                return Err(InvalidReason::DuplicateColumn {
                    column: column.name.clone(),
                });
            }
            let (expected, found) = match &column.kind {
                ReferenceKind::Numeric(n) => {
                    n.edges.validate(&column.name)?;
                    if n.valid_range
                        .is_some_and(|r| ValidRange::new(r.min, r.max).is_none())
                    {
                        return Err(InvalidReason::Range {
                            column: column.name.clone(),
                        });
                    }
                    (n.edges.bins(), n.counts.len())
                }
                ReferenceKind::Categorical(c) => (c.vocabulary.len() + 1, c.counts.len()),
            };
            if expected != found {
                return Err(InvalidReason::BinCount {
                    column: column.name.clone(),
                    expected,
                    found,
                });
            }
        }
        Ok(())
    }

    /// Vocabulary lookup tables per column (empty for numeric columns).
    pub(crate) fn vocabulary_indexes(&self) -> Vec<HashMap<String, usize>> {
        self.columns
            .iter()
            .map(|column| match &column.kind {
                ReferenceKind::Categorical(c) => c
                    .vocabulary
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (v.clone(), i))
                    .collect(),
                ReferenceKind::Numeric(_) => HashMap::new(),
            })
            .collect()
    }
}
