//! The signed metadata of ARCHITECTURE §8: root, release and directive.
//!
//! Design: what is signed is the exact payload bytes (`[WIRE_VERSION] ++
//! postcard(value)`), carried beside the signatures in [`Signed`]. The
//! verifier checks signatures over those bytes first and only then decodes
//! them, so there is no canonicalisation step to get wrong (the trouble
//! TUF's canonical JSON exists to solve): postcard of these types is
//! already deterministic (no maps, no floats), and a verifier never
//! re-encodes. Each signature also covers a role tag, so a signature made
//! for one role can never count for another even where one key holds both.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::bytes::{KeyId, PublicKey, Sha256, SignatureBytes};
use crate::codec::{self, DecodeError, EncodeError};
use crate::topic::DeviceId;

/// Seconds since the Unix epoch (UTC).
pub type UnixSeconds = u64;

/// Largest metadata payload a verifier decodes.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// The signing roles (Uptane: root, image repository targets = release,
/// director).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Keys and thresholds of every role; offline, k-of-n.
    Root,
    /// Signs model targets; offline, k-of-n.
    Release,
    /// Signs deployment directives; the fleet server's online key.
    Director,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Release => "release",
            Role::Director => "director",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The keys of one role and how many of them must sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RoleKeys {
    pub threshold: u32,
    pub keys: Vec<KeyId>,
}

/// Root metadata: the keys and thresholds of every role. Pinned at
/// provisioning; replaced only by version + 1 signed by a threshold of the
/// old root keys and of the new ones (TUF specification §5.3.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Root {
    pub version: u64,
    pub expires: UnixSeconds,
    /// Every public key any role uses; roles name them by [`KeyId`].
    pub keys: Vec<PublicKey>,
    pub root: RoleKeys,
    pub release: RoleKeys,
    pub director: RoleKeys,
}

impl Root {
    pub fn role(&self, role: Role) -> &RoleKeys {
        match role {
            Role::Root => &self.root,
            Role::Release => &self.release,
            Role::Director => &self.director,
        }
    }

    /// The public key with this id, if the root lists it.
    pub fn key(&self, id: &KeyId) -> Option<&PublicKey> {
        self.keys.iter().find(|k| k.key_id() == *id)
    }

    /// Structural checks: every role has a threshold of at least one that
    /// its distinct, listed keys can meet.
    pub fn validate(&self) -> Result<(), String> {
        let mut ids: Vec<KeyId> = self.keys.iter().map(PublicKey::key_id).collect();
        ids.sort();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err("a public key is listed twice".into());
        }
        for role in [Role::Root, Role::Release, Role::Director] {
            let rk = self.role(role);
            let mut keys = rk.keys.clone();
            keys.sort();
            keys.dedup();
            if keys.len() != rk.keys.len() {
                return Err(format!("{role} names a key twice"));
            }
            if let Some(missing) = keys.iter().find(|k| ids.binary_search(k).is_err()) {
                return Err(format!(
                    "{role} names key {missing}, which the root does not list"
                ));
            }
            if rk.threshold == 0 || rk.threshold as usize > keys.len() {
                return Err(format!(
                    "{role} threshold {} cannot be met by its {} keys",
                    rk.threshold,
                    keys.len()
                ));
            }
        }
        Ok(())
    }
}

/// What a device must be to run a target (mirrors the package manifest's
/// `[target]`; empty or `None` means any).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct TargetConstraints {
    /// CPU architectures, as Rust names them (`x86_64`, `aarch64`).
    pub arch: Vec<String>,
    pub min_memory_mb: Option<u64>,
    /// `cpu` or `gpu`.
    pub engine: Option<String>,
}

/// One signed model artifact: what the release keys vouch for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct TargetMeta {
    pub name: String,
    pub version: String,
    pub sha256: Sha256,
    /// Exact length in bytes; a download is cut off past it.
    pub length: u64,
    pub constraints: TargetConstraints,
}

impl TargetMeta {
    pub fn reference(&self) -> TargetRef {
        TargetRef {
            name: self.name.clone(),
            version: self.version.clone(),
            sha256: self.sha256,
            length: self.length,
        }
    }
}

/// Release metadata: model targets signed by a threshold of release keys.
/// Its freshness is its expiry; which target a device installs, and in
/// what order, is the director's (sequence-numbered) business.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ReleaseMetadata {
    pub version: u64,
    pub expires: UnixSeconds,
    pub targets: Vec<TargetMeta>,
}

/// A directive's pointer at a target; must equal the release metadata's
/// entry (Uptane's director/image-repository cross-check).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct TargetRef {
    pub name: String,
    pub version: String,
    pub sha256: Sha256,
    pub length: u64,
}

/// Which devices a directive is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    Device(DeviceId),
    /// Every device provisioned into this cohort.
    Cohort(String),
}

/// How a deployed candidate is put on probation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum Probation {
    /// Commit after the self-test.
    None,
    /// Serve traffic as a canary; the fleet commits or rolls back.
    Canary,
}

/// What the device is told to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum DirectiveAction {
    /// Install `target` (older or newer than what runs: going back is a
    /// deploy with a higher sequence, never a replay).
    Deploy {
        target: TargetRef,
        probation: Probation,
    },
    /// Run `target` beside the active model on the same inputs; callers see
    /// only the active model.
    Shadow { target: TargetRef },
    /// Return to `target`, the model before the current candidate.
    Rollback { target: TargetRef },
    /// Stop serving and remove this model.
    Retire { model: String },
    /// Publish a fresh birth message.
    Rebirth,
}

impl DirectiveAction {
    /// The target this action installs or runs, if any.
    pub fn target(&self) -> Option<&TargetRef> {
        match self {
            DirectiveAction::Deploy { target, .. }
            | DirectiveAction::Shadow { target }
            | DirectiveAction::Rollback { target } => Some(target),
            DirectiveAction::Retire { .. } | DirectiveAction::Rebirth => None,
        }
    }
}

/// Where a directive belongs in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RolloutStage {
    pub rollout: String,
    pub stage: u32,
}

/// What a device on probation does when it loses the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum GraceAction {
    /// Keep the candidate serving.
    KeepCandidate,
    /// Roll back to the previous model.
    RollBack,
}

/// Offline-grace policy: after `max_offline_secs` without hearing from the
/// server, a device on probation takes `then`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct OfflineGrace {
    pub max_offline_secs: u64,
    pub then: GraceAction,
}

/// A deployment directive, signed by the director key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Directive {
    /// Fleet-wide, strictly increasing: a device acts only on a sequence
    /// above the last one it accepted.
    pub sequence: u64,
    pub selector: Selector,
    pub action: DirectiveAction,
    pub rollout: Option<RolloutStage>,
    pub issued_at: UnixSeconds,
    /// After this the directive is stale (a freeze attack replays it late).
    pub expires: UnixSeconds,
    pub offline_grace: OfflineGrace,
}

/// One signature over a payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Signature {
    pub key_id: KeyId,
    pub sig: SignatureBytes,
}

/// A payload of type `T` and its signatures. The payload is kept as the
/// exact bytes that were signed; decode it only through the verifier (or
/// [`Signed::decode_unverified`] for display).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Signed<T> {
    #[serde(with = "crate::bytes::base64_or_raw")]
    pub payload: Vec<u8>,
    pub signatures: Vec<Signature>,
    #[serde(skip)]
    _type: PhantomData<fn() -> T>,
}

#[cfg(feature = "arbitrary")]
impl<'a, T> arbitrary::Arbitrary<'a> for Signed<T> {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Signed::from_parts(u.arbitrary()?, u.arbitrary()?))
    }
}

impl<T> Signed<T> {
    /// Reassembles an envelope (no check is made here).
    pub fn from_parts(payload: Vec<u8>, signatures: Vec<Signature>) -> Self {
        Signed {
            payload,
            signatures,
            _type: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> Signed<T> {
    /// The canonical payload bytes of `value`: `[WIRE_VERSION] ++ postcard`.
    pub fn payload_of(value: &T) -> Result<Vec<u8>, EncodeError> {
        codec::encode(value)
    }

    /// Decodes the payload WITHOUT checking any signature: for display and
    /// tooling only, never for a decision.
    pub fn decode_unverified(&self) -> Result<T, DecodeError> {
        codec::decode(&self.payload, MAX_METADATA_BYTES)
    }
}

/// The bytes a signature covers: a domain tag, the role, the payload.
pub fn signing_message(role: Role, payload: &[u8]) -> Vec<u8> {
    const DOMAIN: &[u8] = b"outpost-trust/v1\0";
    let mut m = Vec::with_capacity(DOMAIN.len() + 10 + payload.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(role.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(payload);
    m
}
