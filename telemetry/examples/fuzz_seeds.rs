//! Writes the seed corpus of the telemetry fuzz targets: small valid window
//! and reference encodings, under `telemetry/fuzz/corpus/<target>/`.
//!
//! `cargo run -p outpost-telemetry --example fuzz_seeds` (rerun after a
//! format change; `tests/it/codec.rs` checks that the committed seeds decode).

use std::error::Error;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use outpost_telemetry::{
    ColumnData, Feedback, ProfileOptions, Recorder, ReferenceOptions, ReferenceProfile, Request,
    Value, WindowKey,
};

fn main() -> Result<(), Box<dyn Error>> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let rows = 64;
    let numbers: Vec<Option<f64>> = (0..rows).map(|i| Some(f64::from(i % 16) / 4.0)).collect();
    let colours: Vec<Option<String>> = (0..rows)
        .map(|i| Some(["red", "green", "blue"][i as usize % 3].to_owned()))
        .collect();
    let options = ReferenceOptions {
        categorical: vec!["colour".into()],
        outputs: vec!["score".into()],
        bins: 4,
        ..Default::default()
    };
    let columns = vec![
        ("x".to_owned(), ColumnData::Numeric(numbers.clone())),
        ("colour".to_owned(), ColumnData::Categorical(colours)),
        ("score".to_owned(), ColumnData::Numeric(numbers)),
    ];
    let mixed = ReferenceProfile::from_columns(columns, &options)?;
    let single = ReferenceProfile::from_columns(
        vec![(
            "t".to_owned(),
            ColumnData::Numeric(vec![Some(1.0), None, Some(2.5)]),
        )],
        &ReferenceOptions::default(),
    )?;
    write(&corpus, "reference_profile", "mixed.bin", &mixed.to_bytes())?;
    write(
        &corpus,
        "reference_profile",
        "single.bin",
        &single.to_bytes(),
    )?;

    let reference = Arc::new(mixed);
    for (name, kll_k) in [("with-kll.bin", Some(8)), ("bins-only.bin", None)] {
        let key = WindowKey {
            device: "dev-1".into(),
            model: "m".into(),
            version: "1.0.0".into(),
            start: 1_700_000_000,
            length: 300,
        };
        let options = ProfileOptions {
            kll_k,
            ..Default::default()
        };
        let mut recorder = Recorder::new(reference.clone(), key, options)?;
        for i in 0..24u32 {
            let colour = ["red", "mauve", "blue"][i as usize % 3];
            let inputs = [Value::Number(f64::from(i) / 5.0), Value::Category(colour)];
            let outputs = [if i % 7 == 0 {
                Value::Missing
            } else {
                Value::Number(0.25)
            }];
            recorder.record(&Request {
                inputs: &inputs,
                outputs: &outputs,
                latency: Duration::from_micros(100 + u64::from(i) * 37),
                ok: i % 11 != 0,
                confidence: Some(f64::from(i % 10) / 10.0),
                segment: Some(if i % 2 == 0 { "eu" } else { "us" }),
            })?;
            // Ground truth for some requests, one class over the cap.
            if i % 3 == 0 {
                recorder.feedback(&Feedback {
                    predicted: (i % 4) as usize,
                    actual: if i == 9 { 70 } else { (i % 5) as usize },
                    segment: (i % 2 == 0).then_some("eu"),
                })?;
            }
        }
        write(
            &corpus,
            "window_profile",
            name,
            &recorder.finish().to_bytes(),
        )?;
    }
    Ok(())
}

fn write(corpus: &Path, target: &str, name: &str, bytes: &[u8]) -> Result<(), Box<dyn Error>> {
    let dir = corpus.join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), bytes)?;
    println!("{target}/{name}: {} bytes", bytes.len());
    Ok(())
}
