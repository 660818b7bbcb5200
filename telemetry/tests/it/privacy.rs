//! Differentially private bins: the noisy statistics' error bounds cover
//! the noise, grow as ε shrinks, and keep the false-positive rate at α.
//! All randomness is seeded (xoshiro256++), so the counts are fixed.

use std::sync::Arc;
use std::time::Duration;

use outpost_telemetry::{
    ColumnProfile, DriftOptions, LaplaceNoise, ProfileOptions, Recorder, ReferenceKind,
    ReferenceProfile, Request, Value, Verdict, chi_square, chi_square_noisy, jensen_shannon,
    jensen_shannon_noisy, psi_noisy,
};

use crate::common::{key, mixed_reference, normal, normal_reference, rng};

const ALPHA: f64 = 0.05;

fn edges(reference: &ReferenceProfile) -> outpost_telemetry::BinEdges {
    match reference.columns()[0].kind() {
        ReferenceKind::Numeric(n) => n.edges().clone(),
        _ => panic!("numeric reference expected"),
    }
}

/// Exact bins of `n` draws from N(shift, 1) on the reference's edges.
fn bins(reference: &ReferenceProfile, n: usize, shift: f64, seed: u64) -> Vec<u64> {
    let edges = edges(reference);
    let mut counts = vec![0u64; edges.bins()];
    let mut r = rng(seed);
    for _ in 0..n {
        counts[edges.locate(normal(&mut r) + shift)] += 1;
    }
    counts
}

fn options() -> DriftOptions {
    DriftOptions {
        alpha: ALPHA,
        ..Default::default()
    }
}

#[test]
fn error_bounds_cover_the_noise_and_grow_as_epsilon_shrinks() {
    let reference = normal_reference(1, 20_000, 61);
    let reference_bins = reference.columns()[0].bins().to_vec();
    let truth = bins(&reference, 10_000, 0.1, 62);
    let exact = LaplaceNoise::new(1.0).unwrap(); // the value ignores the noise
    let true_psi = psi_noisy(&reference_bins, &truth, &exact, &options())
        .unwrap()
        .value;
    let true_chi = chi_square(&reference_bins, &truth, &options())
        .unwrap()
        .value;
    let mut noise_rng = rng(63);
    let runs = 200;
    let mut previous = [0.0f64; 2];
    for epsilon in [8.0, 2.0, 0.5, 0.125] {
        let noise = LaplaceNoise::new(epsilon).unwrap();
        let (mut bound_sum, mut covered) = ([0.0f64; 2], [0u32; 2]);
        for _ in 0..runs {
            let noisy = noise.privatize_counts(&truth, &mut noise_rng);
            let p = psi_noisy(&reference_bins, &noisy, &noise, &options()).unwrap();
            let c = chi_square_noisy(&reference_bins, &noisy, &noise, &options()).unwrap();
            for (k, (s, truth)) in [(p, true_psi), (c, true_chi)].into_iter().enumerate() {
                bound_sum[k] += s.error_bound;
                covered[k] += u32::from((s.value - truth).abs() <= s.error_bound);
            }
        }
        let mean = bound_sum.map(|b| b / f64::from(runs));
        eprintln!(
            "ε {epsilon}: mean error bound PSI {:.5} (PSI {true_psi:.4}), χ² {:.2} (χ² {true_chi:.1}); covered {covered:?} of {runs}",
            mean[0], mean[1]
        );
        for k in 0..2 {
            // ≥ 99 % by design; the box bound is conservative, so nearly all.
            assert!(covered[k] >= runs - 2, "ε {epsilon}: {covered:?}");
            assert!(
                mean[k] > previous[k],
                "ε {epsilon}: {mean:?} vs {previous:?}"
            );
        }
        previous = mean;
    }
}

#[test]
fn noisy_tests_keep_alpha_where_the_plain_test_on_noisy_bins_does_not() {
    let reference = normal_reference(1, 20_000, 71);
    let reference_bins = reference.columns()[0].bins().to_vec();
    let noise = LaplaceNoise::new(0.05).unwrap(); // variance 800 per bin
    let mut noise_rng = rng(72);
    let runs = 300u64;
    let (mut plain, mut aware, mut psi_drift) = (0u64, 0u64, 0u64);
    for run in 0..runs {
        let noisy =
            noise.privatize_counts(&bins(&reference, 10_000, 0.0, 73 + run), &mut noise_rng);
        let drift = |s: outpost_telemetry::Statistic| u64::from(s.verdict == Verdict::Drift);
        plain += drift(chi_square(&reference_bins, &noisy, &options()).unwrap());
        aware += drift(chi_square_noisy(&reference_bins, &noisy, &noise, &options()).unwrap());
        psi_drift += drift(psi_noisy(&reference_bins, &noisy, &noise, &options()).unwrap());
    }
    let slack = ALPHA * runs as f64 + 3.0 * (runs as f64 * ALPHA * (1.0 - ALPHA)).sqrt();
    eprintln!(
        "ε 0.05, N(0,1) windows of 10,000, {runs} runs: false positives χ² ignoring noise {:.3}, \
         noise-aware χ² {:.3}, noise-aware PSI {:.3}",
        plain as f64 / runs as f64,
        aware as f64 / runs as f64,
        psi_drift as f64 / runs as f64
    );
    assert!(aware as f64 <= slack && psi_drift as f64 <= slack);
    assert!(
        plain as f64 > slack,
        "{plain}: the noise should inflate the plain test"
    );
}

#[test]
fn noisy_psi_still_flags_a_large_shift_at_epsilon_one() {
    // A 0.5 sd mean shift (PSI ≈ 0.24 on 10 equal-mass bins), n = 10,000.
    let reference = normal_reference(1, 20_000, 81);
    let reference_bins = reference.columns()[0].bins().to_vec();
    let noise = LaplaceNoise::new(1.0).unwrap();
    let mut noise_rng = rng(82);
    let runs = 100u64;
    let mut flagged = 0;
    for run in 0..runs {
        let noisy =
            noise.privatize_counts(&bins(&reference, 10_000, 0.5, 83 + run), &mut noise_rng);
        let s = psi_noisy(&reference_bins, &noisy, &noise, &options()).unwrap();
        flagged += u64::from(s.verdict == Verdict::Drift);
    }
    eprintln!("ε 1, 0.5 sd shift: noisy PSI flags {flagged} of {runs}");
    assert_eq!(flagged, runs);
}

#[test]
fn js_error_bound_covers_the_noise_and_grows_as_epsilon_shrinks() {
    let reference = normal_reference(1, 20_000, 61);
    let reference_bins = reference.columns()[0].bins().to_vec();
    let truth = bins(&reference, 10_000, 0.1, 62);
    let true_js = jensen_shannon(&reference_bins, &truth, &options())
        .unwrap()
        .value;
    // On noise-free bins the value is the plain JS (no pseudo-counts).
    let exact = LaplaceNoise::new(1.0).unwrap();
    let same = jensen_shannon_noisy(&reference_bins, &truth, &exact, &options()).unwrap();
    assert!(
        (same.value - true_js).abs() < 1e-12,
        "{same:?} vs {true_js}"
    );
    let mut noise_rng = rng(64);
    let runs = 200;
    let mut previous = 0.0f64;
    for epsilon in [8.0, 2.0, 0.5, 0.125] {
        let noise = LaplaceNoise::new(epsilon).unwrap();
        let (mut bound_sum, mut covered) = (0.0f64, 0u32);
        for _ in 0..runs {
            let noisy = noise.privatize_counts(&truth, &mut noise_rng);
            let s = jensen_shannon_noisy(&reference_bins, &noisy, &noise, &options()).unwrap();
            bound_sum += s.error_bound;
            covered += u32::from((s.value - true_js).abs() <= s.error_bound);
        }
        let mean = bound_sum / f64::from(runs);
        eprintln!(
            "ε {epsilon}: mean error bound JS {mean:.5} (JS {true_js:.4}); covered {covered} of {runs}"
        );
        // ≥ 99 % by design; the box bound is conservative, so nearly all.
        assert!(covered >= runs - 2, "ε {epsilon}: {covered}");
        assert!(mean > previous, "ε {epsilon}: {mean} vs {previous}");
        previous = mean;
    }
}

#[test]
fn noisy_js_keeps_alpha_and_still_flags_a_large_shift() {
    let reference = normal_reference(1, 20_000, 71);
    let reference_bins = reference.columns()[0].bins().to_vec();
    let noise = LaplaceNoise::new(0.05).unwrap(); // variance 800 per bin
    let mut noise_rng = rng(74);
    let runs = 300u64;
    let mut false_drift = 0u64;
    for run in 0..runs {
        let noisy =
            noise.privatize_counts(&bins(&reference, 10_000, 0.0, 75 + run), &mut noise_rng);
        let s = jensen_shannon_noisy(&reference_bins, &noisy, &noise, &options()).unwrap();
        false_drift += u64::from(s.verdict == Verdict::Drift);
    }
    let slack = ALPHA * runs as f64 + 3.0 * (runs as f64 * ALPHA * (1.0 - ALPHA)).sqrt();
    eprintln!(
        "ε 0.05, N(0,1) windows of 10,000, {runs} runs: false positives noise-aware JS {:.3}",
        false_drift as f64 / runs as f64
    );
    assert!(false_drift as f64 <= slack, "{false_drift}");
    // A 0.5 sd mean shift (JS distance ≈ 0.2 on 10 equal-mass bins) at ε 1.
    let noise = LaplaceNoise::new(1.0).unwrap();
    let runs = 100u64;
    let mut flagged = 0;
    for run in 0..runs {
        let noisy =
            noise.privatize_counts(&bins(&reference, 10_000, 0.5, 383 + run), &mut noise_rng);
        let s = jensen_shannon_noisy(&reference_bins, &noisy, &noise, &options()).unwrap();
        flagged += u64::from(s.verdict == Verdict::Drift);
    }
    eprintln!("ε 1, 0.5 sd shift: noisy JS flags {flagged} of {runs}");
    assert_eq!(flagged, runs);
}

#[test]
fn noisy_js_edge_cases() {
    let noise = LaplaceNoise::new(1.0).unwrap();
    let options = options();
    assert!(jensen_shannon_noisy(&[1, 2], &[1, 2, 3], &noise, &options).is_err());
    // An empty reference: JS is 0 by convention, and so is every true value.
    let s = jensen_shannon_noisy(&[0, 0, 0], &[40, 0, 3], &noise, &options).unwrap();
    assert_eq!((s.value, s.error_bound), (0.0, 0.0));
    assert_eq!(
        s.verdict,
        Verdict::Inconclusive(outpost_telemetry::Inconclusive::NotEnoughData)
    );
    // Noisy counts all 0: the true window may be empty (JS 0) or not, so
    // the bound reaches from 0 to what Δ per bin allows.
    let s = jensen_shannon_noisy(&[500, 500], &[0, 0], &noise, &options).unwrap();
    assert_eq!(s.value, 0.0);
    assert!(s.error_bound > 0.0 && s.error_bound <= 1.0, "{s:?}");
}

#[test]
fn privatizing_a_profile_noises_bins_and_drops_raw_values() {
    let reference = Arc::new(mixed_reference());
    let options = ProfileOptions::default();
    let mut recorder = Recorder::new(reference.clone(), key("dp", 0), options).unwrap();
    let mut r = rng(91);
    for i in 0..2_000 {
        let colour = ["red", "green", "blue", "mauve"][i % 4];
        let inputs = [
            Value::Number(normal(&mut r)),
            Value::Number(f64::from(i as u32 % 50)),
            Value::Category(colour),
        ];
        let outputs = [Value::Number(0.5)];
        let request = Request {
            inputs: &inputs,
            outputs: &outputs,
            latency: Duration::from_micros(300),
            ok: true,
            confidence: None,
            segment: None,
        };
        recorder.record(&request).unwrap();
    }
    let window = recorder.finish();
    let mut private = window.profile.clone();
    let noise = LaplaceNoise::for_window(1.0, private.columns.len()).unwrap();
    assert_eq!(noise.epsilon(), 0.25);
    noise.privatize(&mut private, &mut rng(92));
    let bound = noise.count_bound(12);
    let mut changed = 0;
    for (before, after) in window.profile.columns.iter().zip(&private.columns) {
        assert!(after.kll().is_none());
        if let ColumnProfile::Categorical(c) = after {
            assert!(c.unseen.is_empty(), "unseen names are raw values");
        }
        for (a, b) in before.bins().iter().zip(after.bins()) {
            assert!((*a as f64 - b as f64).abs() <= bound, "{a} vs {b}");
            changed += u32::from(*a != b);
        }
    }
    assert!(changed > 10, "only {changed} bins changed");
}
