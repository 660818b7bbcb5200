//! `outpost keys init|generate|show`: key sets and what a file holds.

use std::path::{Path, PathBuf};

use outpost_protocol::bytes::KeyId;
use outpost_protocol::trust::keys::{self, SigningKey};
use outpost_protocol::trust::{ReleaseMetadata, Role, RoleKeys, Root, TrustState};

use super::{TrustFileError, read_signed, write_signed};

/// Sizes and lifetime of a new key set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    pub root: u32,
    pub root_threshold: u32,
    pub release: u32,
    pub release_threshold: u32,
    /// Expiry of root version 1, Unix seconds.
    pub expires: u64,
}

/// What `init_keys` wrote.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// Private key files (each with a `.pub` beside it), then `root.signed`.
    pub files: Vec<PathBuf>,
    pub root_path: PathBuf,
    pub root: Root,
}

fn check_count(role: &str, n: u32, k: u32) -> Result<(), TrustFileError> {
    if n == 0 || k == 0 || k > n {
        return Err(TrustFileError::Options(format!(
            "{role}: threshold {k} of {n} keys cannot be met (need 1 ≤ threshold ≤ keys, keys ≥ 1)"
        )));
    }
    Ok(())
}

/// Generates root keys `root-1.pk8…`, release keys `release-1.pk8…` and
/// `director.pk8` in `dir` (PKCS#8, mode 0600, each with a hex `.pub`), and
/// `root.signed`: root version 1 signed by every root key. Nothing is
/// written when any of these files exists.
pub fn init_keys(dir: &Path, opts: &InitOptions) -> Result<InitReport, TrustFileError> {
    check_count("root", opts.root, opts.root_threshold)?;
    check_count("release", opts.release, opts.release_threshold)?;
    let names: Vec<String> = (1..=opts.root)
        .map(|i| format!("root-{i}.pk8"))
        .chain((1..=opts.release).map(|i| format!("release-{i}.pk8")))
        .chain(["director.pk8".to_owned()])
        .collect();
    let key_paths: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    let root_path = dir.join("root.signed");
    // Checked up front so a refused init leaves no partial key set.
    let exists: Vec<PathBuf> = key_paths
        .iter()
        .flat_map(|p| [p.clone(), keys::public_path(p)])
        .chain([root_path.clone()])
        .filter(|p| p.exists())
        .collect();
    if !exists.is_empty() {
        return Err(TrustFileError::Exists { paths: exists });
    }
    std::fs::create_dir_all(dir).map_err(|source| TrustFileError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let keys: Vec<SigningKey> = key_paths
        .iter()
        .map(|_| SigningKey::generate())
        .collect::<Result<_, _>>()?;
    for (k, p) in keys.iter().zip(&key_paths) {
        k.write(p)?;
    }
    let (root_keys, rest) = keys.split_at(opts.root as usize);
    let (release_keys, director) = rest.split_at(opts.release as usize);
    let ids = |ks: &[SigningKey]| ks.iter().map(SigningKey::key_id).collect();
    let root = Root {
        version: 1,
        expires: opts.expires,
        keys: keys.iter().map(SigningKey::public_key).collect(),
        root: RoleKeys {
            threshold: opts.root_threshold,
            keys: ids(root_keys),
        },
        release: RoleKeys {
            threshold: opts.release_threshold,
            keys: ids(release_keys),
        },
        director: RoleKeys {
            threshold: 1,
            keys: ids(director),
        },
    };
    root.validate().map_err(TrustFileError::Options)?;
    let signers: Vec<&SigningKey> = root_keys.iter().collect();
    let signed = keys::sign(&root, Role::Root, &signers)?;
    write_signed(&root_path, &signed, false)?;
    let mut files = key_paths;
    files.push(root_path.clone());
    Ok(InitReport {
        files,
        root_path,
        root,
    })
}

/// Generates one key (for a new holder joining a role by rotation).
pub fn generate_key(path: &Path) -> Result<KeyId, TrustFileError> {
    let public = keys::public_path(path);
    let exists: Vec<PathBuf> = [path.to_owned(), public]
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    if !exists.is_empty() {
        return Err(TrustFileError::Exists { paths: exists });
    }
    let key = SigningKey::generate()?;
    key.write(path)?;
    Ok(key.key_id())
}

/// What `outpost keys show` found in a file.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Described {
    /// A private (PKCS#8) or public (hex) key and its fingerprint.
    Key { path: PathBuf, key_id: KeyId },
    /// Root metadata, who signed it, and whether it verifies against its
    /// own root keys (the check a device makes when pinning it).
    Root {
        path: PathBuf,
        root: Root,
        signed_by: Vec<KeyId>,
        self_check: Result<(), &'static str>,
    },
    /// Release metadata and who signed it (verifying needs a root).
    Release {
        path: PathBuf,
        release: ReleaseMetadata,
        signed_by: Vec<KeyId>,
    },
}

/// Identifies and summarises a key or metadata file.
pub fn describe(path: &Path) -> Result<Described, TrustFileError> {
    let signers = |s: &[outpost_protocol::trust::Signature]| s.iter().map(|s| s.key_id).collect();
    // Metadata first: a key file never starts with the wire version byte,
    // and the key reader's permission check must not reject a 0644 root.
    if let Ok(signed) = read_signed::<Root>(path, "root metadata")
        && let Ok(root) = signed.decode_unverified()
        && root.validate().is_ok()
    {
        return Ok(Described::Root {
            path: path.to_owned(),
            self_check: TrustState::pinned(&signed)
                .map(|_| ())
                .map_err(|e| e.check()),
            signed_by: signers(&signed.signatures),
            root,
        });
    }
    if let Ok(signed) = read_signed::<ReleaseMetadata>(path, "release metadata")
        && let Ok(release) = signed.decode_unverified()
    {
        return Ok(Described::Release {
            path: path.to_owned(),
            signed_by: signers(&signed.signatures),
            release,
        });
    }
    match keys::fingerprint(path) {
        Ok(key_id) => Ok(Described::Key {
            path: path.to_owned(),
            key_id,
        }),
        // A private key others can read is still a key: say so.
        Err(e @ keys::KeyError::Permissions { .. }) => Err(e.into()),
        Err(_) => Err(TrustFileError::Metadata {
            path: path.to_owned(),
            what: "a key, root or release file",
            reason: "neither a key (PKCS#8 or hex .pub) nor signed metadata".into(),
        }),
    }
}
