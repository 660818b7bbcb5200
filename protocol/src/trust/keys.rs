//! Key tooling behind `outpost keys`: generate Ed25519 keys (PKCS#8 files
//! written with mode 0600), sign metadata (k-of-n: each holder adds a
//! signature), sign a root rotation, show fingerprints.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::metadata::{Role, Root, Signature, Signed, signing_message};
use crate::bytes::{KeyId, PublicKey, SignatureBytes};

/// Why a key could not be made, read or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Reading or writing a key file failed (an existing file is never
    /// overwritten: remove it first if you mean it).
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not an Ed25519 key in the expected form.
    #[error("{path}: not an Ed25519 {what}")]
    Malformed { path: PathBuf, what: &'static str },
    /// A private key file that others can read; fix with `chmod 600`.
    #[error("{path}: private key is readable by others (mode {mode:o}); chmod 600 it")]
    Permissions { path: PathBuf, mode: u32 },
    /// The system's random source failed, or ring refused the key.
    #[error("key generation failed: {0}")]
    Crypto(String),
    /// The value to sign cannot be encoded.
    #[error(transparent)]
    Encode(#[from] crate::codec::EncodeError),
}

/// An Ed25519 private key.
#[derive(Debug)]
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl SigningKey {
    /// A new key from the system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|e| KeyError::Crypto(e.to_string()))?;
        Self::from_pkcs8(doc.as_ref())
            .map_err(|_| KeyError::Crypto("ring refused its own key".into()))
    }

    /// From PKCS#8 DER: v2 as ring writes it, or v1 as `openssl genpkey
    /// -algorithm ed25519` writes it.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, ring::error::KeyRejected> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)?;
        Ok(SigningKey {
            pair,
            pkcs8: der.to_vec(),
        })
    }

    pub fn public_key(&self) -> PublicKey {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(k)
    }

    pub fn key_id(&self) -> KeyId {
        self.public_key().key_id()
    }

    /// Signs `payload` for `role`.
    pub fn sign(&self, role: Role, payload: &[u8]) -> Signature {
        let mut sig = [0u8; 64];
        sig.copy_from_slice(self.pair.sign(&signing_message(role, payload)).as_ref());
        Signature {
            key_id: self.key_id(),
            sig: SignatureBytes(sig),
        }
    }

    /// Writes the private key as PKCS#8 DER to `path` (mode 0600, created
    /// new, synced) and the public key as hex to `path` + `.pub`.
    pub fn write(&self, path: &Path) -> Result<(), KeyError> {
        write_new(path, &self.pkcs8, 0o600)?;
        let public = public_path(path);
        write_new(
            &public,
            format!("{}\n", self.public_key()).as_bytes(),
            0o644,
        )
    }

    /// Reads a private key file; refuses one that group or others can read.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        let der = fs::read(path).map_err(io)?;
        Self::from_pkcs8(&der).map_err(|_| KeyError::Malformed {
            path: path.to_owned(),
            what: "PKCS#8 private key",
        })
    }
}

/// The `.pub` file beside a private key file.
pub fn public_path(private: &Path) -> PathBuf {
    let mut p = private.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// Reads a public key: the hex `.pub` file [`SigningKey::write`] writes.
pub fn read_public(path: &Path) -> Result<PublicKey, KeyError> {
    let text = fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    PublicKey::from_hex(text.trim()).ok_or_else(|| KeyError::Malformed {
        path: path.to_owned(),
        what: "public key (64 hex digits)",
    })
}

/// The fingerprint of the key in `path`, private (PKCS#8) or public (hex):
/// the hex SHA-256 of the raw public key, which is also its [`KeyId`].
pub fn fingerprint(path: &Path) -> Result<KeyId, KeyError> {
    let bytes = fs::read(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    let public = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|t| PublicKey::from_hex(t.trim()));
    match public {
        Some(k) => Ok(k.key_id()),
        None => SigningKey::read(path).map(|k| k.key_id()),
    }
}

/// Signs `value` for `role` with each of `keys` (duplicates are signed once).
pub fn sign<T: Serialize + DeserializeOwned>(
    value: &T,
    role: Role,
    keys: &[&SigningKey],
) -> Result<Signed<T>, KeyError> {
    let payload = Signed::<T>::payload_of(value)?;
    let mut signed = Signed::from_parts(payload, Vec::new());
    for k in keys {
        add_signature(&mut signed, role, k);
    }
    Ok(signed)
}

/// Adds one holder's signature (k-of-n signing passes the envelope from
/// holder to holder); a key that already signed is not added twice.
pub fn add_signature<T>(signed: &mut Signed<T>, role: Role, key: &SigningKey) {
    if signed.signatures.iter().any(|s| s.key_id == key.key_id()) {
        return;
    }
    let s = key.sign(role, &signed.payload);
    signed.signatures.push(s);
}

/// Signs the next root with a threshold of the current root keys and of
/// the new root's keys (TUF §5.3.4); pass every key you hold of each.
pub fn sign_root_rotation(
    next: &Root,
    current_keys: &[&SigningKey],
    next_keys: &[&SigningKey],
) -> Result<Signed<Root>, KeyError> {
    let all: Vec<&SigningKey> = current_keys.iter().chain(next_keys).copied().collect();
    sign(next, Role::Root, &all)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f: File = opts.open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}
