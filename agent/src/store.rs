//! The agent's on-disk state: a sled store (session counter, event log,
//! later the telemetry outbox) opened defensively, and atomic files for
//! what must survive sled (the trust state).
//!
//! Design: sled 0.34 has open reports of corruption after abrupt stops
//! (spacejam/sled#1533). A store that fails to open is moved aside and
//! recreated, and the loss is reported; serving never depends on it.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use outpost_protocol::codec;
use outpost_protocol::trust::{MAX_METADATA_BYTES, Root, Signed, TrustError, TrustState};

/// What happened when the store was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    Fine,
    /// The old store would not open; it was moved to `moved_to` and a new
    /// one created.
    Recreated {
        moved_to: PathBuf,
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
}

#[derive(Debug, thiserror::Error)]
#[error("store {path}: {reason}")]
pub struct StoreError {
    pub path: PathBuf,
    pub reason: String,
}

impl Store {
    /// Opens `dir/store`, moving a broken one aside.
    pub fn open(dir: &Path) -> Result<(Store, Opened), StoreError> {
        let path = dir.join("store");
        let err = |reason: String| StoreError {
            path: path.clone(),
            reason,
        };
        fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        match sled::open(&path) {
            Ok(db) => Ok((Store { db }, Opened::Fine)),
            Err(first) => {
                let moved_to = dir.join(format!(
                    "store.broken-{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                ));
                fs::rename(&path, &moved_to).map_err(|e| {
                    err(format!(
                        "does not open ({first}) and cannot be moved aside ({e})"
                    ))
                })?;
                let db = sled::open(&path).map_err(|e| err(e.to_string()))?;
                Ok((
                    Store { db },
                    Opened::Recreated {
                        moved_to,
                        reason: first.to_string(),
                    },
                ))
            }
        }
    }

    /// The next session number (monotonic across restarts; flushed before
    /// it is used, so a birth never reuses one).
    pub fn next_session(&self) -> Result<u64, StoreError> {
        self.next_counter(b"session")
    }

    /// The next event sequence number.
    pub fn next_event_seq(&self) -> Result<u64, StoreError> {
        self.next_counter(b"event-seq")
    }

    fn next_counter(&self, key: &[u8]) -> Result<u64, StoreError> {
        let err = |e: sled::Error| StoreError {
            path: PathBuf::from("store"),
            reason: e.to_string(),
        };
        let new = self
            .db
            .update_and_fetch(key, |old| {
                let n = old
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                Some((n + 1).to_be_bytes().to_vec())
            })
            .map_err(err)?;
        self.db.flush().map_err(err)?;
        Ok(new
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(1))
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// folder, fsync, rename, fsync of the folder. A crash leaves the old file
/// or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Why the trust state could not be established.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustStoreError {
    #[error("{path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Trust { path: PathBuf, source: TrustError },
}

/// The persisted trust state in `data_dir/trust-state.bin`, or, on first
/// boot, the state pinned from `root`. A stale pinned root (older than the
/// persisted one) never rolls trust back; a newer one (re-provisioning)
/// replaces the root but keeps the last sequence and time seen, so old
/// directives stay replays.
pub fn load_trust(data_dir: &Path, root: &Path) -> Result<TrustState, TrustStoreError> {
    let read_err = |path: &Path, reason: String| TrustStoreError::Read {
        path: path.to_owned(),
        reason,
    };
    let bytes = fs::read(root).map_err(|e| read_err(root, e.to_string()))?;
    let signed: Signed<Root> = codec::decode(&bytes, MAX_METADATA_BYTES)
        .map_err(|e| read_err(root, format!("not signed root metadata: {e}")))?;
    let pinned = TrustState::pinned(&signed).map_err(|source| TrustStoreError::Trust {
        path: root.to_owned(),
        source,
    })?;
    let state_path = data_dir.join("trust-state.bin");
    match fs::read(&state_path) {
        Ok(b) => {
            let stored: TrustState = codec::decode(&b, MAX_METADATA_BYTES)
                .map_err(|e| read_err(&state_path, e.to_string()))?;
            Ok(if stored.root.version >= pinned.root.version {
                stored
            } else {
                TrustState {
                    root: pinned.root,
                    ..stored
                }
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(data_dir).map_err(|e| read_err(data_dir, e.to_string()))?;
            save_trust(data_dir, &pinned).map_err(|e| read_err(&state_path, e.to_string()))?;
            Ok(pinned)
        }
        Err(e) => Err(read_err(&state_path, e.to_string())),
    }
}

/// Persists the trust state atomically (before acting on a decision).
pub fn save_trust(data_dir: &Path, state: &TrustState) -> std::io::Result<()> {
    let bytes = codec::encode(state).map_err(std::io::Error::other)?;
    write_atomic(&data_dir.join("trust-state.bin"), &bytes)
}
