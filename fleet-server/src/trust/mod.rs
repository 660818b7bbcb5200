//! Operator-side trust tooling (ARCHITECTURE §8) behind `outpost keys` and
//! `outpost model sign`: key sets, root rotation, release signing. Root and
//! release keys stay on the operator's machine; the fleet server only ever
//! holds the director key.

mod keys;
mod release;
mod rotate;

use std::io::Write;
use std::path::{Path, PathBuf};

use outpost_protocol::codec;
use outpost_protocol::trust::keys::KeyError;
use outpost_protocol::trust::{MAX_METADATA_BYTES, Signed, TrustError};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use keys::{Described, InitOptions, InitReport, describe, generate_key, init_keys};
pub use release::{
    ReleaseError, add_release_signature, release_path_for, target_for, verify_release,
};
pub use rotate::{RotationChanges, next_root, rotation_status, sign_rotation};

/// Why a trust tooling step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustFileError {
    /// Reading, writing or using a key failed (see the key error).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A file this command would create exists; nothing was written.
    /// Remove it, or choose another directory.
    #[error("refusing to overwrite {}", paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Exists { paths: Vec<PathBuf> },
    /// Options that cannot make valid metadata (a threshold above the key
    /// count, removing a key that is not there, …).
    #[error("{0}")]
    Options(String),
    /// A file is not the signed metadata expected.
    #[error("{path}: not {what}: {reason}")]
    Metadata {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    /// Writing a metadata file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Metadata given as trusted does not verify (e.g. the current root).
    #[error("{path}: {source}")]
    Untrusted { path: PathBuf, source: TrustError },
    /// The value cannot be encoded.
    #[error(transparent)]
    Encode(#[from] codec::EncodeError),
}

impl TrustFileError {
    /// Whether the user must fix the command or its input files (exit code
    /// 2) rather than something failing on the way (exit code 1).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            TrustFileError::Exists { .. }
                | TrustFileError::Options(_)
                | TrustFileError::Metadata { .. }
                | TrustFileError::Key(KeyError::Malformed { .. } | KeyError::Permissions { .. })
        )
    }
}

/// Reads a `Signed<T>` file written by [`write_signed`].
pub fn read_signed<T: Serialize + DeserializeOwned>(
    path: &Path,
    what: &'static str,
) -> Result<Signed<T>, TrustFileError> {
    let bytes = std::fs::read(path).map_err(|source| TrustFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    let signed: Signed<T> =
        codec::decode(&bytes, 2 * MAX_METADATA_BYTES).map_err(|e| TrustFileError::Metadata {
            path: path.to_owned(),
            what,
            reason: e.to_string(),
        })?;
    // The envelope alone decodes from many byte strings; the payload must
    // be the expected type too.
    signed
        .decode_unverified()
        .map_err(|e| TrustFileError::Metadata {
            path: path.to_owned(),
            what,
            reason: e.to_string(),
        })?;
    Ok(signed)
}

/// Writes signed metadata: `codec::encode(&Signed<T>)`. A new file is
/// created exclusively; `replace` swaps an existing one atomically (write
/// beside it, fsync, rename) so a k-of-n signer never leaves half a file.
pub fn write_signed<T>(path: &Path, signed: &Signed<T>, replace: bool) -> Result<(), TrustFileError>
where
    T: Serialize + DeserializeOwned,
{
    let bytes = codec::encode(signed)?;
    let io = |source| TrustFileError::Io {
        path: path.to_owned(),
        source,
    };
    if !replace {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => TrustFileError::Exists {
                    paths: vec![path.to_owned()],
                },
                _ => io(e),
            })?;
        f.write_all(&bytes).map_err(io)?;
        return f.sync_all().map_err(io);
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}
