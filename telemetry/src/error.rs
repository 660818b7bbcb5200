//! Typed errors. Each variant says when it happens and what to do about it.

use thiserror::Error;

/// Errors from KLL sketch construction, sizing and decoding.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum KllError {
    /// `k` is below DataSketches' minimum of 8. Use [`crate::kll_k_for_rank_error`].
    #[error("KLL k must be at least 8, got {k}")]
    InvalidK {
        /// The rejected `k`.
        k: u16,
    },
    /// The wanted rank error is not a positive number, or is finer than any
    /// `k ≤ 65,535` gives (about 5.1e-5). Ask for a coarser error.
    #[error("no KLL k reaches a rank error of {rank_error}")]
    UnreachableRankError {
        /// The rank error asked for.
        rank_error: f64,
    },
    /// Bytes given as a DataSketches KLL floats image are truncated or
    /// malformed (or hold NaN). The sender is broken or the data was damaged.
    #[error("malformed KLL sketch image: {reason}")]
    Malformed {
        /// What DataSketches rejected.
        reason: String,
    },
}

/// Errors from decoding a profile or reference received from a device, a
/// package or a store. Never panics: any byte string is either decoded and
/// validated or rejected with one of these.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is longer than the caller's limit; it was not parsed.
    #[error("encoded {what} is {len} bytes, over the limit of {limit}")]
    TooLarge {
        /// What was being decoded.
        what: &'static str,
        /// Length of the input.
        len: usize,
        /// The caller's limit.
        limit: usize,
    },
    /// The input is empty (not even a format version byte).
    #[error("encoded {what} is empty")]
    Empty {
        /// What was being decoded.
        what: &'static str,
    },
    /// The leading format byte is not one this build reads: the sender is
    /// newer (upgrade this side) or the bytes are not a profile.
    #[error("{what} format version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion {
        /// What was being decoded.
        what: &'static str,
        /// The version byte found.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// postcard could not decode the body (truncated, corrupted, or a bad KLL image).
    #[error("cannot decode {what}: {source}")]
    Postcard {
        /// What was being decoded.
        what: &'static str,
        /// The postcard error.
        #[source]
        source: postcard::Error,
    },
    /// The body decoded but breaks an invariant (bin count, parameter range).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was being decoded.
        what: &'static str,
        /// The broken invariant.
        reason: InvalidReason,
    },
}

/// Which invariant a decoded profile or reference breaks.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum InvalidReason {
    /// Confidence histogram with a bin count other than [`crate::CONFIDENCE_BINS`].
    #[error("confidence histogram has {found} bins, expected {expected}")]
    ConfidenceBins {
        /// Bins expected.
        expected: usize,
        /// Bins found.
        found: usize,
    },
    /// Latency histogram accuracy outside `(0, 1)`.
    #[error("latency histogram relative accuracy {ppm} ppm is outside (0, 1e6)")]
    LatencyAccuracy {
        /// The accuracy in parts per million.
        ppm: u32,
    },
    /// Bin edges not strictly increasing and finite.
    #[error("bin edges of column {column} are not finite and strictly increasing")]
    Edges {
        /// The column.
        column: String,
    },
    /// A column's bin count does not match its edges or vocabulary.
    #[error("column {column} has {found} bins, expected {expected}")]
    BinCount {
        /// The column.
        column: String,
        /// Bins expected.
        expected: usize,
        /// Bins found.
        found: usize,
    },
    /// Two reference columns share a name.
    #[error("duplicate column name {column}")]
    DuplicateColumn {
        /// The column.
        column: String,
    },
    /// A confusion matrix stores a zero count (a non-canonical encoding).
    #[error("confusion cell ({predicted}, {actual}) holds a zero count")]
    ZeroConfusionCell {
        /// Predicted class index of the cell.
        predicted: u32,
        /// Actual class index of the cell.
        actual: u32,
    },
    /// A valid range whose bounds are not ordered finite numbers.
    #[error("valid range of column {column} is not ordered finite numbers")]
    Range {
        /// The column.
        column: String,
    },
}

/// Errors from building a reference profile from reference data.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReferenceError {
    /// The CSV could not be read (I/O, bad quoting, ragged row).
    #[error("cannot read reference CSV: {0}")]
    Csv(#[from] csv::Error),
    /// The `.npy` file could not be read or is not a 2-D f32/f64 array.
    #[error("cannot read reference .npy: {0}")]
    Npy(String),
    /// A numeric column holds text that is not a number or a missing marker.
    /// Mark the column categorical in [`crate::ReferenceOptions`], or fix the data.
    #[error("column {column}, data row {row}: {text:?} is not a number")]
    NotANumber {
        /// The column.
        column: String,
        /// 1-based data row (the header is row 0).
        row: u64,
        /// The offending text.
        text: String,
    },
    /// The data has no columns, or no rows.
    #[error("reference data has no {0}")]
    NoData(&'static str),
    /// Column names given for a `.npy` do not match its width.
    #[error("{names} column names for {width} columns")]
    NamesMismatch {
        /// Names given.
        names: usize,
        /// Columns in the array.
        width: usize,
    },
    /// An option names a column that the data does not have.
    #[error("option names column {0}, which the data does not have")]
    UnknownColumn(String),
    /// Options out of range (e.g. fewer than 2 bins, KLL k below 8).
    #[error("invalid reference option: {0}")]
    Option(String),
    /// The finished reference breaks an invariant (e.g. duplicate names).
    #[error("invalid reference: {0}")]
    Invalid(#[from] InvalidReason),
}

/// Errors from recording a request into a window.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum RecordError {
    /// The request has a different number of input or output values than the
    /// reference has columns of that role. Nothing was recorded.
    #[error("{role} has {found} values, the reference has {expected} columns")]
    ColumnCount {
        /// `"inputs"` or `"outputs"`.
        role: &'static str,
        /// Columns in the reference.
        expected: usize,
        /// Values given.
        found: usize,
    },
    /// A category was given for a numeric column. Nothing was recorded.
    #[error("column {column} is numeric but was given a category")]
    KindMismatch {
        /// The column.
        column: String,
    },
}

/// Errors from merging profiles.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum MergeError {
    /// The profiles were counted against different references (different bin
    /// edges or vocabularies), so their counters do not line up. Compare them
    /// per model version instead.
    #[error("profiles use different references ({left:016x} vs {right:016x})")]
    ReferenceMismatch {
        /// Fingerprint of the left reference.
        left: u64,
        /// Fingerprint of the right reference.
        right: u64,
    },
    /// Same reference fingerprint but a different shape: a corrupted or
    /// hand-made profile. The merge did not change anything.
    #[error("profiles differ in shape: {0}")]
    ShapeMismatch(String),
    /// The latency histograms use different relative accuracies.
    #[error("latency histograms differ in accuracy ({left} vs {right} ppm)")]
    LatencyAccuracy {
        /// Left accuracy, parts per million.
        left: u32,
        /// Right accuracy, parts per million.
        right: u32,
    },
    /// DataSketches refused a KLL merge (combined weight over `u64::MAX`).
    #[error("KLL merge failed: {reason}")]
    Sketch {
        /// What DataSketches said.
        reason: String,
    },
}

/// Errors from statistics whose inputs do not fit together. Too little data
/// is not an error: it gives an [`crate::Verdict::Inconclusive`] verdict.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum StatsError {
    /// The two bin-count vectors differ in length: they were not counted on
    /// the same edges.
    #[error("bin counts differ in length ({left} vs {right})")]
    BinMismatch {
        /// Left length.
        left: usize,
        /// Right length.
        right: usize,
    },
    /// An option is out of range (α outside (0, 1), a negative threshold).
    #[error("invalid statistics option: {0}")]
    Option(&'static str),
    /// The canary judge's relative scale takes logs, and a cohort holds a
    /// value at or below zero. Judge that metric on the absolute scale.
    #[error("the {cohort} cohort holds a value <= 0, which the relative scale cannot take")]
    NonPositive {
        /// `"control"` or `"canary"`.
        cohort: &'static str,
    },
}
