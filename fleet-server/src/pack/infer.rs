//! Running the model on reference rows: output columns for the reference
//! profile, and the golden self-test arrays.

use outpost_runtime::{DatumType, Dim, Model, Tensor, TensorSpec};
use outpost_telemetry::ColumnData;

use super::PackError;

/// Rows per inference call: large enough to amortise a call, small enough
/// to keep a big reference set's intermediate tensors modest.
const BATCH: usize = 256;

/// How one model input takes its features from a reference row.
#[derive(Debug, Clone)]
pub(crate) struct InputLayout {
    pub(crate) name: String,
    pub(crate) dtype: DatumType,
    /// The shape of one row (the dims after the batch).
    pub(crate) row_shape: Vec<usize>,
    /// Rows per call: 1 for a model with a fixed batch of one.
    pub(crate) batch: usize,
}

impl InputLayout {
    pub(crate) fn width(&self) -> usize {
        self.row_shape.iter().product()
    }

    /// The layout of `spec`, or why reference rows cannot be fed to it.
    pub(crate) fn of(spec: &TensorSpec) -> Result<InputLayout, PackError> {
        let bad = |reason: String| PackError::Schema(format!("input {}: {reason}", spec.name));
        let (first, rest) = spec
            .shape
            .split_first()
            .ok_or_else(|| bad("is a scalar; reference rows need a batch dimension".into()))?;
        let batch = match first {
            Dim::Symbolic(_) => BATCH,
            Dim::Fixed(1) => 1,
            Dim::Fixed(n) => {
                return Err(bad(format!(
                    "has a fixed batch of {n}; export the model with a symbolic batch dimension"
                )));
            }
        };
        let row_shape = rest
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => usize::try_from(*n).map_err(|_| bad("dimension too large".into())),
                Dim::Symbolic(s) => Err(bad(format!(
                    "dimension {s} is symbolic; reference rows need fixed feature dimensions \
                     (pin it with a fixed shape in the model)"
                ))),
            })
            .collect::<Result<_, _>>()?;
        Ok(InputLayout {
            name: spec.name.clone(),
            dtype: dtype_of(&spec.dtype).ok_or_else(|| {
                bad(format!(
                    "dtype {} cannot be fed from numeric reference data",
                    spec.dtype
                ))
            })?,
            row_shape,
            batch,
        })
    }
}

fn dtype_of(name: &str) -> Option<DatumType> {
    Some(match name {
        "f32" => DatumType::F32,
        "f64" => DatumType::F64,
        "i64" => DatumType::I64,
        "i32" => DatumType::I32,
        "i8" => DatumType::I8,
        "u8" => DatumType::U8,
        _ => return None,
    })
}

fn engine(stage: &str, e: impl std::fmt::Display) -> PackError {
    PackError::Run(format!("{stage}: {e}"))
}

/// The input tensors for `rows` (each row: every input's features in order).
pub(crate) fn input_tensors(
    layouts: &[InputLayout],
    rows: &[Vec<f64>],
) -> Result<Vec<Tensor>, PackError> {
    let mut offset = 0;
    let mut out = Vec::with_capacity(layouts.len());
    for l in layouts {
        let w = l.width();
        let data: Vec<f64> = rows
            .iter()
            .flat_map(|r| r[offset..offset + w].iter().copied())
            .collect();
        let mut shape = vec![rows.len()];
        shape.extend(&l.row_shape);
        let t = Tensor::from_shape(&shape, &data).map_err(|e| engine("shaping inputs", e))?;
        let t = t
            .cast_to_dt(l.dtype)
            .map_err(|e| engine("casting inputs", e))?
            .into_owned();
        out.push(t);
        offset += w;
    }
    Ok(out)
}

/// Runs the model on every row in batches; each output concatenated over
/// the rows.
pub(crate) fn run_rows(
    model: &Model,
    layouts: &[InputLayout],
    rows: &[Vec<f64>],
) -> Result<Vec<Tensor>, PackError> {
    let batch = layouts
        .iter()
        .map(|l| l.batch)
        .min()
        .unwrap_or(BATCH)
        .max(1);
    let mut session = model.session().map_err(PackError::Model)?;
    let mut per_output: Vec<Vec<Tensor>> = vec![];
    for chunk in rows.chunks(batch) {
        let outputs = session
            .run(input_tensors(layouts, chunk)?)
            .map_err(PackError::Model)?;
        per_output.resize_with(outputs.len(), Vec::new);
        for (all, t) in per_output.iter_mut().zip(outputs) {
            all.push(t);
        }
    }
    per_output
        .iter()
        .map(|ts| Tensor::stack_tensors(0, ts).map_err(|e| engine("joining outputs", e)))
        .collect()
}

/// The reference's output columns from the first output, following the
/// agent's mapping (agent/src/telemetry.rs): a labelled classifier gets one
/// `class` column (the argmax); otherwise one column per output value,
/// named by its label, or `NAME` / `NAME_i`. `runnable[i]` says whether
/// data row `i` was run; the rows that were not have missing outputs.
pub(crate) fn output_columns(
    spec: &TensorSpec,
    output: &Tensor,
    runnable: &[bool],
) -> Result<Vec<(String, ColumnData)>, PackError> {
    let ran = runnable.iter().filter(|r| **r).count();
    let values: Vec<f64> = output
        .cast_to::<f64>()
        .map_err(|e| engine("reading outputs", e))?
        .to_plain_array_view::<f64>()
        .map_err(|e| engine("reading outputs", e))?
        .iter()
        .copied()
        .collect();
    if ran == 0 || !values.len().is_multiple_of(ran) || output.shape().first() != Some(&ran) {
        return Err(PackError::Run(format!(
            "output {} has shape {:?} for {ran} rows; expected one row per input row",
            spec.name,
            output.shape()
        )));
    }
    let width = values.len() / ran;
    let classifier = !spec.labels.is_empty() && width > 1;
    let names: Vec<String> = if classifier {
        vec!["class".into()]
    } else if spec.labels.len() == width {
        spec.labels.clone()
    } else if width == 1 {
        vec![spec.name.clone()]
    } else {
        (0..width).map(|i| format!("{}_{i}", spec.name)).collect()
    };
    let mut columns: Vec<Vec<Option<f64>>> = vec![Vec::with_capacity(runnable.len()); names.len()];
    let mut rows = values.chunks(width);
    for &ok in runnable {
        let row = if ok { rows.next() } else { None };
        match row {
            Some(row) if classifier => columns[0].push(Some(argmax(row) as f64)),
            Some(row) => columns
                .iter_mut()
                .zip(row)
                .for_each(|(c, v)| c.push(Some(*v))),
            None => columns.iter_mut().for_each(|c| c.push(None)),
        }
    }
    Ok(names
        .into_iter()
        .zip(columns)
        .map(|(n, c)| (n, ColumnData::Numeric(c)))
        .collect())
}

/// Index of the largest value (the first on ties; NaN never wins), as the
/// agent computes it.
fn argmax(row: &[f64]) -> usize {
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}

/// An uncompressed `.npz` of named tensors (numpy's format; read back with
/// `numpy.load` or `outpost_runtime::npy::read_npz`).
pub(crate) fn npz_bytes(arrays: &[(String, Tensor)]) -> Result<Vec<u8>, PackError> {
    outpost_runtime::npy::npz_bytes(arrays)
        .map_err(|e| PackError::Run(format!("writing golden arrays: {e}")))
}
