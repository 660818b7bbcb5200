//! Accuracy from ground-truth feedback: the two-proportion test.

use std::sync::Arc;

use outpost_telemetry::{
    Confusion, DriftOptions, Feedback, Inconclusive, ProfileOptions, Recorder, StatsError, Test,
    Verdict, accuracy_difference,
};

use crate::common::{key, normal_reference};

/// A matrix of `total` labels of which `correct` are right (binary classes).
fn confusion(correct: usize, total: usize) -> Confusion {
    let reference = Arc::new(normal_reference(1, 100, 1));
    let mut recorder = Recorder::new(reference, key("d", 0), ProfileOptions::default()).unwrap();
    for i in 0..total {
        let actual = i % 2;
        let predicted = if i < correct { actual } else { 1 - actual };
        recorder
            .feedback(&Feedback {
                predicted,
                actual,
                segment: None,
            })
            .unwrap();
    }
    recorder.finish().profile.feedback
}

#[test]
fn a_less_accurate_canary_is_detected_with_the_two_proportion_p_value() {
    let control = confusion(900, 1_000);
    let canary = confusion(850, 1_000);
    assert_eq!(control.accuracy(), Some(0.9));
    let s = accuracy_difference(&control, &canary, &DriftOptions::default()).unwrap();
    assert_eq!(s.test, Test::AccuracyDifference);
    assert!((s.value - -0.05).abs() < 1e-12, "{}", s.value);
    // z = −3.3806, two-sided p = erfc(|z|/√2) (computed independently).
    let p = s.p_value.unwrap();
    assert!((p - 7.232_327e-4).abs() < 1e-9, "{p}");
    assert_eq!(s.verdict, Verdict::Drift);
    assert_eq!((s.error_bound, s.threshold), (0.0, 0.05));
}

#[test]
fn a_small_difference_is_not_significant() {
    let s = accuracy_difference(
        &confusion(900, 1_000),
        &confusion(890, 1_000),
        &DriftOptions::default(),
    )
    .unwrap();
    let p = s.p_value.unwrap();
    assert!((p - 0.465_743_6).abs() < 1e-6, "{p}");
    assert_eq!(s.verdict, Verdict::NoDrift);
    // Symmetric: swapping the sides flips the sign, not the p-value.
    let swapped = accuracy_difference(
        &confusion(890, 1_000),
        &confusion(900, 1_000),
        &DriftOptions::default(),
    )
    .unwrap();
    assert!((swapped.value + s.value).abs() < 1e-12);
    assert_eq!(swapped.p_value, s.p_value);
}

#[test]
fn too_few_labels_degenerate_counts_and_bad_options() {
    let s = accuracy_difference(
        &confusion(90, 99),
        &confusion(10, 100),
        &DriftOptions::default(),
    )
    .unwrap();
    assert_eq!(
        s.verdict,
        Verdict::Inconclusive(Inconclusive::NotEnoughData)
    );
    let none = accuracy_difference(
        &Confusion::new(),
        &Confusion::new(),
        &DriftOptions::default(),
    )
    .unwrap();
    assert_eq!(
        none.verdict,
        Verdict::Inconclusive(Inconclusive::NotEnoughData)
    );
    // Every label right on both sides: equal accuracy, no variance.
    let perfect = accuracy_difference(
        &confusion(200, 200),
        &confusion(300, 300),
        &DriftOptions::default(),
    )
    .unwrap();
    assert_eq!((perfect.value, perfect.p_value), (0.0, Some(1.0)));
    assert_eq!(perfect.verdict, Verdict::NoDrift);
    let bad = DriftOptions {
        alpha: 0.0,
        ..Default::default()
    };
    assert!(matches!(
        accuracy_difference(&Confusion::new(), &Confusion::new(), &bad),
        Err(StatsError::Option(_))
    ));
}
