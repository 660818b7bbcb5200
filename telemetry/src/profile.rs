//! Window profiles: what one device saw of one model in one time window.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bins::{ConfidenceHistogram, add_counts};
use crate::codec;
use crate::column::ColumnProfile;
use crate::confusion::Confusion;
use crate::error::{DecodeError, InvalidReason, MergeError};
use crate::latency::LatencyHistogram;
use crate::reference::{ReferenceKind, ReferenceProfile};

/// Identity of a window: merging the same key twice counts it once
/// (see [`crate::ProfileSet`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowKey {
    /// Device id (the TLS client identity when mTLS is on).
    pub device: String,
    /// Model name.
    pub model: String,
    /// Model version (semver text).
    pub version: String,
    /// Window start, Unix seconds.
    pub start: u64,
    /// Window length, seconds.
    pub length: u32,
}

/// Counters of one caller-supplied segment (e.g. a region or customer tier).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentProfile {
    /// Requests in the segment.
    pub requests: u64,
    /// Failed requests in the segment.
    pub errors: u64,
    /// Confidence histogram of the segment.
    pub confidence: ConfidenceHistogram,
    /// Ground-truth feedback that named the segment.
    pub feedback: Confusion,
    /// Exact drift bins per column, in reference order; empty until the
    /// segment's first request (keeps unused segments small).
    pub bins: Vec<Vec<u64>>,
}

impl SegmentProfile {
    fn merge(&mut self, other: &Self) -> Result<(), MergeError> {
        if self.bins.is_empty() {
            self.bins = other.bins.iter().map(|b| vec![0; b.len()]).collect();
        }
        if !other.bins.is_empty() {
            let same = self.bins.len() == other.bins.len()
                && self
                    .bins
                    .iter()
                    .zip(&other.bins)
                    .all(|(a, b)| a.len() == b.len());
            if !same {
                return Err(MergeError::ShapeMismatch("segment bins".into()));
            }
        }
        self.confidence.merge(&other.confidence)?;
        self.feedback.merge(&other.feedback);
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        for (a, b) in self.bins.iter_mut().zip(&other.bins) {
            add_counts(a, b);
        }
        Ok(())
    }
}

/// Mergeable profile content: counters of any number of windows that were
/// counted against the same reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// [`ReferenceProfile::fingerprint`] of the reference counted against.
    pub reference: u64,
    /// Requests seen.
    pub requests: u64,
    /// Requests that failed (engine error, rejected input).
    pub errors: u64,
    /// Latency of every request.
    pub latency: LatencyHistogram,
    /// Prediction confidence of successful requests that reported one.
    pub confidence: ConfidenceHistogram,
    /// Ground-truth feedback received during the window (for any request,
    /// earlier windows' included: labels arrive late).
    pub feedback: Confusion,
    /// One entry per reference column, in reference order.
    pub columns: Vec<ColumnProfile>,
    /// Per-segment counters, at most the profile's segment budget per window.
    pub segments: BTreeMap<String, SegmentProfile>,
    /// Requests whose segment came after the budget was spent, counted together.
    pub segment_overflow: SegmentProfile,
}

impl Profile {
    /// Merges `other` into `self`: counters add exactly (associative and
    /// commutative); KLL sketches merge within their rank error. All or
    /// nothing: on error `self` is unchanged.
    ///
    /// # Errors
    /// [`MergeError::ReferenceMismatch`] for profiles counted on different
    /// references, [`MergeError::ShapeMismatch`] / [`MergeError::LatencyAccuracy`]
    /// for inconsistent shapes, [`MergeError::Sketch`] if a KLL merge overflows.
    pub fn merge(&mut self, other: &Profile) -> Result<(), MergeError> {
        if self.reference != other.reference {
            return Err(MergeError::ReferenceMismatch {
                left: self.reference,
                right: other.reference,
            });
        }
        if self.columns.len() != other.columns.len() {
            return Err(MergeError::ShapeMismatch("column count".into()));
        }
        for (i, (a, b)) in self.columns.iter().zip(&other.columns).enumerate() {
            a.check_merge(b, i)?;
        }
        // Work on a copy so that a late failure (KLL weight overflow, a
        // segment shape) leaves `self` unchanged.
        let mut merged = self.clone();
        merged.latency.merge(&other.latency)?;
        merged.confidence.merge(&other.confidence)?;
        merged.feedback.merge(&other.feedback);
        for (a, b) in merged.columns.iter_mut().zip(&other.columns) {
            a.merge(b)?;
        }
        for (name, segment) in &other.segments {
            merged
                .segments
                .entry(name.clone())
                .or_default()
                .merge(segment)?;
        }
        merged.segment_overflow.merge(&other.segment_overflow)?;
        merged.requests = merged.requests.saturating_add(other.requests);
        merged.errors = merged.errors.saturating_add(other.errors);
        *self = merged;
        Ok(())
    }

    /// Checks the profile against the reference it claims: fingerprint and
    /// per-column shapes. Use before computing statistics on a decoded profile.
    ///
    /// # Errors
    /// [`MergeError::ReferenceMismatch`] or [`MergeError::ShapeMismatch`].
    pub fn check_against(&self, reference: &ReferenceProfile) -> Result<(), MergeError> {
        let fingerprint = reference.fingerprint();
        if self.reference != fingerprint {
            return Err(MergeError::ReferenceMismatch {
                left: self.reference,
                right: fingerprint,
            });
        }
        if self.columns.len() != reference.columns().len() {
            return Err(MergeError::ShapeMismatch("column count".into()));
        }
        for (i, (column, reference)) in self.columns.iter().zip(reference.columns()).enumerate() {
            let fits = match (column, reference.kind()) {
                (ColumnProfile::Numeric(p), ReferenceKind::Numeric(r)) => {
                    p.bins.len() == r.counts.len()
                }
                (ColumnProfile::Categorical(p), ReferenceKind::Categorical(r)) => {
                    p.vocabulary.len() == r.vocabulary.len()
                }
                _ => false,
            };
            if !fits {
                return Err(MergeError::ShapeMismatch(format!(
                    "column {i} vs reference"
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn validate(&self) -> Result<(), InvalidReason> {
        self.latency.validate()?;
        self.confidence.validate()?;
        self.feedback.validate()?;
        self.segments
            .values()
            .chain([&self.segment_overflow])
            .try_for_each(|s| {
                s.confidence.validate()?;
                s.feedback.validate()
            })
    }

    /// Requests plus observations over all columns plus feedback: how much
    /// a copy of a window has seen, used to choose between two copies of
    /// one window (a copy re-sent after more labels arrived wins).
    pub(crate) fn weight(&self) -> u64 {
        let seen = self.requests.saturating_add(self.feedback.total());
        self.columns
            .iter()
            .fold(seen, |acc, c| acc.saturating_add(c.completeness().count))
    }
}

/// Default decode limit for one window: 1 MiB.
pub const WINDOW_DECODE_LIMIT: usize = 1 << 20;

/// A profile of one (device, model, version, window): what a device sends.
/// The protocol's telemetry envelope carries [`WindowProfile::to_bytes`] as
/// opaque `profile` bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowProfile {
    /// Which window this is.
    pub key: WindowKey,
    /// Its counters.
    pub profile: Profile,
}

impl WindowProfile {
    /// Encodes: one format-version byte (2 since feedback was added), then
    /// postcard.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(codec::WINDOW_VERSION, self)
    }

    /// Decodes and validates bytes from a device. Never panics on any input.
    ///
    /// # Errors
    /// [`DecodeError`] when `bytes` is over `limit`, of another format
    /// version, undecodable (including a malformed KLL image), or invalid.
    /// Version 1 windows (from agents older than feedback) decode with
    /// empty feedback.
    pub fn from_bytes(bytes: &[u8], limit: usize) -> Result<Self, DecodeError> {
        let window: Self =
            codec::decode_window::<Self, v1::WindowProfile>("window profile", bytes, limit)?;
        window
            .profile
            .validate()
            .map_err(|reason| DecodeError::Invalid {
                what: "window profile",
                reason,
            })?;
        Ok(window)
    }
}

/// Format version 1: the same profile without feedback. Decoded into the
/// current types with empty [`Confusion`]s.
pub(crate) mod v1 {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::{ColumnProfile, ConfidenceHistogram, Confusion, LatencyHistogram, WindowKey};

    #[derive(Deserialize)]
    pub(crate) struct SegmentProfile {
        requests: u64,
        errors: u64,
        confidence: ConfidenceHistogram,
        bins: Vec<Vec<u64>>,
    }

    impl From<SegmentProfile> for super::SegmentProfile {
        fn from(s: SegmentProfile) -> Self {
            Self {
                requests: s.requests,
                errors: s.errors,
                confidence: s.confidence,
                feedback: Confusion::new(),
                bins: s.bins,
            }
        }
    }

    #[derive(Deserialize)]
    pub(crate) struct Profile {
        reference: u64,
        requests: u64,
        errors: u64,
        latency: LatencyHistogram,
        confidence: ConfidenceHistogram,
        columns: Vec<ColumnProfile>,
        segments: BTreeMap<String, SegmentProfile>,
        segment_overflow: SegmentProfile,
    }

    impl From<Profile> for super::Profile {
        fn from(p: Profile) -> Self {
            Self {
                reference: p.reference,
                requests: p.requests,
                errors: p.errors,
                latency: p.latency,
                confidence: p.confidence,
                feedback: Confusion::new(),
                columns: p.columns,
                segments: p.segments.into_iter().map(|(k, s)| (k, s.into())).collect(),
                segment_overflow: p.segment_overflow.into(),
            }
        }
    }

    #[derive(Deserialize)]
    pub(crate) struct WindowProfile {
        key: WindowKey,
        profile: Profile,
    }

    impl From<WindowProfile> for super::WindowProfile {
        fn from(w: WindowProfile) -> Self {
            Self {
                key: w.key,
                profile: w.profile.into(),
            }
        }
    }
}
