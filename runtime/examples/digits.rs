//! Classifies the bundled digits test split (450 images, scikit-learn's
//! digits) with the int8 CNN and prints accuracy and latency, next to the
//! fp32 model it was quantized from.
//!
//! `cargo run --release -p outpost-runtime --example digits`

use std::path::Path;
use std::time::Instant;

use outpost_runtime::{LoadOptions, Model, Tensor, npy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/digits");
    let x = npy::read_npy(dir.join("digits_test_x.npy"))?;
    let y = npy::read_npy(dir.join("digits_test_y.npy"))?;
    let labels: Vec<usize> = y
        .to_plain_array_view::<i64>()?
        .iter()
        .map(|&v| v as usize)
        .collect();
    let n = x.shape()[0];
    let images = x.into_shape(&[n, 1, 8, 8])?;

    println!("digits test split: {n} images of 8x8 pixels");
    for file in ["cnn_qop.onnx", "cnn_fp32.onnx"] {
        let model = Model::load(dir.join(file), &LoadOptions::default())?;
        let info = model.info();
        let mut session = model.session()?;

        // Accuracy, one image at a time, as a device would serve them.
        let mut correct = 0;
        let mut latencies = Vec::with_capacity(n);
        for (i, &label) in labels.iter().enumerate() {
            let image: Tensor = images.slice(0, i, i + 1)?;
            let t = Instant::now();
            let out = session.run(vec![image])?;
            latencies.push(t.elapsed().as_secs_f64() * 1e3);
            let probs = out[0].to_plain_array_view::<f32>()?;
            let predicted = probs
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i);
            correct += usize::from(predicted == Some(label));
        }
        latencies.sort_by(f64::total_cmp);
        let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];

        // Throughput with the whole split as one batch.
        let t = Instant::now();
        session.run(vec![images.clone()])?;
        let batch_ms = t.elapsed().as_secs_f64() * 1e3;

        println!();
        println!(
            "{file}: {:?} model, {} bytes, strategy {:?}",
            info.quantization, info.size_bytes, info.strategy.strategy
        );
        println!("  why: {}", info.strategy.reason);
        println!(
            "  accuracy   {:.2}% ({correct}/{n})",
            100.0 * correct as f64 / n as f64
        );
        println!(
            "  latency    batch 1: median {:.3} ms, p90 {:.3} ms, p99 {:.3} ms",
            p(0.5),
            p(0.9),
            p(0.99)
        );
        println!(
            "  throughput batch {n}: {batch_ms:.2} ms ({:.0} images/s)",
            n as f64 / (batch_ms / 1e3)
        );
        println!(
            "  cold start {:.1} ms (load, rewrite, optimize)",
            info.load_time.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
