//! The update machine's states: one struct per step, each holding exactly
//! what that step needs to go on, and all of them serializable, because the
//! state *is* what [`UpdateRecord`](super::UpdateRecord) persists.
//!
//! Design: the persisted form and the in-memory form are the same type.
//! Keeping two (an in-memory state with `Instant`s and a record with wall
//! seconds) invites the two to drift; instead every time in a state is wall
//! seconds ([`UnixSeconds`]) and the core converts through its clock anchor
//! when it answers `poll_timeout`.

use outpost_protocol::messages::{ModelRef, Phase};
use outpost_protocol::trust::{OfflineGrace, RolloutStage, TargetMeta, UnixSeconds};
use serde::{Deserialize, Serialize};

use super::action::{JobId, ProbationMode, SlotPointer};

/// Where the machine stands.
// Design: one State lives in the core and is moved, not copied in bulk;
// boxing the job would only add an allocation per step.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum State {
    /// No update in flight; the slots are as the pointer files say.
    Idle,
    Downloading(Downloading),
    Verifying(Verifying),
    Staging(Staging),
    SelfTesting(SelfTesting),
    Probation(OnProbation),
    Committing(Committing),
    RollingBack(RollingBack),
    Retiring(Retiring),
}

/// One install, from the directive that started it to its commit or
/// abandonment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The sequence of the directive that started the job; it tags every
    /// action and completion of the job, so a completion that arrives after
    /// the job was superseded is recognised and ignored.
    pub id: JobId,
    pub rollout: Option<RolloutStage>,
    /// The release-signed target (length and digest are what the artifact
    /// is checked against).
    pub target: TargetMeta,
    /// Where the package is fetched (outside the signatures: any mirror
    /// will do, the bytes are checked).
    pub url: String,
    /// What follows the self-test: `None` commits at once.
    pub probation: Option<ProbationMode>,
    /// The offline-grace policy of the latest directive about this job.
    pub grace: OfflineGrace,
    /// End of the probation window: the expiry of the latest directive
    /// about this job.
    pub until: UnixSeconds,
}

impl Job {
    pub fn candidate(&self) -> ModelRef {
        model_ref(&self.target)
    }
}

/// The download is running (or waiting to be retried).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Downloading {
    pub job: Job,
    /// Bytes the shell reported durably written; a resume starts here.
    pub done: u64,
    /// Failed attempts so far.
    pub failures: u32,
    /// When set, the download is paused until then (backoff after a
    /// failure); `None` while a `Download` action is in flight.
    pub retry_at: Option<UnixSeconds>,
}

/// The download is complete; its length and digest are being checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verifying {
    pub job: Job,
}

/// The verified download is being written to the candidate slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staging {
    pub job: Job,
}

/// The staged candidate is being loaded (through the verified load path)
/// and run on its golden inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfTesting {
    pub job: Job,
}

/// The candidate passed its self-test and runs as shadow or canary until a
/// verdict, a health failure or the end of its grace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnProbation {
    pub job: Job,
    pub mode: ProbationMode,
    /// The last time the server was heard from, as persisted. Design: it is
    /// persisted only when it moves by at least an eighth of the grace, so
    /// an online device does not write on every message; a restart can
    /// therefore shorten the grace by at most an eighth, never lengthen it.
    pub last_heard: UnixSeconds,
}

impl OnProbation {
    /// When the grace policy acts, if it is one that acts.
    pub fn deadline(&self) -> Option<UnixSeconds> {
        match self.job.grace.then {
            outpost_protocol::trust::GraceAction::RollBack => Some(
                self.last_heard
                    .saturating_add(self.job.grace.max_offline_secs)
                    .min(self.job.until),
            ),
            // Keep serving the candidate until a verdict: no timer.
            _ => None,
        }
    }

    /// How far `last_heard` must move before it is persisted again.
    pub fn contact_step(&self) -> u64 {
        (self.job.grace.max_offline_secs / 8).max(1)
    }
}

/// The commit point: the slot pointer is being renamed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committing {
    pub job: Job,
    /// The pointer being written.
    pub pointer: SlotPointer,
    /// The model that was `previous` before, deleted after the commit.
    pub drop: Option<ModelRef>,
}

/// A rollback directive: the previous model is being restored (no
/// download: its package is still on disk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollingBack {
    pub directive: u64,
    pub name: String,
    pub from: ModelRef,
    /// The pointer being written (`active` = the old previous).
    pub pointer: SlotPointer,
}

/// A retire directive: the model is being removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retiring {
    pub directive: u64,
    pub name: String,
    pub active: Option<ModelRef>,
}

impl State {
    /// The job in flight, if any.
    pub fn job(&self) -> Option<&Job> {
        match self {
            State::Downloading(s) => Some(&s.job),
            State::Verifying(s) => Some(&s.job),
            State::Staging(s) => Some(&s.job),
            State::SelfTesting(s) => Some(&s.job),
            State::Probation(s) => Some(&s.job),
            State::Committing(s) => Some(&s.job),
            State::Idle | State::RollingBack(_) | State::Retiring(_) => None,
        }
    }

    pub(crate) fn job_mut(&mut self) -> Option<&mut Job> {
        match self {
            State::Downloading(s) => Some(&mut s.job),
            State::Verifying(s) => Some(&mut s.job),
            State::Staging(s) => Some(&mut s.job),
            State::SelfTesting(s) => Some(&mut s.job),
            State::Probation(s) => Some(&mut s.job),
            State::Committing(s) => Some(&mut s.job),
            State::Idle | State::RollingBack(_) | State::Retiring(_) => None,
        }
    }

    /// A stable name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Downloading(_) => "downloading",
            State::Verifying(_) => "verifying",
            State::Staging(_) => "staging",
            State::SelfTesting(_) => "self_testing",
            State::Probation(_) => "probation",
            State::Committing(_) => "committing",
            State::RollingBack(_) => "rolling_back",
            State::Retiring(_) => "retiring",
        }
    }

    /// True while a slot pointer write is in flight: new directives wait
    /// for it (superseding a half-done rename would make its outcome
    /// ambiguous).
    pub fn writing_slots(&self) -> bool {
        matches!(
            self,
            State::Committing(_) | State::RollingBack(_) | State::Retiring(_)
        )
    }

    /// The reported phase of the model this state is about.
    pub fn phase(&self) -> Phase {
        match self {
            State::Idle | State::Committing(_) | State::Retiring(_) => Phase::Serving,
            State::Downloading(_) | State::Verifying(_) => Phase::Downloading,
            State::Staging(_) | State::SelfTesting(_) => Phase::Staged,
            State::Probation(p) => match p.mode {
                ProbationMode::Shadow => Phase::Shadow,
                ProbationMode::Canary => Phase::Canary,
            },
            State::RollingBack(_) => Phase::RollingBack,
        }
    }
}

pub(crate) fn model_ref(t: &TargetMeta) -> ModelRef {
    ModelRef {
        name: t.name.clone(),
        version: t.version.clone(),
        sha256: t.sha256,
    }
}
