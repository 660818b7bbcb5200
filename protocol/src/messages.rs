//! The payloads of ARCHITECTURE §7, one type per topic, and
//! [`DeviceMessage`], which decodes a payload by the topic it came on.
//!
//! Every type's postcard encoding is frozen by the golden-bytes tests
//! (`protocol/tests/golden/`): adding a field or reordering variants is a
//! wire change and needs a new [`WIRE_VERSION`](crate::codec::WIRE_VERSION).

use serde::{Deserialize, Serialize};

use crate::bytes::Sha256;
use crate::codec::{self, DecodeError, EncodeError};
use crate::topic::TopicKind;
use crate::trust::{Directive, ReleaseMetadata, RolloutStage, Signed, UnixSeconds};

/// A model as a device reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ModelRef {
    pub name: String,
    pub version: String,
    /// Digest of the package (`.opk`) the device verified.
    pub sha256: Sha256,
}

/// The agent's model slots (ARCHITECTURE §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    Active,
    Candidate,
    Previous,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct InstalledModel {
    pub model: ModelRef,
    pub slot: Slot,
}

/// `…/birth`: a session starts. `session` increases with every
/// connection, so the server can tell a stale death from the current one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Birth {
    pub session: u64,
    pub at: UnixSeconds,
    pub agent_version: String,
    /// The device's target profile (`rpi4`, `jetson-orin-nano`, …).
    pub target: String,
    pub arch: String,
    pub models: Vec<InstalledModel>,
    /// Trust state, so the server can tell a device that missed a rotation.
    pub root_version: u64,
    pub last_directive: u64,
}

/// `…/death`: the broker publishes it as the last will; `session` is the
/// birth's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Death {
    pub session: u64,
}

/// `…/telemetry`: one closed window of one model's profile. Idempotent by
/// (device, model, window start): a redelivery (QoS 1) or a resend from the
/// outbox is merged once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct TelemetryWindow {
    pub model: ModelRef,
    pub slot: Slot,
    pub window_start: UnixSeconds,
    pub window_secs: u32,
    /// The window's profile as outpost-telemetry encodes it. Design: kept
    /// opaque here so the wire envelope does not change when the profile
    /// gains a statistic, and the protocol crate stays free of the
    /// statistics code; the profile's own decoder is size-limited too.
    #[serde(with = "crate::bytes::base64_or_raw")]
    pub profile: Vec<u8>,
}

/// `…/events`: something happened on the device. `seq` increases per
/// device so the server can drop a redelivered event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Event {
    pub seq: u64,
    pub at: UnixSeconds,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// An update moved to `step`.
    Install {
        directive: u64,
        rollout: Option<RolloutStage>,
        model: ModelRef,
        step: InstallStep,
    },
    /// Metadata or an artifact was refused; `check` is
    /// [`TrustError::check`](crate::trust::TrustError::check).
    VerificationFailed {
        directive: Option<u64>,
        check: String,
        detail: String,
    },
    /// The device went back to `to` (or to nothing, if there was none).
    RolledBack {
        directive: Option<u64>,
        from: ModelRef,
        to: Option<ModelRef>,
        reason: String,
    },
    /// A store failed to open and was recreated; `lost` says what is gone.
    StoreRecovered { store: String, lost: String },
    /// The telemetry outbox was full: the oldest unsent windows were
    /// dropped to make room (counted since the agent started).
    TelemetryDropped { windows: u64, bytes: u64 },
    /// A candidate in shadow probation beside `active`: counts since the
    /// probation started on this device (cumulative, so a redelivered or
    /// lost report changes nothing: the latest one holds). `rows` compared,
    /// `agreed` with the same arg-max class; score delta = per row, the
    /// mean absolute difference of the two first outputs, in millionths.
    ShadowReport {
        candidate: ModelRef,
        active: ModelRef,
        requests: u64,
        errors: u64,
        skipped_over_budget: u64,
        rows: u64,
        agreed: u64,
        delta_mean_micros: u64,
        delta_max_micros: u64,
    },
    /// A model was loaded, on the engine the report names and for its
    /// reason. Reported for every loaded model at each session start and
    /// whenever a model is loaded. Appended variant: earlier encodings are
    /// unchanged (golden `event-6`).
    EngineSelected(EngineReport),
}

/// Which engine runs a loaded model, and why: the target profile's request,
/// the GPU engine's refusal (a model it cannot run fully runs on the CPU,
/// never silently), or the load-time micro-benchmark of both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct EngineReport {
    pub model: ModelRef,
    pub slot: Slot,
    /// `cpu` or `gpu`.
    pub engine: String,
    pub reason: String,
    /// Median batch-1 run of each engine at load, microseconds, when
    /// measured.
    pub cpu_us: Option<u64>,
    pub gpu_us: Option<u64>,
    /// What the GPU probe found: `name on backend (device type)`.
    pub adapter: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum InstallStep {
    Downloading { done: u64, total: u64 },
    Verified,
    Staged,
    SelfTested,
    Shadow,
    Canary,
    Committed,
}

/// Where one model's update stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Serving,
    Downloading,
    Staged,
    Shadow,
    Canary,
    RollingBack,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ModelState {
    pub name: String,
    pub active: Option<ModelRef>,
    pub candidate: Option<ModelRef>,
    pub previous: Option<ModelRef>,
    pub phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Healthy,
    /// Serving, with something wrong (breaker half-open, store recreated).
    Degraded,
    /// Not serving.
    Failing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Health {
    pub status: HealthStatus,
    pub detail: Option<String>,
}

/// `…/state` (retained): the device's reported state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ReportedState {
    pub session: u64,
    pub at: UnixSeconds,
    pub models: Vec<ModelState>,
    pub health: Health,
    pub root_version: u64,
    pub last_directive: u64,
}

/// `…/commands`: a signed directive; for actions that name a target, the
/// release metadata that vouches for it and where to fetch the package.
/// Design: the URL is outside the signatures on purpose — the package is
/// checked against the signed hash and length, so a mirror can serve it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Command {
    pub directive: Signed<Directive>,
    pub release: Option<Signed<ReleaseMetadata>>,
    pub artifact_url: Option<String>,
}

/// Largest payload accepted per topic, in bytes.
pub fn max_payload(kind: TopicKind) -> usize {
    match kind {
        TopicKind::Birth | TopicKind::State => 64 * 1024,
        TopicKind::Death => 1024,
        // A window of 100 features with KLL sketches stays well below this.
        TopicKind::Telemetry => 1024 * 1024,
        TopicKind::Events => 16 * 1024,
        TopicKind::Commands => 256 * 1024,
    }
}

/// The encoding of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// `[WIRE_VERSION] ++ postcard`, the default.
    Postcard,
    /// JSON, for other IoT platforms (per device).
    Json,
}

impl Encoding {
    /// JSON payloads start with `{` (0x7b), which is never a wire version.
    pub fn detect(payload: &[u8]) -> Encoding {
        match payload.first() {
            Some(b'{') => Encoding::Json,
            _ => Encoding::Postcard,
        }
    }
}

/// Any payload, by the topic it arrived on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceMessage {
    Birth(Birth),
    Death(Death),
    Telemetry(TelemetryWindow),
    Event(Event),
    State(ReportedState),
    Command(Command),
}

impl DeviceMessage {
    /// Decodes a payload that arrived on a `kind` topic, in either
    /// encoding, within [`max_payload`]`(kind)`.
    pub fn decode(kind: TopicKind, payload: &[u8]) -> Result<DeviceMessage, DecodeError> {
        let limit = max_payload(kind);
        let enc = Encoding::detect(payload);
        fn de<T: serde::de::DeserializeOwned>(
            enc: Encoding,
            b: &[u8],
            limit: usize,
        ) -> Result<T, DecodeError> {
            match enc {
                Encoding::Postcard => codec::decode(b, limit),
                Encoding::Json => codec::decode_json(b, limit),
            }
        }
        Ok(match kind {
            TopicKind::Birth => DeviceMessage::Birth(de(enc, payload, limit)?),
            TopicKind::Death => DeviceMessage::Death(de(enc, payload, limit)?),
            TopicKind::Telemetry => DeviceMessage::Telemetry(de(enc, payload, limit)?),
            TopicKind::Events => DeviceMessage::Event(de(enc, payload, limit)?),
            TopicKind::State => DeviceMessage::State(de(enc, payload, limit)?),
            TopicKind::Commands => DeviceMessage::Command(de(enc, payload, limit)?),
        })
    }

    /// The topic this message belongs on.
    pub fn kind(&self) -> TopicKind {
        match self {
            DeviceMessage::Birth(_) => TopicKind::Birth,
            DeviceMessage::Death(_) => TopicKind::Death,
            DeviceMessage::Telemetry(_) => TopicKind::Telemetry,
            DeviceMessage::Event(_) => TopicKind::Events,
            DeviceMessage::State(_) => TopicKind::State,
            DeviceMessage::Command(_) => TopicKind::Commands,
        }
    }

    /// Encodes the message in `encoding`.
    pub fn encode(&self, encoding: Encoding) -> Result<Vec<u8>, EncodeError> {
        fn en<T: Serialize>(enc: Encoding, v: &T) -> Result<Vec<u8>, EncodeError> {
            match enc {
                Encoding::Postcard => codec::encode(v),
                Encoding::Json => codec::encode_json(v),
            }
        }
        match self {
            DeviceMessage::Birth(m) => en(encoding, m),
            DeviceMessage::Death(m) => en(encoding, m),
            DeviceMessage::Telemetry(m) => en(encoding, m),
            DeviceMessage::Event(m) => en(encoding, m),
            DeviceMessage::State(m) => en(encoding, m),
            DeviceMessage::Command(m) => en(encoding, m),
        }
    }
}
