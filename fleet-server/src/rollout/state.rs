//! The controller's persisted state: where the rollout stands, the
//! directive log, and the snapshot that holds both.

use std::collections::BTreeMap;

use outpost_protocol::topic::DeviceId;
use outpost_protocol::trust::{
    Directive, DirectiveAction, OfflineGrace, Probation, RolloutStage, Selector, TargetRef,
    UnixSeconds,
};
use outpost_telemetry::Profile;
use serde::{Deserialize, Serialize};

use super::cohort::DeviceInfo;
use super::gates::GateReport;
use super::plan::{GateKind, Plan};

/// What a rollout is: its id, the versions, the plan and the eligible
/// devices (the inventory's, filtered by the caller by group).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutSpec {
    /// Unique, stable id: it seeds the cohorts and tags every directive.
    pub id: String,
    /// The model version the fleet runs now (rollback target).
    pub from: TargetRef,
    /// The candidate.
    pub to: TargetRef,
    pub plan: Plan,
    pub devices: Vec<DeviceInfo>,
}

/// Where the rollout stands. Each variant's struct holds what that state
/// needs; transitions build the next one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Created outside a change window (or in a freeze): the first stage
    /// starts when the calendar allows.
    Waiting(Waiting),
    Running(Running),
    Paused(Paused),
    /// Stopped for good; rollback directives went to every touched device.
    Halted(Halted),
    /// The last stage passed; commit directives went to every canary.
    Completed(Completed),
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Waiting(_) => "waiting",
            State::Running(_) => "running",
            State::Paused(_) => "paused",
            State::Halted(_) => "halted",
            State::Completed(_) => "completed",
        }
    }

    /// The stage index the rollout is at (the last one when completed).
    pub fn stage(&self) -> Option<u32> {
        match self {
            State::Waiting(_) => None,
            State::Running(r) => Some(r.stage),
            State::Paused(p) => Some(p.stage),
            State::Halted(h) => h.stage,
            State::Completed(c) => Some(c.stage),
        }
    }

    pub fn is_final(&self) -> bool {
        matches!(self, State::Halted(_) | State::Completed(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    pub since: UnixSeconds,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    pub stage: u32,
    /// When the stage started: windows that start earlier do not count.
    pub started_at: UnixSeconds,
    /// Inconclusive past this: pause and alert.
    pub deadline: UnixSeconds,
    /// When the stage's gates first passed while the calendar held it.
    pub held_since: Option<UnixSeconds>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paused {
    pub stage: u32,
    pub started_at: UnixSeconds,
    pub at: UnixSeconds,
    pub reason: PauseReason,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Halted {
    /// `None` when aborted before the first stage started.
    pub stage: Option<u32>,
    pub at: UnixSeconds,
    pub reason: HaltReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completed {
    pub stage: u32,
    pub at: UnixSeconds,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    Operator {
        actor: String,
    },
    /// These gates stayed inconclusive past the stage's maximum duration.
    Inconclusive {
        gates: Vec<GateKind>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HaltReason {
    GateFailed {
        gates: Vec<GateKind>,
    },
    /// More canary devices failed (self-rollback, verification) than the
    /// stage allows.
    DeviceFailures {
        devices: Vec<DeviceId>,
    },
    Aborted {
        actor: String,
    },
}

/// What a directive of this rollout does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectiveKind {
    /// `Deploy { to, Probation::Canary }`: join the canary cohort (or, for
    /// a device shadowing, be promoted to canary).
    Canary,
    /// `Shadow { to }`: run the candidate beside the active model.
    Shadow,
    /// `Deploy { to, Probation::None }`: the verdict, commit the candidate.
    Commit,
    /// `Rollback { from }`: the verdict, back to the current model.
    Rollback,
}

/// The idempotency key of a directive: the shell assigns one fleet
/// sequence per key, once, and never sends a key twice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DirectiveKey {
    pub rollout: String,
    /// Position in the rollout's directive log (0, 1, 2, …).
    pub index: u32,
}

impl std::fmt::Display for DirectiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.rollout, self.index)
    }
}

/// A directive the core decided on: everything of the protocol
/// [`Directive`] but the fleet sequence (assigned by the shell) and the
/// signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedDirective {
    pub key: DirectiveKey,
    pub device: DeviceId,
    pub kind: DirectiveKind,
    pub action: DirectiveAction,
    pub stage: u32,
    pub issued_at: UnixSeconds,
    pub expires: UnixSeconds,
    pub offline_grace: OfflineGrace,
    /// The fleet sequence it went out with, once the shell reported it
    /// ([`super::Rollout::handle_directive_sent`]).
    pub sequence: Option<u64>,
}

impl PlannedDirective {
    /// The protocol directive, to be signed by the director key.
    pub fn directive(&self, sequence: u64) -> Directive {
        Directive {
            sequence,
            selector: Selector::Device(self.device.clone()),
            action: self.action.clone(),
            rollout: Some(RolloutStage {
                rollout: self.key.rollout.clone(),
                stage: self.stage,
            }),
            issued_at: self.issued_at,
            expires: self.expires,
            offline_grace: self.offline_grace,
        }
    }

    pub(crate) fn action_for(kind: DirectiveKind, spec: &RolloutSpec) -> DirectiveAction {
        match kind {
            DirectiveKind::Canary => DirectiveAction::Deploy {
                target: spec.to.clone(),
                probation: Probation::Canary,
            },
            DirectiveKind::Shadow => DirectiveAction::Shadow {
                target: spec.to.clone(),
            },
            DirectiveKind::Commit => DirectiveAction::Deploy {
                target: spec.to.clone(),
                probation: Probation::None,
            },
            DirectiveKind::Rollback => DirectiveAction::Rollback {
                target: spec.from.clone(),
            },
        }
    }
}

/// The comparison data kept for a stage without a control cohort (the
/// 100 % stage): the last stage's control windows, merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub stage: u32,
    #[serde(with = "profile_text")]
    pub profile: Profile,
}

/// A profile inside a JSON snapshot: its postcard encoding (with the wire
/// version byte) in base64. JSON cannot hold it as is: the confusion
/// matrix is a map keyed by (truth, prediction) pairs. Binary formats get
/// the profile itself.
mod profile_text {
    use base64::Engine;
    use outpost_telemetry::Profile;
    use serde::de::Error as _;
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Largest encoded baseline accepted back.
    const LIMIT: usize = 64 << 20;

    pub(super) fn serialize<S: Serializer>(p: &Profile, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return p.serialize(s);
        }
        let bytes = outpost_protocol::codec::encode(p).map_err(S::Error::custom)?;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Profile, D::Error> {
        if !d.is_human_readable() {
            return Profile::deserialize(d);
        }
        let text = String::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(D::Error::custom)?;
        outpost_protocol::codec::decode(&bytes, LIMIT).map_err(D::Error::custom)
    }
}

/// How a stage ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: u32,
    pub started_at: UnixSeconds,
    pub ended_at: UnixSeconds,
    /// `passed`, `failed`, `aborted`, `device_failures`.
    pub outcome: String,
    pub reports: Vec<GateReport>,
}

/// Everything the controller needs to resume: what [`super::Action::Persist`]
/// hands the shell to store (as JSON or postcard), and what
/// [`super::Rollout::restore`] takes back.
///
/// Not in it: the telemetry windows of the current stage (the shell's
/// store has them; after a restore it feeds those that start at or after
/// [`super::Rollout::window_floor`] again, and duplicates count once) and
/// device states (retained messages, fed again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Layout version, [`Snapshot::FORMAT`].
    pub format: u32,
    pub spec: RolloutSpec,
    pub created_at: UnixSeconds,
    pub state: State,
    /// Every directive decided, in order; `sequence` says which went out.
    pub directives: Vec<PlannedDirective>,
    /// Canary devices that failed, with the reason.
    pub failures: BTreeMap<DeviceId, String>,
    pub baseline: Option<Baseline>,
    /// The latest gate reports of the current stage.
    pub reports: Vec<GateReport>,
    pub history: Vec<StageRecord>,
}

impl Snapshot {
    pub const FORMAT: u32 = 1;
}
