//! Building a reference from reference data: in-memory columns, CSV, `.npy`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use ndarray::Array2;
use ndarray_npy::ReadNpyExt;

use super::{
    CategoricalReference, ColumnReference, NumericReference, ReferenceKind, ReferenceOptions,
    ReferenceProfile, Role,
};
use crate::bins::BinEdges;
use crate::column::Completeness;
use crate::error::ReferenceError;
use crate::kll::{Kll, MIN_KLL_K};

/// Reference values of one column; `None` is a missing value.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ColumnData {
    /// Numbers (NaN and ±inf allowed: completeness counts them).
    Numeric(Vec<Option<f64>>),
    /// Categories.
    Categorical(Vec<Option<String>>),
}

/// CSV cells read as missing values (after trimming).
const MISSING_MARKERS: [&str; 2] = ["", "NA"];

impl ReferenceProfile {
    /// Builds a reference from a CSV with a header row. Cells that are empty
    /// or `NA` are missing; `NaN`, `inf` and `-inf` are read as such. Columns
    /// named in `options.categorical` are categorical, the others numeric.
    ///
    /// # Errors
    /// [`ReferenceError::Csv`] for unreadable CSV, [`ReferenceError::NotANumber`]
    /// for text in a numeric column, and the errors of
    /// [`ReferenceProfile::from_columns`].
    pub fn from_csv<R: Read>(
        reader: R,
        options: &ReferenceOptions,
    ) -> Result<Self, ReferenceError> {
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(reader);
        let names: Vec<String> = csv.headers()?.iter().map(|h| h.trim().to_owned()).collect();
        let categorical: BTreeSet<&str> = options.categorical.iter().map(String::as_str).collect();
        let mut data: Vec<ColumnData> = names
            .iter()
            .map(|name| {
                if categorical.contains(name.as_str()) {
                    ColumnData::Categorical(Vec::new())
                } else {
                    ColumnData::Numeric(Vec::new())
                }
            })
            .collect();
        for (row, record) in csv.records().enumerate() {
            let record = record?;
            for ((name, column), cell) in names.iter().zip(&mut data).zip(record.iter()) {
                let cell = cell.trim();
                let missing = MISSING_MARKERS.contains(&cell);
                match column {
                    ColumnData::Categorical(values) => {
                        values.push((!missing).then(|| cell.to_owned()));
                    }
                    ColumnData::Numeric(values) if missing => values.push(None),
                    ColumnData::Numeric(values) => {
                        let value =
                            cell.parse::<f64>()
                                .map_err(|_| ReferenceError::NotANumber {
                                    column: name.clone(),
                                    row: row as u64 + 1,
                                    text: cell.chars().take(64).collect(),
                                })?;
                        values.push(Some(value));
                    }
                }
            }
        }
        Self::from_columns(names.into_iter().zip(data).collect(), options)
    }

    /// Builds a reference from a 2-D `.npy` array (rows × columns, `f64` or
    /// `f32`, C or Fortran order), with column names from the manifest. NaN
    /// cells are counted as NaN (a `.npy` has no missing marker). Columns named
    /// in `options.categorical` hold category codes, read as their decimal text
    /// (`3.0` → `"3"`). The input is read whole, at most `limit` bytes.
    ///
    /// # Errors
    /// [`ReferenceError::Npy`] for an unreadable file, over `limit`, or not a
    /// 2-D float array; [`ReferenceError::NamesMismatch`] when `names` does
    /// not match the width; and the errors of [`ReferenceProfile::from_columns`].
    pub fn from_npy<R: Read>(
        reader: R,
        names: &[String],
        limit: u64,
        options: &ReferenceOptions,
    ) -> Result<Self, ReferenceError> {
        let mut bytes = Vec::new();
        reader
            .take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| ReferenceError::Npy(e.to_string()))?;
        if bytes.len() as u64 > limit {
            return Err(ReferenceError::Npy(format!(
                "file is over the {limit}-byte limit"
            )));
        }
        check_npy_shape(&bytes)?;
        let array: Array2<f64> = match Array2::<f64>::read_npy(bytes.as_slice()) {
            Ok(array) => array,
            Err(_) => Array2::<f32>::read_npy(bytes.as_slice())
                .map_err(|e| ReferenceError::Npy(e.to_string()))?
                .mapv(f64::from),
        };
        if names.len() != array.ncols() {
            return Err(ReferenceError::NamesMismatch {
                names: names.len(),
                width: array.ncols(),
            });
        }
        let categorical: BTreeSet<&str> = options.categorical.iter().map(String::as_str).collect();
        let columns = names
            .iter()
            .zip(array.columns())
            .map(|(name, column)| {
                let data = if categorical.contains(name.as_str()) {
                    ColumnData::Categorical(
                        column
                            .iter()
                            .map(|v| (!v.is_nan()).then(|| v.to_string()))
                            .collect(),
                    )
                } else {
                    ColumnData::Numeric(column.iter().map(|&v| Some(v)).collect())
                };
                (name.clone(), data)
            })
            .collect();
        Self::from_columns(columns, options)
    }
}

/// Rejects a `.npy` whose header declares more elements than the file holds,
/// before `ndarray-npy` allocates the whole declared array.
fn check_npy_shape(bytes: &[u8]) -> Result<(), ReferenceError> {
    let bad = |why: &str| ReferenceError::Npy(why.to_owned());
    // Header text sits within the first 64 KiB in every format version.
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(1 << 16)]);
    let start = head
        .find("'shape':")
        .ok_or_else(|| bad("no shape in the header"))?;
    let rest = &head[start..];
    let open = rest.find('(').ok_or_else(|| bad("malformed shape"))?;
    let close = rest.find(')').ok_or_else(|| bad("malformed shape"))?;
    let mut elements: u64 = 1;
    for dim in rest
        .get(open + 1..close)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
    {
        if dim.is_empty() {
            continue;
        }
        let dim: u64 = dim.parse().map_err(|_| bad("malformed shape"))?;
        elements = elements.saturating_mul(dim);
    }
    // Each element takes at least 4 bytes (f32).
    if elements.saturating_mul(4) > bytes.len() as u64 {
        return Err(bad("header declares more data than the file holds"));
    }
    Ok(())
}

pub(super) fn build(
    columns: Vec<(String, ColumnData)>,
    options: &ReferenceOptions,
) -> Result<ReferenceProfile, ReferenceError> {
    if !(2..=4096).contains(&options.bins) {
        return Err(ReferenceError::Option(format!(
            "bins must be 2..=4096, got {}",
            options.bins
        )));
    }
    if options.kll_k < MIN_KLL_K {
        return Err(ReferenceError::Option(format!(
            "kll_k must be at least 8, got {}",
            options.kll_k
        )));
    }
    if options.max_vocabulary == 0 {
        return Err(ReferenceError::Option(
            "max_vocabulary must be at least 1".into(),
        ));
    }
    if columns.is_empty() {
        return Err(ReferenceError::NoData("columns"));
    }
    let rows = |data: &ColumnData| match data {
        ColumnData::Numeric(v) => v.len(),
        ColumnData::Categorical(v) => v.len(),
    };
    if columns.iter().all(|(_, data)| rows(data) == 0) {
        return Err(ReferenceError::NoData("rows"));
    }
    let known: BTreeSet<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    let named = options.categorical.iter().chain(&options.outputs);
    for name in named.chain(options.valid_ranges.iter().map(|(n, _)| n)) {
        if !known.contains(name.as_str()) {
            return Err(ReferenceError::UnknownColumn(name.clone()));
        }
    }
    let mut out = Vec::with_capacity(columns.len());
    for (name, data) in columns {
        let role = if options.outputs.contains(&name) {
            Role::Output
        } else {
            Role::Input
        };
        let valid_range = options
            .valid_ranges
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| *r);
        let (completeness, kind) = match data {
            ColumnData::Numeric(values) => numeric(&values, options, valid_range)?,
            ColumnData::Categorical(values) => categorical(&values, options.max_vocabulary),
        };
        out.push(ColumnReference {
            name,
            role,
            completeness,
            kind,
        });
    }
    let reference = ReferenceProfile { columns: out };
    reference.validate()?;
    Ok(reference)
}

fn numeric(
    values: &[Option<f64>],
    options: &ReferenceOptions,
    valid_range: Option<super::ValidRange>,
) -> Result<(Completeness, ReferenceKind), ReferenceError> {
    let finite: Vec<f64> = values
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    let edges = BinEdges::equal_mass(&finite, options.bins);
    let kll = Kll::new(options.kll_k).map_err(|e| ReferenceError::Option(e.to_string()))?;
    let mut profile = crate::column::NumericProfile::new(&edges, Some(kll));
    values
        .iter()
        .for_each(|&v| profile.record(v, &edges, valid_range.as_ref()));
    let kll = profile.kll.take().ok_or(ReferenceError::NoData("sketch"))?;
    let reference = NumericReference {
        edges,
        counts: profile.bins,
        kll,
        valid_range,
    };
    Ok((profile.completeness, ReferenceKind::Numeric(reference)))
}

fn categorical(values: &[Option<String>], max_vocabulary: usize) -> (Completeness, ReferenceKind) {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut completeness = Completeness::default();
    for value in values {
        completeness.count += 1;
        match value {
            Some(v) => *counts.entry(v.as_str()).or_insert(0) += 1,
            None => completeness.missing += 1,
        }
    }
    // Most frequent first; ties by name so the vocabulary is deterministic.
    let mut ranked: Vec<(&str, u64)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let other: u64 = ranked.iter().skip(max_vocabulary).map(|(_, c)| c).sum();
    ranked.truncate(max_vocabulary);
    let vocabulary = ranked.iter().map(|(v, _)| (*v).to_owned()).collect();
    let mut bins: Vec<u64> = ranked.iter().map(|(_, c)| *c).collect();
    bins.push(other);
    (
        completeness,
        ReferenceKind::Categorical(CategoricalReference {
            vocabulary,
            counts: bins,
        }),
    )
}
