//! Constants on the host: initializers, `Constant` nodes, and what the
//! lowering folds from them (dequantized weights, shapes, bias scales).

use tract_onnx::pb::TensorProto;

use super::lower::DType;
use crate::onnx::int_values;

/// A constant tensor. Values are held as f64, exact for every float32 and
/// for integers below 2^53; `elem` keeps the ONNX element type.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Konst {
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Vec<f64>,
    pub(crate) elem: i32,
}

pub(crate) fn from_proto(t: &TensorProto) -> Option<Konst> {
    if t.data_location == Some(1) {
        return None;
    }
    let shape: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<_>>()?;
    let numel: usize = shape.iter().product();
    let data: Vec<f64> = match t.data_type {
        1 if !t.raw_data.is_empty() => t
            .raw_data
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        1 => t.float_data.iter().map(|&v| f64::from(v)).collect(),
        11 if !t.raw_data.is_empty() => t
            .raw_data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        11 => t.double_data.clone(),
        2..=7 | 12 | 13 => int_values(t)?.into_iter().map(|v| v as f64).collect(),
        _ => return None,
    };
    (data.len() == numel).then_some(Konst {
        shape,
        data,
        elem: t.data_type,
    })
}

impl Konst {
    pub(crate) fn scalar(elem: i32, v: f64) -> Konst {
        Konst {
            shape: vec![],
            data: vec![v],
            elem,
        }
    }

    pub(crate) fn vector(elem: i32, data: Vec<f64>) -> Konst {
        Konst {
            shape: vec![data.len()],
            data,
            elem,
        }
    }

    pub(crate) fn numel(&self) -> usize {
        self.data.len()
    }

    pub(crate) fn ints(&self) -> Vec<i64> {
        self.data.iter().map(|&v| v as i64).collect()
    }

    pub(crate) fn scalar_f32(&self) -> Option<f32> {
        (self.numel() == 1).then(|| self.data[0] as f32)
    }

    pub(crate) fn with_shape(&self, shape: Vec<usize>) -> Konst {
        Konst {
            shape,
            data: self.data.clone(),
            elem: self.elem,
        }
    }

    /// The element type this constant has on the GPU, when it has one.
    pub(crate) fn gpu_dtype(&self) -> Option<DType> {
        match self.elem {
            1 | 11 => Some(DType::F32),
            2 => Some(DType::U8),
            3 => Some(DType::I8),
            _ => None,
        }
    }

    /// Values as f32 for the GPU.
    pub(crate) fn f32s(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }

    /// ONNX Cast between numeric types (float → integer truncates).
    pub(crate) fn cast(&self, to: i32) -> Konst {
        let data = match to {
            1 => self.data.iter().map(|&v| f64::from(v as f32)).collect(),
            2..=7 | 12 | 13 => self.data.iter().map(|v| v.trunc()).collect(),
            _ => self.data.clone(),
        };
        Konst {
            shape: self.shape.clone(),
            data,
            elem: to,
        }
    }

    pub(crate) fn reshape(&self, spec: &[i64], allowzero: bool) -> Result<Konst, String> {
        let shape = reshape_dims(&self.shape, spec, allowzero)?;
        Ok(self.with_shape(shape))
    }
}

/// ONNX Reshape's target shape: 0 copies the input dimension (unless
/// `allowzero`), -1 is inferred.
pub(crate) fn reshape_dims(
    input: &[usize],
    spec: &[i64],
    allowzero: bool,
) -> Result<Vec<usize>, String> {
    let numel: usize = input.iter().product();
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => out.push(*input.get(i).ok_or("Reshape copies a missing dimension")?),
            d if d >= 0 => out.push(d as usize),
            _ => return Err(format!("Reshape to {spec:?}")),
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !numel.is_multiple_of(known) {
            return Err(format!("Reshape of {input:?} to {spec:?}"));
        }
        out[i] = numel / known;
    } else if known != numel {
        return Err(format!("Reshape of {input:?} to {spec:?}"));
    }
    Ok(out)
}

/// numpy broadcasting of two shapes.
pub(crate) fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let at = |s: &[usize], i: usize| {
        let off = r - s.len();
        if i < off { 1 } else { s[i - off] }
    };
    (0..r)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// Row-major strides of `shape` seen through the broadcast `out` shape:
/// 0 along broadcast axes.
pub(crate) fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let off = out.len() - shape.len();
    let mut strides = vec![0; out.len()];
    let mut s = 1;
    for i in (0..shape.len()).rev() {
        if shape[i] != 1 {
            strides[i + off] = s;
        }
        s *= shape[i];
    }
    strides
}

pub(crate) fn binary(op: &str, a: &Konst, b: &Konst) -> Option<Konst> {
    let shape = broadcast(&a.shape, &b.shape)?;
    let (sa, sb) = (
        broadcast_strides(&a.shape, &shape),
        broadcast_strides(&b.shape, &shape),
    );
    let n: usize = shape.iter().product();
    let integer = !matches!(a.elem, 1 | 11);
    let mut data = Vec::with_capacity(n);
    for i in 0..n {
        let (mut rem, mut ia, mut ib) = (i, 0, 0);
        for d in (0..shape.len()).rev() {
            let idx = rem % shape[d];
            rem /= shape[d];
            ia += idx * sa[d];
            ib += idx * sb[d];
        }
        let (x, y) = (a.data[ia], b.data[ib]);
        let v = match op {
            "Add" => x + y,
            "Sub" => x - y,
            "Mul" => x * y,
            _ if integer => (x / y).trunc(),
            _ => x / y,
        };
        // Float32 arithmetic, as the graph specifies it.
        data.push(if integer { v } else { f64::from(v as f32) });
    }
    Some(Konst {
        shape,
        data,
        elem: a.elem,
    })
}

/// DequantizeLinear on constants: the int8 weights become float once, at
/// load (ONNX operators, DequantizeLinear; per tensor or per axis).
pub(crate) fn dequantize(
    x: &Konst,
    scale: &Konst,
    zp: Option<&Konst>,
    axis: i64,
) -> Result<Konst, String> {
    let c = scale.numel();
    let (inner, channels) = if c == 1 {
        (1, 1)
    } else {
        let r = x.shape.len() as i64;
        let axis = if axis < 0 { axis + r } else { axis };
        let axis = usize::try_from(axis).map_err(|_| "quantization axis out of range")?;
        let dim = *x.shape.get(axis).ok_or("quantization axis out of range")?;
        if dim != c {
            return Err(format!("{c} scales for an axis of {dim}"));
        }
        (x.shape[axis + 1..].iter().product::<usize>(), c)
    };
    let data = x
        .data
        .iter()
        .enumerate()
        .map(|(i, &q)| {
            let ch = (i / inner.max(1)) % channels;
            let z = zp.map_or(0.0, |z| z.data.get(ch).copied().unwrap_or(0.0));
            // float32 arithmetic, as the reference evaluator computes it.
            let s = scale.data[ch] as f32;
            f64::from((q as f32 - z as f32) * s)
        })
        .collect();
    Ok(Konst {
        shape: x.shape.clone(),
        data,
        elem: 1,
    })
}
