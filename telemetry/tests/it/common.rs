//! Shared helpers: seeded data, small references, windows.

use std::sync::Arc;
use std::time::Duration;

use outpost_telemetry::{
    ColumnData, ProfileOptions, Recorder, ReferenceOptions, ReferenceProfile, Request, Value,
    WindowKey, WindowProfile,
};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// Tests that need something optional skip with a printed reason, except
/// in CI (`OUTPOST_REQUIRE_ALL=1`), where a missing prerequisite fails.
pub fn skip_or_fail(reason: &str) {
    if std::env::var("OUTPOST_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("OUTPOST_REQUIRE_ALL=1 but a prerequisite is missing: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// A seeded generator whose stream is fixed by its algorithm (xoshiro256++),
/// so simulations give the same draws on every platform and rand release.
pub fn rng(seed: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(seed)
}

/// A standard normal draw (Box-Muller), without a distributions crate.
pub fn normal(rng: &mut Xoshiro256PlusPlus) -> f64 {
    // 1 − u is in (0, 1], so the log is finite.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

pub fn key(device: &str, start: u64) -> WindowKey {
    WindowKey {
        device: device.to_owned(),
        model: "m".to_owned(),
        version: "1.0.0".to_owned(),
        start,
        length: 300,
    }
}

/// A reference of `features` standard-normal numeric inputs, `rows` rows.
pub fn normal_reference(features: usize, rows: usize, seed: u64) -> ReferenceProfile {
    let mut rng = rng(seed);
    let columns = (0..features)
        .map(|f| {
            let values = (0..rows).map(|_| Some(normal(&mut rng))).collect();
            (format!("f{f}"), ColumnData::Numeric(values))
        })
        .collect();
    ReferenceProfile::from_columns(columns, &ReferenceOptions::default()).unwrap()
}

/// A reference with two numeric inputs, one categorical input and a numeric output.
pub fn mixed_reference() -> ReferenceProfile {
    let mut rng = rng(7);
    let n = 2_000;
    let x: Vec<Option<f64>> = (0..n).map(|_| Some(normal(&mut rng))).collect();
    let y: Vec<Option<f64>> = (0..n).map(|i| Some(f64::from(i % 50))).collect();
    let colour: Vec<Option<String>> = (0..n)
        .map(|i| Some(["red", "green", "blue"][i as usize % 3].to_owned()))
        .collect();
    let score: Vec<Option<f64>> = (0..n).map(|i| Some(f64::from(i % 100) / 100.0)).collect();
    let options = ReferenceOptions {
        categorical: vec!["colour".into()],
        outputs: vec!["score".into()],
        ..Default::default()
    };
    let columns = vec![
        ("x".to_owned(), ColumnData::Numeric(x)),
        ("y".to_owned(), ColumnData::Numeric(y)),
        ("colour".to_owned(), ColumnData::Categorical(colour)),
        ("score".to_owned(), ColumnData::Numeric(score)),
    ];
    ReferenceProfile::from_columns(columns, &options).unwrap()
}

/// Records numeric-only rows (one value per reference column, all inputs).
pub fn numeric_window(
    reference: &Arc<ReferenceProfile>,
    key: WindowKey,
    options: ProfileOptions,
    rows: impl IntoIterator<Item = Vec<f64>>,
) -> WindowProfile {
    let mut recorder = Recorder::new(reference.clone(), key, options).unwrap();
    for row in rows {
        let inputs: Vec<Value<'_>> = row.into_iter().map(Value::Number).collect();
        recorder
            .record(&Request {
                inputs: &inputs,
                outputs: &[],
                latency: Duration::from_micros(500),
                ok: true,
                confidence: None,
                segment: None,
            })
            .unwrap();
    }
    recorder.finish()
}
