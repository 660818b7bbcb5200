//! CPU engine against GPU engine at batch 1 and 32 on the reference CNN and
//! PP-OCRv4 detection (320x320), with the GPU's difference from the CPU.
//! Prints a markdown table; run from the repository root:
//!
//! `cargo run --release -p outpost-runtime --example gpu_bench [-- --budget-ms 3000]`
//!
//! The CPU engine uses every core (`std::thread::available_parallelism`).
//! PP-OCRv4 detection is read from `${OUTPOST_CACHE:-~/.cache/outpost}/rapidocr/1.4.4`
//! (scripts/fetch_rapidocr.py) and skipped with a note when absent.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use outpost_runtime::{Dim, EngineKind, LoadOptions, Model, Tensor, gpu, npy};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn cache() -> PathBuf {
    match std::env::var_os("OUTPOST_CACHE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
            .join(".cache/outpost"),
    }
}

/// Median wall time of one run after a warm-up, over at least 3 runs and
/// about `budget` of running.
fn time(model: &Model, x: &Tensor, budget: Duration) -> Res<(Duration, Duration, Vec<Tensor>)> {
    let mut s = model.session()?;
    let t0 = Instant::now();
    let out = s.run(vec![x.clone()])?;
    let first = t0.elapsed();
    let mut samples = vec![];
    let started = Instant::now();
    while samples.len() < 3 || (started.elapsed() < budget && samples.len() < 200) {
        let t = Instant::now();
        s.run(vec![x.clone()])?;
        samples.push(t.elapsed());
    }
    samples.sort();
    Ok((first, samples[samples.len() / 2], out))
}

fn f32s(t: &Tensor) -> Res<Vec<f32>> {
    Ok(t.cast_to::<f32>()?
        .to_plain_array_view::<f32>()?
        .iter()
        .copied()
        .collect())
}

fn repeat(x: &Tensor, n: usize) -> Res<Tensor> {
    let one = x.slice(0, 0, 1)?;
    Ok(Tensor::stack_tensors(0, &vec![one; n])?)
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let budget_ms = args
        .iter()
        .position(|a| a == "--budget-ms")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let budget = Duration::from_millis(budget_ms);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let probe = gpu::probe();
    println!("GPU: {}", probe.describe());
    println!("CPU engine threads: {threads}\n");
    if !probe.available {
        return Err("no GPU adapter".into());
    }
    println!(
        "| model | batch | engine | first run ms | median ms | per item ms | max abs diff vs CPU |"
    );
    println!("|---|---|---|---|---|---|---|");
    let digits = Path::new("runtime/tests/fixtures/digits");
    let x = npy::read_npy(digits.join("digits_test_x.npy"))?;
    let n = x.shape()[0];
    let cnn_x = x.into_shape(&[n, 1, 8, 8])?;
    let det_dir = cache().join("rapidocr/1.4.4");
    let det_x = npy::read_npy(det_dir.join("ch_PP-OCRv4_det_infer.input.npy")).ok();
    let mut cases: Vec<(&str, PathBuf, Tensor, bool)> = vec![];
    for b in [1, 32] {
        cases.push((
            "digits cnn_fp32",
            digits.join("cnn_fp32.onnx"),
            cnn_x.slice(0, 0, b)?,
            false,
        ));
    }
    match &det_x {
        Some(x) => {
            for b in [1, 32] {
                let path = det_dir.join("ch_PP-OCRv4_det_infer.onnx");
                cases.push(("PP-OCRv4 det 320x320", path, repeat(x, b)?, true));
            }
        }
        None => println!("(PP-OCRv4 detection not fetched: run scripts/fetch_rapidocr.py)"),
    }
    for (name, path, x, fixed) in cases {
        let batch = x.shape()[0];
        let shapes = if fixed {
            vec![(
                "x".to_owned(),
                x.shape().iter().map(|&d| Dim::Fixed(d as u64)).collect(),
            )]
        } else {
            vec![]
        };
        let mut cpu_out = None;
        for engine in [EngineKind::Cpu, EngineKind::Gpu] {
            let opts = LoadOptions {
                engine: Some(engine),
                threads: Some(threads),
                input_shapes: shapes.clone(),
                ..LoadOptions::default()
            };
            let model = Model::load(&path, &opts)?;
            let (first, median, out) = time(&model, &x, budget)?;
            let diff = match (&cpu_out, engine) {
                (Some(c), EngineKind::Gpu) => {
                    let (a, b) = (f32s(c)?, f32s(&out[0])?);
                    let d = a
                        .iter()
                        .zip(&b)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0f32, f32::max);
                    format!("{d:.2e}")
                }
                _ => "-".into(),
            };
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "| {name} | {batch} | {engine} | {:.2} | {:.3} | {:.4} | {diff} |",
                ms(first),
                ms(median),
                ms(median) / batch as f64
            );
            if engine == EngineKind::Cpu {
                cpu_out = Some(out[0].clone());
            }
        }
    }
    Ok(())
}
