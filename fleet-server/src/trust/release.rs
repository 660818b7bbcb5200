//! `outpost model sign`: release metadata for one package, signed k-of-n
//! by release keys.

use std::path::{Path, PathBuf};

use outpost_protocol::bytes::Sha256;
use outpost_protocol::topic::DeviceId;
use outpost_protocol::trust::keys::{self, SigningKey};
use outpost_protocol::trust::{
    DeviceIdentity, ReleaseMetadata, Role, Root, Signed, TargetConstraints, TargetMeta, TrustError,
    TrustState, VerifiedRelease, Verifier,
};
use outpost_runtime::Manifest;

/// Why a release signature was not added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// The existing release metadata vouches for other bytes than this
    /// package: the signer holds a different build. Compare sha256 sums with
    /// whoever signed first.
    #[error(
        "the release metadata signs {} {} as sha256 {} ({} bytes), but this package is sha256 {} ({} bytes)",
        .0.name, .0.version, .0.signed, .0.signed_len, .0.actual, .0.actual_len
    )]
    OtherBytes(Box<OtherBytes>),
    /// The existing release metadata has no target of this name and version.
    #[error("the release metadata has no target {name} {version}")]
    NoSuchTarget { name: String, version: String },
    /// The key is not a release key of the given root (its signature would
    /// make devices refuse the release).
    #[error("key {key_id} is not a release key of root version {root_version}")]
    NotAReleaseKey {
        key_id: outpost_protocol::bytes::KeyId,
        root_version: u64,
    },
    /// The existing file does not decode.
    #[error("release metadata does not decode: {0}")]
    Decode(String),
}

/// The two digests of [`ReleaseError::OtherBytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherBytes {
    pub name: String,
    pub version: String,
    pub signed: Sha256,
    pub signed_len: u64,
    pub actual: Sha256,
    pub actual_len: u64,
}

/// `PACKAGE.release` beside `PACKAGE.opk`.
pub fn release_path_for(package: &Path) -> PathBuf {
    package.with_extension("release")
}

/// The signed description of a package: name and version from its
/// manifest, the sha256 and length of the whole `.opk` file, and the
/// manifest's target constraints.
pub fn target_for(manifest: &Manifest, opk: &[u8]) -> TargetMeta {
    TargetMeta {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        sha256: Sha256::of(opk),
        length: opk.len() as u64,
        constraints: TargetConstraints {
            arch: manifest.target.arch.clone(),
            min_memory_mb: manifest.target.min_memory_mb,
            engine: manifest.target.engine.map(|e| e.to_string()),
        },
    }
}

/// Adds `key`'s signature to `existing` (another holder's file) or, with
/// none, to new release metadata for `target` expiring at `expires`. An
/// existing file's payload is never changed, so every holder signs the same
/// bytes; it must vouch for exactly this package. With `root`, the key
/// must be one of its release keys. Returns the envelope and whether the
/// key had already signed.
pub fn add_release_signature(
    existing: Option<Signed<ReleaseMetadata>>,
    target: &TargetMeta,
    expires: u64,
    key: &SigningKey,
    root: Option<&Root>,
) -> Result<(Signed<ReleaseMetadata>, bool), ReleaseError> {
    if let Some(root) = root
        && !root.release.keys.contains(&key.key_id())
    {
        return Err(ReleaseError::NotAReleaseKey {
            key_id: key.key_id(),
            root_version: root.version,
        });
    }
    let mut signed = match existing {
        Some(signed) => {
            let meta = signed
                .decode_unverified()
                .map_err(|e| ReleaseError::Decode(e.to_string()))?;
            let entry = meta
                .targets
                .iter()
                .find(|t| t.name == target.name && t.version == target.version)
                .ok_or_else(|| ReleaseError::NoSuchTarget {
                    name: target.name.clone(),
                    version: target.version.clone(),
                })?;
            if entry.sha256 != target.sha256 || entry.length != target.length {
                return Err(ReleaseError::OtherBytes(Box::new(OtherBytes {
                    name: target.name.clone(),
                    version: target.version.clone(),
                    signed: entry.sha256,
                    signed_len: entry.length,
                    actual: target.sha256,
                    actual_len: target.length,
                })));
            }
            signed
        }
        None => {
            let meta = ReleaseMetadata {
                version: 1,
                expires,
                targets: vec![target.clone()],
            };
            keys::sign(&meta, Role::Release, &[])
                .map_err(|e| ReleaseError::Decode(e.to_string()))?
        }
    };
    let already = signed.signatures.iter().any(|s| s.key_id == key.key_id());
    keys::add_signature(&mut signed, Role::Release, key);
    Ok((signed, already))
}

/// What a device that pinned `root` makes of the release at `now`: the
/// verified metadata, or the failed check (`below_threshold` while more
/// holders must sign).
pub fn verify_release(
    root: &Signed<Root>,
    release: &Signed<ReleaseMetadata>,
    now: u64,
) -> Result<VerifiedRelease, TrustError> {
    let state = TrustState::pinned(root)?;
    // Only the release checks run: the identity is never consulted by them.
    let id = DeviceId::new("outpost-cli").map_err(|e| TrustError::InvalidRoot {
        version: state.root.version,
        reason: e.to_string(),
    })?;
    let verifier = Verifier::new(DeviceIdentity {
        id,
        arch: std::env::consts::ARCH.into(),
        memory_mb: 0,
        engines: vec![],
        cohorts: vec![],
    });
    verifier.verify_release(&state, release, now)
}
