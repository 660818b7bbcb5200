//! Merge laws (proptest) and merge errors.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use outpost_telemetry::{
    ColumnProfile, MergeError, Profile, ProfileOptions, ProfileSet, Recorder, ReferenceProfile,
    Request, Value, WindowKey, WindowProfile,
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

fn window_key() -> impl Strategy<Value = WindowKey> {
    (0u8..3, 0u64..3).prop_map(|(d, w)| key(&format!("d{d}"), w * 300))
}

fn record(key: WindowKey, rows: &[Row]) -> WindowProfile {
    let options = ProfileOptions {
        category_cap: 2,
        segment_budget: 2,
        ..Default::default()
    };
    let mut recorder = Recorder::new(REFERENCE.clone(), key, options).unwrap();
    let colours = ["red", "green", "blue", "mauve", "teal", "ochre"];
    for &(x, y, colour, score, micros, ok, segment) in rows {
        let segment = segment.map(|s| ["north", "south", "east", "west"][usize::from(s)]);
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
    recorder.finish()
}

fn window() -> impl Strategy<Value = WindowProfile> {
    (window_key(), proptest::collection::vec(row(), 0..40))
        .prop_map(|(key, rows)| record(key, &rows))
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
