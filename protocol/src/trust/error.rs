//! Why the verifier refused: one variant per check, each naming what it
//! looked at.

use super::metadata::{Role, TargetRef, UnixSeconds};
use crate::bytes::{KeyId, Sha256};
use crate::codec::DecodeError;
use crate::topic::DeviceId;

/// A refused root, release, directive or artifact. The variant is the
/// check that failed; [`TrustError::check`] gives its stable name for
/// events and logs. Every one means: do not install, keep what runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The envelope or the signed payload is not well-formed metadata.
    #[error("{role} metadata does not decode: {source}")]
    Decode { role: Role, source: DecodeError },
    /// The root is inconsistent (a threshold its keys cannot meet, a key
    /// named but not listed, …). Fix the root and sign it again.
    #[error("root version {version} is invalid: {reason}")]
    InvalidRoot { version: u64, reason: String },
    /// A signature names a key the trusted root does not list at all.
    #[error("{role} metadata is signed by key {key_id}, which the trusted root does not know")]
    UnknownKey { role: Role, key_id: KeyId },
    /// A signature comes from a trusted key of another role (the wrong key
    /// was used to sign).
    #[error("{role} metadata is signed by key {key_id}, which is not a {role} key")]
    KeyNotInRole { role: Role, key_id: KeyId },
    /// A signature does not verify: the metadata was altered after signing,
    /// or signed with a different private key than the one named.
    #[error("{role} signature by key {key_id} does not verify")]
    BadSignature { role: Role, key_id: KeyId },
    /// The same key signed twice; a key counts once toward a threshold
    /// (TUF §5.4.2), and a duplicate is refused outright.
    #[error("{role} metadata carries two signatures by key {key_id}")]
    DuplicateSignature { role: Role, key_id: KeyId },
    /// Fewer distinct valid signatures than the role's threshold.
    #[error("{role} metadata has {valid} valid signature(s); {threshold} are required")]
    BelowThreshold {
        role: Role,
        valid: usize,
        threshold: u32,
    },
    /// A new root is not signed by a threshold of the *current* root keys
    /// (for instance, only by the new keys).
    #[error(
        "root version {version} is signed by {valid} of the current root keys; {threshold} are required"
    )]
    RotationNotAuthorized {
        version: u64,
        valid: usize,
        threshold: u32,
    },
    /// A new root's version is not the current version + 1.
    #[error("root version {got} cannot follow version {current}")]
    RootVersion { current: u64, got: u64 },
    /// The metadata's expiry has passed (a freeze attack serves stale
    /// metadata; the time used is never earlier than the last time seen).
    #[error("{role} metadata expired at {expires}; it is now {now}")]
    Expired {
        role: Role,
        expires: UnixSeconds,
        now: UnixSeconds,
    },
    /// The directive's sequence is not above the last one accepted: a replay,
    /// or an old directive used to roll a device back.
    #[error("directive sequence {sequence} is not above the last accepted {last}")]
    Replay { sequence: u64, last: u64 },
    /// The directive selects other devices.
    #[error("directive for {selector} does not select device {device}")]
    WrongDevice { selector: String, device: DeviceId },
    /// The target's constraints exclude this device.
    #[error("target {name} {version} does not run on this device: {reason}")]
    TargetMismatch {
        name: String,
        version: String,
        reason: String,
    },
    /// The directive names a target the action needs release metadata for,
    /// and none came with it.
    #[error("directive names target {name} {version} but no release metadata came with it")]
    ReleaseMissing { name: String, version: String },
    /// The release metadata has no such target.
    #[error("release metadata has no target {name} {version}")]
    NotInRelease { name: String, version: String },
    /// The directive's hash or length differs from the release's entry for
    /// the same target (mix-and-match).
    #[error(
        "directive and release disagree on {} {}: sha256 {} / {}, length {} / {}",
        directive.name, directive.version, directive.sha256, release.sha256,
        directive.length, release.length
    )]
    MixAndMatch {
        directive: Box<TargetRef>,
        release: Box<TargetRef>,
    },
    /// More bytes arrived than the signed length (endless data); reading
    /// stopped at the limit.
    #[error("artifact is longer than its signed length of {length} bytes")]
    EndlessData { length: u64 },
    /// The artifact ended before its signed length.
    #[error("artifact is {got} bytes; {expected} were signed")]
    LengthMismatch { expected: u64, got: u64 },
    /// The artifact's digest differs from the signed one (tampered).
    #[error("artifact sha256 is {got}; {expected} was signed")]
    HashMismatch { expected: Sha256, got: Sha256 },
}

impl TrustError {
    /// The failed check's stable name (snake case), for events.
    pub fn check(&self) -> &'static str {
        match self {
            TrustError::Decode { .. } => "decode",
            TrustError::InvalidRoot { .. } => "invalid_root",
            TrustError::UnknownKey { .. } => "unknown_key",
            TrustError::KeyNotInRole { .. } => "key_not_in_role",
            TrustError::BadSignature { .. } => "bad_signature",
            TrustError::DuplicateSignature { .. } => "duplicate_signature",
            TrustError::BelowThreshold { .. } => "below_threshold",
            TrustError::RotationNotAuthorized { .. } => "rotation_not_authorized",
            TrustError::RootVersion { .. } => "root_version",
            TrustError::Expired { .. } => "expired",
            TrustError::Replay { .. } => "replay",
            TrustError::WrongDevice { .. } => "wrong_device",
            TrustError::TargetMismatch { .. } => "target_mismatch",
            TrustError::ReleaseMissing { .. } => "release_missing",
            TrustError::NotInRelease { .. } => "not_in_release",
            TrustError::MixAndMatch { .. } => "mix_and_match",
            TrustError::EndlessData { .. } => "endless_data",
            TrustError::LengthMismatch { .. } => "length_mismatch",
            TrustError::HashMismatch { .. } => "hash_mismatch",
        }
    }
}
