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
    use crate::common::onnx::*;
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

/// An explicit GPU request is served by the GPU engine or refused with a
/// typed error; it is never silently downgraded to the CPU.
#[test]
fn asking_for_the_gpu_engine_is_refused_not_silently_downgraded() {
    let opts = LoadOptions {
        engine: Some(outpost_runtime::EngineKind::Gpu),
        ..LoadOptions::default()
    };
    match Model::from_onnx_bytes(&mlp_bytes(), "mlp", None, &opts) {
        Ok(model) => {
            assert!(outpost_runtime::gpu::probe().available);
            assert_eq!(model.info().engine, outpost_runtime::EngineKind::Gpu);
        }
        Err(err) => assert!(
            matches!(
                err,
                Error::Unsupported {
                    reason: UnsupportedReason::Engine(_),
                    ..
                }
            ) && !outpost_runtime::gpu::probe().available,
            "{err}"
        ),
    }
}

#[test]
fn every_target_profile_in_the_repository_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../targets");
    let mut names = vec![];
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let p = outpost_runtime::TargetProfile::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(p.threads >= 1 && p.threads <= p.cores, "{}", p.name);
            names.push(p.name);
        }
    }
    names.sort();
    assert_eq!(names, ["jetson-orin-nano", "rpi4", "rpi5", "x86_64-server"]);
}

#[test]
fn a_bad_target_profile_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "name='x'\ndescription='d'\narch='x86_64'\ntriple='t'\ncores=2\nmemory_mb=1\npreferred_engine='cpu'\nthreads=8\n",
    )
    .unwrap();
    let err = outpost_runtime::TargetProfile::load(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("threads = 8"), "{err}");
}
