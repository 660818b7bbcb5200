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

    /// The telemetry outbox: sealed windows waiting for the broker's
    /// acknowledgement, keyed so that iteration is oldest first.
    pub fn outbox(&self) -> Result<Outbox, StoreError> {
        let tree = self.db.open_tree("outbox").map_err(|e| StoreError {
            path: PathBuf::from("store/outbox"),
            reason: e.to_string(),
        })?;
        Ok(Outbox { tree })
    }

    /// The event outbox: encoded events waiting for the broker's
    /// acknowledgement, in sequence order.
    pub fn events(&self) -> Result<EventOutbox, StoreError> {
        let tree = self.db.open_tree("events").map_err(|e| StoreError {
            path: PathBuf::from("store/events"),
            reason: e.to_string(),
        })?;
        Ok(EventOutbox { tree })
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

/// Sealed telemetry windows not yet acknowledged by the broker.
#[derive(Debug, Clone)]
pub struct Outbox {
    tree: sled::Tree,
}

/// Windows dropped to stay within the budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub windows: u64,
    pub bytes: u64,
}

impl Outbox {
    /// The key of a window: start (big-endian, so sled's order is time
    /// order), then model and version. The same window sealed twice
    /// overwrites itself.
    pub fn key(start: u64, model: &str, version: &str) -> Vec<u8> {
        let mut k = start.to_be_bytes().to_vec();
        k.extend_from_slice(model.as_bytes());
        k.push(0);
        k.extend_from_slice(version.as_bytes());
        k
    }

    /// Stores a window, first dropping the oldest ones while the outbox
    /// would exceed `budget` bytes; flushed before returning. A window
    /// larger than the whole budget is itself dropped.
    pub fn push(&self, key: &[u8], payload: &[u8], budget: u64) -> Result<Dropped, StoreError> {
        let err = |e: sled::Error| StoreError {
            path: PathBuf::from("store/outbox"),
            reason: e.to_string(),
        };
        let mut dropped = Dropped::default();
        if payload.len() as u64 > budget {
            return Ok(Dropped {
                windows: 1,
                bytes: payload.len() as u64,
            });
        }
        let mut used = self.bytes();
        while used + payload.len() as u64 > budget {
            let Some((k, v)) = self.tree.pop_min().map_err(err)? else {
                break;
            };
            let _ = k;
            used = used.saturating_sub(v.len() as u64);
            dropped.windows += 1;
            dropped.bytes += v.len() as u64;
        }
        self.tree.insert(key, payload).map_err(err)?;
        self.tree.flush().map_err(err)?;
        Ok(dropped)
    }

    /// Every stored window, oldest first.
    pub fn oldest_first(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.tree
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    /// Deletes every stored window of `model` (a retired model's local
    /// logs); returns how many.
    pub fn remove_model(&self, model: &str) -> usize {
        let mut prefix = model.as_bytes().to_vec();
        prefix.push(0);
        let keys: Vec<_> = self
            .tree
            .iter()
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.get(8..).is_some_and(|rest| rest.starts_with(&prefix)))
            .collect();
        for k in &keys {
            let _ = self.tree.remove(k);
        }
        let _ = self.tree.flush();
        keys.len()
    }

    /// Forgets an acknowledged window.
    pub fn remove(&self, key: &[u8]) {
        let _ = self.tree.remove(key);
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.tree
            .iter()
            .values()
            .filter_map(|v| v.ok())
            .map(|v| v.len() as u64)
            .sum()
    }
}

/// Events not yet acknowledged by the broker, keyed by their sequence
/// number (big-endian, so sled's order is publication order).
///
/// Design: bounded by count, not bytes: events are small and few (steps of
/// an update, refusals, drops), and the newest say most about the device
/// now, so the oldest go first.
#[derive(Debug, Clone)]
pub struct EventOutbox {
    tree: sled::Tree,
}

impl EventOutbox {
    /// Stores an encoded event, first dropping the oldest while more than
    /// `cap - 1` are stored; flushed before returning. Returns how many
    /// were dropped.
    pub fn push(&self, seq: u64, payload: &[u8], cap: usize) -> Result<u64, StoreError> {
        let err = |e: sled::Error| StoreError {
            path: PathBuf::from("store/events"),
            reason: e.to_string(),
        };
        let mut dropped = 0;
        while self.tree.len() >= cap.max(1) {
            if self.tree.pop_min().map_err(err)?.is_none() {
                break;
            }
            dropped += 1;
        }
        self.tree.insert(seq.to_be_bytes(), payload).map_err(err)?;
        self.tree.flush().map_err(err)?;
        Ok(dropped)
    }

    /// Up to `n` stored events after sequence `after` (exclusive; `None`:
    /// from the oldest), oldest first.
    pub fn after(&self, after: Option<u64>, n: usize) -> Vec<(u64, Vec<u8>)> {
        let range = match after {
            Some(s) => self.tree.range((s.saturating_add(1)).to_be_bytes()..),
            None => self.tree.range::<[u8; 8], _>(..),
        };
        range
            .filter_map(|r| r.ok())
            .filter_map(|(k, v)| {
                let seq = u64::from_be_bytes(<[u8; 8]>::try_from(k.as_ref()).ok()?);
                Some((seq, v.to_vec()))
            })
            .take(n)
            .collect()
    }

    /// Forgets an acknowledged event (durably: an acknowledged event is
    /// not published again after a restart).
    pub fn remove(&self, seq: u64) {
        let _ = self.tree.remove(seq.to_be_bytes());
        let _ = self.tree.flush();
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_outbox_drops_the_oldest_windows_to_stay_within_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let (store, opened) = Store::open(dir.path()).unwrap();
        assert_eq!(opened, Opened::Fine);
        let outbox = store.outbox().unwrap();
        let w = |start: u64| Outbox::key(start, "m", "1");
        for start in 0..5 {
            assert_eq!(
                outbox.push(&w(start), &[0u8; 100], 350).unwrap(),
                Dropped::default()
            );
            if outbox.len() == 3 {
                break;
            }
        }
        assert_eq!(outbox.len(), 3);
        let d = outbox.push(&w(10), &[1u8; 100], 350).unwrap();
        assert_eq!(
            d,
            Dropped {
                windows: 1,
                bytes: 100
            }
        );
        let keys: Vec<_> = outbox.oldest_first().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![w(1), w(2), w(10)]);
        // Larger than the whole budget: itself dropped, nothing else lost.
        let d = outbox.push(&w(11), &[2u8; 400], 350).unwrap();
        assert_eq!(
            d,
            Dropped {
                windows: 1,
                bytes: 400
            }
        );
        assert_eq!(outbox.len(), 3);
        // The same window sealed twice overwrites itself.
        outbox.push(&w(10), &[3u8; 50], 350).unwrap();
        assert_eq!(outbox.len(), 3);
        outbox.remove(&w(1));
        assert_eq!(outbox.bytes(), 150);
        // Sessions and events count up across reopen.
        let s1 = store.next_session().unwrap();
        drop((outbox, store));
        let (store, _) = Store::open(dir.path()).unwrap();
        assert_eq!(store.next_session().unwrap(), s1 + 1);
        assert_eq!(store.outbox().unwrap().len(), 2);
    }

    #[test]
    fn the_event_outbox_keeps_sequence_order_drops_the_oldest_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let events = store.events().unwrap();
        // Inserted out of order (never happens, but order is the key's).
        for seq in [3u64, 1, 2] {
            assert_eq!(events.push(seq, &[seq as u8], 4).unwrap(), 0);
        }
        let seqs = |e: &EventOutbox, after| -> Vec<u64> {
            e.after(after, 100).into_iter().map(|(s, _)| s).collect()
        };
        assert_eq!(seqs(&events, None), vec![1, 2, 3]);
        assert_eq!(seqs(&events, Some(1)), vec![2, 3]);
        assert_eq!(events.after(None, 2).len(), 2);
        // Beyond the cap the oldest go: 1 and 2 for 5 and 6.
        assert_eq!(events.push(4, b"4", 4).unwrap(), 0);
        assert_eq!(events.push(5, b"5", 4).unwrap(), 1);
        assert_eq!(events.push(6, b"6", 4).unwrap(), 1);
        assert_eq!(seqs(&events, None), vec![3, 4, 5, 6]);
        assert_eq!(events.after(Some(5), 10), vec![(6, b"6".to_vec())]);
        events.remove(3);
        events.remove(99);
        drop((events, store));
        let (store, _) = Store::open(dir.path()).unwrap();
        assert_eq!(seqs(&store.events().unwrap(), None), vec![4, 5, 6]);
    }
}
