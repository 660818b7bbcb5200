//! `.npy` / `.npz` input and output, the interchange format of the Python
//! ecosystem our users train in (numpy's format, NEP 1).

use std::io::{Read, Seek, Write};
use std::path::Path;

use ndarray::ArrayD;
use ndarray_npy::{NpzReader, NpzWriter, ReadNpyExt, WriteNpyExt};
use tract_onnx::prelude::{DatumType, IntoTensor, Tensor};

/// Errors reading or writing numpy files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NpyError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {reason}")]
    Write { path: String, reason: String },
    #[error("{path}: dtype {dtype} is not supported (use f32, f64, i64, i32, i8, u8 or bool)")]
    DType { path: String, dtype: String },
}

macro_rules! try_read {
    ($bytes:expr, $($t:ty),*) => {{
        $(
            if let Ok(a) = ArrayD::<$t>::read_npy(std::io::Cursor::new($bytes)) {
                return Ok(a.into_tensor());
            }
        )*
    }};
}

/// Reads one `.npy` array of a supported dtype.
pub fn read_npy(path: impl AsRef<Path>) -> Result<Tensor, NpyError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| NpyError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    npy_from_bytes(&bytes).map_err(|reason| NpyError::Read {
        path: path.display().to_string(),
        reason,
    })
}

/// Parses `.npy` bytes.
pub fn npy_from_bytes(bytes: &[u8]) -> Result<Tensor, String> {
    try_read!(bytes, f32, f64, i64, i32, i8, u8, bool, u16, i16);
    Err("not a .npy array of a supported dtype (f32, f64, i64, i32, i16, u16, i8, u8, bool)".into())
}

fn write_one<W: Write>(t: &Tensor, w: W) -> Result<(), String> {
    macro_rules! w {
        ($t:ty) => {
            t.to_plain_array_view::<$t>()
                .map_err(|e| e.to_string())?
                .write_npy(w)
                .map_err(|e| e.to_string())
        };
    }
    match t.datum_type() {
        DatumType::F32 => w!(f32),
        DatumType::F64 => w!(f64),
        DatumType::I64 => w!(i64),
        DatumType::I32 => w!(i32),
        DatumType::I8 => w!(i8),
        DatumType::U8 => w!(u8),
        DatumType::Bool => w!(bool),
        other => Err(format!("dtype {other:?} cannot be written to .npy")),
    }
}

/// Writes one tensor as `.npy`.
pub fn write_npy(path: impl AsRef<Path>, t: &Tensor) -> Result<(), NpyError> {
    let path = path.as_ref();
    let f = std::fs::File::create(path).map_err(|e| NpyError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    write_one(t, std::io::BufWriter::new(f)).map_err(|reason| NpyError::Write {
        path: path.display().to_string(),
        reason,
    })
}

/// Writes named tensors as an uncompressed `.npz`.
pub fn write_npz(path: impl AsRef<Path>, tensors: &[(String, Tensor)]) -> Result<(), NpyError> {
    let path = path.as_ref();
    let origin = path.display().to_string();
    let f = std::fs::File::create(path).map_err(|e| NpyError::Write {
        path: origin.clone(),
        reason: e.to_string(),
    })?;
    write_npz_to(f, tensors, &origin).map(|_| ())
}

/// Named tensors as the bytes of an uncompressed `.npz` (for archives).
pub fn npz_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>, NpyError> {
    write_npz_to(std::io::Cursor::new(Vec::new()), tensors, "npz").map(|c| c.into_inner())
}

fn write_npz_to<W: Write + Seek>(
    w: W,
    tensors: &[(String, Tensor)],
    origin: &str,
) -> Result<W, NpyError> {
    let err = |reason: String| NpyError::Write {
        path: origin.to_owned(),
        reason,
    };
    let mut npz = NpzWriter::new(w);
    for (name, t) in tensors {
        macro_rules! add {
            ($t:ty) => {
                npz.add_array(
                    name.as_str(),
                    &t.to_plain_array_view::<$t>()
                        .map_err(|e| err(e.to_string()))?,
                )
                .map_err(|e| err(e.to_string()))?
            };
        }
        match t.datum_type() {
            DatumType::F32 => add!(f32),
            DatumType::F64 => add!(f64),
            DatumType::I64 => add!(i64),
            DatumType::I32 => add!(i32),
            DatumType::I8 => add!(i8),
            DatumType::U8 => add!(u8),
            DatumType::Bool => add!(bool),
            other => {
                return Err(NpyError::DType {
                    path: origin.to_owned(),
                    dtype: format!("{other:?}"),
                });
            }
        }
    }
    npz.finish().map_err(|e| err(e.to_string()))
}

/// Reads every array of an `.npz`.
pub fn read_npz<R: Read + Seek>(
    reader: R,
    origin: &str,
) -> Result<Vec<(String, Tensor)>, NpyError> {
    let err = |reason: String| NpyError::Read {
        path: origin.into(),
        reason,
    };
    let mut npz = NpzReader::new(reader).map_err(|e| err(e.to_string()))?;
    let names = npz.names().map_err(|e| err(e.to_string()))?;
    let mut out = vec![];
    for name in names {
        macro_rules! try_dtype {
            ($($t:ty),*) => {{
                $(
                    if let Ok(a) = npz.by_name::<ndarray::OwnedRepr<$t>, ndarray::IxDyn>(&name) {
                        Some(a.into_tensor())
                    } else
                )*
                { None }
            }};
        }
        let t = try_dtype!(f32, f64, i64, i32, i8, u8, bool)
            .ok_or_else(|| err(format!("{name}: unsupported dtype")))?;
        out.push((name.trim_end_matches(".npy").to_owned(), t));
    }
    Ok(out)
}
