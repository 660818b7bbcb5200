//! A real third-party model: PaddleOCR's PP-OCRv4 detection and recognition
//! models and its direction classifier, as shipped in the PyPI wheel
//! `rapidocr_onnxruntime` (fetched and pinned by `scripts/fetch_rapidocr.py`
//! into the cache), compared with onnxruntime on a fixed input.

use std::path::PathBuf;

use outpost_runtime::{Dim, LoadOptions, Model, npy};

use crate::common::{f32s, latest_complete, max_abs_diff, skip_or_fail};

fn dir() -> Option<PathBuf> {
    latest_complete("rapidocr")
}

/// Runs `stem.onnx` on `stem.input.npy`; returns (ours, golden) for `golden`.
fn run(stem: &str, golden: &str) -> Option<(Vec<f32>, Vec<f32>, Model)> {
    let Some(d) = dir() else {
        skip_or_fail("PP-OCR models not fetched: run `python3 scripts/fetch_rapidocr.py`");
        return None;
    };
    let x = npy::read_npy(d.join(format!("{stem}.input.npy"))).unwrap();
    // PaddleOCR exports declare height and width dynamic, and tract cannot
    // type their graphs symbolically (upsampled feature maps must agree
    // across `(H+31)/32*8` and `H/4`): fix the shape at load, as a device
    // serving a fixed camera resolution does.
    let shape = x.shape().iter().map(|&d| Dim::Fixed(d as u64)).collect();
    let opts = LoadOptions {
        input_shapes: vec![("x".into(), shape)],
        ..LoadOptions::default()
    };
    let model = Model::load(d.join(format!("{stem}.onnx")), &opts)
        .unwrap_or_else(|e| panic!("{stem} does not load: {e}"));
    let out = model
        .run(vec![x])
        .unwrap_or_else(|e| panic!("{stem} does not run: {e}"));
    let expected = npy::read_npy(d.join(format!("{stem}.{golden}.npy"))).unwrap();
    assert_eq!(out[0].shape(), expected.shape(), "{stem}: output shape");
    Some((f32s(&out[0]), f32s(&expected), model))
}

/// Tolerances: float32 networks of 100+ layers, where tract and onnxruntime
/// sum in different orders; measured differences are far below these.
#[test]
fn ppocr_v4_detection_matches_onnxruntime() {
    let Some((ours, ort, _)) = run("ch_PP-OCRv4_det_infer", "ort") else {
        return;
    };
    let diff = max_abs_diff(&ours, &ort);
    eprintln!(
        "PP-OCRv4 det: max |tract - onnxruntime| = {diff:.2e} over {} pixels",
        ours.len()
    );
    assert!(diff < 2e-4, "det: max diff {diff}");
}

#[test]
fn ppocr_v4_recognition_matches_onnxruntime() {
    let Some((ours, ort, _)) = run("ch_PP-OCRv4_rec_infer", "ort") else {
        return;
    };
    let diff = max_abs_diff(&ours, &ort);
    eprintln!(
        "PP-OCRv4 rec: max |tract - onnxruntime| = {diff:.2e} over {} scores",
        ours.len()
    );
    assert!(diff < 1e-4, "rec: max diff {diff}");
    // The decoded character sequence (argmax per time step) is identical.
    let classes = 6625;
    let best = |v: &[f32]| -> Vec<usize> {
        v.chunks(classes)
            .map(|r| {
                r.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, _)| i)
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(best(&ours), best(&ort));
}

#[test]
fn ppocr_direction_classifier_matches_onnxruntime() {
    let Some((ours, ort, _)) = run("ch_ppocr_mobile_v2.0_cls_infer", "ort") else {
        return;
    };
    let diff = max_abs_diff(&ours, &ort);
    assert!(diff < 1e-4, "cls: max diff {diff}: {ours:?} vs {ort:?}");
}

/// Regression (the issue that found it): the per-channel QDQ quantization of
/// the direction classifier returned [1.0, 1.0] instead of ~[0.447, 0.553]
/// because tract folded its final Softmax into a lookup table.
#[test]
fn quantized_direction_classifier_softmax_is_correct() {
    let Some((ours, reference, model)) = run("cls_qdq_pc", "ref") else {
        return;
    };
    assert_eq!(model.info().rewrites.softmax_guarded, 1);
    let step = 1.0 / 255.0;
    let diff = max_abs_diff(&ours, &reference);
    assert!(
        diff <= 2.0 * step + 1e-6,
        "cls_qdq_pc: {ours:?} vs onnx.reference {reference:?}"
    );
    let sum: f32 = ours.iter().sum();
    assert!(
        (sum - 1.0).abs() < 2.0 * step,
        "probabilities sum to {sum}: {ours:?}"
    );
}
