//! The canary judge: hand-checked estimates, error bounds from summaries,
//! and seeded simulations of its power and false-fail rate.
//!
//! Every simulated cohort is exact (raw values) or a latency histogram,
//! whose merges and buckets are deterministic, so the counts below are the
//! same on every run (no KLL compaction coin flips).

use std::time::Duration;

use outpost_telemetry::{
    CanaryInconclusive, CanaryOptions, CanaryVerdict, Cohort, Direction, Kll, LatencyHistogram,
    Scale, StatsError, canary_judge,
};

use crate::common::{normal, rng};

const ALPHA: f64 = 0.05;

/// Three binomial standard deviations above `rate·runs`.
fn slack(rate: f64, runs: u64) -> f64 {
    rate * runs as f64 + 3.0 * (runs as f64 * rate * (1.0 - rate)).sqrt()
}

/// `n` log-normal latencies (median 10 ms, log-sd 0.5) times `factor`, µs.
fn latencies(seed: u64, n: usize, factor: f64) -> Vec<f64> {
    let mut r = rng(seed);
    (0..n)
        .map(|_| factor * 10_000.0 * (0.5 * normal(&mut r)).exp())
        .collect()
}

fn histogram(micros: &[f64]) -> LatencyHistogram {
    let mut h = LatencyHistogram::default();
    for &us in micros {
        h.record(Duration::from_secs_f64(us / 1e6));
    }
    h
}

fn absolute() -> CanaryOptions {
    CanaryOptions {
        scale: Scale::Absolute,
        tolerance: 0.0,
        min_count: 1,
        ..Default::default()
    }
}

#[test]
fn shift_is_the_median_of_pairwise_differences_and_direction_flips_it() {
    let control = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0];
    let canary = [5.0, 3.5, 5.8, 9.7, 9.3, 2.3, 8.4];
    let mut diffs: Vec<f64> = canary
        .iter()
        .flat_map(|y| control.iter().map(move |x| y - x))
        .collect();
    diffs.sort_by(f64::total_cmp);
    let median = 0.5 * (diffs[27] + diffs[28]); // 56 differences
    let (x, y) = (Cohort::from_values(&control), Cohort::from_values(&canary));
    let higher = canary_judge(&x, &y, &absolute()).unwrap();
    assert!((higher.regression - median).abs() < 1e-9, "{higher:?}");
    assert_eq!(higher.error_bound, 0.0);
    assert!(higher.lower < higher.regression && higher.regression < higher.upper);
    let lower_is_worse = CanaryOptions {
        direction: Direction::LowerIsWorse,
        ..absolute()
    };
    let lower = canary_judge(&x, &y, &lower_is_worse).unwrap();
    assert!((lower.regression + median).abs() < 1e-9, "{lower:?}");
    assert!((lower.auc - (1.0 - higher.auc)).abs() < 1e-12);
}

#[test]
fn relative_scale_reads_a_ratio_and_decides() {
    // The canary is the control × 1.2: every log-difference distribution is
    // symmetric about ln 1.2, so the estimate is exactly 20 %.
    let control = latencies(1, 400, 1.0);
    let canary: Vec<f64> = control.iter().map(|v| v * 1.2).collect();
    let options = CanaryOptions::default();
    let report = canary_judge(
        &Cohort::from_values(&control),
        &Cohort::from_values(&canary),
        &options,
    )
    .unwrap();
    assert!((report.regression - 0.2).abs() < 1e-9, "{report:?}");
    assert!(report.lower > 0.05 && report.p_value < ALPHA, "{report:?}");
    assert_eq!(report.verdict, CanaryVerdict::Fail);
    // The same cohorts, lower-is-worse: the canary is better, and passes.
    let better = CanaryOptions {
        direction: Direction::LowerIsWorse,
        ..options
    };
    let report = canary_judge(
        &Cohort::from_values(&control),
        &Cohort::from_values(&canary),
        &better,
    )
    .unwrap();
    assert!((report.regression - (1.0 / 1.2 - 1.0)).abs() < 1e-9);
    assert_eq!(report.verdict, CanaryVerdict::Pass);
}

#[test]
fn summaries_widen_the_error_bound_and_the_interval() {
    let control = latencies(2, 3_000, 1.0);
    let canary = latencies(3, 3_000, 1.05);
    let exact = canary_judge(
        &Cohort::from_values(&control),
        &Cohort::from_values(&canary),
        &CanaryOptions::default(),
    )
    .unwrap();
    // Histogram at 1 %: each log-difference moves by at most 2·(−ln 0.99).
    let binned = canary_judge(
        &Cohort::from_latency(&histogram(&control)),
        &Cohort::from_latency(&histogram(&canary)),
        &CanaryOptions::default(),
    )
    .unwrap();
    let two_delta = -2.0 * 0.99f64.ln();
    let expected = (1.0 + binned.regression) * two_delta.exp_m1();
    assert!((binned.error_bound - expected).abs() < 1e-12, "{binned:?}");
    assert!((binned.regression - exact.regression).abs() <= binned.error_bound);
    assert!(binned.upper - binned.lower > exact.upper - exact.lower);
    assert!(binned.auc_error > 0.0 && (binned.auc - exact.auc).abs() <= binned.auc_error);
    // KLL in estimation mode: the rank errors widen the bound too.
    let sketch = |values: &[f64]| {
        let mut kll = Kll::new(64).unwrap();
        values.iter().for_each(|&v| kll.update(v));
        Cohort::from_kll(&kll)
    };
    let (a, b) = (sketch(&control), sketch(&canary));
    assert!(a.rank_error() > 0.0);
    let sketched = canary_judge(&a, &b, &CanaryOptions::default()).unwrap();
    assert!(sketched.error_bound > 0.0, "{sketched:?}");
    assert!((sketched.regression - exact.regression).abs() <= sketched.error_bound);
    assert!(sketched.upper - sketched.lower > exact.upper - exact.lower);
}

#[test]
fn small_cohorts_are_inconclusive_and_bad_inputs_are_errors() {
    let (x, y) = (
        Cohort::from_values(&[1.0, 2.0]),
        Cohort::from_values(&[3.0]),
    );
    let report = canary_judge(&x, &y, &CanaryOptions::default()).unwrap();
    assert_eq!(
        report.verdict,
        CanaryVerdict::Inconclusive(CanaryInconclusive::NotEnoughData {
            control: 2,
            canary: 1,
            needed: 100
        })
    );
    let empty = Cohort::from_values(&[]);
    assert!(canary_judge(&empty, &empty, &CanaryOptions::default()).is_ok());
    let zero = Cohort::from_values(&[0.0, 1.0]);
    assert!(matches!(
        canary_judge(&x, &zero, &CanaryOptions::default()),
        Err(StatsError::NonPositive { cohort: "canary" })
    ));
    for bad in [
        CanaryOptions {
            alpha: 0.0,
            ..Default::default()
        },
        CanaryOptions {
            tolerance: f64::NAN,
            ..Default::default()
        },
    ] {
        assert!(matches!(
            canary_judge(&x, &y, &bad),
            Err(StatsError::Option(_))
        ));
    }
    // Equal cohorts of a few hundred: neither pass nor fail at 5 %.
    let same = Cohort::from_values(&latencies(4, 300, 1.0));
    let report = canary_judge(&same, &same, &CanaryOptions::default()).unwrap();
    assert_eq!(
        report.verdict,
        CanaryVerdict::Inconclusive(CanaryInconclusive::Undecided),
        "{report:?}"
    );
}

/// Verdicts of `runs` judgements of two latency-histogram cohorts of `n`.
fn verdict_counts(runs: u64, n: usize, factor: f64, seed: u64) -> [u64; 3] {
    let mut counts = [0u64; 3];
    for run in 0..runs {
        let control = histogram(&latencies(seed + 2 * run, n, 1.0));
        let canary = histogram(&latencies(seed + 2 * run + 1, n, factor));
        let report = canary_judge(
            &Cohort::from_latency(&control),
            &Cohort::from_latency(&canary),
            &CanaryOptions::default(),
        )
        .unwrap();
        let slot = match report.verdict {
            CanaryVerdict::Fail => 0,
            CanaryVerdict::Pass => 1,
            _ => 2,
        };
        counts[slot] += 1;
    }
    counts
}

#[test]
fn judge_fails_a_10_percent_latency_regression() {
    // Tolerance 5 %, α 5 %, 1 %-accurate histograms, 20,000 requests per cohort.
    let runs = 500;
    let [fail, pass, open] = verdict_counts(runs, 20_000, 1.10, 10_000);
    eprintln!(
        "canary, 10 % regression, n = 20,000: fail {:.3}, pass {pass}, inconclusive {open}",
        fail as f64 / runs as f64
    );
    assert!(fail as f64 >= 0.99 * runs as f64, "failed {fail} of {runs}");
    assert_eq!(pass, 0);
}

#[test]
fn judge_rarely_fails_equal_cohorts() {
    let runs = 500;
    let [fail, pass, open] = verdict_counts(runs, 20_000, 1.0, 20_000);
    eprintln!(
        "canary, equal cohorts, n = 20,000: false fail {:.3}, pass {:.3}, inconclusive {open}",
        fail as f64 / runs as f64,
        pass as f64 / runs as f64,
    );
    assert!(fail as f64 <= slack(ALPHA, runs), "{fail} of {runs}");
    // At this size the judge should also be able to pass a healthy canary.
    assert!(pass as f64 >= 0.9 * runs as f64, "passed {pass} of {runs}");
}

#[test]
fn judge_with_zero_tolerance_fails_equal_cohorts_at_rate_alpha() {
    // Exact cohorts and no tolerance: Fail is then exactly a one-sided
    // Mann-Whitney test at α, so its rate must be near α (not far below).
    let runs = 600u64;
    let options = CanaryOptions {
        tolerance: 0.0,
        ..Default::default()
    };
    let mut fails = 0u64;
    for run in 0..runs {
        let control = Cohort::from_values(&latencies(30_000 + 2 * run, 200, 1.0));
        let canary = Cohort::from_values(&latencies(30_001 + 2 * run, 200, 1.0));
        let report = canary_judge(&control, &canary, &options).unwrap();
        fails += u64::from(report.verdict == CanaryVerdict::Fail);
    }
    eprintln!(
        "canary, tolerance 0, exact n = 200: false fail {:.3}",
        fails as f64 / runs as f64
    );
    assert!(fails as f64 <= slack(ALPHA, runs), "{fails} of {runs}");
    assert!(fails >= 12, "{fails} of {runs}: far below α");
}
