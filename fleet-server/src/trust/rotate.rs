//! `outpost keys rotate`: the next root version, signed k-of-n by the
//! holders of the current and the new root keys (TUF §5.3.4).

use outpost_protocol::bytes::{KeyId, PublicKey};
use outpost_protocol::trust::keys::{self, SigningKey};
use outpost_protocol::trust::{Role, RoleKeys, Root, Signed, TrustError, TrustState};

use super::TrustFileError;

/// What changes from one root version to the next.
#[derive(Debug, Clone, Default)]
pub struct RotationChanges {
    pub add_root: Vec<PublicKey>,
    pub remove_root: Vec<KeyId>,
    pub add_release: Vec<PublicKey>,
    pub remove_release: Vec<KeyId>,
    pub root_threshold: Option<u32>,
    pub release_threshold: Option<u32>,
    /// Expiry of the new version, Unix seconds.
    pub expires: u64,
}

fn edit_role(
    role: Role,
    rk: &mut RoleKeys,
    keys: &mut Vec<PublicKey>,
    add: &[PublicKey],
    remove: &[KeyId],
    threshold: Option<u32>,
) -> Result<(), TrustFileError> {
    for id in remove {
        let before = rk.keys.len();
        rk.keys.retain(|k| k != id);
        if rk.keys.len() == before {
            return Err(TrustFileError::Options(format!(
                "cannot remove {id}: it is not a {role} key"
            )));
        }
    }
    for public in add {
        let id = public.key_id();
        if rk.keys.contains(&id) {
            return Err(TrustFileError::Options(format!(
                "cannot add {id}: it already is a {role} key"
            )));
        }
        rk.keys.push(id);
        if !keys.contains(public) {
            keys.push(*public);
        }
    }
    if let Some(t) = threshold {
        rk.threshold = t;
    }
    Ok(())
}

/// Root version `current.version + 1` with `changes` applied. Keys no role
/// names any more are dropped from the key list. The result is validated.
pub fn next_root(current: &Root, changes: &RotationChanges) -> Result<Root, TrustFileError> {
    let mut next = current.clone();
    next.version = current
        .version
        .checked_add(1)
        .ok_or_else(|| TrustFileError::Options("root version is at its maximum".into()))?;
    next.expires = changes.expires;
    let mut keys = std::mem::take(&mut next.keys);
    edit_role(
        Role::Root,
        &mut next.root,
        &mut keys,
        &changes.add_root,
        &changes.remove_root,
        changes.root_threshold,
    )?;
    edit_role(
        Role::Release,
        &mut next.release,
        &mut keys,
        &changes.add_release,
        &changes.remove_release,
        changes.release_threshold,
    )?;
    let used = |k: &PublicKey| {
        let id = k.key_id();
        [&next.root, &next.release, &next.director]
            .iter()
            .any(|r| r.keys.contains(&id))
    };
    keys.retain(used);
    next.keys = keys;
    next.validate()
        .map_err(|reason| TrustFileError::Options(format!("root v{}: {reason}", next.version)))?;
    Ok(next)
}

/// Adds each key's signature to the proposed root. Only root keys of the
/// current or the next version may sign; anything else would make the
/// device refuse the rotation outright, so it is refused here first.
pub fn sign_rotation(
    current: &Root,
    proposed: &mut Signed<Root>,
    signers: &[SigningKey],
) -> Result<(), TrustFileError> {
    let next = proposed
        .decode_unverified()
        .map_err(|e| TrustFileError::Options(format!("proposed root does not decode: {e}")))?;
    for key in signers {
        let id = key.key_id();
        if !current.root.keys.contains(&id) && !next.root.keys.contains(&id) {
            return Err(TrustFileError::Options(format!(
                "key {id} is not a root key of version {} or {}",
                current.version, next.version
            )));
        }
        keys::add_signature(proposed, Role::Root, key);
    }
    Ok(())
}

/// The device's own check of a rotation: Ok when a device that pinned
/// `current` would accept `next`; otherwise the failed check (for an
/// incomplete rotation, `rotation_not_authorized` when the current root
/// keys lack their threshold, `below_threshold` when the new ones do).
pub fn rotation_status(current: &Signed<Root>, next: &Signed<Root>) -> Result<(), TrustError> {
    TrustState::pinned(current)?.rotate(next).map(|_| ())
}
