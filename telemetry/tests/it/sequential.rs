//! The anytime-valid sequential canary (mSPRT): seeded simulations of a
//! rollout that looks after every one of 50 windows.
//!
//! Inputs are sums of raw values or latency histograms, both deterministic,
//! so the counts below are the same on every run.

use std::time::Duration;

use outpost_telemetry::{
    CanaryVerdict, CohortSums, LatencyHistogram, SequentialCanary, SequentialOptions,
};

use crate::common::{normal, rng};

const ALPHA: f64 = 0.05;
const WINDOWS: u64 = 50;
/// Requests per cohort per window.
const PER_WINDOW: usize = 200;

/// One window of log-normal latencies (median 10 ms, log-sd 0.5) × `factor`, µs.
fn window(r: &mut rand::rngs::Xoshiro256PlusPlus, factor: f64) -> Vec<f64> {
    (0..PER_WINDOW)
        .map(|_| factor * 10_000.0 * (0.5 * normal(r)).exp())
        .collect()
}

/// Three binomial standard deviations above `rate·runs`.
fn slack(rate: f64, runs: u64) -> f64 {
    rate * runs as f64 + 3.0 * (runs as f64 * rate * (1.0 - rate)).sqrt()
}

#[test]
fn looking_after_every_window_keeps_false_halts_below_alpha_unlike_naive_peeking() {
    let runs = 600u64;
    let z = 1.644_853_627; // one-sided 95 %
    let (mut msprt_halts, mut naive_halts) = (0u64, 0u64);
    for run in 0..runs {
        let mut r = rng(40_000 + run);
        let mut test = SequentialCanary::new(SequentialOptions::default()).unwrap();
        let (mut control, mut canary) = (CohortSums::default(), CohortSums::default());
        let (mut msprt, mut naive) = (false, false);
        for _ in 0..WINDOWS {
            let x = CohortSums::from_values(&window(&mut r, 1.0));
            let y = CohortSums::from_values(&window(&mut r, 1.0));
            msprt |= test.update(&x, &y).verdict == CanaryVerdict::Fail;
            // The naive rule: a fixed-n one-sided z-test on all data so far,
            // repeated at every look.
            control.add(&x);
            canary.add(&y);
            naive |= z_statistic(&control, &canary) > z;
        }
        msprt_halts += u64::from(msprt);
        naive_halts += u64::from(naive);
    }
    eprintln!(
        "equal cohorts, {WINDOWS} looks, {runs} runs: mSPRT false halts {:.3}, naive repeated z-test {:.3}",
        msprt_halts as f64 / runs as f64,
        naive_halts as f64 / runs as f64
    );
    assert!(msprt_halts as f64 <= slack(ALPHA, runs), "{msprt_halts}");
    // Peeking must visibly inflate the naive rule's rate past α.
    assert!(naive_halts as f64 > slack(ALPHA, runs), "{naive_halts}");
}

fn z_statistic(x: &CohortSums, y: &CohortSums) -> f64 {
    let var = |s: &CohortSums| {
        let n = s.count as f64;
        (s.sum_squares - s.sum * s.sum / n) / (n - 1.0)
    };
    let (n, m) = (x.count as f64, y.count as f64);
    (y.sum / m - x.sum / n) / (var(x) / n + var(y) / m).sqrt()
}

#[test]
fn a_10_percent_latency_regression_halts_within_a_few_windows() {
    let runs = 500u64;
    let mut delays: Vec<u64> = Vec::new();
    for run in 0..runs {
        let mut r = rng(50_000 + run);
        let mut test = SequentialCanary::new(SequentialOptions::default()).unwrap();
        for look in 1..=WINDOWS {
            let histogram = |values: Vec<f64>| {
                let mut h = LatencyHistogram::default();
                values
                    .iter()
                    .for_each(|&us| h.record(Duration::from_secs_f64(us / 1e6)));
                CohortSums::from_latency(&h)
            };
            let x = histogram(window(&mut r, 1.0));
            let y = histogram(window(&mut r, 1.10));
            if test.update(&x, &y).verdict == CanaryVerdict::Fail {
                delays.push(look);
                break;
            }
        }
    }
    delays.sort_unstable();
    let detected = delays.len() as u64;
    let mean = delays.iter().sum::<u64>() as f64 / detected.max(1) as f64;
    eprintln!(
        "10 % regression, {PER_WINDOW} requests/cohort/window: detected {:.3} within {WINDOWS} windows; \
         delay mean {mean:.1}, median {}, max {} windows",
        detected as f64 / runs as f64,
        delays.get(delays.len() / 2).unwrap_or(&0),
        delays.last().unwrap_or(&0),
    );
    assert!(
        detected as f64 >= 0.99 * runs as f64,
        "{detected} of {runs}"
    );
    assert!(mean < 25.0, "mean delay {mean}");
}
