//! Window encoding: round trips, limits, and garbage that must not panic.

use std::sync::Arc;

use outpost_telemetry::{
    Confusion, DecodeError, Feedback, InvalidReason, ProfileOptions, ProfileSet, Recorder,
    SET_DECODE_LIMIT, WINDOW_DECODE_LIMIT, WindowProfile,
};
use proptest::prelude::*;

use crate::common::{key, normal_reference, numeric_window};

fn sample_window() -> WindowProfile {
    let reference = Arc::new(normal_reference(3, 1_000, 1));
    let rows = (0..700).map(|i| vec![f64::from(i % 17) / 4.0 - 2.0, f64::from(i), -1.0]);
    let mut window = numeric_window(&reference, key("d1", 0), ProfileOptions::default(), rows);
    // Feedback, whole-window and in a segment, including the "other" class.
    let mut recorder = Recorder::new(reference, key("d1", 0), ProfileOptions::default()).unwrap();
    for i in 0..50usize {
        let segment = Some(if i % 2 == 0 { "eu" } else { "us" });
        let (predicted, actual) = (i % 4, if i % 5 == 0 { 100 + i } else { i % 4 });
        recorder
            .feedback(&Feedback {
                predicted,
                actual,
                segment,
            })
            .unwrap();
    }
    let labelled = recorder.finish().profile;
    window.profile.feedback = labelled.feedback;
    window.profile.segments = labelled.segments;
    assert!(window.profile.feedback.count(Confusion::OTHER, 0) == 0);
    assert!(
        window
            .profile
            .feedback
            .cells()
            .any(|((_, a), _)| a == Confusion::OTHER)
    );
    window
}

#[test]
fn window_bytes_round_trip() {
    let window = sample_window();
    let bytes = window.to_bytes();
    assert_eq!(bytes[0], 2, "format version byte (2: with feedback)");
    let decoded = WindowProfile::from_bytes(&bytes, WINDOW_DECODE_LIMIT).unwrap();
    assert_eq!(decoded, window);
    assert_eq!(decoded.to_bytes(), bytes);
}

#[test]
fn limits_versions_and_truncation_are_typed_errors() {
    let bytes = sample_window().to_bytes();
    assert!(matches!(
        WindowProfile::from_bytes(&bytes, bytes.len() - 1),
        Err(DecodeError::TooLarge { .. })
    ));
    assert!(matches!(
        WindowProfile::from_bytes(&[], 10),
        Err(DecodeError::Empty { .. })
    ));
    for version in [0, 3] {
        let mut other = bytes.clone();
        other[0] = version;
        let error = WindowProfile::from_bytes(&other, WINDOW_DECODE_LIMIT).unwrap_err();
        assert!(
            matches!(
                error,
                DecodeError::UnsupportedVersion { found, supported: 2, .. } if found == version
            ),
            "{error}"
        );
    }
    // A version 2 body read as version 1 does not mis-decode: the feedback
    // bytes are left over (or break the layout), a typed error.
    let mut as_v1 = bytes.clone();
    as_v1[0] = 1;
    assert!(matches!(
        WindowProfile::from_bytes(&as_v1, WINDOW_DECODE_LIMIT),
        Err(DecodeError::Postcard { .. })
    ));
    for cut in 1..bytes.len() {
        assert!(
            WindowProfile::from_bytes(&bytes[..cut], WINDOW_DECODE_LIMIT).is_err(),
            "cut at {cut}"
        );
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(WindowProfile::from_bytes(&trailing, WINDOW_DECODE_LIMIT).is_err());
}

#[test]
fn a_damaged_kll_image_inside_a_window_is_a_decode_error() {
    let window = sample_window();
    let bytes = window.to_bytes();
    let kll = window.profile.columns[0]
        .kll()
        .unwrap()
        .to_datasketches_bytes();
    let at = bytes
        .windows(kll.len())
        .position(|w| w == kll.as_slice())
        .unwrap();
    let mut damaged = bytes.clone();
    damaged[at + 2] = 0x55; // the DataSketches family byte
    let error = WindowProfile::from_bytes(&damaged, WINDOW_DECODE_LIMIT).unwrap_err();
    assert!(matches!(error, DecodeError::Postcard { .. }), "{error}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2_048)) {
        let framed = |version: u8| [&[version][..], &bytes].concat();
        // No panic, and whatever does decode re-encodes to the same value.
        for input in [&framed(1), &framed(2), &bytes] {
            if let Ok(window) = WindowProfile::from_bytes(input, WINDOW_DECODE_LIMIT) {
                let again = WindowProfile::from_bytes(&window.to_bytes(), WINDOW_DECODE_LIMIT);
                prop_assert_eq!(again.ok(), Some(window));
            }
            if let Ok(set) = ProfileSet::from_bytes(input, SET_DECODE_LIMIT) {
                prop_assert_eq!(ProfileSet::from_bytes(&set.to_bytes(), SET_DECODE_LIMIT).ok(), Some(set));
            }
        }
    }

    #[test]
    fn flipped_bytes_never_panic(index in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let mut bytes = sample_window().to_bytes();
        let i = index.index(bytes.len());
        bytes[i] ^= xor;
        // Either rejected, or decoded into a window that still validates and re-encodes.
        if let Ok(window) = WindowProfile::from_bytes(&bytes, WINDOW_DECODE_LIMIT) {
            prop_assert!(WindowProfile::from_bytes(&window.to_bytes(), WINDOW_DECODE_LIMIT).is_ok());
        }
    }
}

#[test]
fn version_1_windows_and_sets_decode_with_empty_feedback() {
    // Written by the seed example before feedback was added (format 1).
    let v1 = include_bytes!("../fixtures/window-v1.bin");
    assert_eq!(v1[0], 1);
    let window = WindowProfile::from_bytes(v1, WINDOW_DECODE_LIMIT).unwrap();
    assert_eq!(window.key.device, "dev-1");
    assert_eq!(window.profile.requests, 24);
    assert!(window.profile.feedback.is_empty());
    assert_eq!(window.profile.segments["eu"].requests, 12);
    assert!(
        window
            .profile
            .segments
            .values()
            .all(|s| s.feedback.is_empty())
    );
    // Re-encoded, it is a version 2 window with the same counters.
    let again = window.to_bytes();
    assert_eq!(again[0], 2);
    assert_eq!(
        WindowProfile::from_bytes(&again, WINDOW_DECODE_LIMIT).unwrap(),
        window
    );
    // A version 1 set of that one window: version, map length 1, key, profile.
    let set_v1 = [&[1u8, 1][..], &v1[1..]].concat();
    let set = ProfileSet::from_bytes(&set_v1, SET_DECODE_LIMIT).unwrap();
    assert_eq!(set.windows().next().map(|(_, p)| p), Some(&window.profile));
    for cut in 1..v1.len() {
        assert!(WindowProfile::from_bytes(&v1[..cut], WINDOW_DECODE_LIMIT).is_err());
    }
}

#[test]
fn a_zero_confusion_cell_is_invalid() {
    let mut recorder = Recorder::new(
        Arc::new(normal_reference(1, 100, 1)),
        key("d", 0),
        ProfileOptions::default(),
    )
    .unwrap();
    recorder
        .feedback(&Feedback {
            predicted: 3,
            actual: 3,
            segment: None,
        })
        .unwrap();
    let bytes = recorder.finish().to_bytes();
    // The only cell, (3, 3) with count 1, is encoded as the bytes 1 3 3 1
    // (map length, predicted, actual, count), then other_mismatched 0.
    let cell = [1u8, 3, 3, 1, 0];
    let at = bytes.windows(5).position(|w| w == cell).unwrap();
    let mut zero = bytes.clone();
    zero[at + 3] = 0;
    let error = WindowProfile::from_bytes(&zero, WINDOW_DECODE_LIMIT).unwrap_err();
    assert!(
        matches!(
            error,
            DecodeError::Invalid {
                reason: InvalidReason::ZeroConfusionCell {
                    predicted: 3,
                    actual: 3
                },
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn fuzz_seed_corpus_decodes() {
    // The seeds (written by `examples/fuzz_seeds.rs`) must stay valid
    // encodings, or the fuzzers would start from rejected inputs only.
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut seen = 0;
    for (target, decode) in [
        ("window_profile", decode_window as fn(&[u8]) -> bool),
        ("reference_profile", decode_reference),
    ] {
        for entry in std::fs::read_dir(corpus.join(target)).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            assert!(decode(&bytes), "{} does not decode", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 4, "{seen} seeds");
}

fn decode_window(bytes: &[u8]) -> bool {
    outpost_telemetry::WindowProfile::from_bytes(bytes, outpost_telemetry::WINDOW_DECODE_LIMIT)
        .is_ok()
}

fn decode_reference(bytes: &[u8]) -> bool {
    outpost_telemetry::ReferenceProfile::from_bytes(
        bytes,
        outpost_telemetry::REFERENCE_DECODE_LIMIT,
    )
    .is_ok()
}
