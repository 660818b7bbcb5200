//! Persistence behind one trait, [`Store`], so that the sled store used by
//! default ([`SledStore`]) can be joined by a PostgreSQL one later without
//! touching the server.
//!
//! Design: the trait speaks in whole records (JSON-serializable structs),
//! never in sled trees or SQL rows; read-modify-write sequences are
//! serialized by the caller (the server holds one registry lock), so a
//! backend needs no transactions beyond single-key writes, plus the one
//! insert-if-absent of [`Store::put_window`] that makes telemetry
//! idempotent.

mod sled_store;

use std::fmt;

use outpost_protocol::messages::TelemetryWindow;
use outpost_protocol::topic::DeviceId;
use serde::{Deserialize, Serialize};

pub use sled_store::SledStore;

use crate::audit::AuditEntry;
use crate::auth::TokenRecord;
use crate::inventory::DeviceRecord;
use crate::registry::VersionRecord;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened (locked by a running server, or
    /// damaged): stop the other process, or point `--data-dir` elsewhere.
    #[error("cannot open the store at {path}: {reason}")]
    Open { path: String, reason: String },
    /// A read or write failed.
    #[error("store: {0}")]
    Backend(String),
    /// A stored record does not decode (written by a newer build, or
    /// edited by hand).
    #[error("store: record {key:?} does not decode: {reason}")]
    Corrupt { key: String, reason: String },
}

/// One stored telemetry window and who sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowRecord {
    pub device: DeviceId,
    /// When the server stored it (Unix seconds).
    pub received_at: u64,
    pub window: TelemetryWindow,
}

impl WindowRecord {
    /// The idempotence key of ARCHITECTURE §5/§7: (device, model, window).
    pub fn key(&self) -> String {
        window_key(
            &self.window.model.name,
            &self.window.model.version,
            self.device.as_str(),
            self.window.window_start,
        )
    }
}

/// Key layout shared by backends: model, version, device, then the window
/// start zero-padded so byte order is time order.
pub(crate) fn window_key(model: &str, version: &str, device: &str, start: u64) -> String {
    format!("{model}\u{0}{version}\u{0}{device}\u{0}{start:020}")
}

/// Which windows [`Store::windows`] returns: one model (optionally one
/// version, one device) whose window starts in `[from, to)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowQuery {
    pub model: String,
    pub version: Option<String>,
    pub device: Option<DeviceId>,
    pub from: Option<u64>,
    pub to: Option<u64>,
}

impl WindowQuery {
    pub(crate) fn matches(&self, r: &WindowRecord) -> bool {
        let w = &r.window;
        w.model.name == self.model
            && self.version.as_ref().is_none_or(|v| *v == w.model.version)
            && self.device.as_ref().is_none_or(|d| *d == r.device)
            && self.from.is_none_or(|f| w.window_start >= f)
            && self.to.is_none_or(|t| w.window_start < t)
    }
}

/// Everything the fleet server persists.
pub trait Store: Send + Sync + fmt::Debug {
    /// Stores bytes under their SHA-256 (lower-case hex), which it returns;
    /// storing the same bytes again is a no-op.
    fn put_blob(&self, bytes: &[u8]) -> Result<String, StoreError>;
    fn get_blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Inserts or replaces a model version (keyed by name and version).
    fn put_version(&self, v: &VersionRecord) -> Result<(), StoreError>;
    fn get_version(&self, name: &str, version: &str) -> Result<Option<VersionRecord>, StoreError>;
    /// Every version, ordered by name then registration order of the key.
    fn list_versions(&self) -> Result<Vec<VersionRecord>, StoreError>;

    /// Inserts or replaces a token (keyed by the SHA-256 of its secret;
    /// the secret itself is never stored).
    fn put_token(&self, t: &TokenRecord) -> Result<(), StoreError>;
    fn token_by_hash(&self, sha256: &str) -> Result<Option<TokenRecord>, StoreError>;
    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;

    fn put_device(&self, d: &DeviceRecord) -> Result<(), StoreError>;
    fn get_device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError>;
    fn list_devices(&self) -> Result<Vec<DeviceRecord>, StoreError>;

    /// Stores a window unless one with the same (device, model, version,
    /// window start) is there: `Ok(false)` for a redelivery, which is not
    /// stored again.
    fn put_window(&self, w: &WindowRecord) -> Result<bool, StoreError>;
    /// Windows matching `q`, in (device, window start) order.
    fn windows(&self, q: &WindowQuery) -> Result<Vec<WindowRecord>, StoreError>;

    /// Writes audit entry `e.seq` (the audit log chains and numbers them).
    fn put_audit(&self, e: &AuditEntry) -> Result<(), StoreError>;
    /// Every audit entry in storage order (by sequence number).
    fn audit_entries(&self) -> Result<Vec<AuditEntry>, StoreError>;

    /// Opaque state for other components (the rollout controller, the
    /// director's sequence counter, the audit head), by key.
    fn put_state(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}
