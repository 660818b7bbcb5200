//! Circuit breaker around the engine: opens after N consecutive failures,
//! lets one probe call through after the open period (half-open), closes
//! on its success and reopens on its failure. Time is passed in.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight; other calls are refused until it reports.
    HalfOpen,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    state: BreakerState,
}

/// A call may go ahead, or is refused until `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Go,
    /// The half-open probe: report its outcome.
    Probe,
    Refused {
        retry_after: Duration,
    },
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            open_for,
            state: BreakerState::Closed { failures: 0 },
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.state, BreakerState::Closed { .. })
    }

    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.state {
            BreakerState::Closed { .. } => Admit::Go,
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen;
                Admit::Probe
            }
            BreakerState::Open { until } => Admit::Refused {
                retry_after: until - now,
            },
            BreakerState::HalfOpen => Admit::Refused {
                retry_after: Duration::from_secs(1),
            },
        }
    }

    pub fn success(&mut self) {
        self.state = BreakerState::Closed { failures: 0 };
    }

    /// Records an engine failure (not a bad input: those are the caller's).
    pub fn failure(&mut self, now: Instant) {
        self.state = match self.state {
            BreakerState::Closed { failures } if failures + 1 < self.threshold => {
                BreakerState::Closed {
                    failures: failures + 1,
                }
            }
            _ => BreakerState::Open {
                until: now + self.open_for,
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_n_failures_probes_then_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(10));
        for _ in 0..2 {
            assert_eq!(b.admit(t0), Admit::Go);
            b.failure(t0);
        }
        assert!(!b.is_open());
        b.failure(t0);
        assert!(b.is_open());
        assert_eq!(
            b.admit(t0 + Duration::from_secs(4)),
            Admit::Refused {
                retry_after: Duration::from_secs(6)
            }
        );
        assert_eq!(b.admit(t0 + Duration::from_secs(10)), Admit::Probe);
        // Only one probe at a time.
        assert!(matches!(
            b.admit(t0 + Duration::from_secs(10)),
            Admit::Refused { .. }
        ));
        b.success();
        assert_eq!(b.admit(t0 + Duration::from_secs(11)), Admit::Go);
    }

    #[test]
    fn a_failed_probe_reopens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, Duration::from_secs(5));
        b.failure(t0);
        assert_eq!(b.admit(t0 + Duration::from_secs(5)), Admit::Probe);
        b.failure(t0 + Duration::from_secs(5));
        assert_eq!(
            b.admit(t0 + Duration::from_secs(6)),
            Admit::Refused {
                retry_after: Duration::from_secs(4)
            }
        );
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(5));
        b.failure(t0);
        b.success();
        b.failure(t0);
        assert!(!b.is_open());
    }
}
