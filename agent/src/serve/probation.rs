//! A candidate on probation beside the active model (ARCHITECTURE §6).
//!
//! - Shadow: the active model answers; afterwards, if the CPU budget
//!   allows, the candidate runs on the same inputs ([`ShadowJob`]). Its
//!   agreement with the active model and the score deltas are counted in
//!   [`ProbationStats`]; callers never see its outputs.
//! - Canary: the candidate answers; its telemetry windows carry the
//!   candidate slot. Its errors are counted for the device's own health
//!   check.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost_runtime::Tensor;

use super::LoadedModel;
use crate::serve::tensor::argmax_rows;
use crate::update::ProbationMode;

/// The candidate slot of one model name.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub model: Arc<LoadedModel>,
    pub mode: ProbationMode,
    pub stats: Arc<ProbationStats>,
}

/// Counters of one probation, since it started in this process.
#[derive(Debug)]
pub struct ProbationStats {
    /// Requests the candidate saw (canary: answered; shadow: ran).
    pub requests: AtomicU64,
    /// Of those, engine failures (the breaker's kind, not bad input).
    pub errors: AtomicU64,
    /// Shadow: requests skipped because the CPU budget was spent.
    pub shadow_skipped: AtomicU64,
    /// Shadow: rows compared, and rows whose arg-max class agreed.
    pub rows: AtomicU64,
    pub agreed: AtomicU64,
    /// Shadow: sum and maximum over rows of the mean absolute difference
    /// between the two first outputs, in millionths.
    pub delta_sum_micros: AtomicU64,
    pub delta_max_micros: AtomicU64,
    budget: Mutex<Budget>,
}

/// A token bucket of CPU time: it fills at `share` seconds per second up
/// to `capacity`; a shadow run is admitted while the bucket is not empty
/// and then pays its measured time (it may go negative: the next runs wait
/// until it has refilled). The result is sampling: over the budget, only
/// the share of requests the budget pays for is shadowed.
#[derive(Debug)]
struct Budget {
    share: f64,
    capacity: f64,
    tokens: f64,
    at: Instant,
}

impl ProbationStats {
    /// `budget_percent` of one CPU for shadow runs.
    pub fn new(budget_percent: u8, now: Instant) -> ProbationStats {
        let share = f64::from(budget_percent.min(100)) / 100.0;
        // Up to one second's worth may be saved for a burst.
        let capacity = share;
        ProbationStats {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            shadow_skipped: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            agreed: AtomicU64::new(0),
            delta_sum_micros: AtomicU64::new(0),
            delta_max_micros: AtomicU64::new(0),
            budget: Mutex::new(Budget {
                share,
                capacity,
                tokens: capacity,
                at: now,
            }),
        }
    }

    /// Whether a shadow run may start now; counts a skip when not.
    pub fn admit_shadow(&self, now: Instant) -> bool {
        let admitted = self.budget.lock().is_ok_and(|mut b| {
            let dt = now.saturating_duration_since(b.at).as_secs_f64();
            b.at = now;
            b.tokens = (b.tokens + dt * b.share).min(b.capacity);
            b.share > 0.0 && b.tokens > 0.0
        });
        if !admitted {
            self.shadow_skipped.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// A shadow run took `cost` of CPU.
    fn charge(&self, cost: Duration) {
        if let Ok(mut b) = self.budget.lock() {
            b.tokens -= cost.as_secs_f64();
        }
    }

    /// Agreement rate and mean score delta so far, as a snapshot.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            shadow_skipped: self.shadow_skipped.load(Ordering::Relaxed),
            rows: self.rows.load(Ordering::Relaxed),
            agreed: self.agreed.load(Ordering::Relaxed),
            delta_sum_micros: self.delta_sum_micros.load(Ordering::Relaxed),
            delta_max_micros: self.delta_max_micros.load(Ordering::Relaxed),
        }
    }
}

/// [`ProbationStats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub errors: u64,
    pub shadow_skipped: u64,
    pub rows: u64,
    pub agreed: u64,
    pub delta_sum_micros: u64,
    pub delta_max_micros: u64,
}

/// A shadow run to perform after the active model has answered.
#[derive(Debug)]
pub struct ShadowJob {
    pub candidate: Arc<LoadedModel>,
    pub stats: Arc<ProbationStats>,
    pub inputs: Vec<(String, Tensor)>,
    /// The active model's first output, to compare with.
    pub active_output: Option<Tensor>,
}

/// What a shadow run gave, for the candidate's telemetry window.
#[derive(Debug)]
pub struct ShadowOutcome {
    pub candidate: Arc<LoadedModel>,
    /// `None` when the candidate failed.
    pub outputs: Option<Vec<Tensor>>,
    pub latency: Duration,
}

impl ShadowJob {
    /// Runs the candidate (blocking) and counts agreement and deltas.
    pub fn run(self) -> ShadowOutcome {
        let started = Instant::now();
        let result = super::run_guarded(&self.candidate, self.inputs);
        let latency = started.elapsed();
        self.stats.charge(latency);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let outputs = match result {
            Ok(outs) => Some(outs.into_iter().map(|(_, t)| t).collect::<Vec<_>>()),
            Err(super::RunError::Bad(_) | super::RunError::Ood(_)) => None,
            Err(_) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        if let (Some(outs), Some(active)) = (&outputs, &self.active_output)
            && let Some(cand) = outs.first()
        {
            compare(&self.stats, active, cand);
        }
        ShadowOutcome {
            candidate: self.candidate,
            outputs,
            latency,
        }
    }
}

/// Counts per-row arg-max agreement and the mean absolute difference of
/// the two outputs' rows.
fn compare(stats: &ProbationStats, active: &Tensor, candidate: &Tensor) {
    let (Some(a), Some(c)) = (argmax_rows(active), argmax_rows(candidate)) else {
        return;
    };
    let rows = a.len().min(c.len());
    let agreed = a.iter().zip(&c).filter(|(x, y)| x == y).count();
    stats.rows.fetch_add(rows as u64, Ordering::Relaxed);
    stats.agreed.fetch_add(agreed as u64, Ordering::Relaxed);
    let (Some(av), Some(cv)) = (values(active), values(candidate)) else {
        return;
    };
    if rows == 0 || av.len() != cv.len() || av.len() % rows != 0 {
        return;
    }
    let width = av.len() / rows;
    for r in 0..rows {
        let span = r * width..(r + 1) * width;
        let mean = av[span.clone()]
            .iter()
            .zip(&cv[span])
            .map(|(x, y)| (x - y).abs())
            .sum::<f64>()
            / width.max(1) as f64;
        let micros = if mean.is_finite() {
            (mean * 1e6).round().min(u64::MAX as f64) as u64
        } else {
            u64::MAX / 1024
        };
        stats.delta_sum_micros.fetch_add(micros, Ordering::Relaxed);
        stats.delta_max_micros.fetch_max(micros, Ordering::Relaxed);
    }
}

fn values(t: &Tensor) -> Option<Vec<f64>> {
    let c = t.cast_to::<f64>().ok()?;
    Some(
        c.to_plain_array_view::<f64>()
            .ok()?
            .iter()
            .copied()
            .collect(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_samples_when_spent_and_refills_with_time() {
        let t0 = Instant::now();
        let s = ProbationStats::new(10, t0);
        assert!(s.admit_shadow(t0));
        // A 50 ms run against a 100 ms bucket: still admitted once more.
        s.charge(Duration::from_millis(50));
        assert!(s.admit_shadow(t0));
        s.charge(Duration::from_millis(80));
        // Now in debt by 30 ms: refused until 300 ms of wall time refill it.
        assert!(!s.admit_shadow(t0 + Duration::from_millis(100)));
        assert!(s.admit_shadow(t0 + Duration::from_millis(400)));
        assert_eq!(s.snapshot().shadow_skipped, 1);
        let none = ProbationStats::new(0, t0);
        assert!(!none.admit_shadow(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn agreement_and_deltas_are_counted_per_row() {
        let s = ProbationStats::new(100, Instant::now());
        let a = Tensor::from_shape(&[2, 3], &[0.1f32, 0.7, 0.2, 0.5, 0.3, 0.2]).unwrap();
        let c = Tensor::from_shape(&[2, 3], &[0.1f32, 0.6, 0.3, 0.2, 0.7, 0.1]).unwrap();
        compare(&s, &a, &c);
        let snap = s.snapshot();
        assert_eq!((snap.rows, snap.agreed), (2, 1));
        // Row 0: (0 + 0.1 + 0.1) / 3; row 1: (0.3 + 0.4 + 0.1) / 3.
        assert!((snap.delta_max_micros as i64 - 266_667).abs() <= 1);
        assert!((snap.delta_sum_micros as i64 - 333_333).abs() <= 2);
    }
}
