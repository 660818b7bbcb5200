//! Window sizes on the wire (issue 4: 100 numeric features without KLL fit
//! in 64 KB; state the size with KLL on 20 features).

use std::sync::Arc;

use outpost_telemetry::ProfileOptions;

use crate::common::{key, normal, normal_reference, numeric_window, rng};

fn window_bytes(features: usize, rows: usize, kll_k: Option<u16>) -> usize {
    let reference = Arc::new(normal_reference(features, 5_000, 3));
    let mut r = rng(4);
    let data: Vec<Vec<f64>> = (0..rows)
        .map(|_| (0..features).map(|_| normal(&mut r)).collect())
        .collect();
    let options = ProfileOptions {
        kll_k,
        ..Default::default()
    };
    numeric_window(&reference, key("size", 0), options, data)
        .to_bytes()
        .len()
}

#[test]
fn a_window_of_100_features_without_kll_fits_in_64_kb() {
    let bytes = window_bytes(100, 10_000, None);
    // The same samples as JSON numbers: ~19 characters each.
    let json = serde_json_estimate(100 * 10_000);
    eprintln!("100 features, 10,000 rows, no KLL: {bytes} bytes (raw JSON ≈ {json} bytes)");
    assert!(bytes <= 64 * 1024, "{bytes} bytes");
}

#[test]
fn a_window_of_20_features_with_kll_k_200_is_measured() {
    let bytes = window_bytes(20, 10_000, Some(200));
    eprintln!("20 features, 10,000 rows, KLL k=200: {bytes} bytes");
    // 20 sketches of at most ~3·k four-byte items each, plus bins.
    assert!(bytes <= 20 * (3 * 200 * 4 + 200), "{bytes} bytes");
    assert!(
        bytes > 20 * 200 * 4,
        "the sketches are in there: {bytes} bytes"
    );
}

/// Bytes of `values` standard-normal samples written as a JSON array of numbers.
fn serde_json_estimate(values: usize) -> usize {
    let mut r = rng(5);
    let sample: Vec<f64> = (0..1_000).map(|_| normal(&mut r)).collect();
    let per_value = sample
        .iter()
        .map(|v| format!("{v}").len() + 1)
        .sum::<usize>() as f64
        / 1_000.0;
    (per_value * values as f64) as usize
}
