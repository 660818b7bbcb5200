//! Latency of every reference model variant, and cold start both ways.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use outpost_benches::{cache, fixtures};
use outpost_runtime::manifest::{ModelCard, ModelFormat, RuntimeInfo, TargetConstraints};
use outpost_runtime::package::{MODEL_NNEF, MODEL_ONNX};
use outpost_runtime::{
    Dim, LoadOptions, Manifest, Model, PackageBuilder, QuantStrategy, Tensor, npy,
};

const VARIANTS: &[&str] = &[
    "mlp_fp32",
    "mlp_qdq_pt",
    "mlp_qdq_pc",
    "mlp_qop",
    "mlp_dyn",
    "cnn_fp32",
    "cnn_qdq_pt",
    "cnn_qdq_pc",
    "cnn_qop",
    "cnn_dyn",
];

/// PaddleOCR models need a fixed input size (`x`) to load in tract.
fn fixed_x(dims: &[u64]) -> Vec<(String, Vec<Dim>)> {
    vec![("x".into(), dims.iter().map(|&d| Dim::Fixed(d)).collect())]
}

fn one_image(cnn: bool) -> Tensor {
    let x = npy::read_npy(fixtures().join("digits/digits_test_x.npy")).unwrap();
    let x = x.slice(0, 0, 1).unwrap();
    if cnn {
        x.into_shape(&[1, 1, 8, 8]).unwrap()
    } else {
        x
    }
}

/// Batch-1 latency per variant and strategy.
fn latency(c: &mut Criterion) {
    let mut g = c.benchmark_group("digits_batch1");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for v in VARIANTS {
        let strategies: &[QuantStrategy] = if v.ends_with("qop") || v.ends_with("dyn") {
            &[
                QuantStrategy::Integer,
                QuantStrategy::Dequantized,
                QuantStrategy::WeightsOnly,
            ]
        } else if v.ends_with("fp32") {
            &[QuantStrategy::Auto]
        } else {
            &[QuantStrategy::Auto, QuantStrategy::WeightsOnly]
        };
        for &s in strategies {
            let opts = LoadOptions {
                strategy: s,
                threads: Some(1),
                ..LoadOptions::default()
            };
            let model = Model::load(fixtures().join(format!("digits/{v}.onnx")), &opts).unwrap();
            let mut session = model.session().unwrap();
            let x = one_image(v.starts_with("cnn"));
            let label = format!("{:?}", model.info().strategy.strategy).to_lowercase();
            g.bench_with_input(BenchmarkId::new(*v, label), &x, |b, x| {
                b.iter(|| session.run(vec![x.clone()]).unwrap())
            });
        }
    }
    g.finish();
    // PP-OCRv4 detection at 320x320, when fetched.
    let det = cache().join("rapidocr/1.4.4/ch_PP-OCRv4_det_infer.onnx");
    if det.exists() {
        let mut g = c.benchmark_group("ppocr_det_320");
        g.sample_size(10).measurement_time(Duration::from_secs(5));
        let opts = LoadOptions {
            input_shapes: fixed_x(&[1, 3, 320, 320]),
            threads: Some(1),
            ..LoadOptions::default()
        };
        let model = Model::load(&det, &opts).unwrap();
        let mut session = model.session().unwrap();
        let x = Tensor::zero::<f32>(&[1, 3, 320, 320]).unwrap();
        g.bench_function("fp32", |b| b.iter(|| session.run(vec![x.clone()]).unwrap()));
        g.finish();
    }
    // A real model in fp32 and int8: PP-OCR's direction classifier and its
    // per-channel QDQ quantization (scripts/fetch_rapidocr.py).
    let dir = cache().join("rapidocr/1.4.4");
    if dir.join("cls_qdq_pc.onnx").exists() {
        let mut g = c.benchmark_group("ppocr_cls_48x192");
        g.measurement_time(Duration::from_secs(4));
        let opts = LoadOptions {
            input_shapes: fixed_x(&[1, 3, 48, 192]),
            threads: Some(1),
            ..LoadOptions::default()
        };
        let x = npy::read_npy(dir.join("cls_qdq_pc.input.npy")).unwrap();
        for (label, file, strategy) in [
            (
                "fp32",
                "ch_ppocr_mobile_v2.0_cls_infer.onnx",
                QuantStrategy::Auto,
            ),
            ("int8_qdq_pc", "cls_qdq_pc.onnx", QuantStrategy::Auto),
            (
                "int8_qdq_pc_weights_only",
                "cls_qdq_pc.onnx",
                QuantStrategy::WeightsOnly,
            ),
        ] {
            let model = Model::load(
                dir.join(file),
                &LoadOptions {
                    strategy,
                    ..opts.clone()
                },
            )
            .unwrap();
            let mut session = model.session().unwrap();
            g.bench_function(label, |b| b.iter(|| session.run(vec![x.clone()]).unwrap()));
        }
        g.finish();
    }
}

fn manifest(model: &Model) -> Manifest {
    let info = model.info();
    Manifest {
        format_version: 1,
        name: "bench".into(),
        version: "1.0.0".into(),
        created_at: "2026-11-26T00:00:00Z".into(),
        format: ModelFormat::Onnx,
        inputs: info.inputs.clone(),
        outputs: info.outputs.clone(),
        target: TargetConstraints::default(),
        card: ModelCard::default(),
        runtime: None,
        members: Default::default(),
    }
}

fn package(onnx: &[u8], nnef: bool) -> Option<Vec<u8>> {
    let model = Model::from_onnx_bytes(onnx, "m", None, &LoadOptions::default()).unwrap();
    let mut b = PackageBuilder::new(manifest(&model));
    b.add(MODEL_ONNX, onnx.to_vec()).unwrap();
    if nnef {
        let (bytes, _) = match outpost_runtime::preoptimize(onnx, &LoadOptions::default()) {
            Ok(done) => done,
            Err(e) => {
                eprintln!("no pre-optimized form: {e}");
                return None;
            }
        };
        b.add(MODEL_NNEF, bytes).unwrap();
        b.manifest_mut().runtime = Some(RuntimeInfo {
            tract_version: outpost_runtime::TRACT_VERSION.into(),
            strategy: None,
            measured_on: None,
        });
    }
    Some(b.to_bytes().unwrap())
}

/// Cold start: from the ONNX member versus from the pre-optimized form.
fn cold_start(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("cold_start");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    for v in VARIANTS {
        let onnx = std::fs::read(fixtures().join(format!("digits/{v}.onnx"))).unwrap();
        for (form, nnef) in [("onnx", false), ("nnef", true)] {
            let path = dir.path().join(format!("{v}-{form}.opk"));
            let Some(bytes) = package(&onnx, nnef) else {
                continue;
            };
            std::fs::write(&path, bytes).unwrap();
            // A fixed strategy, so the ONNX path is not charged for measuring.
            let opts = LoadOptions {
                strategy: QuantStrategy::Dequantized,
                ..LoadOptions::default()
            };
            g.bench_function(BenchmarkId::new(*v, form), |b| {
                b.iter(|| Model::load(&path, &opts).unwrap())
            });
        }
    }
    g.finish();
    // PP-OCRv4 detection (600+ ONNX nodes), when fetched.
    let det = cache().join("rapidocr/1.4.4/ch_PP-OCRv4_det_infer.onnx");
    if det.exists() {
        let mut g = c.benchmark_group("cold_start_ppocr_det");
        g.sample_size(10).measurement_time(Duration::from_secs(8));
        let opts = LoadOptions {
            input_shapes: fixed_x(&[1, 3, 320, 320]),
            ..LoadOptions::default()
        };
        let onnx = std::fs::read(&det).unwrap();
        for (form, nnef) in [("onnx", false), ("nnef", true)] {
            let model = Model::from_onnx_bytes(&onnx, "det", None, &opts).unwrap();
            let mut b = PackageBuilder::new(manifest(&model));
            b.add(MODEL_ONNX, onnx.clone()).unwrap();
            if nnef {
                let (bytes, _) = outpost_runtime::preoptimize(&onnx, &opts).unwrap();
                b.add(MODEL_NNEF, bytes).unwrap();
                b.manifest_mut().runtime = Some(RuntimeInfo {
                    tract_version: outpost_runtime::TRACT_VERSION.into(),
                    strategy: None,
                    measured_on: None,
                });
            }
            let path = dir.path().join(format!("det-{form}.opk"));
            b.write(&path).unwrap();
            g.bench_function(form, |b| b.iter(|| Model::load(&path, &opts).unwrap()));
        }
        g.finish();
    }
}

criterion_group!(benches, latency, cold_start);
criterion_main!(benches);
