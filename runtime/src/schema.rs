//! Tensor schemas: what a model accepts and returns, and the checks that
//! turn a wrong input into a typed error before it reaches the engine.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use tract_onnx::prelude::{Datum, DatumType, Tensor};

use crate::error::InputError;

/// One dimension of a declared shape: fixed, or symbolic (the batch `N`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Fixed(u64),
    /// A symbolic size, resolved per call (e.g. `"N"` for the batch).
    Symbolic(String),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(d) => write!(f, "{d}"),
            Dim::Symbolic(s) => f.write_str(s),
        }
    }
}

/// Inclusive range of valid values for a numeric input.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ValueRange {
    pub min: f64,
    pub max: f64,
}

/// Name, element type and shape of one model input or output, plus what the
/// package manifest adds: feature names, valid ranges, vocabularies, labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    /// Element type in tract's spelling (`f32`, `i64`, `u8`, …).
    pub dtype: String,
    pub shape: Vec<Dim>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feature_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<ValueRange>,
    /// Allowed values of a categorical input (integer codes or strings,
    /// written as strings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vocabulary: Vec<String>,
    /// Names of the output classes, for outputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

impl TensorSpec {
    pub fn shape_string(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(Dim::to_string).collect();
        format!("[{}]", dims.join(","))
    }

    /// Checks one tensor against this spec: dtype, rank, fixed dims, range,
    /// vocabulary. Symbolic dims must agree across inputs; see
    /// [`validate_inputs`].
    pub(crate) fn check(&self, t: &Tensor) -> Result<(), InputError> {
        let got = format!("{:?}", t.datum_type()).to_lowercase();
        if got != self.dtype {
            return Err(InputError::DType {
                name: self.name.clone(),
                expected: self.dtype.clone(),
                got,
            });
        }
        let shape = t.shape();
        let rank_ok = shape.len() == self.shape.len();
        let dims_ok = rank_ok
            && self.shape.iter().zip(shape).all(|(d, &s)| match d {
                Dim::Fixed(f) => *f == s as u64,
                Dim::Symbolic(_) => true,
            });
        if !dims_ok {
            return Err(InputError::Shape {
                name: self.name.clone(),
                expected: self.shape_string(),
                got: shape.to_vec(),
            });
        }
        if let Some(r) = self.range {
            check_range(&self.name, t, r)?;
        }
        if !self.vocabulary.is_empty() {
            check_vocabulary(&self.name, t, &self.vocabulary)?;
        }
        Ok(())
    }
}

fn check_range(name: &str, t: &Tensor, r: ValueRange) -> Result<(), InputError> {
    let out = |index, value: f64| InputError::OutOfRange {
        name: name.into(),
        index,
        value,
        min: r.min,
        max: r.max,
    };
    // NaN compares false with everything, so `!(v >= min && v <= max)` also
    // rejects NaN.
    macro_rules! scan {
        ($t:ty) => {
            if let Some(s) = slice::<$t>(t) {
                if let Some((i, v)) = s
                    .iter()
                    .enumerate()
                    .find(|(_, v)| !((**v as f64) >= r.min && (**v as f64) <= r.max))
                {
                    return Err(out(i, *v as f64));
                }
                return Ok(());
            }
        };
    }
    scan!(f32);
    scan!(f64);
    scan!(i64);
    scan!(i32);
    scan!(i8);
    scan!(u8);
    Ok(())
}

fn check_vocabulary(name: &str, t: &Tensor, vocab: &[String]) -> Result<(), InputError> {
    let known: HashSet<&str> = vocab.iter().map(String::as_str).collect();
    let unknown = |index, value: String| InputError::UnknownCategory {
        name: name.into(),
        index,
        value,
    };
    if let Some(s) = slice::<String>(t) {
        if let Some((i, v)) = s
            .iter()
            .enumerate()
            .find(|(_, v)| !known.contains(v.as_str()))
        {
            return Err(unknown(i, v.clone()));
        }
    } else if let Some(s) = slice::<i64>(t) {
        if let Some((i, v)) = s
            .iter()
            .enumerate()
            .find(|(_, v)| !known.contains(v.to_string().as_str()))
        {
            return Err(unknown(i, v.to_string()));
        }
    } else if let Some(s) = slice::<i32>(t)
        && let Some((i, v)) = s
            .iter()
            .enumerate()
            .find(|(_, v)| !known.contains(v.to_string().as_str()))
    {
        return Err(unknown(i, v.to_string()));
    }
    Ok(())
}

/// Checks a full set of inputs, in the model's order, against the specs.
/// A symbolic dimension must take the same value everywhere it appears.
pub(crate) fn validate_inputs(specs: &[TensorSpec], inputs: &[Tensor]) -> Result<(), InputError> {
    if specs.len() != inputs.len() {
        return Err(InputError::Count {
            expected: specs.len(),
            got: inputs.len(),
            names: specs
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let mut bound: Vec<(&str, usize)> = vec![];
    for (spec, t) in specs.iter().zip(inputs) {
        spec.check(t)?;
        for (d, &s) in spec.shape.iter().zip(t.shape()) {
            if let Dim::Symbolic(sym) = d {
                match bound.iter().find(|(n, _)| n == sym) {
                    Some((_, v)) if *v != s => {
                        return Err(InputError::Shape {
                            name: spec.name.clone(),
                            expected: format!(
                                "{} with {sym}={v} as in the other inputs",
                                spec.shape_string()
                            ),
                            got: t.shape().to_vec(),
                        });
                    }
                    Some(_) => {}
                    None => bound.push((sym.as_str(), s)),
                }
            }
        }
    }
    Ok(())
}

/// tract's lower-case spelling of a datum type (`F32` → `f32`).
pub(crate) fn dtype_name(dt: DatumType) -> String {
    format!("{dt:?}").to_lowercase()
}

/// The elements of a tensor of type `T` in host memory, if it is one.
fn slice<T: Datum>(t: &Tensor) -> Option<&[T]> {
    t.as_plain_ram()?.as_slice::<T>().ok()
}
