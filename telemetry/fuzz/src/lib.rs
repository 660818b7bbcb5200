//! Shared checks of the telemetry fuzz targets: a decoder never panics, and
//! whatever it accepts is usable (re-encodes to bytes it accepts again, and
//! the statistics and merges that a server runs on it do not panic).

use outpost_telemetry::{
    DriftOptions, ProfileSet, REFERENCE_DECODE_LIMIT, ReferenceKind, ReferenceProfile,
    WINDOW_DECODE_LIMIT, WindowProfile, accuracy_difference, chi_square, jensen_shannon, kolmogorov_smirnov,
    mann_whitney, psi, wasserstein,
};

/// A window profile as a server receives it from a device.
pub fn window_profile(data: &[u8]) {
    let Ok(window) = WindowProfile::from_bytes(data, WINDOW_DECODE_LIMIT) else {
        return;
    };
    let bytes = window.to_bytes();
    let again = WindowProfile::from_bytes(&bytes, usize::MAX).expect("an accepted window re-decodes");
    assert_eq!(again.to_bytes(), bytes, "re-encoding is stable");
    // What the server does next: deduplicate, roll up, merge with itself.
    let mut set = ProfileSet::new();
    set.insert(window.clone());
    set.insert(again);
    let _ = set.rollup();
    let mut doubled = window.profile.clone();
    let _ = doubled.merge(&window.profile);
    let options = DriftOptions::default();
    let feedback = &window.profile.feedback;
    let _ = (feedback.accuracy(), accuracy_difference(feedback, feedback, &options));
    for column in &window.profile.columns {
        let bins = column.bins();
        let _ = psi(&bins, &bins, &options);
        let _ = chi_square(&bins, &bins, &options);
        if let Some(kll) = column.kll() {
            let _ = kolmogorov_smirnov(kll, kll, &options);
            let _ = wasserstein(kll, kll, &options);
            let _ = mann_whitney(kll, kll, &options);
        }
    }
}

/// A reference profile as read from a model package.
pub fn reference_profile(data: &[u8]) {
    let Ok(reference) = ReferenceProfile::from_bytes(data, REFERENCE_DECODE_LIMIT) else {
        return;
    };
    let bytes = reference.to_bytes();
    let again =
        ReferenceProfile::from_bytes(&bytes, usize::MAX).expect("an accepted reference re-decodes");
    assert_eq!(again.to_bytes(), bytes, "re-encoding is stable");
    assert_eq!(again.fingerprint(), reference.fingerprint());
    let options = DriftOptions::default();
    for column in reference.columns() {
        let _ = jensen_shannon(column.bins(), column.bins(), &options);
        if let ReferenceKind::Numeric(numeric) = column.kind() {
            let _ = kolmogorov_smirnov(numeric.kll(), numeric.kll(), &options);
            let _ = numeric.edges().locate(0.0);
        }
    }
}
