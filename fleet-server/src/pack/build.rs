//! Assembling a package: card → manifest, data → reference and golden
//! members, model → pre-optimized form; then a self-check of the result.

use std::io::Cursor;

use outpost_runtime::manifest::{MANIFEST_FORMAT, ModelFormat, RuntimeInfo};
use outpost_runtime::package::{MODEL_NNEF, MODEL_ONNX, REFERENCE};
use outpost_runtime::{
    ExecStrategy, LoadOptions, Manifest, Model, Package, PackageBuilder, PackageLimits,
    QuantStrategy, Tensor,
};
use outpost_telemetry::{ColumnData, ReferenceOptions, ReferenceProfile, ValidRange};

use super::infer::{self, InputLayout};
use super::{EVAL_LABELS, EVAL_SET, GOLDEN_INPUTS, GOLDEN_OUTPUTS, PackError, PackRequest, data};
use crate::card::check_card;

/// Golden self-test arrays: named inputs, named outputs.
type Golden = (Vec<(String, Tensor)>, Vec<(String, Tensor)>);

/// A built package and what went into it.
#[derive(Debug, Clone)]
pub struct Packed {
    pub bytes: Vec<u8>,
    pub manifest: Manifest,
    /// Reference rows read, and those the model could not run (a missing or
    /// non-finite cell, or a value outside the input's declared range):
    /// their outputs count as missing in the reference.
    pub reference_rows: usize,
    pub skipped_rows: usize,
    pub reference_columns: usize,
    pub golden_rows: usize,
    /// Things the user should know that did not stop the build.
    pub notes: Vec<String>,
}

/// Builds the package. See the module docs of `pack` for its members.
pub fn pack(req: &PackRequest) -> Result<Packed, PackError> {
    check_card(&req.card.model_card())?;
    let (name, version) = identity(req)?;
    let model = Model::from_onnx_bytes(
        &req.onnx,
        &name,
        Some(&req.onnx_origin),
        &LoadOptions::default(),
    )
    .map_err(PackError::Model)?;
    let (mut inputs, outputs) = super::annotate::annotate(model.info(), &req.card)?;
    let layouts = inputs
        .iter()
        .map(InputLayout::of)
        .collect::<Result<Vec<_>, _>>()?;
    let declared = super::annotate::declared_features(&inputs, &layouts)?;
    let table = data::read_table(&req.reference, declared.as_deref())?;
    let widths: Vec<usize> = layouts.iter().map(InputLayout::width).collect();
    if table.names.len() != widths.iter().sum::<usize>() {
        return Err(PackError::Schema(format!(
            "the reference data has {} feature columns; the model's inputs take {} ({})",
            table.names.len(),
            widths.iter().sum::<usize>(),
            layouts
                .iter()
                .map(|l| format!("{} × {}", l.name, l.width()))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    // The manifest names the features as the reference does.
    let mut names = table.names.iter();
    for (spec, w) in inputs.iter_mut().zip(&widths) {
        spec.feature_names = names.by_ref().take(*w).cloned().collect();
    }
    let ranges: Vec<Option<ValidRange>> = inputs
        .iter()
        .zip(&widths)
        .flat_map(|(s, w)| {
            let r = s.range.and_then(|r| ValidRange::new(r.min, r.max));
            std::iter::repeat_n(r, *w)
        })
        .collect();
    let (rows, runnable) = runnable_rows(&table, &ranges);
    if rows.is_empty() {
        return Err(PackError::Schema(
            "no reference row is complete and within the declared ranges; the model cannot be run on the data".into(),
        ));
    }
    let results = infer::run_rows(&model, &layouts, &rows)?;
    let first = results
        .first()
        .ok_or_else(|| PackError::Run("the model returned no outputs".into()))?;
    let out_columns = infer::output_columns(&outputs[0], first, &runnable)?;
    let options = ReferenceOptions {
        outputs: out_columns.iter().map(|(n, _)| n.clone()).collect(),
        valid_ranges: table
            .names
            .iter()
            .zip(&ranges)
            .filter_map(|(n, r)| r.map(|r| (n.clone(), r)))
            .collect(),
        ..ReferenceOptions::default()
    };
    let mut columns: Vec<(String, ColumnData)> = table
        .names
        .iter()
        .cloned()
        .zip(table.columns.iter().cloned().map(ColumnData::Numeric))
        .collect();
    columns.extend(out_columns);
    let reference_columns = columns.len();
    let reference = ReferenceProfile::from_columns(columns, &options)?;

    let mut builder = PackageBuilder::new(Manifest {
        format_version: MANIFEST_FORMAT,
        name,
        version,
        created_at: req.created_at.clone(),
        format: ModelFormat::Onnx,
        inputs,
        outputs,
        target: req.card.target_constraints(),
        card: req.card.model_card(),
        runtime: None,
        members: Default::default(),
    });
    builder.add(MODEL_ONNX, req.onnx.clone())?;
    builder.add(REFERENCE, reference.to_bytes())?;
    let golden_rows = req.golden.min(rows.len());
    let golden = if golden_rows > 0 {
        let ins = infer::input_tensors(&layouts, &rows[..golden_rows])?;
        let outs = results
            .iter()
            .map(|t| t.slice(0, 0, golden_rows))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PackError::Run(format!("slicing golden outputs: {e}")))?;
        let named = |specs: Vec<&str>, ts: Vec<Tensor>| -> Vec<(String, Tensor)> {
            specs.into_iter().map(str::to_owned).zip(ts).collect()
        };
        let ins = named(layouts.iter().map(|l| l.name.as_str()).collect(), ins);
        let outs = named(
            model
                .info()
                .outputs
                .iter()
                .map(|o| o.name.as_str())
                .collect(),
            outs,
        );
        builder.add(GOLDEN_INPUTS, infer::npz_bytes(&ins)?)?;
        builder.add(GOLDEN_OUTPUTS, infer::npz_bytes(&outs)?)?;
        Some((ins, outs))
    } else {
        None
    };
    if let Some((bytes, origin)) = &req.eval {
        check_eval(bytes, origin, &layouts)?;
        builder.add(EVAL_SET, bytes.clone())?;
    }
    let mut notes = vec![];
    if req.preoptimize {
        // The strategy measured when loading above, so the stored form runs
        // what produced the golden outputs.
        let strategy = match model.info().strategy.strategy {
            ExecStrategy::Float => QuantStrategy::Auto,
            ExecStrategy::Integer => QuantStrategy::Integer,
            ExecStrategy::Dequantized => QuantStrategy::Dequantized,
            ExecStrategy::WeightsOnly => QuantStrategy::WeightsOnly,
        };
        let opts = LoadOptions {
            strategy,
            ..LoadOptions::default()
        };
        match outpost_runtime::preoptimize(&req.onnx, &opts) {
            Ok((nnef, decision)) => {
                builder.add(MODEL_NNEF, nnef)?;
                builder.manifest_mut().runtime = Some(RuntimeInfo {
                    tract_version: outpost_runtime::TRACT_VERSION.into(),
                    strategy: Some(decision.strategy.as_str().into()),
                    measured_on: model
                        .info()
                        .strategy
                        .integer_ms
                        .map(|_| std::env::consts::ARCH.into()),
                });
            }
            // Devices then load the ONNX member: slower to start, same results.
            Err(e) => notes.push(format!("no pre-optimized form: {e}")),
        }
    }
    let bytes = builder.to_bytes()?;
    let manifest = self_check(&bytes, golden.as_ref(), &mut notes)?;
    Ok(Packed {
        bytes,
        manifest,
        reference_rows: table.rows(),
        skipped_rows: table.rows() - rows.len(),
        reference_columns,
        golden_rows,
        notes,
    })
}

fn identity(req: &PackRequest) -> Result<(String, String), PackError> {
    let pick = |what: &str, card: &Option<String>, flag: &Option<String>| match (card, flag) {
        (Some(c), Some(f)) if c != f => Err(PackError::Identity(format!(
            "the card says {what} {c:?} but --{what} says {f:?}"
        ))),
        (Some(v), _) | (None, Some(v)) => Ok(v.trim().to_owned()),
        (None, None) => Err(PackError::Identity(format!(
            "no {what}: set `{what}` in the card or pass --{what}"
        ))),
    };
    let name = pick("name", &req.card.name, &req.name)?;
    let version = pick("version", &req.card.version, &req.version)?;
    if name.is_empty()
        || name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(PackError::Identity(format!(
            "name {name:?}: use 1–128 characters among A–Z a–z 0–9 - _ ."
        )));
    }
    semver::Version::parse(&version).map_err(|e| {
        PackError::Identity(format!(
            "version {version:?} is not a semantic version: {e}"
        ))
    })?;
    Ok((name, version))
}

/// Rows the model can run (every cell present, finite, within its range),
/// and per data row whether it is one of them.
fn runnable_rows(table: &data::Table, ranges: &[Option<ValidRange>]) -> (Vec<Vec<f64>>, Vec<bool>) {
    let mut rows = vec![];
    let mut runnable = Vec::with_capacity(table.rows());
    for i in 0..table.rows() {
        let row: Option<Vec<f64>> = table
            .columns
            .iter()
            .zip(ranges)
            .map(|(c, r)| c[i].filter(|v| v.is_finite() && r.is_none_or(|r| r.contains(*v))))
            .collect();
        runnable.push(row.is_some());
        rows.extend(row);
    }
    (rows, runnable)
}

fn check_eval(bytes: &[u8], origin: &str, layouts: &[InputLayout]) -> Result<(), PackError> {
    let err = |reason: String| PackError::Eval {
        origin: origin.into(),
        reason,
    };
    let arrays = outpost_runtime::npy::read_npz(Cursor::new(bytes), origin)
        .map_err(|e| err(e.to_string()))?;
    let rows_of = |name: &str| {
        arrays
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shape().first().copied().unwrap_or(0))
    };
    let wanted = layouts.iter().map(|l| l.name.as_str()).chain([EVAL_LABELS]);
    let mut rows = None;
    for name in wanted {
        let n = rows_of(name).ok_or_else(|| {
            err(format!(
                "no array {name:?}; an evaluation set holds one array per model input and {EVAL_LABELS:?}"
            ))
        })?;
        if rows.is_some_and(|r| r != n) {
            return Err(err(format!(
                "array {name:?} has {n} rows, the others {rows:?}"
            )));
        }
        rows = Some(n);
    }
    Ok(())
}

/// Reads the package back as a device would, loads its model (pre-optimized
/// form first) and runs the golden inputs: a package that fails here would
/// fail its self-test on every device.
fn self_check(
    bytes: &[u8],
    golden: Option<&Golden>,
    notes: &mut Vec<String>,
) -> Result<Manifest, PackError> {
    let pkg = Package::from_bytes(bytes, "(new package)", &PackageLimits::default())?;
    let model = Model::from_package(&pkg, &LoadOptions::default()).map_err(PackError::Model)?;
    if let Some(why) = &model.info().preoptimized_skipped {
        notes.push(format!("the pre-optimized form does not load here: {why}"));
    }
    if let Some((ins, outs)) = golden {
        let got = model
            .session()
            .and_then(|mut s| s.run_named(ins.clone()))
            .map_err(PackError::Model)?;
        for ((name, want), got) in outs.iter().zip(&got) {
            if let Some(diff) = max_difference(want, got) {
                return Err(PackError::Run(format!(
                    "the packaged model's output {name} differs from the golden output by {diff}"
                )));
            }
        }
    }
    Ok(pkg.manifest().clone())
}

/// The largest difference beyond tolerance (1e-4 absolute plus 1e-4
/// relative: the pre-optimized graph may fuse float operations
/// differently), or `None` when the tensors agree.
fn max_difference(want: &Tensor, got: &Tensor) -> Option<f64> {
    let as_f64 = |t: &Tensor| -> Option<Vec<f64>> {
        Some(
            t.cast_to::<f64>()
                .ok()?
                .to_plain_array_view::<f64>()
                .ok()?
                .iter()
                .copied()
                .collect(),
        )
    };
    let (Some(a), Some(b)) = (as_f64(want), as_f64(got)) else {
        return Some(f64::INFINITY);
    };
    if want.shape() != got.shape() {
        return Some(f64::INFINITY);
    }
    // NaN is never within tolerance, so it counts as a difference.
    let within = |x: f64, y: f64| (x - y).abs() <= 1e-4 + 1e-4 * x.abs();
    a.iter()
        .zip(&b)
        .filter(|(x, y)| !within(**x, **y))
        .map(|(x, y)| (x - y).abs())
        .fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.max(d))))
}
