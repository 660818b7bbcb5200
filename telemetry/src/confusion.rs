//! Ground-truth feedback: a sparse confusion matrix with exact merges.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::InvalidReason;

/// Counts of (predicted class, actual class) pairs from ground-truth feedback.
///
/// Sparse: only the cells that were hit are stored, as a map from
/// `(predicted, actual)` to a non-zero count. A window with no feedback
/// encodes the whole matrix in 2 bytes, and a typical classifier (most
/// pairs on the diagonal, a few confusions) sends a handful of cells
/// instead of the `classes²` a dense matrix would, per segment.
///
/// Classes at or above the recorder's [`crate::ProfileOptions::max_classes`]
/// are counted in the "other" row/column, [`Confusion::OTHER`]. Because two
/// different classes can both land there, the `(OTHER, OTHER)` cell only
/// holds pairs whose classes were *equal*; pairs of different "other"
/// classes are counted in [`Confusion::other_mismatched`]. That keeps
/// [`Confusion::accuracy`] exact whatever the cap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    cells: BTreeMap<(u32, u32), u64>,
    other_mismatched: u64,
}

impl Confusion {
    /// The class index of the "other" row/column (classes at or above the cap).
    pub const OTHER: u32 = u32::MAX;

    /// An empty matrix.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one labelled prediction, class indices already capped by the
    /// caller (see [`Confusion::cap`]). `correct` says whether the uncapped
    /// classes were equal; it only matters for the `(OTHER, OTHER)` cell.
    pub(crate) fn record(&mut self, predicted: u32, actual: u32, correct: bool) {
        if predicted == Self::OTHER && actual == Self::OTHER && !correct {
            self.other_mismatched = self.other_mismatched.saturating_add(1);
        } else {
            let cell = self.cells.entry((predicted, actual)).or_insert(0);
            *cell = cell.saturating_add(1);
        }
    }

    /// The stored index of `class` under a cap of `max_classes` classes:
    /// itself below the cap, [`Confusion::OTHER`] at or above it.
    pub fn cap(class: usize, max_classes: usize) -> u32 {
        if class < max_classes {
            u32::try_from(class).unwrap_or(Self::OTHER)
        } else {
            Self::OTHER
        }
    }

    /// Count of one cell (`predicted`, `actual` as stored: capped indices).
    pub fn count(&self, predicted: u32, actual: u32) -> u64 {
        self.cells.get(&(predicted, actual)).copied().unwrap_or(0)
    }

    /// The non-zero cells, `((predicted, actual), count)`, in index order.
    pub fn cells(&self) -> impl Iterator<Item = ((u32, u32), u64)> + '_ {
        self.cells.iter().map(|(&cell, &count)| (cell, count))
    }

    /// Pairs whose predicted and actual classes were different but both at
    /// or above the class cap (so both "other").
    pub fn other_mismatched(&self) -> u64 {
        self.other_mismatched
    }

    /// Labelled predictions counted.
    pub fn total(&self) -> u64 {
        self.cells
            .values()
            .fold(self.other_mismatched, |acc, c| acc.saturating_add(*c))
    }

    /// Labelled predictions whose predicted class was the actual class.
    pub fn correct(&self) -> u64 {
        self.cells
            .iter()
            .filter(|((p, a), _)| p == a)
            .fold(0u64, |acc, (_, c)| acc.saturating_add(*c))
    }

    /// `correct / total`; `None` without feedback.
    pub fn accuracy(&self) -> Option<f64> {
        let total = self.total();
        (total > 0).then(|| self.correct() as f64 / total as f64)
    }

    /// Whether no feedback was counted.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty() && self.other_mismatched == 0
    }

    /// Adds `other`'s counts cell by cell (saturating): exact, associative
    /// and commutative.
    pub fn merge(&mut self, other: &Self) {
        for (&cell, &count) in &other.cells {
            let mine = self.cells.entry(cell).or_insert(0);
            *mine = mine.saturating_add(count);
        }
        self.other_mismatched = self.other_mismatched.saturating_add(other.other_mismatched);
    }

    /// A decoded matrix stores no zero cell (the encoding stays canonical:
    /// equal counts, equal bytes).
    pub(crate) fn validate(&self) -> Result<(), InvalidReason> {
        match self.cells.iter().find(|(_, count)| **count == 0) {
            Some((&(predicted, actual), _)) => {
                Err(InvalidReason::ZeroConfusionCell { predicted, actual })
            }
            None => Ok(()),
        }
    }
}

/// One ground-truth label for an earlier prediction.
///
/// Labels arrive late (`POST /v1/feedback` by request id): they are counted
/// in the window that is open when they arrive, not the one that served the
/// request, so a window may hold feedback and no requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feedback<'a> {
    /// Class index the model predicted.
    pub predicted: usize,
    /// Class index that was true.
    pub actual: usize,
    /// Caller-supplied segment key (same budget as [`crate::Request::segment`]).
    pub segment: Option<&'a str>,
}
