//! The GPU engine (wgpu) against the CPU engine: the reference models in
//! every form it runs, PP-OCRv4 detection, the capability probe, and the
//! engine choice. On a machine without any GPU adapter (not even lavapipe,
//! Debian's `mesa-vulkan-drivers`) these tests skip with the probe's reason,
//! and fail under `OUTPOST_REQUIRE_ALL=1`.

use outpost_runtime::{
    Dim, EngineKind, Error, LoadOptions, Model, Tensor, UnsupportedReason, gpu, npy,
};

use crate::common::{argmax_rows, f32s, fixtures, latest_complete, max_abs_diff, skip_or_fail};
use crate::digits::test_x;

/// True when a GPU adapter is usable; otherwise skips (or fails in CI).
///
/// CI provisions lavapipe for the host (x86_64) run; the same suite built
/// for aarch64 runs under qemu-user, where no Vulkan driver of that
/// architecture exists, so there a missing adapter is only reported.
pub fn gpu_available() -> bool {
    let p = gpu::probe();
    if !p.available {
        let why = format!("no GPU adapter for the GPU engine: {}", p.describe());
        if cfg!(target_arch = "x86_64") {
            skip_or_fail(&why);
        } else {
            eprintln!("SKIPPED: {why} (GPU tests are required on the x86_64 run only)");
        }
    }
    p.available
}

fn load(path: &std::path::Path, engine: EngineKind, shapes: Vec<(String, Vec<Dim>)>) -> Model {
    let opts = LoadOptions {
        engine: Some(engine),
        input_shapes: shapes,
        ..LoadOptions::default()
    };
    Model::load(path, &opts).unwrap_or_else(|e| panic!("{} on {engine}: {e}", path.display()))
}

/// Stated tolerances of the GPU engine against the CPU engine, on the
/// softmax probabilities of the reference models:
///
/// - fp32: both engines sum in float32 in different orders: 1e-5.
/// - int8 (QDQ, QOperator): weights are dequantized to float at load by both
///   engines and activation quantization is exact on both (round half to
///   even, saturate); the float sums before a quantize step differ in their
///   last bits, which can move a value sitting on a rounding boundary by one
///   quantization step. Tolerance: 1e-5, and the predicted class must agree
///   on every test sample but at most 1 in 200.
const DIGITS_TOL: f32 = 1e-5;

#[test]
fn the_probe_names_an_adapter_or_says_why_not() {
    let p = gpu::probe();
    eprintln!("GPU probe: {}", p.describe());
    if p.available {
        assert!(p.adapter.is_some() && p.backend.is_some() && p.device_type.is_some());
        assert!(p.reason.is_none());
    } else {
        assert!(p.reason.as_deref().is_some_and(|r| !r.is_empty()), "{p:?}");
        gpu_available();
    }
}

#[test]
fn reference_models_on_the_gpu_match_the_cpu_engine() {
    if !gpu_available() {
        return;
    }
    let x_cnn = test_x("cnn");
    let x_mlp = test_x("mlp");
    for name in [
        "mlp_fp32",
        "mlp_qdq_pt",
        "mlp_qdq_pc",
        "mlp_qop",
        "cnn_fp32",
        "cnn_qdq_pt",
        "cnn_qdq_pc",
        "cnn_qop",
    ] {
        let path = fixtures().join(format!("digits/{name}.onnx"));
        let cpu = load(&path, EngineKind::Cpu, vec![]);
        let gpu = load(&path, EngineKind::Gpu, vec![]);
        assert_eq!(gpu.info().engine, EngineKind::Gpu, "{name}");
        let x = if name.starts_with("cnn") {
            &x_cnn
        } else {
            &x_mlp
        };
        let want = cpu.run(vec![x.clone()]).unwrap();
        let got = gpu.run(vec![x.clone()]).unwrap();
        assert_eq!(want[0].shape(), got[0].shape(), "{name}");
        assert_eq!(want[0].datum_type(), got[0].datum_type(), "{name}");
        let diff = max_abs_diff(&f32s(&want[0]), &f32s(&got[0]));
        let (a, b) = (argmax_rows(&want[0]), argmax_rows(&got[0]));
        let disagree = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        eprintln!(
            "{name:<11} GPU vs CPU over {} samples: max |diff| {diff:.2e}, class disagreements {disagree} ({})",
            a.len(),
            gpu.engine_decision().reason
        );
        assert!(diff <= DIGITS_TOL, "{name}: max |gpu - cpu| = {diff}");
        assert!(
            disagree * 200 <= a.len(),
            "{name}: {disagree} classes differ"
        );
    }
}

/// Batch 1 and batch 32 on one session: plans per shape, the same answers.
#[test]
fn one_session_serves_several_batch_sizes() {
    if !gpu_available() {
        return;
    }
    let path = fixtures().join("digits/cnn_fp32.onnx");
    let gpu = load(&path, EngineKind::Gpu, vec![]);
    let cpu = load(&path, EngineKind::Cpu, vec![]);
    let x = test_x("cnn");
    let mut s = gpu.session().unwrap();
    for n in [1, 32, 1, 7] {
        let xb = x.slice(0, 0, n).unwrap();
        let got = s.run(vec![xb.clone()]).unwrap();
        let want = cpu.run(vec![xb]).unwrap();
        assert_eq!(got[0].shape(), &[n, 10]);
        assert!(max_abs_diff(&f32s(&want[0]), &f32s(&got[0])) <= DIGITS_TOL);
    }
}

/// Dynamic quantization computes its scales from each input at run time
/// (DynamicQuantizeLinear), which the GPU engine does not: an explicit GPU
/// request is refused, naming the operator.
#[test]
fn an_explicit_gpu_request_for_a_model_it_cannot_run_is_refused() {
    if !gpu_available() {
        return;
    }
    let path = fixtures().join("digits/cnn_dyn.onnx");
    let opts = LoadOptions {
        engine: Some(EngineKind::Gpu),
        ..LoadOptions::default()
    };
    let err = Model::load(&path, &opts).unwrap_err();
    match &err {
        Error::Unsupported {
            reason: UnsupportedReason::Operator { op, detail, .. },
            ..
        } => {
            assert_eq!(op, "DynamicQuantizeLinear", "{err}");
            assert!(detail.contains("GPU engine"), "{err}");
        }
        other => panic!("expected an unsupported operator, got {other}"),
    }
}

/// `auto` runs such a model on the CPU and says why; never silently.
#[test]
fn auto_runs_a_model_the_gpu_cannot_run_on_the_cpu_and_says_why() {
    let path = fixtures().join("digits/mlp_dyn.onnx");
    let opts = LoadOptions {
        engine: Some(EngineKind::Auto),
        ..LoadOptions::default()
    };
    let model = Model::load(&path, &opts).unwrap();
    let d = model.engine_decision();
    eprintln!("mlp_dyn auto: {d:?}");
    assert_eq!(d.engine, EngineKind::Cpu);
    assert_eq!(model.info().engine, EngineKind::Cpu);
    assert!(d.gpu.is_some(), "the probe result is recorded");
    if gpu::probe().available {
        assert!(d.reason.contains("DynamicQuantizeLinear"), "{}", d.reason);
    } else {
        assert!(d.reason.contains("no usable GPU"), "{}", d.reason);
    }
    // And it still answers.
    let out = model.run(vec![test_x("mlp")]).unwrap();
    assert_eq!(out[0].shape()[1], 10);
}

/// `auto` on a model the GPU runs: both engines timed at batch 1, the
/// faster kept, the timings recorded.
#[test]
fn auto_measures_both_engines_and_records_the_timings() {
    if !gpu_available() {
        return;
    }
    let path = fixtures().join("digits/cnn_fp32.onnx");
    let opts = LoadOptions {
        engine: Some(EngineKind::Auto),
        ..LoadOptions::default()
    };
    let model = Model::load(&path, &opts).unwrap();
    let d = model.engine_decision().clone();
    eprintln!("cnn_fp32 auto: {d:?}");
    let (cpu_us, gpu_us) = (d.cpu_us.unwrap(), d.gpu_us.unwrap());
    assert!(cpu_us > 0.0 && gpu_us > 0.0);
    let faster = if gpu_us < cpu_us {
        EngineKind::Gpu
    } else {
        EngineKind::Cpu
    };
    assert_eq!(d.engine, faster);
    assert_eq!(model.info().engine, faster);
    assert!(d.reason.contains("measured at load"), "{}", d.reason);
    // The decision travels with the model's description.
    let json = serde_json::to_value(model.info()).unwrap();
    assert_eq!(json["engine_decision"]["engine"], faster.to_string());
}

/// PP-OCRv4 detection (62 convolutions, 2 transposed, nearest resizes,
/// hard-swish/sigmoid, batch norms) on the GPU against the CPU engine.
/// Tolerance 1e-4 on the sigmoid probability map: 100+ float32 layers
/// summed in different orders (measured differences are reported).
#[test]
fn ppocr_v4_detection_on_the_gpu_matches_the_cpu_engine() {
    if !gpu_available() {
        return;
    }
    let Some(d) = latest_complete("rapidocr") else {
        skip_or_fail("PP-OCR models not fetched: run `python3 scripts/fetch_rapidocr.py`");
        return;
    };
    let stem = "ch_PP-OCRv4_det_infer";
    let x: Tensor = npy::read_npy(d.join(format!("{stem}.input.npy"))).unwrap();
    let shape: Vec<Dim> = x.shape().iter().map(|&d| Dim::Fixed(d as u64)).collect();
    let path = d.join(format!("{stem}.onnx"));
    let cpu = load(&path, EngineKind::Cpu, vec![("x".into(), shape.clone())]);
    let gpu = load(&path, EngineKind::Gpu, vec![("x".into(), shape)]);
    let want = cpu.run(vec![x.clone()]).unwrap();
    let got = gpu.run(vec![x]).unwrap();
    assert_eq!(want[0].shape(), got[0].shape());
    let diff = max_abs_diff(&f32s(&want[0]), &f32s(&got[0]));
    let ort = npy::read_npy(d.join(format!("{stem}.ort.npy"))).unwrap();
    let diff_ort = max_abs_diff(&f32s(&ort), &f32s(&got[0]));
    eprintln!(
        "PP-OCRv4 det on the GPU ({}): max |gpu - cpu| = {diff:.2e}, max |gpu - onnxruntime| = {diff_ort:.2e} over {} pixels",
        gpu.engine_decision().reason,
        f32s(&got[0]).len()
    );
    assert!(diff < 1e-4, "det: max |gpu - cpu| = {diff}");
    assert!(diff_ort < 2e-4, "det: max |gpu - onnxruntime| = {diff_ort}");
}
