//! The rollout controller (ARCHITECTURE §9): a sans-IO core that takes a
//! candidate model version through the stages of a [`Plan`], comparing a
//! canary cohort with a control cohort at each stage, and halts with
//! rollback directives when a gate fails.
//!
//! The core owns no socket, clock, store or key. The shell feeds it inputs
//! (`handle_*(now, …)`, `now` in Unix seconds), drains [`Action`]s with
//! [`Rollout::poll_action`] and performs them in order, and calls
//! [`Rollout::handle_timeout`] at [`Rollout::poll_timeout`].
//!
//! ```text
//!  new ──calendar allows──▶ Running(stage 0) ──gates pass, minimums met, calendar allows──▶ Running(stage 1) … ──▶ Completed
//!   │ (else Waiting)          │    ▲                                                            (commit directives)
//!   │                         │    └─ resume (operator) ── Paused ◀── operator pause
//!   │                         │                              ▲
//!   │                         │                              └── inconclusive past max_duration (+ alert)
//!   └──── abort ──────────────┴── any gate Fail · too many device failures · abort ──▶ Halted (rollback directives)
//! ```
//!
//! Directives and sequences. The core decides *which* directive goes to
//! which device ([`PlannedDirective`], idempotency key [`DirectiveKey`]);
//! the shell owns the fleet-wide director sequence (several rollouts and
//! operator commands share it) and the key. For each
//! [`Action::SendDirective`] it: looks the key up in its directive journal;
//! if absent, takes the next sequence and journals `key → sequence` durably;
//! builds [`PlannedDirective::directive`]`(sequence)`, signs it and
//! publishes it; then reports [`Rollout::handle_directive_sent`]. A key
//! already journaled is re-published with its journaled sequence (the
//! device refuses the copy as a replay), never re-issued with a new one.
//!
//! Crash safety. Every transition is persisted before it is acted on: an
//! [`Action::Persist`] precedes the transition's directives and events. A
//! crash before that Persist loses the transition (the inputs are fed
//! again and it is decided again, once); a crash after it is resumed by
//! [`Rollout::restore`], which re-queues the directives whose send was not
//! reported (the journal keeps them from going out twice) and never
//! re-runs a transition: the stage index is in the snapshot.

mod calendar;
mod cohort;
mod gates;
mod machine;
mod plan;
mod state;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use outpost_protocol::topic::DeviceId;
use outpost_protocol::trust::{GraceAction, OfflineGrace, UnixSeconds};
use outpost_telemetry::{Profile, ProfileSet, ReferenceProfile};
use serde::{Deserialize, Serialize};

pub use calendar::{Calendar, Freeze, Weekday, WeeklyWindow};
pub use cohort::{DeviceInfo, StageCohorts, allocate, assign, rank, stage_totals, strata};
pub use gates::{Evidence, GateReport, GateVerdict, evaluate};
pub use plan::{
    CohortSize, GateKind, GateSpec, Invalid, MAX_PLAN_BYTES, Plan, PlanError, Stage, StageMode,
};
pub use state::{
    Baseline, Completed, DirectiveKey, DirectiveKind, HaltReason, Halted, PauseReason, Paused,
    PlannedDirective, RolloutSpec, Running, Snapshot, StageRecord, State, Waiting,
};

pub(crate) use gates::column_drift;

/// Server-side settings (not persisted with a rollout: a restart may
/// bring a new calendar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutConfig {
    pub calendar: Calendar,
    /// How often the gates are evaluated while a stage runs. Design: the
    /// fixed-sample judges (latency, confidence) lose some of their α to
    /// every extra look; evaluating on a cadence rather than on every
    /// window bounds the looks per stage (max_duration / this).
    pub evaluate_every_secs: u64,
    /// Expiry of commit and rollback directives after they are issued.
    pub directive_ttl_secs: u64,
    /// A canary deploy expires (and so its probation ends) this long after
    /// the longest the remaining stages may take.
    pub probation_margin_secs: u64,
    /// What a canary device does when it loses the server.
    pub offline_grace: OfflineGrace,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            calendar: Calendar::default(),
            evaluate_every_secs: 300,
            directive_ttl_secs: 7 * 86_400,
            probation_margin_secs: 86_400,
            offline_grace: OfflineGrace {
                max_offline_secs: 6 * 3_600,
                then: GraceAction::RollBack,
            },
        }
    }
}

/// An operator's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorCommand {
    Pause,
    Resume,
    Abort,
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Gates stayed inconclusive past the stage's maximum duration.
    Inconclusive,
    Halted,
    /// A passed stage waits for the change calendar.
    HeldByCalendar,
    /// A canary device failed (self-rollback, verification).
    DeviceFailed,
}

/// Something for the shell to do, in the order polled.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Store the snapshot durably (replacing the last one) before
    /// performing any action polled after it.
    Persist(Box<Snapshot>),
    /// Sign and publish this directive (see the module docs for the
    /// journal), then report [`Rollout::handle_directive_sent`].
    SendDirective(Box<PlannedDirective>),
    /// Notify people (the alerts module routes it to sinks).
    Alert {
        kind: AlertKind,
        message: String,
    },
    /// A stage started: its canary devices were sent deploy directives.
    StageStarted {
        stage: u32,
        canary: usize,
        control: usize,
    },
    /// A stage passed and the next one starts.
    StageAdvanced {
        from: u32,
        to: u32,
        reports: Vec<GateReport>,
    },
    Paused {
        reason: PauseReason,
    },
    Resumed {
        actor: String,
    },
    Halted {
        reason: HaltReason,
        reports: Vec<GateReport>,
    },
    Completed,
}

/// Why an input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutError {
    /// The rollout has no eligible device.
    #[error("rollout {rollout} has no eligible device")]
    NoDevices { rollout: String },
    /// A stage's canary cohort is smaller than its `min_devices`: lower
    /// the minimum or choose a larger group.
    #[error("stage {stage} needs {needed} canary devices but its cohort has {available}")]
    CohortTooSmall {
        stage: usize,
        needed: u32,
        available: usize,
    },
    /// The operator command does not apply in this state (e.g. resume
    /// when not paused); nothing changed.
    #[error("cannot {command:?} a {state} rollout")]
    NotNow {
        command: OperatorCommand,
        state: &'static str,
    },
    /// A send report for a key this rollout never issued (another
    /// rollout's, or a corrupted journal).
    #[error("directive {0} is not in this rollout's log")]
    UnknownDirective(DirectiveKey),
    /// The snapshot was written by another layout version.
    #[error("rollout snapshot format {found} is not {expected}")]
    SnapshotFormat { found: u32, expected: u32 },
    /// The reference profile does not belong to the candidate's windows
    /// (another version's reference).
    #[error("plan invalid: {0}")]
    Plan(String),
}

/// What a telemetry window was counted as.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WindowUse {
    Canary,
    Control,
    /// Seen before: counted once.
    Duplicate,
    /// Not counted, and why (another model or version, a device outside
    /// the stage's cohorts, a window from before the stage, the wrong
    /// reference, no stage running).
    Ignored(&'static str),
}

/// One cohort's windows in the current stage.
#[derive(Debug, Clone, Default)]
struct CohortData {
    set: ProfileSet,
    total: Option<Profile>,
    devices: BTreeSet<DeviceId>,
}

/// In-memory evidence of the current stage (rebuilt from the shell's
/// store after a restore).
#[derive(Debug, Clone, Default)]
struct StageData {
    canary: CohortData,
    control: CohortData,
    /// device → (compared, agreed), cumulative.
    shadow: BTreeMap<DeviceId, (u64, u64)>,
    /// Shadow reports accepted (each counts as a window toward `min_windows`).
    shadow_reports: u64,
}

/// What a device last reported about this rollout's model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    /// Version serving (active slot), and the candidate's, if any.
    pub active: Option<String>,
    pub candidate: Option<String>,
    /// Last directive sequence the device accepted.
    pub last_directive: u64,
}

/// The rollout controller. See the module docs.
#[derive(Debug)]
pub struct Rollout {
    config: RolloutConfig,
    reference: Arc<ReferenceProfile>,
    cohorts: Vec<StageCohorts>,
    snapshot: Snapshot,
    stage_data: StageData,
    devices: BTreeMap<DeviceId, DeviceView>,
    next_evaluation: UnixSeconds,
    /// The latest `now` an input brought (timers are relative to it).
    now: UnixSeconds,
    actions: VecDeque<Action>,
}

/// A rollout's state for `outpost rollout status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub id: String,
    pub model: String,
    pub from: String,
    pub to: String,
    pub state: State,
    pub stages: usize,
    pub stage_label: Option<String>,
    pub canary_devices: usize,
    pub control_devices: usize,
    /// Canary devices that sent a window in this stage, and windows.
    pub canary_reporting: usize,
    pub canary_windows: usize,
    pub control_reporting: usize,
    pub control_windows: usize,
    /// The calendar holds the passed stage until this time.
    pub held_until: Option<UnixSeconds>,
    pub reports: Vec<GateReport>,
    pub directives_sent: usize,
    pub directives_pending: usize,
    pub failures: BTreeMap<DeviceId, String>,
    pub history: Vec<StageRecord>,
}
