//! Sets of window profiles with idempotent merge (server side).
//!
//! Design: MQTT QoS 1 delivers at least once and devices re-send after a
//! reconnect, so the same window can arrive twice, late, or in any order.
//! A [`ProfileSet`] is keyed by [`WindowKey`]: inserting a window that is
//! already there changes nothing, and merging sets is a map union. That
//! makes merge associative, commutative and idempotent exactly (a join
//! semilattice), which summing counters alone could not be: a sum cannot
//! tell a duplicate from a second window. Statistics run on
//! [`ProfileSet::rollup`], which sums each distinct window once.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{DecodeError, InvalidReason, MergeError};
use crate::profile::{Profile, WindowKey, WindowProfile, v1};

/// Default decode limit for a set: 64 MiB.
pub const SET_DECODE_LIMIT: usize = 64 << 20;

/// Window profiles keyed by window, each counted once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileSet {
    windows: BTreeMap<WindowKey, Profile>,
}

impl ProfileSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a window. A window whose key is already present counts once: if
    /// the two copies differ (a device re-sent a window it had re-counted),
    /// the one with more observations is kept, ties broken by encoding, so
    /// the outcome does not depend on arrival order.
    pub fn insert(&mut self, window: WindowProfile) {
        match self.windows.get_mut(&window.key) {
            Some(existing) => {
                if prefer(&window.profile, existing) == Ordering::Greater {
                    *existing = window.profile;
                }
            }
            None => {
                self.windows.insert(window.key, window.profile);
            }
        }
    }

    /// Merges another set into this one (union by window key).
    pub fn merge(&mut self, other: &ProfileSet) {
        for (key, profile) in &other.windows {
            self.insert(WindowProfile {
                key: key.clone(),
                profile: profile.clone(),
            });
        }
    }

    /// Number of distinct windows.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether the set has no window.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// The windows, in key order.
    pub fn windows(&self) -> impl Iterator<Item = (&WindowKey, &Profile)> {
        self.windows.iter()
    }

    /// Sum of all windows, each counted once, folded in key order; `None`
    /// when empty.
    ///
    /// # Errors
    /// [`MergeError`] when the windows were counted on different references
    /// (e.g. two model versions: filter by version first).
    pub fn rollup(&self) -> Result<Option<Profile>, MergeError> {
        let mut windows = self.windows.values();
        let Some(first) = windows.next() else {
            return Ok(None);
        };
        let mut total = first.clone();
        for profile in windows {
            total.merge(profile)?;
        }
        Ok(Some(total))
    }

    /// Encodes the set (format-version byte, then postcard).
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(codec::WINDOW_VERSION, self)
    }

    /// Decodes and validates a set. Never panics on any input.
    ///
    /// # Errors
    /// [`DecodeError`] as for [`WindowProfile::from_bytes`].
    pub fn from_bytes(bytes: &[u8], limit: usize) -> Result<Self, DecodeError> {
        let set: Self = codec::decode_window::<Self, V1Set>("profile set", bytes, limit)?;
        set.windows
            .values()
            .try_for_each(Profile::validate)
            .map_err(|reason: InvalidReason| DecodeError::Invalid {
                what: "profile set",
                reason,
            })?;
        Ok(set)
    }
}

/// A version-1 set, as older servers wrote it.
type V1Set = BTreeMap<WindowKey, v1::Profile>;

impl From<V1Set> for ProfileSet {
    fn from(windows: V1Set) -> Self {
        ProfileSet {
            windows: windows.into_iter().map(|(k, p)| (k, p.into())).collect(),
        }
    }
}

/// A total order on profiles for choosing between two copies of a window:
/// more observations first, then the larger encoding. Taking the maximum of
/// a total order is associative, commutative and idempotent.
fn prefer(a: &Profile, b: &Profile) -> Ordering {
    a.weight().cmp(&b.weight()).then_with(|| {
        let encode = |p: &Profile| codec::encode(codec::WINDOW_VERSION, p);
        encode(a).cmp(&encode(b))
    })
}
