//! What the core asks the shell to do ([`Action`]), and the typed results
//! the shell reports back.
//!
//! Design: actions are data. Each names everything the shell needs so that
//! performing it needs no look-up in the core, and each is idempotent on
//! the shell's side (a crash can make the core ask again for an action
//! that was already performed: staging a file already staged, writing a
//! pointer that already says the same, deleting a file already gone).

use std::collections::BTreeMap;

use outpost_protocol::messages::{EventKind, ModelRef, ModelState};
use outpost_protocol::trust::{TargetMeta, UnixSeconds};
use serde::{Deserialize, Serialize};

use super::record::UpdateRecord;

/// The sequence of the directive that started a job; actions carry it and
/// completions hand it back.
pub type JobId = u64;

/// What one model's slot pointer file says. The shell keeps one per model
/// name (e.g. `models/{name}/slots`), written only by atomic rename with
/// fsync of the file and of its directory: that rename is the commit point,
/// and it does not depend on the key-value store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotPointer {
    pub active: ModelRef,
    /// Kept until the next commit; a rollback directive restores it
    /// without a download.
    pub previous: Option<ModelRef>,
}

/// Every model's pointer, as the shell read the pointer files at start.
pub type Slots = BTreeMap<String, SlotPointer>;

/// How a candidate is put on probation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProbationMode {
    /// The candidate runs on the same inputs after the active model has
    /// answered; callers see only the active model.
    Shadow,
    /// The candidate serves; its telemetry windows are tagged canary.
    Canary,
}

/// Something for the shell to do, in the order polled.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Write the record durably (`store::write_atomic`) before performing
    /// any action polled after it. The state it holds is the step about
    /// to be acted on, so a crash at any point resumes from it.
    Persist(Box<UpdateRecord>),
    /// Fetch `url` into the job's download file: first truncate that file
    /// to `resume_from` bytes (bytes past the last reported progress may
    /// not have been synced), then request `Range: bytes={resume_from}-`.
    /// Never write past `target.length`. Report durable progress with
    /// `handle_download_progress` (after an fsync), the end with
    /// `handle_download_done`, a failure with `handle_download_failed`.
    Download {
        job: JobId,
        url: String,
        target: TargetMeta,
        resume_from: u64,
    },
    /// Read the downloaded file and check it against the signed length
    /// and digest (`trust::check_reader`); report with
    /// `handle_artifact_checked`. Design: checked in one pass over the
    /// whole file, not while streaming, because a resumed download has no
    /// running digest of the bytes before the resume.
    VerifyArtifact { job: JobId, target: TargetMeta },
    /// Move the verified download into the candidate slot file, fsync it
    /// and its directory; report with `handle_staged`. Idempotent: a
    /// candidate already staged (and its download gone) is success.
    Stage { job: JobId, target: TargetMeta },
    /// Load the staged candidate through the verified load path (digest
    /// and length checked again: the file may have rotted since it was
    /// staged) and run the package's golden inputs; report with
    /// `handle_self_test`.
    SelfTest { job: JobId, candidate: TargetMeta },
    /// Run the (self-tested) candidate as `mode` until a verdict. After a
    /// restart this is asked again: load the candidate through the
    /// verified load path and report a failure with
    /// `handle_health_failure`. `until` is when the probation window ends.
    StartProbation {
        job: JobId,
        candidate: ModelRef,
        mode: ProbationMode,
        until: UnixSeconds,
    },
    /// The commit point: atomically replace `name`'s pointer file with
    /// `pointer` (fsync file and directory), switch serving to its active
    /// model, then delete the package of `drop` (the old previous). Report
    /// with `handle_slots_written` / `handle_slots_write_failed`.
    Commit {
        job: JobId,
        name: String,
        pointer: SlotPointer,
        drop: Option<ModelRef>,
    },
    /// Stop running the candidate (shadow or canary) and delete its files
    /// (download and staged). The active model is untouched. Nothing to
    /// report back.
    Discard {
        job: JobId,
        candidate: ModelRef,
        reason: AbandonReason,
    },
    /// Restore the previous model without a download: atomically replace
    /// `name`'s pointer with `pointer`, switch serving, delete the package
    /// of `from`. Report with `handle_slots_written` / `…_failed`.
    RollBack {
        name: String,
        from: ModelRef,
        pointer: SlotPointer,
    },
    /// Stop serving `name`, remove its pointer file (atomically: this is
    /// the retire's commit point), then delete its packages and local
    /// logs. Report with `handle_slots_written` / `…_failed`.
    Retire { name: String },
    /// Publish a fresh birth message.
    Rebirth,
    /// Publish an event on `…/events` (the shell numbers and times it).
    Report(EventKind),
    /// Publish the model's slots on `…/state`.
    ReportState(ModelState),
}

/// Why a download attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadFailure {
    /// The connection dropped, timed out or the server answered 5xx;
    /// `bytes_written` are durably on disk. Retried with backoff from
    /// there, up to `UpdateConfig::max_download_failures` times.
    #[error("interrupted after {bytes_written} bytes: {detail}")]
    Interrupted { bytes_written: u64, detail: String },
    /// The server refused the request (4xx): not retried.
    #[error("server refused the download with HTTP {status}")]
    Refused { status: u16 },
    /// The server sent more than the signed length (endless data): the
    /// download is refused as a verification failure.
    #[error("server sent more than the signed length")]
    EndlessData,
    /// The disk refused the bytes: not retried.
    #[error(transparent)]
    Disk(#[from] DiskFailure),
}

/// A disk operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiskFailure {
    /// ENOSPC: free space, the server will see the failure and may retry.
    #[error("no space left on the device")]
    NoSpace,
    /// Any other I/O error, with the path and OS message.
    #[error("{path}: {detail}")]
    Io { path: String, detail: String },
}

/// What loading and self-testing a candidate gave.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SelfTestOutcome {
    /// Golden outputs within tolerance.
    Passed,
    /// The candidate loaded but its outputs were off, or it would not load.
    Failed { detail: String },
    /// The staged file failed verification (digest, length, signature).
    Unverified(outpost_protocol::trust::TrustError),
}

/// A device health check that failed while a candidate is on probation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HealthFailure {
    /// The candidate's error rate passed the configured limit.
    #[error("error rate {per_mille}‰ over the limit")]
    ErrorRate { per_mille: u32 },
    /// The agent restarted too often while the candidate ran.
    #[error("crash loop: {restarts} restarts")]
    CrashLoop { restarts: u32 },
    /// Reloading the candidate (after a restart) or its periodic self-test
    /// failed.
    #[error("self-test failed: {detail}")]
    SelfTest { detail: String },
}

/// Why a candidate was discarded; `code()` is the stable prefix of the
/// `RolledBack` event's reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AbandonReason {
    /// A newer directive installs something else.
    #[error("superseded by directive {by}")]
    Superseded { by: u64 },
    /// The server's verdict (a `Rollback` directive, or a `Deploy` of the
    /// active model).
    #[error("rollback directive {directive}")]
    Verdict { directive: u64 },
    /// The download failed for good.
    #[error("download failed: {0}")]
    Download(DownloadFailureKind),
    /// The disk refused to stage the candidate.
    #[error("staging failed: {0}")]
    Disk(DiskFailureKind),
    /// The artifact or staged file failed a trust check (`check` is
    /// `TrustError::check`).
    #[error("verification failed: {check}")]
    Unverified { check: String },
    #[error("self-test failed: {detail}")]
    SelfTest { detail: String },
    #[error("health check failed: {0}")]
    Health(HealthFailure),
    /// Offline too long, or no verdict by the end of the probation window,
    /// under `GraceAction::RollBack`.
    #[error("no verdict within the offline grace or the probation window")]
    GraceExpired,
    /// The commit's pointer write failed; the old pointer stands.
    #[error("commit failed: {detail}")]
    CommitFailed { detail: String },
}

impl AbandonReason {
    pub fn code(&self) -> &'static str {
        match self {
            AbandonReason::Superseded { .. } => "superseded",
            AbandonReason::Verdict { .. } => "verdict",
            AbandonReason::Download(_) => "download_failed",
            AbandonReason::Disk(DiskFailureKind::NoSpace) => "disk_full",
            AbandonReason::Disk(DiskFailureKind::Io) => "disk_error",
            AbandonReason::Unverified { .. } => "verification_failed",
            AbandonReason::SelfTest { .. } => "self_test_failed",
            AbandonReason::Health(_) => "health_check_failed",
            AbandonReason::GraceExpired => "grace_expired",
            AbandonReason::CommitFailed { .. } => "commit_failed",
        }
    }
}

/// [`DownloadFailure`] without its details, for a persisted reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DownloadFailureKind {
    #[error("retries exhausted")]
    RetriesExhausted,
    #[error("refused by the server")]
    Refused,
    #[error("disk full")]
    NoSpace,
    #[error("disk error")]
    Io,
}

/// [`DiskFailure`] without its details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DiskFailureKind {
    #[error("no space left on the device")]
    NoSpace,
    #[error("I/O error")]
    Io,
}

impl DiskFailure {
    pub fn kind(&self) -> DiskFailureKind {
        match self {
            DiskFailure::NoSpace => DiskFailureKind::NoSpace,
            DiskFailure::Io { .. } => DiskFailureKind::Io,
        }
    }
}
