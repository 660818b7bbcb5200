//! The update machine (ARCHITECTURE §6, issue agent-update): a sans-IO
//! core that takes a signed directive through verify → download → verify
//! artifact → stage → self-test → probation → commit, or rolls back.
//!
//! The core owns no socket, clock, RNG or file. The shell feeds it inputs
//! (`handle_*(now, …)`), drains [`Action`]s with [`Updater::poll_action`]
//! and performs them in order, and calls [`Updater::handle_timeout`] at
//! [`Updater::poll_timeout`]. Every step is persisted before it is acted
//! on: an [`Action::Persist`] always precedes the actions of a step, and
//! [`Updater::restore`] resumes from the last persisted [`UpdateRecord`]
//! after a crash.
//!
//! ```text
//!   directive ──verify──▶ Downloading ──done──▶ Verifying ──ok──▶ Staging ──ok──▶ SelfTesting
//!                            │  ▲ interrupted: backoff,                              │ passed
//!                            │  └ resume_from = bytes written                        ▼
//!   Idle ◀── slots written ── Committing ◀── probation None ─────────────── ┬── Probation
//!    ▲                           ▲                                          │  (shadow | canary)
//!    │                           └──── verdict: Deploy{same, None} ─────────┘
//!    ├── Discard ◀── verdict Rollback · health failure · grace expiry · any failure
//!    ├── RollingBack (Rollback{previous} when idle: no download)
//!    └── Retiring (Retire)
//! ```
//!
//! How the server's verdict is expressed with the existing
//! [`DirectiveAction`](outpost_protocol::trust::DirectiveAction)s, each a
//! new signed directive with a higher sequence:
//!
//! | candidate C on probation, A active | directive | meaning |
//! |---|---|---|
//! | shadow or canary | `Deploy{C, Probation::None}` | commit C (no download) |
//! | shadow | `Deploy{C, Canary}` | promote to canary |
//! | canary | `Shadow{C}` | demote to shadow |
//! | any step | `Rollback{A}` or `Deploy{A, _}` | discard C, keep A |
//! | idle, previous P | `Rollback{P}` or `Deploy{P, None}` | restore P (no download) |
//! | any step | `Deploy`/`Shadow` of another target | discard C, install it |
//! | idle, T neither active nor previous | `Rollback{T}` | install T, no probation (a download) |
//!
//! A directive that arrives while a slot pointer is being written waits
//! for the write to finish, then is verified as usual. One that arrives
//! during a download is let through by the shell, which stops the
//! download and reports [`Updater::handle_download_paused`]: the job waits
//! on a timer due at once (no failure counted), so the directive is
//! handled before the download resumes from the bytes written.

mod action;
mod directive;
mod record;
mod state;
mod steps;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use outpost_protocol::messages::{Command, EventKind, InstallStep, ModelState, Phase};
use outpost_protocol::trust::{TrustError, TrustState, UnixSeconds, Verifier};

pub use action::{
    AbandonReason, Action, DiskFailure, DiskFailureKind, DownloadFailure, DownloadFailureKind,
    HealthFailure, JobId, ProbationMode, SelfTestOutcome, SlotPointer, Slots,
};
pub use record::UpdateRecord;
pub use state::{
    Committing, Downloading, Job, OnProbation, Retiring, RollingBack, SelfTesting, Staging, State,
    Verifying,
};

/// Tuning of the machine; the defaults suit a device on a flaky link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateConfig {
    /// Download failures (interruptions) before the job is abandoned.
    pub max_download_failures: u32,
    /// First retry delay; doubles per failure up to `retry_max_secs`.
    pub retry_base_secs: u64,
    pub retry_max_secs: u64,
    /// Directives held while a slot pointer is being written; more are
    /// dropped (the server re-sends what a device's state shows missing).
    pub max_deferred: usize,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            max_download_failures: 8,
            retry_base_secs: 2,
            retry_max_secs: 300,
            max_deferred: 16,
        }
    }
}

/// Why an input was not acted on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// The directive failed a trust check; nothing changed and a
    /// `VerificationFailed` event was reported.
    #[error("directive refused: {0}")]
    Refused(#[from] TrustError),
    /// The directive needs a download and its command named no artifact
    /// URL; it was not accepted (its sequence stays unused) and a
    /// `VerificationFailed` event was reported. The server must send the URL.
    #[error("directive {sequence} installs {name} {version} but its command names no artifact URL")]
    NoArtifactUrl {
        sequence: u64,
        name: String,
        version: String,
    },
    /// A completion that does not belong to the current step (it arrived
    /// after its job was superseded, or the shell reported twice): ignored.
    #[error("{input} for job {job:?} ignored in state {state}")]
    Unexpected {
        input: &'static str,
        job: Option<JobId>,
        state: &'static str,
    },
    /// More directives arrived during a slot write than are held; this one
    /// was dropped unverified.
    #[error("busy writing slot pointers; directive dropped")]
    Busy,
    /// A rollback's or retire's pointer write failed; the old pointer
    /// stands and the machine is idle again. Log it; the server sees the
    /// unchanged state.
    #[error("slot pointer write for {name} failed: {detail}")]
    SlotWrite { name: String, detail: String },
    /// The record was written by another layout version.
    #[error("update record format {found} is not {expected}")]
    RecordFormat { found: u32, expected: u32 },
}

/// Maps the monotonic clock the shell passes to wall seconds.
///
/// Design: wall time is read once, when the core is made, and the
/// monotonic clock drives it after that, so a wall-clock step while an
/// update runs can neither expire nor extend a probation. The anchor is
/// never earlier than the last time the verifier has seen (a device whose
/// clock reset to 1970 after a power loss does not get an endless grace).
#[derive(Debug, Clone, Copy)]
struct Clock {
    at: Instant,
    unix: UnixSeconds,
}

impl Clock {
    fn unix(&self, now: Instant) -> UnixSeconds {
        self.unix
            .saturating_add(now.saturating_duration_since(self.at).as_secs())
    }

    fn instant(&self, t: UnixSeconds) -> Instant {
        let d = Duration::from_secs(t.saturating_sub(self.unix));
        // Past Instant's range means "not in this process's lifetime".
        self.at
            .checked_add(d)
            .or_else(|| {
                self.at
                    .checked_add(Duration::from_secs(u64::from(u32::MAX)))
            })
            .unwrap_or(self.at)
    }
}

/// The update machine. See the module docs.
#[derive(Debug)]
pub struct Updater {
    verifier: Verifier,
    config: UpdateConfig,
    clock: Clock,
    trust: TrustState,
    /// The pointer files, as the shell read them and as completed writes
    /// changed them.
    slots: Slots,
    state: State,
    actions: VecDeque<Action>,
    /// Commands received while a pointer write was in flight.
    deferred: VecDeque<Command>,
}

impl Updater {
    /// A machine with no update in flight (first start, or no record).
    pub fn new(
        verifier: Verifier,
        config: UpdateConfig,
        trust: TrustState,
        slots: Slots,
        now: Instant,
        unix: UnixSeconds,
    ) -> Updater {
        let clock = Clock {
            at: now,
            unix: unix.max(trust.last_seen),
        };
        Updater {
            verifier,
            config,
            clock,
            trust,
            slots,
            state: State::Idle,
            actions: VecDeque::new(),
            deferred: VecDeque::new(),
        }
    }

    /// Resumes after a restart from the last persisted record and the slot
    /// pointers as they are on disk now. The actions it queues redo what
    /// the crash may have cut off: a download resumes from the bytes
    /// written, a staged candidate is tested again, a candidate on
    /// probation resumes it (or is discarded if its grace ran out while the
    /// device was down), a half-done pointer write is finished.
    pub fn restore(
        verifier: Verifier,
        config: UpdateConfig,
        record: UpdateRecord,
        slots: Slots,
        now: Instant,
        unix: UnixSeconds,
    ) -> Result<Updater, UpdateError> {
        if record.format != UpdateRecord::FORMAT {
            return Err(UpdateError::RecordFormat {
                found: record.format,
                expected: UpdateRecord::FORMAT,
            });
        }
        let mut u = Updater::new(verifier, config, record.trust, slots, now, unix);
        u.state = record.state;
        let unix = u.clock.unix(now);
        u.resume(unix);
        Ok(u)
    }

    /// The next action for the shell, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Updater::handle_timeout`] is next due, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = match &self.state {
            State::Downloading(d) => d.retry_at,
            State::Probation(p) => p.deadline(),
            _ => None,
        }?;
        Some(self.clock.instant(t))
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn trust(&self) -> &TrustState {
        &self.trust
    }

    pub fn slots(&self) -> &Slots {
        &self.slots
    }

    /// What [`Action::Persist`] would write now.
    pub fn record(&self) -> UpdateRecord {
        UpdateRecord {
            format: UpdateRecord::FORMAT,
            trust: self.trust.clone(),
            state: self.state.clone(),
        }
    }

    fn push(&mut self, a: Action) {
        self.actions.push_back(a);
    }

    /// Moves to `next` and persists it; the caller queues the step's
    /// actions after this, never before.
    fn enter(&mut self, next: State) {
        self.state = next;
        let record = self.record();
        self.push(Action::Persist(Box::new(record)));
    }

    fn report(&mut self, kind: EventKind) {
        self.push(Action::Report(kind));
    }

    fn report_install(&mut self, job: &Job, step: InstallStep) {
        self.report(EventKind::Install {
            directive: job.id,
            rollout: job.rollout.clone(),
            model: job.candidate(),
            step,
        });
    }

    fn report_state(&mut self, name: &str) {
        let pointer = self.slots.get(name);
        let job = self.state.job().filter(|j| j.target.name == name);
        let about_name = match &self.state {
            State::RollingBack(r) => r.name == name,
            _ => job.is_some(),
        };
        let state = ModelState {
            name: name.to_owned(),
            active: pointer.map(|p| p.active.clone()),
            candidate: job
                .filter(|_| !matches!(self.state, State::Committing(_)))
                .map(Job::candidate),
            previous: pointer.and_then(|p| p.previous.clone()),
            phase: if about_name {
                self.state.phase()
            } else {
                Phase::Serving
            },
        };
        self.push(Action::ReportState(state));
    }

    /// Goes back to idle and discards the job's candidate; the active
    /// model was never touched.
    fn abandon(&mut self, job: Job, reason: AbandonReason, directive: Option<u64>) {
        self.enter(State::Idle);
        self.discard(job, reason, directive);
    }

    /// Queues the discard of `job`'s candidate and its events. The caller
    /// has already persisted the state that no longer holds the job.
    fn discard(&mut self, job: Job, reason: AbandonReason, directive: Option<u64>) {
        let candidate = job.candidate();
        let name = job.target.name.clone();
        let to = self.slots.get(&name).map(|p| p.active.clone());
        let event = EventKind::RolledBack {
            directive: directive.or(Some(job.id)),
            from: candidate.clone(),
            to,
            reason: format!("{}: {reason}", reason.code()),
        };
        self.push(Action::Discard {
            job: job.id,
            candidate,
            reason,
        });
        self.report(event);
        self.report_state(&name);
    }

    fn unexpected(&self, input: &'static str, job: Option<JobId>) -> UpdateError {
        UpdateError::Unexpected {
            input,
            job,
            state: self.state.name(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_maps_both_ways_and_never_runs_before_the_anchor() {
        let at = Instant::now();
        let c = Clock { at, unix: 1_000 };
        assert_eq!(c.unix(at + Duration::from_millis(2_999)), 1_002);
        assert_eq!(c.instant(1_060), at + Duration::from_secs(60));
        // A deadline already past is due now, not in the past.
        assert_eq!(c.instant(10), at);
        // A monotonic clock read before the anchor counts as the anchor.
        assert_eq!(
            c.unix(at.checked_sub(Duration::from_secs(5)).unwrap_or(at)),
            1_000
        );
    }
}
