//! The default [`Store`]: sled, one tree per record kind, JSON values.
//!
//! Design: values are JSON so an operator can read a dump, and a record
//! gaining an optional field stays readable; blobs are raw bytes.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Store, StoreError, WindowQuery, WindowRecord};
use crate::audit::AuditEntry;
use crate::auth::TokenRecord;
use crate::inventory::DeviceRecord;
use crate::registry::VersionRecord;

/// A sled database in a folder (`--data-dir`/`store`).
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    blobs: sled::Tree,
    versions: sled::Tree,
    tokens: sled::Tree,
    devices: sled::Tree,
    windows: sled::Tree,
    audit: sled::Tree,
    state: sled::Tree,
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Backend(e.to_string()))
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).replace('\u{0}', "/"),
        reason: e.to_string(),
    })
}

fn all<T: DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<T>, StoreError> {
    tree.iter()
        .map(|kv| {
            let (k, v) = kv.map_err(backend)?;
            decode(&k, &v)
        })
        .collect()
}

fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
    tree.get(key)
        .map_err(backend)?
        .map(|v| decode(key, &v))
        .transpose()
}

fn version_key(name: &str, version: &str) -> Vec<u8> {
    format!("{name}\u{0}{version}").into_bytes()
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|e| StoreError::Open {
                path: dir.display().to_string(),
                reason: match e {
                    sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                        "it is locked: is an `outpost serve` using this data dir? Stop it, \
                         or talk to it with --server instead"
                            .into()
                    }
                    other => other.to_string(),
                },
            })?;
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        Ok(SledStore {
            blobs: tree("blobs")?,
            versions: tree("versions")?,
            tokens: tree("tokens")?,
            devices: tree("devices")?,
            windows: tree("windows")?,
            audit: tree("audit")?,
            state: tree("state")?,
            db,
        })
    }

    /// Writes an audit entry under sequence key `at`, whatever its own
    /// `seq` says; for repair tools and for tests that tamper with the log.
    pub fn put_audit_at(&self, at: u64, e: &AuditEntry) -> Result<(), StoreError> {
        self.audit
            .insert(at.to_be_bytes(), encode(e)?)
            .map_err(backend)?;
        Ok(())
    }

    /// Removes the audit entry at sequence key `at` (tests of
    /// `outpost audit verify`).
    pub fn remove_audit_at(&self, at: u64) -> Result<(), StoreError> {
        self.audit.remove(at.to_be_bytes()).map_err(backend)?;
        Ok(())
    }
}

impl Store for SledStore {
    fn put_blob(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes));
        if !self.blobs.contains_key(&sha).map_err(backend)? {
            self.blobs.insert(&sha, bytes).map_err(backend)?;
        }
        Ok(sha)
    }

    fn get_blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.blobs.get(sha256).map_err(backend)?.map(|v| v.to_vec()))
    }

    fn put_version(&self, v: &VersionRecord) -> Result<(), StoreError> {
        self.versions
            .insert(version_key(&v.name, &v.version), encode(v)?)
            .map_err(backend)?;
        Ok(())
    }

    fn get_version(&self, name: &str, version: &str) -> Result<Option<VersionRecord>, StoreError> {
        get(&self.versions, &version_key(name, version))
    }

    fn list_versions(&self) -> Result<Vec<VersionRecord>, StoreError> {
        all(&self.versions)
    }

    fn put_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        self.tokens
            .insert(t.sha256.as_bytes(), encode(t)?)
            .map_err(backend)?;
        Ok(())
    }

    fn token_by_hash(&self, sha256: &str) -> Result<Option<TokenRecord>, StoreError> {
        get(&self.tokens, sha256.as_bytes())
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let mut v: Vec<TokenRecord> = all(&self.tokens)?;
        v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(v)
    }

    fn put_device(&self, d: &DeviceRecord) -> Result<(), StoreError> {
        self.devices
            .insert(d.id.as_str().as_bytes(), encode(d)?)
            .map_err(backend)?;
        Ok(())
    }

    fn get_device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        get(&self.devices, id.as_bytes())
    }

    fn list_devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        all(&self.devices)
    }

    fn put_window(&self, w: &WindowRecord) -> Result<bool, StoreError> {
        let swapped = self
            .windows
            .compare_and_swap(w.key(), None as Option<&[u8]>, Some(encode(w)?))
            .map_err(backend)?;
        Ok(swapped.is_ok())
    }

    fn windows(&self, q: &WindowQuery) -> Result<Vec<WindowRecord>, StoreError> {
        let prefix = match &q.version {
            Some(v) => format!("{}\u{0}{v}\u{0}", q.model),
            None => format!("{}\u{0}", q.model),
        };
        let mut out = vec![];
        for kv in self.windows.scan_prefix(prefix.as_bytes()) {
            let (k, v) = kv.map_err(backend)?;
            let r: WindowRecord = decode(&k, &v)?;
            if q.matches(&r) {
                out.push(r);
            }
        }
        out.sort_by(|a, b| {
            (&a.device, a.window.window_start).cmp(&(&b.device, b.window.window_start))
        });
        Ok(out)
    }

    fn put_audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        self.put_audit_at(e.seq, e)
    }

    fn audit_entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        all(&self.audit)
    }

    fn put_state(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.state.insert(key, value).map_err(backend)?;
        Ok(())
    }

    fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.state.get(key).map_err(backend)?.map(|v| v.to_vec()))
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(backend)?;
        Ok(())
    }
}
