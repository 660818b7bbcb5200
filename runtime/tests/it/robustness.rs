//! Bad input never panics: malformed models and wrong tensors get typed errors.

use outpost_runtime::{Error, InputError, LoadOptions, Model, Tensor, UnsupportedReason};
use prost::Message;
use tract_onnx::pb;

use crate::common::fixtures;

fn mlp_bytes() -> Vec<u8> {
    std::fs::read(fixtures().join("digits/mlp_fp32.onnx")).unwrap()
}

fn load(bytes: &[u8]) -> Result<Model, Error> {
    Model::from_onnx_bytes(bytes, "test", Some("test"), &LoadOptions::default())
}

#[test]
fn empty_and_garbage_files_are_malformed() {
    assert!(matches!(load(&[]), Err(Error::MalformedModel { .. })));
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let err = load(&garbage).unwrap_err();
    assert!(matches!(err, Error::MalformedModel { .. }), "{err}");
}

#[test]
fn every_truncation_of_a_model_gets_an_error_not_a_panic() {
    let bytes = mlp_bytes();
    // Cut at many points, including inside the weights and the graph header.
    let mut refused = 0;
    for cut in (0..bytes.len()).step_by(bytes.len() / 97 + 1) {
        // A prefix can be a valid smaller protobuf; it must not panic.
        if load(&bytes[..cut]).is_err() {
            refused += 1;
        }
    }
    assert!(refused > 90, "only {refused} truncations refused");
}

#[test]
fn a_graph_output_no_node_produces_is_refused() {
    let mut model = pb::ModelProto::decode(&*mlp_bytes()).unwrap();
    let g = model.graph.as_mut().unwrap();
    g.output[0].name = "nobody_makes_this".into();
    let err = load(&model.encode_to_vec()).unwrap_err();
    assert!(
        matches!(err, Error::MalformedModel { .. } | Error::Engine { .. }),
        "{err}"
    );
}

#[test]
fn an_unknown_operator_is_unsupported() {
    let mut model = pb::ModelProto::decode(&*mlp_bytes()).unwrap();
    let g = model.graph.as_mut().unwrap();
    g.node[0].op_type = "NoSuchOp".into();
    let err = load(&model.encode_to_vec()).unwrap_err();
    assert!(
        matches!(err, Error::Unsupported { .. } | Error::Engine { .. }),
        "{err}"
    );
}

#[test]
fn external_data_is_refused() {
    let mut model = pb::ModelProto::decode(&*mlp_bytes()).unwrap();
    let g = model.graph.as_mut().unwrap();
    g.initializer[0].data_location = Some(1);
    let err = load(&model.encode_to_vec()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                reason: UnsupportedReason::ExternalData { .. },
                ..
            }
        ),
        "{err}"
    );
}

fn lstm_model(direction: &str) -> Vec<u8> {
    use outpost_test_onnx::*;
    let hidden = 2i64;
    let w = tensor_f32("W", &[1, 4 * hidden, 3], 0.1);
    let r = tensor_f32("R", &[1, 4 * hidden, hidden], 0.2);
    let node = pb::NodeProto {
        op_type: "LSTM".into(),
        name: "lstm".into(),
        input: vec!["X".into(), "W".into(), "R".into()],
        output: vec!["Y".into()],
        attribute: vec![
            attr_i("hidden_size", hidden),
            pb::AttributeProto {
                name: "direction".into(),
                r#type: 3,
                s: direction.as_bytes().to_vec(),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    model(
        vec![node],
        vec![w, r],
        vec![value_info("X", &[5, 1, 3])],
        vec![value_info_any("Y")],
    )
}

#[test]
fn lstm_reverse_is_refused_because_tract_computes_it_wrongly() {
    let err = load(&lstm_model("reverse")).unwrap_err();
    match err {
        Error::Unsupported {
            reason: UnsupportedReason::KnownWrongResult { op, why, .. },
            ..
        } => {
            assert_eq!(op, "LSTM");
            assert!(why.contains("reverse"));
        }
        other => panic!("expected KnownWrongResult, got {other}"),
    }
    // Forward LSTMs are computed correctly and load.
    load(&lstm_model("forward")).unwrap();
}

#[test]
fn wrong_inputs_get_typed_errors() {
    let model = load(&mlp_bytes()).unwrap();
    let mut s = model.session().unwrap();
    let err = |r: Result<Vec<Tensor>, Error>| match r {
        Err(Error::Input(e)) => e,
        other => panic!("expected an input error, got {other:?}"),
    };
    assert!(matches!(
        err(s.run(vec![])),
        InputError::Count {
            expected: 1,
            got: 0,
            ..
        }
    ));
    let wrong_dtype = Tensor::zero::<i64>(&[1, 64]).unwrap();
    assert!(matches!(
        err(s.run(vec![wrong_dtype])),
        InputError::DType { .. }
    ));
    let wrong_shape = Tensor::zero::<f32>(&[1, 63]).unwrap();
    assert!(matches!(
        err(s.run(vec![wrong_shape])),
        InputError::Shape { .. }
    ));
    let wrong_rank = Tensor::zero::<f32>(&[64]).unwrap();
    assert!(matches!(
        err(s.run(vec![wrong_rank])),
        InputError::Shape { .. }
    ));
    let e = err(s.run_named(vec![(
        "nope".into(),
        Tensor::zero::<f32>(&[1, 64]).unwrap(),
    )]));
    assert!(matches!(e, InputError::UnknownName { .. }));
    // The session still serves after refusing bad input.
    let ok = s.run(vec![Tensor::zero::<f32>(&[2, 64]).unwrap()]).unwrap();
    assert_eq!(ok[0].shape(), &[2, 10]);
}

#[test]
fn asking_for_the_gpu_engine_is_refused_not_silently_downgraded() {
    let opts = LoadOptions {
        engine: Some(outpost_runtime::EngineKind::Gpu),
        ..LoadOptions::default()
    };
    let err = Model::from_onnx_bytes(&mlp_bytes(), "mlp", None, &opts).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                reason: UnsupportedReason::Engine(_),
                ..
            }
        ),
        "{err}"
    );
}

/// Tiny helpers to build ONNX graphs in tests.
mod outpost_test_onnx {
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
