//! The persisted record and resuming from it after a crash.

use outpost_protocol::trust::TrustState;
use serde::{Deserialize, Serialize};

use super::Updater;
use super::action::{AbandonReason, Action};
use super::state::State;

/// Everything the update machine needs to resume: the trust state (so the
/// last accepted sequence can never go backwards) and the step it was
/// about to act on.
///
/// Design: one record, written with one atomic rename, holds both the
/// trust state and the step. Two files could disagree after a crash (a
/// sequence accepted but its job forgotten, or the reverse). The shell
/// keeps it in its own file beside the slot pointers, not in sled (§6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRecord {
    /// Layout version of this record.
    pub format: u32,
    pub trust: TrustState,
    pub state: State,
}

impl UpdateRecord {
    pub const FORMAT: u32 = 1;
}

impl Updater {
    /// Asks again for what a crash may have cut off, given the record the
    /// core was restored from and the slot pointers as the shell read them
    /// (the pointers, not the record, say whether a rename happened).
    pub(super) fn resume(&mut self, unix: u64) {
        let state = std::mem::replace(&mut self.state, State::Idle);
        match state {
            State::Idle => self.state = State::Idle,
            State::Downloading(d) => {
                if d.retry_at.is_some() {
                    // A backoff was running: its timer resumes.
                    self.state = State::Downloading(d);
                } else {
                    self.download(d);
                }
            }
            State::Verifying(v) => {
                let action = Action::VerifyArtifact {
                    job: v.job.id,
                    target: v.job.target.clone(),
                };
                self.state = State::Verifying(v);
                self.push(action);
            }
            State::Staging(s) => {
                let action = Action::Stage {
                    job: s.job.id,
                    target: s.job.target.clone(),
                };
                self.state = State::Staging(s);
                self.push(action);
            }
            State::SelfTesting(s) => {
                // Staged but not (or not known to be) tested: test again,
                // through the verified load path.
                let action = Action::SelfTest {
                    job: s.job.id,
                    candidate: s.job.target.clone(),
                };
                self.state = State::SelfTesting(s);
                self.push(action);
            }
            State::Probation(p) => {
                if p.deadline().is_some_and(|d| d <= unix) {
                    // The grace ran out while the device was down.
                    self.abandon(p.job, AbandonReason::GraceExpired, None);
                } else {
                    let action = Action::StartProbation {
                        job: p.job.id,
                        candidate: p.job.candidate(),
                        mode: p.mode,
                        until: p.job.until,
                    };
                    self.state = State::Probation(p);
                    self.push(action);
                }
            }
            State::Committing(c) => {
                if self.slots.get(&c.pointer.active.name) == Some(&c.pointer) {
                    // The rename happened; only the bookkeeping was lost.
                    self.state = State::Committing(c);
                    self.finish_slot_write();
                } else {
                    let action = Action::Commit {
                        job: c.job.id,
                        name: c.pointer.active.name.clone(),
                        pointer: c.pointer.clone(),
                        drop: c.drop.clone(),
                    };
                    self.state = State::Committing(c);
                    self.push(action);
                }
            }
            State::RollingBack(r) => {
                if self.slots.get(&r.name) == Some(&r.pointer) {
                    self.state = State::RollingBack(r);
                    self.finish_slot_write();
                } else {
                    let action = Action::RollBack {
                        name: r.name.clone(),
                        from: r.from.clone(),
                        pointer: r.pointer.clone(),
                    };
                    self.state = State::RollingBack(r);
                    self.push(action);
                }
            }
            State::Retiring(r) => {
                // Asked again even when the pointer is already gone: the
                // files and logs may not be, and retiring is idempotent.
                let action = Action::Retire {
                    name: r.name.clone(),
                };
                self.state = State::Retiring(r);
                self.push(action);
            }
        }
    }
}
