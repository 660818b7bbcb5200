//! Window sizes on the wire (issue 4: 100 numeric features without KLL fit
//! in 64 KB; state the size with KLL on 20 features).

use std::sync::Arc;

use outpost_telemetry::{Feedback, ProfileOptions, Recorder, WindowProfile};

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

#[test]
fn feedback_adds_little_to_a_window_of_100_features() {
    let reference = Arc::new(normal_reference(100, 5_000, 3));
    let options = ProfileOptions {
        kll_k: None,
        ..Default::default()
    };
    let mut r = rng(4);
    let data: Vec<Vec<f64>> = (0..10_000)
        .map(|_| (0..100).map(|_| normal(&mut r)).collect())
        .collect();
    let plain = numeric_window(&reference, key("size", 0), options.clone(), data);
    let plain_bytes = plain.to_bytes().len();
    // 2,000 labels over 10 classes, ~90 % right, the errors spread over
    // every off-diagonal cell, in 4 segments: a dense-ish worst case.
    let mut recorder = Recorder::new(reference, key("size", 0), options).unwrap();
    for i in 0..2_000usize {
        let actual = i % 10;
        let predicted = if i % 10 == 3 { (i / 10) % 10 } else { actual };
        let segment = ["eu", "us", "apac", "latam"][i % 4];
        recorder
            .feedback(&Feedback {
                predicted,
                actual,
                segment: Some(segment),
            })
            .unwrap();
    }
    let labelled = recorder.finish().profile;
    let mut with_feedback: WindowProfile = plain.clone();
    with_feedback.profile.feedback = labelled.feedback;
    with_feedback.profile.segments = labelled.segments;
    let feedback_bytes = with_feedback.to_bytes().len();
    eprintln!(
        "100 features, 10,000 rows, no KLL: {plain_bytes} bytes without labels, \
         {feedback_bytes} bytes with 2,000 labels over 10 classes in 4 segments"
    );
    assert!(feedback_bytes > plain_bytes);
    // Sparse cells: at most 19 cells a matrix here, ≤ 6 bytes each, plus
    // segment overhead; far below a dense 65×65 matrix (≥ 4,225 bytes).
    assert!(
        feedback_bytes - plain_bytes < 1_000,
        "{feedback_bytes} - {plain_bytes}"
    );
    assert!(feedback_bytes <= 64 * 1024);
}
