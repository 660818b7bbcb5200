//! Cost of profiling on the device: update cost per value and bytes per
//! window, against sending the raw samples as JSON (issue 4).
//!
//! `cargo bench -p outpost-telemetry --bench telemetry`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use outpost_telemetry::{
    ColumnData, ProfileOptions, Recorder, ReferenceOptions, ReferenceProfile, Request, Value,
    WindowKey,
};

const ROWS: usize = 10_000;

/// Deterministic, roughly normal values (sum of 4 uniform hashes).
fn value(i: usize) -> f64 {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut sum = 0.0;
    for _ in 0..4 {
        x ^= x >> 29;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        sum += (x >> 11) as f64 / (1u64 << 53) as f64;
    }
    (sum - 2.0) * 1.7
}

fn reference(features: usize) -> Arc<ReferenceProfile> {
    let columns = (0..features)
        .map(|f| {
            let values = (0..5_000).map(|i| Some(value(i * 131 + f))).collect();
            (format!("f{f}"), ColumnData::Numeric(values))
        })
        .collect();
    Arc::new(
        ReferenceProfile::from_columns(columns, &ReferenceOptions::default()).expect("reference"),
    )
}

fn key() -> WindowKey {
    WindowKey {
        device: "bench".into(),
        model: "m".into(),
        version: "1.0.0".into(),
        start: 0,
        length: 300,
    }
}

fn record_rows(reference: &Arc<ReferenceProfile>, kll_k: Option<u16>, rows: usize) -> Recorder {
    let features = reference.columns().len();
    let options = ProfileOptions {
        kll_k,
        ..Default::default()
    };
    let mut recorder = Recorder::new(reference.clone(), key(), options).expect("recorder");
    let mut inputs = vec![Value::Missing; features];
    for row in 0..rows {
        for (f, slot) in inputs.iter_mut().enumerate() {
            *slot = Value::Number(value(row * features + f));
        }
        let request = Request {
            inputs: &inputs,
            outputs: &[],
            latency: Duration::from_micros(700),
            ok: true,
            confidence: Some(0.9),
            segment: None,
        };
        recorder.record(&request).expect("record");
    }
    recorder
}

fn report_sizes() {
    for (features, kll_k) in [(100, None), (20, Some(200)), (100, Some(200))] {
        let reference = reference(features);
        let window = record_rows(&reference, kll_k, ROWS).finish();
        let bytes = window.to_bytes().len();
        let raw: Vec<Vec<f64>> = (0..ROWS)
            .map(|r| (0..features).map(|f| value(r * features + f)).collect())
            .collect();
        let json = serde_json::to_vec(&raw).map(|v| v.len()).unwrap_or(0);
        println!(
            "window bytes: {features} features x {ROWS} rows, KLL {kll_k:?}: {bytes} B postcard \
             vs {json} B raw JSON ({:.0}x smaller)",
            json as f64 / bytes.max(1) as f64
        );
    }
}

fn bench(c: &mut Criterion) {
    report_sizes();
    let mut group = c.benchmark_group("record");
    for (name, features, kll_k) in [
        ("100 features, bins only", 100, None),
        ("20 features, KLL k=200", 20, Some(200)),
    ] {
        let reference = reference(features);
        // Steady state: a window that has already seen traffic.
        let mut recorder = record_rows(&reference, kll_k, 2_000);
        let mut inputs: Vec<Value<'_>> = (0..features).map(|f| Value::Number(value(f))).collect();
        let mut row = 0usize;
        group.throughput(Throughput::Elements(features as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                row += 1;
                for (f, slot) in inputs.iter_mut().enumerate() {
                    *slot = Value::Number(value(row * features + f));
                }
                let request = Request {
                    inputs: &inputs,
                    outputs: &[],
                    latency: Duration::from_micros(700),
                    ok: true,
                    confidence: Some(0.9),
                    segment: None,
                };
                black_box(recorder.record(black_box(&request))).expect("record");
            })
        });
    }
    group.finish();
    let reference = reference(20);
    let bytes = record_rows(&reference, Some(200), ROWS).finish().to_bytes();
    c.bench_function("decode window (20 features, KLL)", |b| {
        b.iter(|| {
            outpost_telemetry::WindowProfile::from_bytes(black_box(&bytes), 1 << 20)
                .expect("decode")
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
