//! API tokens and roles.
//!
//! A token is `outpost_<id>_<secret>`; the server keeps only the SHA-256
//! of the whole string, so a copy of the store yields no usable token.
//! Roles are duties, not a ladder: an approver approves but does not push
//! or deploy, an operator pushes and deploys but does not approve (so one
//! person cannot carry a model to the fleet alone); admin can do all.

use std::fmt;
use std::str::FromStr;

use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read everything (registry, inventory, audit).
    Viewer,
    /// Viewer, plus push versions, move them through canary, deployment,
    /// deprecation and retirement, attach documents and label devices.
    Operator,
    /// Viewer, plus approve or reject versions.
    Approver,
    /// Everything, including tokens.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Operator, Role::Approver, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may take `action`.
    pub fn allows(self, action: Permission) -> bool {
        match action {
            Permission::Read => true,
            Permission::Operate => matches!(self, Role::Operator | Role::Admin),
            Permission::Approve => matches!(self, Role::Approver | Role::Admin),
            Permission::Admin => self == Role::Admin,
        }
    }

    /// The roles that may take `action`, for error messages.
    pub fn allowed_for(action: Permission) -> Vec<&'static str> {
        Role::ALL
            .into_iter()
            .filter(|r| r.allows(action))
            .map(Role::as_str)
            .collect()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?} (viewer, operator, approver or admin)"))
    }
}

/// The kinds of call the API checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Any read.
    Read,
    /// Push, lifecycle moves, documents, device labels.
    Operate,
    /// Approve or reject a version.
    Approve,
    /// Tokens.
    Admin,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Operate => "operate",
            Permission::Approve => "approve",
            Permission::Admin => "admin",
        }
    }
}

/// A stored token: who it names, its role, the SHA-256 of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Short public id (also inside the token string), for listing and
    /// revoking.
    pub id: String,
    /// The person or system acting with it: the actor in audit entries and
    /// approvals.
    pub name: String,
    pub role: Role,
    /// SHA-256 (hex) of the token string.
    pub sha256: String,
    pub created_at: u64,
    pub created_by: String,
    #[serde(default)]
    pub revoked_at: Option<u64>,
}

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The system random source failed.
    #[error("no randomness for a token")]
    Random,
    /// Names are 1–64 characters of letters, digits, `-_.@`.
    #[error("token name {0:?}: use 1–64 of A–Z a–z 0–9 - _ . @")]
    BadName(String),
}

/// SHA-256 (hex) of a token string.
pub fn hash_token(token: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

/// A new token for `name` with `role`: the string to hand over (shown
/// once) and the record to store.
pub fn new_token(
    name: &str,
    role: Role,
    created_by: &str,
    now: u64,
) -> Result<(String, TokenRecord), TokenError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if !ok {
        return Err(TokenError::BadName(name.to_owned()));
    }
    let rng = ring::rand::SystemRandom::new();
    let mut id = [0u8; 4];
    let mut secret = [0u8; 24];
    rng.fill(&mut id).map_err(|_| TokenError::Random)?;
    rng.fill(&mut secret).map_err(|_| TokenError::Random)?;
    let id = hex::encode(id);
    let token = format!("outpost_{id}_{}", hex::encode(secret));
    let record = TokenRecord {
        id,
        name: name.to_owned(),
        role,
        sha256: hash_token(&token),
        created_at: now,
        created_by: created_by.to_owned(),
        revoked_at: None,
    };
    Ok((token, record))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn roles_are_duties_not_a_ladder() {
        assert!(Role::Operator.allows(Permission::Operate));
        assert!(!Role::Operator.allows(Permission::Approve));
        assert!(Role::Approver.allows(Permission::Approve));
        assert!(!Role::Approver.allows(Permission::Operate));
        assert!(!Role::Viewer.allows(Permission::Operate));
        assert!(
            Role::ALL
                .iter()
                .all(|r| Role::Admin >= *r || r.allows(Permission::Read))
        );
        assert_eq!(Role::allowed_for(Permission::Admin), vec!["admin"]);
    }

    #[test]
    fn tokens_are_stored_as_hashes_only() {
        let (token, rec) = new_token("alice", Role::Admin, "bootstrap", 1).unwrap();
        assert!(token.starts_with(&format!("outpost_{}_", rec.id)));
        assert_eq!(rec.sha256, hash_token(&token));
        assert!(!serde_json::to_string(&rec).unwrap().contains(&token));
        assert!(new_token("bad name", Role::Viewer, "x", 1).is_err());
    }
}
