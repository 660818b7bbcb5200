//! Helpers shared by the test modules.

use std::path::{Path, PathBuf};

use outpost_runtime::Tensor;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `${OUTPOST_CACHE:-$HOME/.cache/outpost}`: generated data kept out of git.
pub fn cache() -> PathBuf {
    match std::env::var_os("OUTPOST_CACHE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
            .join(".cache/outpost"),
    }
}

/// The newest fully written folder under `cache()/sub` (the generating
/// scripts stamp a finished one with `.complete`).
pub fn latest_complete(sub: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(cache().join(sub))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(".complete").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// Tests that need something optional skip with a printed reason, except
/// in CI (`OUTPOST_REQUIRE_ALL=1`), where a missing prerequisite fails.
pub fn skip_or_fail(reason: &str) {
    if std::env::var("OUTPOST_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("OUTPOST_REQUIRE_ALL=1 but a prerequisite is missing: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

pub fn f32s(t: &Tensor) -> Vec<f32> {
    t.cast_to::<f32>()
        .unwrap()
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Row-wise argmax of a [N, C] tensor.
pub fn argmax_rows(t: &Tensor) -> Vec<usize> {
    let shape = t.shape().to_vec();
    let c = shape[1];
    f32s(t)
        .chunks(c)
        .map(|row| {
            // First maximum wins, as numpy.argmax does: quantized
            // probabilities tie often.
            let mut best = 0;
            for (i, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = i;
                }
            }
            best
        })
        .collect()
}

/// Tiny helpers to build ONNX graphs in tests.
pub mod onnx {
    use tract_onnx::pb;

    pub fn tensor_f32(name: &str, dims: &[i64], fill: f32) -> pb::TensorProto {
        let n: i64 = dims.iter().product();
        pb::TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: 1,
            float_data: (0..n).map(|i| fill * ((i % 7) as f32 - 3.0)).collect(),
            ..Default::default()
        }
    }

    pub fn attr_i(name: &str, i: i64) -> pb::AttributeProto {
        pb::AttributeProto {
            name: name.into(),
            r#type: 2,
            i,
            ..Default::default()
        }
    }

    pub fn value_info(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
        use pb::tensor_shape_proto::{Dimension, dimension::Value};
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(pb::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|d| Dimension {
                                value: Some(Value::DimValue(*d)),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn value_info_any(name: &str) -> pb::ValueInfoProto {
        pb::ValueInfoProto {
            name: name.into(),
            ..Default::default()
        }
    }

    pub fn model(
        node: Vec<pb::NodeProto>,
        initializer: Vec<pb::TensorProto>,
        input: Vec<pb::ValueInfoProto>,
        output: Vec<pb::ValueInfoProto>,
    ) -> Vec<u8> {
        use prost::Message;
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(pb::GraphProto {
                node,
                initializer,
                input,
                output,
                name: "g".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }
}
