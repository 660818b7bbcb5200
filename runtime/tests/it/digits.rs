//! The reference models (scripts/make_reference_models.py): a CNN and an MLP
//! trained on scikit-learn's digits, in fp32 and every int8 form. Outputs
//! are compared with the ONNX reference evaluator (`onnx.reference`), whose
//! QDQ arithmetic is the specification; onnxruntime's goldens are a
//! cross-check only (its fused kernels round differently).

use outpost_runtime::{ExecStrategy, LoadOptions, Model, QuantForm, QuantStrategy, Tensor};
use serde_json::Value;

use crate::common::{argmax_rows, f32s, fixtures, max_abs_diff};

struct Variant {
    name: String,
    model: String,
    form: String,
    accuracy_ref: f64,
    softmax_qdq: bool,
}

fn variants() -> Vec<Variant> {
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("digits/manifest.json")).unwrap(),
    )
    .unwrap();
    let vs = m["variants"].as_object().unwrap();
    let out: Vec<Variant> = vs
        .iter()
        .filter(|(_, v)| v["produced"].as_bool() == Some(true))
        .map(|(k, v)| Variant {
            name: k.clone(),
            model: v["model"].as_str().unwrap().into(),
            form: v["form"].as_str().unwrap().into(),
            accuracy_ref: v["accuracy_ref"].as_f64().unwrap(),
            softmax_qdq: v["has_softmax_qdq_pattern"].as_bool().unwrap_or(false),
        })
        .collect();
    assert_eq!(out.len(), 10, "expected 2 models x 5 forms");
    out
}

/// Stated tolerance against the reference evaluator, per form.
///
/// - fp32: float accumulation order differs from numpy's: 1e-5.
/// - QDQ: tract's QDQ arithmetic is the specification's; the quantized
///   probabilities match exactly (measured 0). 1e-6 leaves room for nothing
///   but float printing.
/// - QOperator and dynamic: integer (or exact integer-valued float)
///   accumulation, then a float Softmax: 1e-5 (measured 2.4e-7 with both
///   strategies).
fn tolerance(form: &str) -> f32 {
    match form {
        "fp32" | "qop" | "dyn" => 1e-5,
        "qdq_pt" | "qdq_pc" => 1e-6,
        other => panic!("unknown form {other}"),
    }
}

pub fn test_x(model: &str) -> Tensor {
    let x = outpost_runtime::npy::read_npy(fixtures().join("digits/digits_test_x.npy")).unwrap();
    let n = x.shape()[0];
    if model == "cnn" {
        x.into_shape(&[n, 1, 8, 8]).unwrap()
    } else {
        x
    }
}

pub fn test_y() -> Vec<usize> {
    let y = outpost_runtime::npy::read_npy(fixtures().join("digits/digits_test_y.npy")).unwrap();
    y.to_plain_array_view::<i64>()
        .unwrap()
        .iter()
        .map(|&v| v as usize)
        .collect()
}

fn accuracy(pred: &[usize], y: &[usize]) -> f64 {
    100.0 * pred.iter().zip(y).filter(|(p, y)| p == y).count() as f64 / y.len() as f64
}

fn check_variant(v: &Variant, strategy: QuantStrategy) -> (f64, f32, ExecStrategy) {
    let path = fixtures().join(format!("digits/{}.onnx", v.name));
    let model = Model::load(
        &path,
        &LoadOptions {
            strategy,
            ..LoadOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{} does not load: {e}", v.name));
    let out = model
        .run(vec![test_x(&v.model)])
        .unwrap_or_else(|e| panic!("{} does not run: {e}", v.name));
    let golden =
        outpost_runtime::npy::read_npy(fixtures().join(format!("digits/{}.ref.npy", v.name)))
            .unwrap();
    let diff = max_abs_diff(&f32s(&out[0]), &f32s(&golden));
    let acc = accuracy(&argmax_rows(&out[0]), &test_y());
    let tol = tolerance(&v.form);
    assert!(
        diff <= tol,
        "{} ({strategy:?}): max |diff| vs onnx.reference = {diff}, tolerance {tol}",
        v.name
    );
    assert!(
        (acc - v.accuracy_ref).abs() <= 0.5,
        "{} ({strategy:?}): accuracy {acc:.2}% vs reference evaluator {:.2}%",
        v.name,
        v.accuracy_ref
    );
    (acc, diff, model.info().strategy.strategy)
}

#[test]
fn every_reference_variant_loads_and_matches_the_reference_evaluator() {
    for v in variants() {
        let (acc, diff, strategy) = check_variant(&v, QuantStrategy::Auto);
        eprintln!(
            "{:<11} accuracy {acc:.2}% (reference {:.2}%), max diff {diff:.2e}, strategy {strategy:?}",
            v.name, v.accuracy_ref
        );
    }
}

#[test]
fn integer_and_dequantized_strategies_both_match_the_reference() {
    for v in variants()
        .iter()
        .filter(|v| v.form == "qop" || v.form == "dyn")
    {
        let (acc, diff, s) = check_variant(v, QuantStrategy::Integer);
        assert_eq!(s, ExecStrategy::Integer);
        eprintln!(
            "{:<11} integer     accuracy {acc:.2}%, max diff {diff:.2e}",
            v.name
        );
        let (acc, diff, s) = check_variant(v, QuantStrategy::Dequantized);
        assert_eq!(s, ExecStrategy::Dequantized);
        eprintln!(
            "{:<11} dequantized accuracy {acc:.2}%, max diff {diff:.2e}",
            v.name
        );
    }
}

#[test]
fn quantization_forms_are_recognised_and_quirks_rewritten() {
    for v in variants() {
        let model = Model::load(
            fixtures().join(format!("digits/{}.onnx", v.name)),
            &LoadOptions::default(),
        )
        .unwrap();
        let info = model.info();
        let expected = match v.form.as_str() {
            "fp32" => QuantForm::Float,
            "qdq_pt" | "qdq_pc" => QuantForm::Qdq,
            "qop" => QuantForm::QOperator,
            "dyn" => QuantForm::Dynamic,
            _ => unreachable!(),
        };
        assert_eq!(info.quantization, expected, "{}", v.name);
        if v.form == "qop" {
            // onnxruntime emits com.microsoft::QGemm for Gemm, which tract cannot load.
            assert!(
                info.ops.iter().any(|o| o == "com.microsoft::QGemm"),
                "{:?}",
                info.ops
            );
            assert_eq!(info.rewrites.qgemm, 1, "{}", v.name);
        }
        if v.softmax_qdq {
            assert_eq!(info.rewrites.softmax_guarded, 1, "{}", v.name);
        }
    }
}

/// Regression: tract 0.23.9 folds Q → DQ → Softmax → Q → DQ into one
/// element-wise lookup table, which makes every probability 1.0.
#[test]
fn softmax_between_quantize_ops_is_not_folded_into_a_lookup_table() {
    for name in ["mlp_qdq_pc", "cnn_qdq_pt"] {
        let model = Model::load(
            fixtures().join(format!("digits/{name}.onnx")),
            &LoadOptions::default(),
        )
        .unwrap();
        let cnn = name.starts_with("cnn");
        let out = model
            .run(vec![test_x(if cnn { "cnn" } else { "mlp" })])
            .unwrap();
        for row in f32s(&out[0]).chunks(10) {
            let sum: f32 = row.iter().sum();
            assert!(
                (sum - 1.0).abs() < 0.05,
                "{name}: probabilities sum to {sum}: {row:?}"
            );
        }
    }
}

#[test]
fn the_batch_dimension_is_symbolic() {
    let model = Model::load(
        fixtures().join("digits/cnn_qop.onnx"),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(
        model.info().inputs[0].shape[0],
        outpost_runtime::Dim::Symbolic("N".into())
    );
    let x = test_x("cnn");
    let all = f32s(&model.run(vec![x.clone()]).unwrap()[0]);
    let mut session = model.session().unwrap();
    for (i, n) in [(0usize, 1usize), (7, 3), (100, 17)] {
        let part = x.slice(0, i, i + n).unwrap();
        let out = f32s(&session.run(vec![part]).unwrap()[0]);
        // Kernels tile differently per batch size: equal up to float rounding.
        let diff = max_abs_diff(&out, &all[i * 10..(i + n) * 10]);
        assert!(diff < 1e-6, "rows {i}..{}: {diff}", i + n);
    }
}

#[test]
fn a_model_is_shared_between_threads() {
    let model = Model::load(
        fixtures().join("digits/mlp_qop.onnx"),
        &LoadOptions::default(),
    )
    .unwrap();
    let x = test_x("mlp");
    let expected = f32s(&model.run(vec![x.clone()]).unwrap()[0]);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let mut session = model.session().unwrap();
                for _ in 0..5 {
                    assert_eq!(f32s(&session.run(vec![x.clone()]).unwrap()[0]), expected);
                }
            });
        }
    });
}

#[test]
fn threads_from_a_target_profile_give_the_same_answer() {
    let target = outpost_runtime::TargetProfile::load(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../targets/rpi4.toml"),
    )
    .unwrap();
    assert_eq!(target.threads, 3);
    let opts = LoadOptions {
        target: Some(target),
        ..LoadOptions::default()
    };
    let model = Model::load(fixtures().join("digits/cnn_fp32.onnx"), &opts).unwrap();
    assert_eq!(model.info().threads, 3);
    let single = Model::load(
        fixtures().join("digits/cnn_fp32.onnx"),
        &LoadOptions::default(),
    )
    .unwrap();
    let x = test_x("cnn");
    let a = f32s(&model.run(vec![x.clone()]).unwrap()[0]);
    let b = f32s(&single.run(vec![x]).unwrap()[0]);
    assert!(max_abs_diff(&a, &b) < 1e-5);
}

/// The weights-only strategy (opt-in) drops activation quantization: it must
/// still classify as well as the float model it was quantized from.
#[test]
fn weights_only_strategy_keeps_accuracy_and_drops_activation_quantization() {
    let fp32_acc = |model: &str| {
        let m = Model::load(
            fixtures().join(format!("digits/{model}_fp32.onnx")),
            &LoadOptions::default(),
        )
        .unwrap();
        accuracy(
            &argmax_rows(&m.run(vec![test_x(model)]).unwrap()[0]),
            &test_y(),
        )
    };
    for v in variants().iter().filter(|v| v.form != "fp32") {
        let opts = LoadOptions {
            strategy: QuantStrategy::WeightsOnly,
            ..LoadOptions::default()
        };
        let m = Model::load(fixtures().join(format!("digits/{}.onnx", v.name)), &opts).unwrap();
        assert_eq!(
            m.info().strategy.strategy,
            ExecStrategy::WeightsOnly,
            "{}",
            v.name
        );
        if v.form != "dyn" {
            assert!(
                m.info().rewrites.activation_qdq_removed > 0,
                "{}: nothing removed",
                v.name
            );
        }
        let acc = accuracy(
            &argmax_rows(&m.run(vec![test_x(&v.model)]).unwrap()[0]),
            &test_y(),
        );
        let reference = fp32_acc(&v.model);
        eprintln!(
            "{:<11} weights-only accuracy {acc:.2}% (fp32 {reference:.2}%, int8 reference {:.2}%)",
            v.name, v.accuracy_ref
        );
        assert!(
            (acc - reference).abs() <= 1.0,
            "{}: weights-only accuracy {acc} vs fp32 {reference}",
            v.name
        );
    }
}
