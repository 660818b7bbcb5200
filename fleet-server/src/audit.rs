//! The append-only, hash-chained audit log (ARCHITECTURE §9).
//!
//! Entry `n` stores `hash = SHA-256(prev ‖ "\n" ‖ JSON{seq, at, actor,
//! action, details})` where `prev` is entry `n-1`'s hash (64 zeros for the
//! first). Editing an entry breaks its hash; removing or reordering breaks
//! the numbering and the chain; removing the newest entries is caught by
//! the head (sequence and hash of the newest entry) kept apart in the
//! store's state. Anchor the head that `outpost audit verify` prints
//! somewhere else to catch a rewrite of the whole log.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::{Store, StoreError};

/// The hash before the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Where the head lives in the store's state.
pub const HEAD_KEY: &str = "audit/head";

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 1, 2, 3, … without gaps.
    pub seq: u64,
    /// Unix seconds.
    pub at: u64,
    /// Token name of who acted (`system` for the server itself).
    pub actor: String,
    /// What happened, e.g. `version.push`, `version.approve`, `token.create`.
    pub action: String,
    pub details: Value,
    /// The previous entry's hash.
    pub prev: String,
    pub hash: String,
}

/// The hash an entry must carry.
pub fn entry_hash(
    prev: &str,
    seq: u64,
    at: u64,
    actor: &str,
    action: &str,
    details: &Value,
) -> String {
    let body = serde_json::json!({
        "seq": seq, "at": at, "actor": actor, "action": action, "details": details,
    });
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(prev.as_bytes());
    ctx.update(b"\n");
    ctx.update(body.to_string().as_bytes());
    hex::encode(ctx.finish())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
}

/// What `verify` found wrong first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "problem")]
#[non_exhaustive]
pub enum AuditProblem {
    /// The entry's content no longer matches its hash.
    #[error("audit entry {seq} was edited: its hash does not match its content")]
    Edited { seq: u64 },
    /// The entry does not follow the one before it.
    #[error("audit entry {seq} is out of order (found at position {position})")]
    Reordered { seq: u64, position: u64 },
    /// Entries are missing before this position.
    #[error("audit entry {missing} was removed")]
    Removed { missing: u64 },
    /// The chain link to the previous entry is broken.
    #[error("audit entry {seq} does not chain to entry {}", .seq - 1)]
    Unchained { seq: u64 },
}

/// The result of a clean verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    pub entries: u64,
    /// Hash of the newest entry (anchor it elsewhere).
    pub head: String,
}

/// Checks the chain of `entries` (in storage order) against the stored
/// head.
pub fn verify_entries(
    entries: &[AuditEntry],
    head: Option<(u64, &str)>,
) -> Result<Verified, AuditProblem> {
    let mut prev = GENESIS.to_owned();
    for (i, e) in entries.iter().enumerate() {
        let position = i as u64 + 1;
        if e.seq != position {
            // Later entries present, an earlier one gone: removal. An
            // entry from elsewhere in the log: reordering.
            let seen_later = entries[i..].iter().all(|x| x.seq > position);
            return Err(
                if seen_later && !entries.iter().any(|x| x.seq == position) {
                    AuditProblem::Removed { missing: position }
                } else {
                    AuditProblem::Reordered {
                        seq: e.seq,
                        position,
                    }
                },
            );
        }
        if entry_hash(&prev, e.seq, e.at, &e.actor, &e.action, &e.details) != e.hash {
            return Err(if e.prev != prev {
                AuditProblem::Unchained { seq: e.seq }
            } else {
                AuditProblem::Edited { seq: e.seq }
            });
        }
        prev = e.hash.clone();
    }
    let n = entries.len() as u64;
    if let Some((seq, hash)) = head {
        if seq > n {
            return Err(AuditProblem::Removed { missing: n + 1 });
        }
        if seq == n && hash != prev {
            return Err(AuditProblem::Edited { seq });
        }
    }
    Ok(Verified {
        entries: n,
        head: prev,
    })
}

/// Appends entries under a lock, so numbering and chaining never race.
#[derive(Debug, Clone)]
pub struct AuditLog {
    store: Arc<dyn Store>,
    lock: Arc<Mutex<()>>,
}

impl AuditLog {
    pub fn new(store: Arc<dyn Store>) -> AuditLog {
        AuditLog {
            store,
            lock: Arc::new(Mutex::new(())),
        }
    }

    fn head(&self) -> Result<Option<Head>, StoreError> {
        self.store
            .get_state(HEAD_KEY)?
            .map(|b| {
                serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt {
                    key: HEAD_KEY.into(),
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// Appends one entry and moves the head.
    pub fn append(
        &self,
        now: u64,
        actor: &str,
        action: &str,
        details: Value,
    ) -> Result<AuditEntry, StoreError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let (seq, prev) = match self.head()? {
            Some(h) => (h.seq + 1, h.hash),
            None => (1, GENESIS.to_owned()),
        };
        let hash = entry_hash(&prev, seq, now, actor, action, &details);
        let entry = AuditEntry {
            seq,
            at: now,
            actor: actor.to_owned(),
            action: action.to_owned(),
            details,
            prev,
            hash: hash.clone(),
        };
        self.store.put_audit(&entry)?;
        let head = serde_json::to_vec(&Head { seq, hash })
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        self.store.put_state(HEAD_KEY, &head)?;
        Ok(entry)
    }

    /// Every entry, oldest first.
    pub fn entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        self.store.audit_entries()
    }

    /// Verifies the whole log; the outer error is the store's.
    pub fn verify(&self) -> Result<Result<Verified, AuditProblem>, StoreError> {
        let entries = self.store.audit_entries()?;
        let head = self.head()?;
        Ok(verify_entries(
            &entries,
            head.as_ref().map(|h| (h.seq, h.hash.as_str())),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn chain(n: u64) -> Vec<AuditEntry> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let details = serde_json::json!({"n": seq});
                let hash = entry_hash(&prev, seq, seq * 10, "alice", "test", &details);
                let e = AuditEntry {
                    seq,
                    at: seq * 10,
                    actor: "alice".into(),
                    action: "test".into(),
                    details,
                    prev: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                e
            })
            .collect()
    }

    /// Entries go through the store as JSON text; floats in their details
    /// (gate statistics) must read back bit for bit or the chain breaks.
    /// Found by `outpost audit verify` after `outpost demo`.
    #[test]
    fn floats_in_details_survive_the_store_round_trip() {
        let mut prev = GENESIS.to_owned();
        let mut entries = vec![];
        for (seq, x) in [
            0.5219828645081172_f64,
            -4.454306296433964e-16,
            0.1 + 0.2,
            3.3e-300,
        ]
        .into_iter()
        .enumerate()
        {
            let seq = seq as u64 + 1;
            let details = serde_json::json!({"statistic": x, "bounds": [x / 3.0, x * 7.0]});
            let hash = entry_hash(&prev, seq, 1, "controller", "rollout.advance", &details);
            let e = AuditEntry {
                seq,
                at: 1,
                actor: "controller".into(),
                action: "rollout.advance".into(),
                details,
                prev: prev.clone(),
                hash: hash.clone(),
            };
            prev = hash;
            let text = serde_json::to_string(&e).unwrap();
            entries.push(serde_json::from_str::<AuditEntry>(&text).unwrap());
        }
        assert!(verify_entries(&entries, Some((4, &prev))).is_ok());
    }

    #[test]
    fn an_intact_chain_verifies_and_each_tampering_is_named() {
        let c = chain(4);
        let head = c[3].hash.clone();
        let v = verify_entries(&c, Some((4, &head))).unwrap();
        assert_eq!((v.entries, v.head.as_str()), (4, head.as_str()));

        let mut edited = c.clone();
        edited[1].details = serde_json::json!({"n": 99});
        assert_eq!(
            verify_entries(&edited, Some((4, &head))),
            Err(AuditProblem::Edited { seq: 2 })
        );
        let mut reordered = c.clone();
        reordered.swap(1, 2);
        assert!(matches!(
            verify_entries(&reordered, Some((4, &head))),
            Err(AuditProblem::Reordered {
                seq: 3,
                position: 2
            })
        ));
        let mut removed = c.clone();
        removed.remove(1);
        assert_eq!(
            verify_entries(&removed, Some((4, &head))),
            Err(AuditProblem::Removed { missing: 2 })
        );
        let truncated = c[..3].to_vec();
        assert_eq!(
            verify_entries(&truncated, Some((4, &head))),
            Err(AuditProblem::Removed { missing: 4 })
        );
    }
}
