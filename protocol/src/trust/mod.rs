//! Uptane-style trust (ARCHITECTURE §8): model artifacts are signed by a
//! threshold of offline release keys, deployment directives by the fleet
//! server's online director key, and a device installs only when both
//! verify against the root it pinned at provisioning.
//!
//! ```
//! use outpost_protocol::bytes::Sha256;
//! use outpost_protocol::topic::DeviceId;
//! use outpost_protocol::trust::{self, keys::SigningKey, *};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (root_key, release_key, director_key) =
//!     (SigningKey::generate()?, SigningKey::generate()?, SigningKey::generate()?);
//! let one = |k: &SigningKey| RoleKeys { threshold: 1, keys: vec![k.key_id()] };
//! let root = Root {
//!     version: 1,
//!     expires: 2_000_000_000,
//!     keys: vec![root_key.public_key(), release_key.public_key(), director_key.public_key()],
//!     root: one(&root_key),
//!     release: one(&release_key),
//!     director: one(&director_key),
//! };
//! let pinned = keys::sign(&root, Role::Root, &[&root_key])?;
//!
//! let model = b"the model package bytes";
//! let target = TargetMeta {
//!     name: "digits".into(),
//!     version: "1.0.0".into(),
//!     sha256: Sha256::of(model),
//!     length: model.len() as u64,
//!     constraints: TargetConstraints::default(),
//! };
//! let release = ReleaseMetadata { version: 1, expires: 1_900_000_000, targets: vec![target.clone()] };
//! let release = keys::sign(&release, Role::Release, &[&release_key])?;
//! let directive = Directive {
//!     sequence: 1,
//!     selector: Selector::Device(DeviceId::new("pump-17")?),
//!     action: DirectiveAction::Deploy { target: target.reference(), probation: Probation::Canary },
//!     rollout: None,
//!     issued_at: 1_800_000_000,
//!     expires: 1_800_086_400,
//!     offline_grace: OfflineGrace { max_offline_secs: 3600, then: GraceAction::RollBack },
//! };
//! let directive = keys::sign(&directive, Role::Director, &[&director_key])?;
//!
//! // On the device:
//! let state = TrustState::pinned(&pinned)?;
//! let verifier = Verifier::new(DeviceIdentity {
//!     id: DeviceId::new("pump-17")?,
//!     arch: "aarch64".into(),
//!     memory_mb: 4096,
//!     engines: vec!["cpu".into()],
//!     cohorts: vec![],
//! });
//! let decision = verifier.decide(&state, &directive, Some(&release), 1_800_000_100)?;
//! let mut check = ArtifactCheck::new(decision.target.as_ref().ok_or("no target")?);
//! check.update(model)?;
//! check.finish()?;
//! // Persist decision.state, then install. The same directive again is a replay:
//! let again = verifier.decide(&decision.state, &directive, Some(&release), 1_800_000_200);
//! assert_eq!(again.unwrap_err().check(), "replay");
//! # Ok(()) }
//! ```
//!
//! Design: `tough` (the well-kept TUF client) was weighed for the release
//! role and not used — see docs/architecture.md, "Trust".

mod artifact;
mod error;
pub mod keys;
mod metadata;
mod verify;

pub use artifact::{ArtifactCheck, check_reader};
pub use error::TrustError;
pub use metadata::{
    Directive, DirectiveAction, GraceAction, MAX_METADATA_BYTES, OfflineGrace, Probation,
    ReleaseMetadata, Role, RoleKeys, RolloutStage, Root, Selector, Signature, Signed,
    TargetConstraints, TargetMeta, TargetRef, UnixSeconds, signing_message,
};
pub use verify::{Decision, DeviceIdentity, TrustState, VerifiedRelease, Verifier};
