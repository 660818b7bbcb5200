//! Merge laws (proptest) and merge errors.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use outpost_telemetry::{
    ColumnProfile, Confusion, Feedback, MergeError, Profile, ProfileOptions, ProfileSet, Recorder,
    ReferenceProfile, Request, Value, WindowKey, WindowProfile,
};
use proptest::prelude::*;

use crate::common::{key, mixed_reference, normal_reference, numeric_window};

static REFERENCE: LazyLock<Arc<ReferenceProfile>> = LazyLock::new(|| Arc::new(mixed_reference()));

/// One generated request: x, y (None = missing), colour index (3 = unseen), score, latency µs, ok, segment.
type Row = (Option<f64>, Option<f64>, u8, f64, u32, bool, Option<u8>);

fn row() -> impl Strategy<Value = Row> {
    (
        proptest::option::weighted(0.9, -5.0f64..5.0),
        proptest::option::weighted(
            0.9,
            prop_oneof![Just(f64::NAN), Just(f64::INFINITY), 0.0f64..60.0],
        ),
        0u8..6,
        0.0f64..1.0,
        1u32..100_000,
        proptest::bool::weighted(0.9),
        proptest::option::of(0u8..4),
    )
}

/// One generated label: predicted and actual class (4 and 5 are over the
/// cap of 4 classes), segment.
type Label = (u8, u8, Option<u8>);

fn label() -> impl Strategy<Value = Label> {
    (0u8..6, 0u8..6, proptest::option::of(0u8..4))
}

fn window_key() -> impl Strategy<Value = WindowKey> {
    (0u8..3, 0u64..3).prop_map(|(d, w)| key(&format!("d{d}"), w * 300))
}

fn record(key: WindowKey, rows: &[Row]) -> WindowProfile {
    record_with(key, rows, &[])
}

const SEGMENTS: [&str; 4] = ["north", "south", "east", "west"];

/// Records the requests, then the labels (which may name segments that no
/// request named, or come without any request).
fn record_with(key: WindowKey, rows: &[Row], labels: &[Label]) -> WindowProfile {
    let options = ProfileOptions {
        category_cap: 2,
        segment_budget: 2,
        max_classes: 4,
        ..Default::default()
    };
    let mut recorder = Recorder::new(REFERENCE.clone(), key, options).unwrap();
    let colours = ["red", "green", "blue", "mauve", "teal", "ochre"];
    for &(x, y, colour, score, micros, ok, segment) in rows {
        let segment = segment.map(|s| SEGMENTS[usize::from(s)]);
        let inputs = [
            x.map_or(Value::Missing, Value::Number),
            y.map_or(Value::Missing, Value::Number),
            Value::Category(colours[usize::from(colour)]),
        ];
        let outputs = [Value::Number(score)];
        recorder
            .record(&Request {
                inputs: &inputs,
                outputs: if ok { &outputs } else { &[] },
                latency: Duration::from_micros(u64::from(micros)),
                ok,
                confidence: Some(score),
                segment,
            })
            .unwrap();
    }
    for &(predicted, actual, segment) in labels {
        recorder
            .feedback(&Feedback {
                predicted: usize::from(predicted),
                actual: usize::from(actual),
                segment: segment.map(|s| SEGMENTS[usize::from(s)]),
            })
            .unwrap();
    }
    recorder.finish()
}

fn window() -> impl Strategy<Value = WindowProfile> {
    (
        window_key(),
        proptest::collection::vec(row(), 0..40),
        proptest::collection::vec(label(), 0..30),
    )
        .prop_map(|(key, rows, labels)| record_with(key, &rows, &labels))
}

fn confusion() -> impl Strategy<Value = Confusion> {
    proptest::collection::vec(label(), 0..30)
        .prop_map(|labels| record_with(key("c", 0), &[], &labels).profile.feedback)
}

/// The exactly-mergeable part of a profile: everything but the KLL sketches'
/// internal layout (their compaction is randomized), which is replaced by
/// the sketch's count.
fn exact(profile: &Profile) -> (Profile, Vec<u64>) {
    let mut profile = profile.clone();
    let mut sketched = Vec::new();
    for column in &mut profile.columns {
        if let ColumnProfile::Numeric(numeric) = column {
            sketched.push(numeric.kll.take().map_or(0, |k| k.n()));
        }
    }
    (profile, sketched)
}

fn merged(a: &Profile, b: &Profile) -> Profile {
    let mut out = a.clone();
    out.merge(b).unwrap();
    out
}

fn set_of(windows: &[WindowProfile]) -> ProfileSet {
    let mut set = ProfileSet::new();
    windows.iter().cloned().for_each(|w| set.insert(w));
    set
}

fn union(a: &ProfileSet, b: &ProfileSet) -> ProfileSet {
    let mut out = a.clone();
    out.merge(b);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn profile_merge_is_commutative_and_associative(a in window(), b in window(), c in window()) {
        let (a, b, c) = (&a.profile, &b.profile, &c.profile);
        prop_assert_eq!(exact(&merged(a, b)), exact(&merged(b, a)));
        prop_assert_eq!(exact(&merged(&merged(a, b), c)), exact(&merged(a, &merged(b, c))));
    }

    #[test]
    fn set_merge_is_a_semilattice(
        a in proptest::collection::vec(window(), 0..4),
        b in proptest::collection::vec(window(), 0..4),
        c in proptest::collection::vec(window(), 0..4),
    ) {
        let (a, b, c) = (set_of(&a), set_of(&b), set_of(&c));
        prop_assert_eq!(union(&a, &b), union(&b, &a));
        prop_assert_eq!(union(&union(&a, &b), &c), union(&a, &union(&b, &c)));
        prop_assert_eq!(union(&a, &a), a.clone());
        // Duplicates and late arrivals count once: the rollup only depends on
        // the set of distinct windows.
        let twice = union(&union(&a, &b), &a);
        prop_assert_eq!(
            twice.rollup().unwrap().map(|p| exact(&p)),
            union(&a, &b).rollup().unwrap().map(|p| exact(&p))
        );
    }

    #[test]
    fn confusion_merge_is_exact(a in confusion(), b in confusion(), c in confusion()) {
        let merge = |x: &Confusion, y: &Confusion| {
            let mut out = x.clone();
            out.merge(y);
            out
        };
        prop_assert_eq!(merge(&a, &b), merge(&b, &a));
        prop_assert_eq!(merge(&merge(&a, &b), &c), merge(&a, &merge(&b, &c)));
        let ab = merge(&a, &b);
        prop_assert_eq!(ab.total(), a.total() + b.total());
        prop_assert_eq!(ab.correct(), a.correct() + b.correct());
        prop_assert_eq!(merge(&a, &Confusion::new()), a.clone());
    }

    #[test]
    fn feedback_survives_merges_and_rollups(a in window(), b in window()) {
        // Whole-window and per-segment feedback add up exactly.
        let total = merged(&a.profile, &b.profile);
        prop_assert_eq!(
            total.feedback.total(),
            a.profile.feedback.total() + b.profile.feedback.total()
        );
        let segment_labels = |p: &Profile| {
            p.segments.values().chain([&p.segment_overflow]).map(|s| s.feedback.total()).sum::<u64>()
        };
        prop_assert_eq!(segment_labels(&total), segment_labels(&a.profile) + segment_labels(&b.profile));
        // The set counts each window's feedback once, however often it arrives.
        let set = set_of(&[a.clone(), b.clone(), a.clone()]);
        let got = set.rollup().unwrap().map(|p| p.feedback.total()).unwrap_or(0);
        if a.key == b.key {
            // One copy of the window is kept: one of the two counts, not their sum.
            let (x, y) = (a.profile.feedback.total(), b.profile.feedback.total());
            prop_assert!(got == x || got == y, "{got} vs {x}, {y}");
        } else {
            prop_assert_eq!(got, total.feedback.total());
        }
    }

    #[test]
    fn window_bytes_round_trip(w in window()) {
        let decoded = WindowProfile::from_bytes(&w.to_bytes(), 1 << 20).unwrap();
        prop_assert_eq!(decoded, w);
    }
}

#[test]
fn a_duplicate_window_is_counted_once() {
    let rows: Vec<Row> = (0..30)
        .map(|i| (Some(f64::from(i)), Some(1.0), 0, 0.5, 100, true, None))
        .collect();
    let window = record(key("d1", 0), &rows);
    let mut set = ProfileSet::new();
    set.insert(window.clone());
    set.insert(window.clone());
    let other = record(key("d2", 0), &rows);
    set.insert(other);
    assert_eq!(set.len(), 2);
    assert_eq!(set.rollup().unwrap().unwrap().requests, 60);
}

#[test]
fn a_re_counted_window_keeps_the_fuller_copy_whatever_the_order() {
    let rows: Vec<Row> = (0..30)
        .map(|i| (Some(f64::from(i)), None, 1, 0.5, 100, true, None))
        .collect();
    let partial = record(key("d1", 0), &rows[..10]);
    let full = record(key("d1", 0), &rows);
    let (mut first, mut second) = (ProfileSet::new(), ProfileSet::new());
    first.insert(partial.clone());
    first.insert(full.clone());
    second.insert(full);
    second.insert(partial);
    assert_eq!(first, second);
    assert_eq!(first.rollup().unwrap().unwrap().requests, 30);
}

#[test]
fn a_window_re_sent_with_more_feedback_wins_whatever_the_order() {
    let rows: Vec<Row> = (0..10)
        .map(|i| (Some(f64::from(i)), None, 1, 0.5, 100, true, None))
        .collect();
    let labels: Vec<Label> = (0..6).map(|i| (i % 3, 1, Some(0))).collect();
    let early = record_with(key("d1", 0), &rows, &labels[..2]);
    let late = record_with(key("d1", 0), &rows, &labels);
    let (mut first, mut second) = (ProfileSet::new(), ProfileSet::new());
    first.insert(early.clone());
    first.insert(late.clone());
    second.insert(late);
    second.insert(early);
    assert_eq!(first, second);
    let total = first.rollup().unwrap().unwrap();
    assert_eq!(total.feedback.total(), 6);
    assert_eq!(total.segments["north"].feedback.correct(), 2);
}

#[test]
fn merging_profiles_of_different_references_is_an_error_and_changes_nothing() {
    let one = Arc::new(normal_reference(2, 500, 1));
    let two = Arc::new(normal_reference(2, 500, 2));
    let rows = || (0..50).map(|i| vec![f64::from(i), 0.0]);
    let a = numeric_window(&one, key("d", 0), ProfileOptions::default(), rows());
    let b = numeric_window(&two, key("d", 0), ProfileOptions::default(), rows());
    let mut left = a.profile.clone();
    assert!(matches!(
        left.merge(&b.profile),
        Err(MergeError::ReferenceMismatch { .. })
    ));
    assert_eq!(left, a.profile);
    assert!(a.profile.check_against(&one).is_ok());
    assert!(a.profile.check_against(&two).is_err());

    let mut set = ProfileSet::new();
    set.insert(a);
    set.insert(WindowProfile {
        key: key("other", 0),
        ..b
    });
    assert!(set.rollup().is_err());

    // Same reference, but one window without KLL sketches: a shape mismatch.
    let no_kll = ProfileOptions {
        kll_k: None,
        ..Default::default()
    };
    let c = numeric_window(&one, key("d", 300), no_kll, rows());
    let mut left = numeric_window(&one, key("d", 0), ProfileOptions::default(), rows()).profile;
    assert!(matches!(
        left.merge(&c.profile),
        Err(MergeError::ShapeMismatch(_))
    ));
}
