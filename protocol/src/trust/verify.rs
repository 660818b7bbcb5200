//! The device's verifier (ARCHITECTURE §8): given the trusted root, the
//! stored [`TrustState`] and new metadata, an install [`Decision`] or the
//! [`TrustError`] naming the failed check.
//!
//! Sans-IO: the caller passes the time and persists the returned state
//! before acting on a decision (so a crash can never forget a sequence it
//! acted on).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::TrustError;
use super::metadata::{
    Directive, MAX_METADATA_BYTES, ReleaseMetadata, Role, RoleKeys, Root, Selector, Signature,
    Signed, TargetMeta, UnixSeconds, signing_message,
};
use crate::bytes::{KeyId, PublicKey};
use crate::codec;
use crate::topic::DeviceId;

/// What the device knows about itself, for selectors and constraints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIdentity {
    pub id: DeviceId,
    /// Rust's name for the CPU architecture (`x86_64`, `aarch64`).
    pub arch: String,
    pub memory_mb: u64,
    /// Engines the device can run (`cpu`, `gpu`).
    pub engines: Vec<String>,
    /// Cohorts the device was provisioned into.
    pub cohorts: Vec<String>,
}

/// What the device persists between verifications.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustState {
    /// The newest root accepted through the rotation chain.
    pub root: Root,
    /// The sequence of the last directive accepted (0: none yet).
    pub last_sequence: u64,
    /// The latest time the verifier has seen; time never goes back below
    /// it, so a device whose clock was reset cannot be served expired
    /// metadata as fresh.
    pub last_seen: UnixSeconds,
}

impl TrustState {
    /// Trust from the root pinned at provisioning: it must be valid and
    /// signed by a threshold of its own root keys.
    pub fn pinned(root: &Signed<Root>) -> Result<TrustState, TrustError> {
        let decoded = decode_payload(Role::Root, root)?;
        validate_root(&decoded)?;
        check_role_signatures(Role::Root, &decoded, &root.payload, &root.signatures)?;
        Ok(TrustState {
            root: decoded,
            last_sequence: 0,
            last_seen: 0,
        })
    }

    /// The state after accepting the next root of the rotation chain: its
    /// version is the current + 1, and it is signed by a threshold of the
    /// current root keys *and* of its own root keys (TUF §5.3.4). The
    /// intermediate roots of a chain may have expired; the newest one is
    /// checked for expiry whenever it is used.
    pub fn rotate(&self, next: &Signed<Root>) -> Result<TrustState, TrustError> {
        let new = decode_payload(Role::Root, next)?;
        validate_root(&new)?;
        let current = &self.root;
        if current.version.checked_add(1) != Some(new.version) {
            return Err(TrustError::RootVersion {
                current: current.version,
                got: new.version,
            });
        }
        let message = signing_message(Role::Root, &next.payload);
        let (mut by_current, mut by_new) = (0usize, 0usize);
        let mut seen: Vec<KeyId> = Vec::new();
        for s in &next.signatures {
            if seen.contains(&s.key_id) {
                return Err(TrustError::DuplicateSignature {
                    role: Role::Root,
                    key_id: s.key_id,
                });
            }
            seen.push(s.key_id);
            let key = current
                .key(&s.key_id)
                .or_else(|| new.key(&s.key_id))
                .ok_or(TrustError::UnknownKey {
                    role: Role::Root,
                    key_id: s.key_id,
                })?;
            let in_current = current.root.keys.contains(&s.key_id);
            let in_new = new.root.keys.contains(&s.key_id);
            if !in_current && !in_new {
                return Err(TrustError::KeyNotInRole {
                    role: Role::Root,
                    key_id: s.key_id,
                });
            }
            verify_one(Role::Root, key, &message, s)?;
            by_current += usize::from(in_current);
            by_new += usize::from(in_new);
        }
        if by_current < current.root.threshold as usize {
            return Err(TrustError::RotationNotAuthorized {
                version: new.version,
                valid: by_current,
                threshold: current.root.threshold,
            });
        }
        if by_new < new.root.threshold as usize {
            return Err(TrustError::BelowThreshold {
                role: Role::Root,
                valid: by_new,
                threshold: new.root.threshold,
            });
        }
        Ok(TrustState {
            root: new,
            ..self.clone()
        })
    }

    /// Applies a chain of roots in order.
    pub fn rotate_chain<'a>(
        &self,
        chain: impl IntoIterator<Item = &'a Signed<Root>>,
    ) -> Result<TrustState, TrustError> {
        chain
            .into_iter()
            .try_fold(self.clone(), |state, next| state.rotate(next))
    }
}

/// Release metadata whose signatures and expiry have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRelease(ReleaseMetadata);

impl VerifiedRelease {
    pub fn metadata(&self) -> &ReleaseMetadata {
        &self.0
    }
}

/// An accepted directive: what to do, the release-signed target it names
/// (if any), and the state to persist *before* acting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub directive: Directive,
    pub target: Option<TargetMeta>,
    pub state: TrustState,
}

/// Checks metadata for one device.
#[derive(Debug, Clone)]
pub struct Verifier {
    identity: DeviceIdentity,
}

impl Verifier {
    pub fn new(identity: DeviceIdentity) -> Self {
        Verifier { identity }
    }

    pub fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    /// Checks release metadata: root not expired, a threshold of distinct
    /// release keys, not expired.
    pub fn verify_release(
        &self,
        state: &TrustState,
        release: &Signed<ReleaseMetadata>,
        now: UnixSeconds,
    ) -> Result<VerifiedRelease, TrustError> {
        let now = effective_now(state, now);
        check_root_fresh(state, now)?;
        let meta: ReleaseMetadata = verify_signed(Role::Release, &state.root, release)?;
        check_expiry(Role::Release, meta.expires, now)?;
        Ok(VerifiedRelease(meta))
    }

    /// Checks a directive and, for actions that name a target, the release
    /// metadata that vouches for it. A device installs only when both
    /// verify (Uptane's two roles).
    pub fn decide(
        &self,
        state: &TrustState,
        directive: &Signed<Directive>,
        release: Option<&Signed<ReleaseMetadata>>,
        now: UnixSeconds,
    ) -> Result<Decision, TrustError> {
        let now = effective_now(state, now);
        check_root_fresh(state, now)?;
        let d: Directive = verify_signed(Role::Director, &state.root, directive)?;
        check_expiry(Role::Director, d.expires, now)?;
        if d.sequence <= state.last_sequence {
            return Err(TrustError::Replay {
                sequence: d.sequence,
                last: state.last_sequence,
            });
        }
        self.check_selector(&d.selector)?;
        let target = match d.action.target() {
            None => None,
            Some(want) => {
                let release = release.ok_or_else(|| TrustError::ReleaseMissing {
                    name: want.name.clone(),
                    version: want.version.clone(),
                })?;
                let release = self.verify_release(state, release, now)?;
                let meta = release
                    .0
                    .targets
                    .into_iter()
                    .find(|t| t.name == want.name && t.version == want.version)
                    .ok_or_else(|| TrustError::NotInRelease {
                        name: want.name.clone(),
                        version: want.version.clone(),
                    })?;
                if meta.sha256 != want.sha256 || meta.length != want.length {
                    return Err(TrustError::MixAndMatch {
                        directive: Box::new(want.clone()),
                        release: Box::new(meta.reference()),
                    });
                }
                self.check_target(&meta)?;
                Some(meta)
            }
        };
        let state = TrustState {
            root: state.root.clone(),
            last_sequence: d.sequence,
            last_seen: now,
        };
        Ok(Decision {
            directive: d,
            target,
            state,
        })
    }

    fn check_selector(&self, selector: &Selector) -> Result<(), TrustError> {
        let ok = match selector {
            Selector::Device(id) => *id == self.identity.id,
            Selector::Cohort(c) => self.identity.cohorts.contains(c),
        };
        if ok {
            return Ok(());
        }
        Err(TrustError::WrongDevice {
            selector: match selector {
                Selector::Device(id) => format!("device {id}"),
                Selector::Cohort(c) => format!("cohort {c}"),
            },
            device: self.identity.id.clone(),
        })
    }

    /// Checks that a release-signed target can run on this device (arch,
    /// memory, engine).
    pub fn check_target(&self, t: &TargetMeta) -> Result<(), TrustError> {
        let c = &t.constraints;
        let me = &self.identity;
        let reason = if !c.arch.is_empty() && !c.arch.contains(&me.arch) {
            Some(format!(
                "needs arch {}, device is {}",
                c.arch.join("|"),
                me.arch
            ))
        } else if let Some(min) = c.min_memory_mb.filter(|&m| m > me.memory_mb) {
            Some(format!(
                "needs {min} MB of memory, device has {}",
                me.memory_mb
            ))
        } else {
            c.engine
                .as_ref()
                .filter(|e| !me.engines.contains(e))
                .map(|engine| {
                    format!(
                        "needs the {engine} engine, device has {}",
                        me.engines.join(", ")
                    )
                })
        };
        match reason {
            None => Ok(()),
            Some(reason) => Err(TrustError::TargetMismatch {
                name: t.name.clone(),
                version: t.version.clone(),
                reason,
            }),
        }
    }
}

fn effective_now(state: &TrustState, now: UnixSeconds) -> UnixSeconds {
    now.max(state.last_seen)
}

fn check_root_fresh(state: &TrustState, now: UnixSeconds) -> Result<(), TrustError> {
    check_expiry(Role::Root, state.root.expires, now)
}

fn check_expiry(role: Role, expires: UnixSeconds, now: UnixSeconds) -> Result<(), TrustError> {
    if now >= expires {
        return Err(TrustError::Expired { role, expires, now });
    }
    Ok(())
}

fn validate_root(root: &Root) -> Result<(), TrustError> {
    root.validate().map_err(|reason| TrustError::InvalidRoot {
        version: root.version,
        reason,
    })
}

fn decode_payload<T: Serialize + DeserializeOwned>(
    role: Role,
    signed: &Signed<T>,
) -> Result<T, TrustError> {
    codec::decode(&signed.payload, MAX_METADATA_BYTES)
        .map_err(|source| TrustError::Decode { role, source })
}

/// Signatures first, then the payload is decoded.
fn verify_signed<T: Serialize + DeserializeOwned>(
    role: Role,
    root: &Root,
    signed: &Signed<T>,
) -> Result<T, TrustError> {
    check_role_signatures(role, root, &signed.payload, &signed.signatures)?;
    decode_payload(role, signed)
}

/// Every signature must be by a distinct key of `role` and verify; then
/// their number must reach the threshold. Strict on purpose: our own
/// tooling never emits a stray signature, so one is a sign of tampering.
fn check_role_signatures(
    role: Role,
    root: &Root,
    payload: &[u8],
    signatures: &[Signature],
) -> Result<(), TrustError> {
    let RoleKeys { threshold, keys } = root.role(role);
    let message = signing_message(role, payload);
    let mut seen: Vec<KeyId> = Vec::with_capacity(signatures.len());
    for s in signatures {
        if seen.contains(&s.key_id) {
            return Err(TrustError::DuplicateSignature {
                role,
                key_id: s.key_id,
            });
        }
        seen.push(s.key_id);
        let key = root.key(&s.key_id).ok_or(TrustError::UnknownKey {
            role,
            key_id: s.key_id,
        })?;
        if !keys.contains(&s.key_id) {
            return Err(TrustError::KeyNotInRole {
                role,
                key_id: s.key_id,
            });
        }
        verify_one(role, key, &message, s)?;
    }
    if seen.len() < *threshold as usize {
        return Err(TrustError::BelowThreshold {
            role,
            valid: seen.len(),
            threshold: *threshold,
        });
    }
    Ok(())
}

fn verify_one(
    role: Role,
    key: &PublicKey,
    message: &[u8],
    s: &Signature,
) -> Result<(), TrustError> {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key.0)
        .verify(message, &s.sig.0)
        .map_err(|_| TrustError::BadSignature {
            role,
            key_id: s.key_id,
        })
}
