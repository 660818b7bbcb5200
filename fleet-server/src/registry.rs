//! The model registry's rules (ARCHITECTURE §9): the lifecycle of a version
//! and who may move it. Pure functions over [`VersionRecord`]; the server
//! loads, applies and stores under one lock, and audits the result.
//!
//! ```text
//! draft ──(approvals met)──▶ approved ──▶ canary ──▶ deployed ──▶ deprecated ──▶ retired
//!   │                          │  ▲          │                       ▲
//!   └──▶ rejected ◀────────────┘  └──────────┘ (canary halted)       │
//!                              approved, canary ─────────────────────┘
//! ```

use std::fmt;
use std::str::FromStr;

use outpost_runtime::manifest::ModelCard;
use serde::{Deserialize, Serialize};

use crate::eval::EvalReport;

/// Where a version is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Draft,
    Approved,
    Canary,
    Deployed,
    Deprecated,
    Retired,
    Rejected,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Draft,
        Status::Approved,
        Status::Canary,
        Status::Deployed,
        Status::Deprecated,
        Status::Retired,
        Status::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Approved => "approved",
            Status::Canary => "canary",
            Status::Deployed => "deployed",
            Status::Deprecated => "deprecated",
            Status::Retired => "retired",
            Status::Rejected => "rejected",
        }
    }

    /// The moves an operator may make from here. `draft → approved` is
    /// not one: only approvals make it.
    pub fn next(self) -> &'static [Status] {
        match self {
            Status::Draft => &[],
            Status::Approved => &[Status::Canary, Status::Deprecated],
            // A halted canary goes back to approved.
            Status::Canary => &[Status::Deployed, Status::Approved, Status::Deprecated],
            Status::Deployed => &[Status::Deprecated],
            Status::Deprecated => &[Status::Retired],
            Status::Retired | Status::Rejected => &[],
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Status, String> {
        Status::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown status {s:?}"))
    }
}

/// What an approval vouches for. A "high" risk version needs a `risk`
/// and a `legal` one among its approvals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalKind {
    Domain,
    Risk,
    Legal,
}

impl ApprovalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalKind::Domain => "domain",
            ApprovalKind::Risk => "risk",
            ApprovalKind::Legal => "legal",
        }
    }
}

impl FromStr for ApprovalKind {
    type Err = String;
    fn from_str(s: &str) -> Result<ApprovalKind, String> {
        match s {
            "domain" => Ok(ApprovalKind::Domain),
            "risk" => Ok(ApprovalKind::Risk),
            "legal" => Ok(ApprovalKind::Legal),
            _ => Err(format!(
                "unknown approval kind {s:?} (domain, risk or legal)"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub actor: String,
    pub kind: ApprovalKind,
    pub at: u64,
    #[serde(default)]
    pub comment: Option<String>,
}

/// One lifecycle move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub from: Option<Status>,
    pub to: Status,
    pub actor: String,
    pub at: u64,
    #[serde(default)]
    pub reason: Option<String>,
}

/// An impact assessment: a member of the package, or uploaded beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    /// `package:<member>` or `uploaded:<file name>`.
    pub source: String,
    pub sha256: String,
    pub length: u64,
}

/// Why a version is marked for retirement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetirementMark {
    pub reason: String,
    pub at: u64,
    pub actor: String,
}

/// A registered model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub name: String,
    pub version: String,
    /// SHA-256 (hex) and length of the `.opk`, also its blob key.
    pub sha256: String,
    pub length: u64,
    pub status: Status,
    pub card: ModelCard,
    pub risk_class: String,
    pub submitted_by: String,
    pub submitted_at: u64,
    #[serde(default)]
    pub approvals: Vec<Approval>,
    #[serde(default)]
    pub history: Vec<Transition>,
    #[serde(default)]
    pub eval: Option<EvalReport>,
    /// Blob key of the release metadata pushed beside the package.
    #[serde(default)]
    pub release_sha256: Option<String>,
    #[serde(default)]
    pub impact_assessment: Option<Document>,
    #[serde(default)]
    pub retirement: Option<RetirementMark>,
}

impl VersionRecord {
    /// When it last entered `status`.
    pub fn entered(&self, status: Status) -> Option<u64> {
        self.history
            .iter()
            .rev()
            .find(|t| t.to == status)
            .map(|t| t.at)
    }
}

/// Approval rules, from the server configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalPolicy {
    /// Distinct approvers (none of them the submitter) a version needs.
    pub required_approvals: u32,
}

impl Default for ApprovalPolicy {
    fn default() -> Self {
        ApprovalPolicy {
            required_approvals: 2,
        }
    }
}

/// Why the registry refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The move is not in the lifecycle; `allowed` lists those that are.
    #[error("{name} {version} is {from}: it cannot move to {to} (from {from}: {allowed})")]
    Transition {
        name: String,
        version: String,
        from: Status,
        to: Status,
        allowed: String,
    },
    /// The submitter tried to approve their own version.
    #[error("{actor} submitted {name} {version} and cannot approve it: another approver must")]
    SelfApproval {
        actor: String,
        name: String,
        version: String,
    },
    /// Approvals and rejections apply to drafts only.
    #[error("{name} {version} is {status}: only a draft can be approved or rejected")]
    NotDraft {
        name: String,
        version: String,
        status: Status,
    },
    /// The same person gave the same kind of approval already.
    #[error("{actor} already gave a {kind} approval to {name} {version}")]
    Duplicate {
        actor: String,
        kind: &'static str,
        name: String,
        version: String,
    },
}

fn allowed_list(from: Status) -> String {
    let next = from.next();
    if next.is_empty() {
        "none".into()
    } else {
        next.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Applies an operator's lifecycle move.
pub fn transition(
    v: &mut VersionRecord,
    to: Status,
    actor: &str,
    now: u64,
    reason: Option<String>,
) -> Result<(), RegistryError> {
    if !v.status.next().contains(&to) {
        return Err(RegistryError::Transition {
            name: v.name.clone(),
            version: v.version.clone(),
            from: v.status,
            to,
            allowed: allowed_list(v.status),
        });
    }
    v.history.push(Transition {
        from: Some(v.status),
        to,
        actor: actor.to_owned(),
        at: now,
        reason,
    });
    v.status = to;
    Ok(())
}

/// What a version still needs before it is approved; empty when done.
pub fn missing_approvals(v: &VersionRecord, policy: &ApprovalPolicy) -> Vec<String> {
    let mut people: Vec<&str> = v.approvals.iter().map(|a| a.actor.as_str()).collect();
    people.sort_unstable();
    people.dedup();
    let mut missing = vec![];
    let need = policy.required_approvals.max(1) as usize;
    if people.len() < need {
        missing.push(format!(
            "{} more approval(s) by different people ({} of {need})",
            need - people.len(),
            people.len()
        ));
    }
    if v.risk_class == "high" {
        for kind in [ApprovalKind::Risk, ApprovalKind::Legal] {
            if !v.approvals.iter().any(|a| a.kind == kind) {
                missing.push(format!("a {} approval (risk class high)", kind.as_str()));
            }
        }
        if v.impact_assessment.is_none() {
            missing.push(
                "an impact assessment (risk class high): put impact_assessment.* in the \
                 package or upload one with `outpost model attach`"
                    .into(),
            );
        }
    }
    missing
}

/// Records `actor`'s approval; moves the draft to approved once nothing
/// is missing. Returns what is still missing.
pub fn approve(
    v: &mut VersionRecord,
    actor: &str,
    kind: ApprovalKind,
    comment: Option<String>,
    now: u64,
    policy: &ApprovalPolicy,
) -> Result<Vec<String>, RegistryError> {
    if v.status != Status::Draft {
        return Err(RegistryError::NotDraft {
            name: v.name.clone(),
            version: v.version.clone(),
            status: v.status,
        });
    }
    if actor == v.submitted_by {
        return Err(RegistryError::SelfApproval {
            actor: actor.to_owned(),
            name: v.name.clone(),
            version: v.version.clone(),
        });
    }
    if v.approvals
        .iter()
        .any(|a| a.actor == actor && a.kind == kind)
    {
        return Err(RegistryError::Duplicate {
            actor: actor.to_owned(),
            kind: kind.as_str(),
            name: v.name.clone(),
            version: v.version.clone(),
        });
    }
    v.approvals.push(Approval {
        actor: actor.to_owned(),
        kind,
        at: now,
        comment,
    });
    let missing = missing_approvals(v, policy);
    if missing.is_empty() {
        v.history.push(Transition {
            from: Some(Status::Draft),
            to: Status::Approved,
            actor: actor.to_owned(),
            at: now,
            reason: Some("approvals complete".into()),
        });
        v.status = Status::Approved;
    }
    Ok(missing)
}

/// Rejects a draft (or an approved version not yet rolled out).
pub fn reject(
    v: &mut VersionRecord,
    actor: &str,
    reason: Option<String>,
    now: u64,
) -> Result<(), RegistryError> {
    if !matches!(v.status, Status::Draft | Status::Approved) {
        return Err(RegistryError::NotDraft {
            name: v.name.clone(),
            version: v.version.clone(),
            status: v.status,
        });
    }
    if actor == v.submitted_by {
        return Err(RegistryError::SelfApproval {
            actor: actor.to_owned(),
            name: v.name.clone(),
            version: v.version.clone(),
        });
    }
    v.history.push(Transition {
        from: Some(v.status),
        to: Status::Rejected,
        actor: actor.to_owned(),
        at: now,
        reason,
    });
    v.status = Status::Rejected;
    Ok(())
}

/// Retirement policy: versions to mark for retirement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RetirementPolicy {
    /// Mark a version deprecated or deployed for longer than this.
    pub max_age_days: Option<u64>,
    /// Mark a version whose measured metric fell below its claim by more
    /// than this (absolute), per its latest evaluation or decay report.
    pub max_decay: Option<f64>,
}

/// Why `v` should be retired under `policy` at `now`, if it should.
pub fn retirement_reason(v: &VersionRecord, policy: &RetirementPolicy, now: u64) -> Option<String> {
    if matches!(v.status, Status::Retired | Status::Rejected | Status::Draft) {
        return None;
    }
    if let Some(days) = policy.max_age_days {
        let since = v.entered(Status::Deployed).unwrap_or(v.submitted_at);
        let age = now.saturating_sub(since) / crate::clock::DAY;
        if age >= days {
            return Some(format!("age: {age} days since deployment (policy {days})"));
        }
    }
    if let (Some(max), Some(eval)) = (policy.max_decay, &v.eval) {
        for m in &eval.metrics {
            if let (Some(c), Some(meas)) = (m.claimed, m.measured)
                && c - meas > max
            {
                return Some(format!(
                    "decay: {} measured {meas:.4}, claimed {c:.4} (policy allows {max})",
                    m.metric
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn draft(risk: &str) -> VersionRecord {
        VersionRecord {
            name: "digits".into(),
            version: "1.0.0".into(),
            sha256: "00".into(),
            length: 1,
            status: Status::Draft,
            card: ModelCard::default(),
            risk_class: risk.into(),
            submitted_by: "sam".into(),
            submitted_at: 0,
            approvals: vec![],
            history: vec![],
            eval: None,
            release_sha256: None,
            impact_assessment: None,
            retirement: None,
        }
    }

    #[test]
    fn two_different_people_approve_and_the_submitter_cannot() {
        let p = ApprovalPolicy::default();
        let mut v = draft("low");
        assert!(matches!(
            approve(&mut v, "sam", ApprovalKind::Domain, None, 1, &p),
            Err(RegistryError::SelfApproval { .. })
        ));
        assert_eq!(
            approve(&mut v, "ann", ApprovalKind::Domain, None, 1, &p)
                .unwrap()
                .len(),
            1
        );
        assert!(approve(&mut v, "ann", ApprovalKind::Domain, None, 1, &p).is_err());
        assert_eq!(v.status, Status::Draft);
        assert!(
            approve(&mut v, "bob", ApprovalKind::Domain, None, 2, &p)
                .unwrap()
                .is_empty()
        );
        assert_eq!(v.status, Status::Approved);
    }

    #[test]
    fn high_risk_needs_risk_legal_and_an_impact_assessment() {
        let p = ApprovalPolicy::default();
        let mut v = draft("high");
        approve(&mut v, "ann", ApprovalKind::Domain, None, 1, &p).unwrap();
        let missing = approve(&mut v, "bob", ApprovalKind::Risk, None, 1, &p).unwrap();
        assert_eq!(missing.len(), 2, "{missing:?}");
        let missing = approve(&mut v, "cat", ApprovalKind::Legal, None, 1, &p).unwrap();
        assert!(missing[0].contains("impact assessment"), "{missing:?}");
        assert_eq!(v.status, Status::Draft);
        v.impact_assessment = Some(Document {
            source: "uploaded:ia.md".into(),
            sha256: "00".into(),
            length: 1,
        });
        assert!(missing_approvals(&v, &p).is_empty());
    }

    #[test]
    fn the_lifecycle_is_enforced() {
        let mut v = draft("low");
        let e = transition(&mut v, Status::Deployed, "op", 1, None).unwrap_err();
        assert!(e.to_string().contains("cannot move to deployed"), "{e}");
        v.status = Status::Approved;
        transition(&mut v, Status::Canary, "op", 1, None).unwrap();
        transition(&mut v, Status::Deployed, "op", 2, None).unwrap();
        assert!(transition(&mut v, Status::Retired, "op", 3, None).is_err());
        transition(&mut v, Status::Deprecated, "op", 3, None).unwrap();
        transition(&mut v, Status::Retired, "op", 4, None).unwrap();
        assert!(Status::Retired.next().is_empty());
        assert_eq!(v.entered(Status::Deployed), Some(2));
    }

    #[test]
    fn retirement_by_age() {
        let mut v = draft("low");
        v.status = Status::Deployed;
        v.history.push(Transition {
            from: Some(Status::Canary),
            to: Status::Deployed,
            actor: "op".into(),
            at: 0,
            reason: None,
        });
        let p = RetirementPolicy {
            max_age_days: Some(30),
            max_decay: None,
        };
        assert!(retirement_reason(&v, &p, 29 * crate::clock::DAY).is_none());
        assert!(
            retirement_reason(&v, &p, 31 * crate::clock::DAY)
                .unwrap()
                .contains("age")
        );
    }
}
