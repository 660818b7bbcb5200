//! The director role (ARCHITECTURE §8): the fleet server's online key
//! signs deployment directives. The server holds this key only; release
//! and root keys stay offline with their holders.
//!
//! Sequences are fleet-wide and strictly increasing (a device acts only on
//! a sequence above the last it accepted), so they are allocated here,
//! under a lock, and persisted before the directive leaves.

use std::path::Path;
use std::sync::{Arc, Mutex};

use outpost_protocol::messages::Command;
use outpost_protocol::trust::keys::{self, KeyError, SigningKey};
use outpost_protocol::trust::{
    Directive, DirectiveAction, GraceAction, OfflineGrace, ReleaseMetadata, Role, RolloutStage,
    Selector, Signed,
};

use crate::store::{Store, StoreError};

/// Where the last allocated sequence is kept in the store's state.
pub const SEQUENCE_KEY: &str = "director/sequence";

/// Why a directive was not issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectorError {
    /// The server was started without `--director-key`.
    #[error("no director key: start `outpost serve` with --director-key director.pk8")]
    NoKey,
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Signs `directive` with the director key.
pub fn sign_directive(
    key: &SigningKey,
    directive: &Directive,
) -> Result<Signed<Directive>, KeyError> {
    keys::sign(directive, Role::Director, &[key])
}

/// The director: its key and the fleet's sequence counter.
#[derive(Debug, Clone)]
pub struct Director {
    key: Arc<SigningKey>,
    store: Arc<dyn Store>,
    lock: Arc<Mutex<()>>,
}

impl Director {
    /// Loads `director.pk8` (as written by `outpost keys init`).
    pub fn load(path: &Path, store: Arc<dyn Store>) -> Result<Director, KeyError> {
        Ok(Director {
            key: Arc::new(SigningKey::read(path)?),
            store,
            lock: Arc::new(Mutex::new(())),
        })
    }

    pub fn key_id(&self) -> String {
        self.key.key_id().to_hex()
    }

    /// The next fleet-wide sequence number, persisted before it is used.
    pub fn next_sequence(&self) -> Result<u64, StoreError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let last = self
            .store
            .get_state(SEQUENCE_KEY)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let next = last + 1;
        self.store.put_state(SEQUENCE_KEY, &next.to_be_bytes())?;
        self.store.flush()?;
        Ok(next)
    }

    /// Signs a directive whose sequence the caller allocated with
    /// [`Director::next_sequence`] (the rollout controller journals it first).
    pub fn sign(&self, directive: &Directive) -> Result<Signed<Directive>, KeyError> {
        sign_directive(&self.key, directive)
    }

    /// Issues a signed directive valid for `ttl_secs` from `now`.
    pub fn issue(
        &self,
        selector: Selector,
        action: DirectiveAction,
        rollout: Option<RolloutStage>,
        now: u64,
        ttl_secs: u64,
    ) -> Result<Signed<Directive>, DirectorError> {
        let directive = Directive {
            sequence: self.next_sequence()?,
            selector,
            action,
            rollout,
            issued_at: now,
            expires: now.saturating_add(ttl_secs),
            offline_grace: OfflineGrace {
                max_offline_secs: 3_600,
                then: GraceAction::RollBack,
            },
        };
        Ok(sign_directive(&self.key, &directive)?)
    }

    /// A `…/commands` payload for a signed directive.
    pub fn command(
        directive: Signed<Directive>,
        release: Option<Signed<ReleaseMetadata>>,
        artifact_url: Option<String>,
    ) -> Command {
        Command {
            directive,
            release,
            artifact_url,
        }
    }
}
