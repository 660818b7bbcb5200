//! Change windows and freezes (server config): when a rollout may move.
//!
//! A stage advances (and a rollout starts or completes) only at an instant
//! the calendar allows: inside a weekly change window, when any are
//! configured, and outside every freeze. Halting and rolling back are
//! never held: safety does not wait for a change window.

use serde::{Deserialize, Serialize};

use outpost_protocol::trust::UnixSeconds;

const DAY: u64 = 86_400;
const WEEK: u64 = 7 * DAY;

/// Days of the week, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    /// Monday = 0.
    fn index(self) -> u64 {
        self as u64
    }

    /// The weekday of a Unix time (1970-01-01 was a Thursday).
    pub fn of(t: UnixSeconds) -> Weekday {
        const ALL: [Weekday; 7] = [
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
            Weekday::Sat,
            Weekday::Sun,
        ];
        ALL[((t / DAY + 3) % 7) as usize]
    }
}

/// A weekly window in UTC: on each of `days`, from `start` to `end`
/// seconds after midnight (`end` may be 86400; a window does not cross
/// midnight: use two).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeeklyWindow {
    pub days: Vec<Weekday>,
    pub start_secs: u32,
    pub end_secs: u32,
}

impl WeeklyWindow {
    fn contains(&self, t: UnixSeconds) -> bool {
        let second = t % DAY;
        self.days.contains(&Weekday::of(t))
            && second >= u64::from(self.start_secs)
            && second < u64::from(self.end_secs)
    }

    /// Starts of this window within `[from, from + 8 days)`.
    fn starts_after(&self, from: UnixSeconds) -> impl Iterator<Item = UnixSeconds> + '_ {
        // Monday 00:00 of `from`'s week.
        let week = (from - from % DAY).saturating_sub(Weekday::of(from).index() * DAY);
        (0..2u64).flat_map(move |w| {
            self.days
                .iter()
                .map(move |d| week + w * WEEK + d.index() * DAY + u64::from(self.start_secs))
        })
    }
}

/// A freeze: no rollout moves in `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    pub start: UnixSeconds,
    pub end: UnixSeconds,
    #[serde(default)]
    pub reason: String,
}

/// When rollouts may move.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Calendar {
    /// Weekly change windows; empty means any time.
    #[serde(default)]
    pub change_windows: Vec<WeeklyWindow>,
    #[serde(default)]
    pub freezes: Vec<Freeze>,
}

impl Calendar {
    /// The freeze `t` is in, if any.
    pub fn freeze_at(&self, t: UnixSeconds) -> Option<&Freeze> {
        self.freezes.iter().find(|f| f.start <= t && t < f.end)
    }

    /// Whether a rollout may move at `t`.
    pub fn allows(&self, t: UnixSeconds) -> bool {
        self.freeze_at(t).is_none()
            && (self.change_windows.is_empty()
                || self
                    .change_windows
                    .iter()
                    .any(|w| w.start_secs < w.end_secs && w.contains(t)))
    }

    /// The first instant at or after `t` that [`Calendar::allows`], looking
    /// up to a year ahead; `None` if there is none (e.g. no change window
    /// has a day, or a freeze covers the year).
    pub fn next_allowed(&self, t: UnixSeconds) -> Option<UnixSeconds> {
        let horizon = t.saturating_add(366 * DAY);
        let mut at = t;
        // Each step jumps to a point where the answer may change: the end
        // of the freeze we are in, or the next window start.
        while at <= horizon {
            if self.allows(at) {
                return Some(at);
            }
            let next = if let Some(f) = self.freeze_at(at) {
                f.end
            } else {
                self.change_windows
                    .iter()
                    .filter(|w| w.start_secs < w.end_secs)
                    .flat_map(|w| w.starts_after(at))
                    .filter(|&s| s > at)
                    .min()?
            };
            at = next.max(at + 1);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekdays_and_windows() {
        assert_eq!(Weekday::of(0), Weekday::Thu);
        assert_eq!(Weekday::of(4 * DAY), Weekday::Mon);
        let cal = Calendar {
            change_windows: vec![WeeklyWindow {
                days: vec![Weekday::Mon, Weekday::Tue],
                start_secs: 9 * 3_600,
                end_secs: 17 * 3_600,
            }],
            freezes: vec![],
        };
        let day = 20_000 * DAY;
        let monday = day + (7 - Weekday::of(day).index()) % 7 * DAY;
        assert!(!cal.allows(monday + 8 * 3_600));
        assert!(cal.allows(monday + 9 * 3_600));
        assert!(!cal.allows(monday + 17 * 3_600));
        assert_eq!(cal.next_allowed(monday + 3_600), Some(monday + 9 * 3_600));
        // Tuesday evening → next Monday 09:00.
        assert_eq!(
            cal.next_allowed(monday + DAY + 18 * 3_600),
            Some(monday + WEEK + 9 * 3_600)
        );
    }

    #[test]
    fn freezes_hold_until_they_end() {
        let cal = Calendar {
            change_windows: vec![],
            freezes: vec![Freeze {
                start: 1_000,
                end: 5_000,
                reason: "holiday".into(),
            }],
        };
        assert!(cal.allows(999) && !cal.allows(1_000) && cal.allows(5_000));
        assert_eq!(cal.next_allowed(2_000), Some(5_000));
        let never = Calendar {
            change_windows: vec![WeeklyWindow {
                days: vec![],
                start_secs: 0,
                end_secs: 10,
            }],
            freezes: vec![],
        };
        assert_eq!(never.next_allowed(0), None);
    }
}
