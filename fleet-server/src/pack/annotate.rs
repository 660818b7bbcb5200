//! The card's annotations applied to the model's own tensor specs.

use outpost_runtime::{Dim, ModelInfo, TensorSpec, ValueRange};

use super::PackError;
use super::infer::InputLayout;
use crate::card::CardFile;

/// Values per row of a tensor (the dims after the batch), when fixed.
fn row_width(spec: &TensorSpec) -> Option<u64> {
    spec.shape.iter().skip(1).try_fold(1u64, |acc, d| match d {
        Dim::Fixed(n) => acc.checked_mul(*n),
        Dim::Symbolic(_) => None,
    })
}

fn names(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The model's inputs and outputs with the card's feature names, ranges,
/// vocabularies and labels. The model stays authoritative for names,
/// dtypes and shapes: an annotation of a tensor it lacks is an error.
pub(crate) fn annotate(
    info: &ModelInfo,
    card: &CardFile,
) -> Result<(Vec<TensorSpec>, Vec<TensorSpec>), PackError> {
    let mut inputs = info.inputs.clone();
    let mut outputs = info.outputs.clone();
    for (name, a) in &card.inputs {
        let spec = inputs.iter_mut().find(|s| &s.name == name).ok_or_else(|| {
            PackError::Schema(format!(
                "the card annotates input {name:?}; the model's inputs are {}",
                names(&info.inputs)
            ))
        })?;
        spec.feature_names = a.feature_names.clone();
        spec.vocabulary = a.vocabulary.clone();
        if let Some([min, max]) = a.range {
            if !(min.is_finite() && max.is_finite() && min <= max) {
                return Err(PackError::Schema(format!(
                    "input {name}: range [{min}, {max}] is not a finite interval"
                )));
            }
            spec.range = Some(ValueRange { min, max });
        }
    }
    for (name, a) in &card.outputs {
        let spec = outputs
            .iter_mut()
            .find(|s| &s.name == name)
            .ok_or_else(|| {
                PackError::Schema(format!(
                    "the card annotates output {name:?}; the model's outputs are {}",
                    names(&info.outputs)
                ))
            })?;
        if let Some(w) = row_width(spec)
            && !a.labels.is_empty()
            && a.labels.len() as u64 != w
        {
            return Err(PackError::Schema(format!(
                "output {name}: {} labels for {w} values per row",
                a.labels.len()
            )));
        }
        spec.labels = a.labels.clone();
    }
    if outputs.is_empty() {
        return Err(PackError::Schema("the model has no outputs".into()));
    }
    Ok((inputs, outputs))
}

/// The feature names the card declares for all inputs, in input order;
/// `None` when it declares none. Declaring them for some inputs only, or
/// a number that differs from an input's width, is an error.
pub(crate) fn declared_features(
    inputs: &[TensorSpec],
    layouts: &[InputLayout],
) -> Result<Option<Vec<String>>, PackError> {
    let named = inputs
        .iter()
        .filter(|s| !s.feature_names.is_empty())
        .count();
    if named == 0 {
        return Ok(None);
    }
    if named != inputs.len() {
        return Err(PackError::Schema(
            "the card declares feature_names for some inputs only; declare them for every input or none".into(),
        ));
    }
    for (spec, layout) in inputs.iter().zip(layouts) {
        if spec.feature_names.len() != layout.width() {
            return Err(PackError::Schema(format!(
                "input {}: {} feature names for {} values per row",
                spec.name,
                spec.feature_names.len(),
                layout.width()
            )));
        }
    }
    Ok(Some(
        inputs
            .iter()
            .flat_map(|s| s.feature_names.iter().cloned())
            .collect(),
    ))
}
