//! Window encoding: round trips, limits, and garbage that must not panic.

use std::sync::Arc;

use outpost_telemetry::{
    DecodeError, ProfileOptions, ProfileSet, SET_DECODE_LIMIT, WINDOW_DECODE_LIMIT, WindowProfile,
};
use proptest::prelude::*;

use crate::common::{key, normal_reference, numeric_window};

fn sample_window() -> WindowProfile {
    let reference = Arc::new(normal_reference(3, 1_000, 1));
    let rows = (0..700).map(|i| vec![f64::from(i % 17) / 4.0 - 2.0, f64::from(i), -1.0]);
    numeric_window(&reference, key("d1", 0), ProfileOptions::default(), rows)
}

#[test]
fn window_bytes_round_trip() {
    let window = sample_window();
    let bytes = window.to_bytes();
    assert_eq!(bytes[0], 1, "format version byte");
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
    let mut newer = bytes.clone();
    newer[0] = 2;
    assert!(matches!(
        WindowProfile::from_bytes(&newer, WINDOW_DECODE_LIMIT),
        Err(DecodeError::UnsupportedVersion {
            found: 2,
            supported: 1,
            ..
        })
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
        let mut framed = vec![1u8];
        framed.extend_from_slice(&bytes);
        // No panic, and whatever does decode re-encodes to the same value.
        for input in [&framed, &bytes] {
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
