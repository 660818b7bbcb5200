//! Tensors on the local API: JSON (`{"shape": [...], "data": [...]}`) for
//! small requests; `.npy` (one input) or `.npz` (several) bodies for large
//! ones, which numpy writes with `np.save` / `np.savez`.

use std::io::Cursor;

use outpost_runtime::{DatumType, Tensor, TensorSpec};
use serde::{Deserialize, Serialize};

/// A tensor in JSON. `dtype` defaults to the model's declared input type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonTensor {
    pub shape: Vec<usize>,
    pub data: Vec<serde_json::Value>,
    #[serde(default)]
    pub dtype: Option<String>,
}

/// An output tensor in JSON.
#[derive(Debug, Clone, Serialize)]
pub struct OutTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: serde_json::Value,
    /// For classifier outputs with labels: the label of the arg-max per row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
}

/// Builds a runtime tensor from JSON numbers.
pub fn from_json(name: &str, t: &JsonTensor, spec: Option<&TensorSpec>) -> Result<Tensor, String> {
    let dtype = t
        .dtype
        .clone()
        .or_else(|| spec.map(|s| s.dtype.clone()))
        .unwrap_or_else(|| "f32".into());
    let n: usize = t
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("input {name:?}: shape {:?} overflows", t.shape))?;
    if n != t.data.len() {
        return Err(format!(
            "input {name:?}: shape {:?} holds {n} values, data has {}",
            t.shape,
            t.data.len()
        ));
    }
    let num = |i: usize, v: &serde_json::Value| -> Result<f64, String> {
        v.as_f64()
            .ok_or_else(|| format!("input {name:?}: data[{i}] = {v} is not a number"))
    };
    let int = |i: usize, v: &serde_json::Value| -> Result<i64, String> {
        v.as_i64()
            .ok_or_else(|| format!("input {name:?}: data[{i}] = {v} is not an integer"))
    };
    macro_rules! build {
        ($t:ty, $conv:expr) => {{
            let mut out: Vec<$t> = Vec::with_capacity(n);
            for (i, v) in t.data.iter().enumerate() {
                out.push($conv(i, v)?);
            }
            Tensor::from_shape(&t.shape, &out).map_err(|e| e.to_string())
        }};
    }
    let in_range = |i: usize, v: i64, lo: i64, hi: i64| -> Result<i64, String> {
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(format!(
                "input {name:?}: data[{i}] = {v} does not fit {dtype}"
            ))
        }
    };
    match dtype.as_str() {
        "f32" => build!(f32, |i, v| num(i, v).map(|x| x as f32)),
        "f64" => build!(f64, num),
        "i64" => build!(i64, int),
        "i32" => build!(i32, |i, v| int(i, v)
            .and_then(|x| in_range(i, x, i32::MIN.into(), i32::MAX.into()))
            .map(|x| x as i32)),
        "u8" => build!(u8, |i, v| int(i, v)
            .and_then(|x| in_range(i, x, 0, 255))
            .map(|x| x as u8)),
        "i8" => build!(i8, |i, v| int(i, v)
            .and_then(|x| in_range(i, x, -128, 127))
            .map(|x| x as i8)),
        "bool" => build!(bool, |i, v: &serde_json::Value| v.as_bool().ok_or_else(
            || format!("input {name:?}: data[{i}] = {v} is not a boolean")
        )),
        other => Err(format!(
            "input {name:?}: dtype {other} is not accepted in JSON"
        )),
    }
}

/// Reads an `.npy` (one unnamed tensor) or `.npz` (named tensors) body.
pub fn from_numpy(body: &[u8]) -> Result<Vec<(Option<String>, Tensor)>, String> {
    if body.starts_with(b"\x93NUMPY") {
        let t = outpost_runtime::npy::npy_from_bytes(body)?;
        return Ok(vec![(None, t)]);
    }
    if body.starts_with(b"PK") {
        let named = outpost_runtime::npy::read_npz(Cursor::new(body), "request body")
            .map_err(|e| e.to_string())?;
        return Ok(named.into_iter().map(|(n, t)| (Some(n), t)).collect());
    }
    Err("body is neither .npy nor .npz".into())
}

/// Converts an output to JSON (floats as numbers, NaN/inf as null).
pub fn to_json(name: &str, t: &Tensor, spec: Option<&TensorSpec>) -> OutTensor {
    let dt = t.datum_type();
    let data = match dt {
        DatumType::F32 => t
            .to_plain_array_view::<f32>()
            .map(|v| serde_json::json!(v.iter().copied().collect::<Vec<f32>>()))
            .unwrap_or_default(),
        DatumType::F64 => t
            .to_plain_array_view::<f64>()
            .map(|v| serde_json::json!(v.iter().copied().collect::<Vec<f64>>()))
            .unwrap_or_default(),
        DatumType::Bool => t
            .to_plain_array_view::<bool>()
            .map(|v| serde_json::json!(v.iter().copied().collect::<Vec<bool>>()))
            .unwrap_or_default(),
        _ => t
            .cast_to::<i64>()
            .ok()
            .and_then(|c| {
                c.to_plain_array_view::<i64>()
                    .ok()
                    .map(|v| serde_json::json!(v.iter().copied().collect::<Vec<i64>>()))
            })
            .unwrap_or_default(),
    };
    let labels = spec
        .filter(|s| !s.labels.is_empty())
        .and_then(|s| argmax_rows(t).map(|rows| (s, rows)))
        .map(|(s, rows)| {
            rows.into_iter()
                .map(|i| s.labels.get(i).cloned().unwrap_or_else(|| i.to_string()))
                .collect()
        });
    OutTensor {
        name: name.to_owned(),
        dtype: format!("{dt:?}").to_lowercase(),
        shape: t.shape().to_vec(),
        data,
        labels,
    }
}

/// Arg-max along the last axis, per row, for float outputs.
pub fn argmax_rows(t: &Tensor) -> Option<Vec<usize>> {
    let f = t.cast_to::<f32>().ok()?;
    let s: Vec<f32> = f
        .to_plain_array_view::<f32>()
        .ok()?
        .iter()
        .copied()
        .collect();
    let width = *t.shape().last()?;
    if width == 0 {
        return None;
    }
    Some(s.chunks(width).map(argmax).collect())
}

/// Index of the largest value (the first on ties; NaN never wins).
pub fn argmax<T: PartialOrd + Copy>(row: &[T]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if row.get(best).is_none_or(|b| v > b) {
            best = i;
        }
    }
    best
}
