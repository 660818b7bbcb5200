//! Recording requests: validation, completeness, segments, latency.

use std::sync::Arc;
use std::time::Duration;

use outpost_telemetry::{
    ColumnProfile, Confusion, Feedback, ProfileOptions, RecordError, Recorder, Request, Value,
};

use crate::common::{key, mixed_reference};

fn request<'a>(
    inputs: &'a [Value<'a>],
    outputs: &'a [Value<'a>],
    segment: Option<&'a str>,
) -> Request<'a> {
    Request {
        inputs,
        outputs,
        latency: Duration::from_millis(2),
        ok: true,
        confidence: Some(0.8),
        segment,
    }
}

#[test]
fn invalid_requests_are_rejected_whole() {
    let reference = Arc::new(mixed_reference());
    let mut recorder = Recorder::new(reference, key("d", 0), ProfileOptions::default()).unwrap();
    let score = [Value::Number(0.5)];
    let short = [Value::Number(1.0)];
    assert!(matches!(
        recorder.record(&request(&short, &score, None)),
        Err(RecordError::ColumnCount {
            role: "inputs",
            expected: 3,
            found: 1
        })
    ));
    let wrong_kind = [
        Value::Category("a"),
        Value::Number(1.0),
        Value::Category("red"),
    ];
    assert_eq!(
        recorder.record(&request(&wrong_kind, &score, None)),
        Err(RecordError::KindMismatch { column: "x".into() })
    );
    let inputs = [
        Value::Number(0.0),
        Value::Number(1.0),
        Value::Category("red"),
    ];
    assert!(matches!(
        recorder.record(&request(&inputs, &[], None)),
        Err(RecordError::ColumnCount {
            role: "outputs",
            ..
        })
    ));
    let window = recorder.window();
    assert_eq!(window.profile.requests, 0);
    assert!(
        window
            .profile
            .columns
            .iter()
            .all(|c| c.completeness().count == 0)
    );
    // A failed request may leave the outputs out; it still counts its inputs.
    let failed = Request {
        ok: false,
        ..request(&inputs, &[], None)
    };
    recorder.record(&failed).unwrap();
    let profile = recorder.finish().profile;
    assert_eq!((profile.requests, profile.errors), (1, 1));
    assert_eq!(profile.columns[0].completeness().count, 1);
    assert_eq!(profile.columns[3].completeness().count, 0);
    assert_eq!(
        profile.confidence.total(),
        0,
        "no confidence for a failed request"
    );
}

#[test]
fn categorical_numbers_match_the_reference_text_and_unseen_values_are_counted() {
    let reference = Arc::new(mixed_reference());
    let mut recorder = Recorder::new(reference, key("d", 0), ProfileOptions::default()).unwrap();
    let score = [Value::Number(0.5)];
    for colour in [
        Value::Category("red"),
        Value::Category("purple"),
        Value::Missing,
        Value::Number(7.0),
    ] {
        let inputs = [Value::Number(0.0), Value::Number(f64::NEG_INFINITY), colour];
        recorder.record(&request(&inputs, &score, None)).unwrap();
    }
    let profile = recorder.finish().profile;
    let ColumnProfile::Categorical(colour) = &profile.columns[2] else {
        panic!("colour is categorical")
    };
    assert_eq!(colour.completeness.unseen_category, 2);
    assert_eq!(colour.completeness.missing, 1);
    assert_eq!(colour.unseen.keys().collect::<Vec<_>>(), ["7", "purple"]);
    assert_eq!(colour.bins().iter().sum::<u64>(), 3);
    assert_eq!(profile.columns[1].completeness().neg_inf, 4);
}

#[test]
fn segments_beyond_the_budget_are_counted_together() {
    let reference = Arc::new(mixed_reference());
    let options = ProfileOptions {
        segment_budget: 2,
        ..Default::default()
    };
    let mut recorder = Recorder::new(reference, key("d", 0), options).unwrap();
    let score = [Value::Number(0.5)];
    let inputs = [
        Value::Number(0.0),
        Value::Number(1.0),
        Value::Category("red"),
    ];
    for segment in ["eu", "us", "eu", "apac", "latam", "us"] {
        recorder
            .record(&request(&inputs, &score, Some(segment)))
            .unwrap();
    }
    recorder.record(&request(&inputs, &score, None)).unwrap();
    let profile = recorder.finish().profile;
    assert_eq!(profile.segments.keys().collect::<Vec<_>>(), ["eu", "us"]);
    assert_eq!(profile.segments["eu"].requests, 2);
    assert_eq!(profile.segment_overflow.requests, 2);
    assert_eq!(profile.requests, 7);
    // Segment bins mirror the window's bins for the segment's requests.
    let eu = &profile.segments["eu"];
    assert_eq!(eu.bins.len(), 4);
    assert_eq!(eu.bins[2].iter().sum::<u64>(), 2);
    assert_eq!(eu.confidence.total(), 2);
}

#[test]
fn latency_confidence_and_kll_are_recorded() {
    let reference = Arc::new(mixed_reference());
    let mut recorder = Recorder::new(reference, key("d", 0), ProfileOptions::default()).unwrap();
    let inputs = [
        Value::Number(0.0),
        Value::Number(1.0),
        Value::Category("red"),
    ];
    for i in 1..=100u32 {
        let score = [Value::Number(f64::from(i) / 100.0)];
        let mut r = request(&inputs, &score, None);
        r.latency = Duration::from_micros(u64::from(i) * 100);
        r.confidence = Some(f64::from(i) / 100.0);
        recorder.record(&r).unwrap();
    }
    let profile = recorder.finish().profile;
    let p50 = profile.latency.quantile(0.5).unwrap().as_secs_f64() * 1e6;
    assert!((p50 - 5_000.0).abs() <= 0.011 * 5_000.0, "p50 {p50} µs");
    assert_eq!(profile.latency.max(), Some(Duration::from_millis(10)));
    assert_eq!(profile.confidence.total(), 100);
    let kll = profile.columns[3].kll().unwrap();
    assert_eq!(kll.n(), 100);
    assert_eq!(kll.min_max(), Some((0.01f32 as f64, 1.0)));
}

fn label(predicted: usize, actual: usize, segment: Option<&str>) -> Feedback<'_> {
    Feedback {
        predicted,
        actual,
        segment,
    }
}

#[test]
fn feedback_goes_to_the_window_its_segment_and_the_overflow() {
    let reference = Arc::new(mixed_reference());
    let options = ProfileOptions {
        segment_budget: 2,
        max_classes: 3,
        ..Default::default()
    };
    let mut recorder = Recorder::new(reference, key("d", 0), options).unwrap();
    // Labels may arrive before any request of the window: they still count.
    recorder.feedback(&label(0, 0, Some("eu"))).unwrap();
    assert_eq!(recorder.window().profile.requests, 0);
    assert_eq!(recorder.window().profile.feedback.total(), 1);
    let score = [Value::Number(0.5)];
    let inputs = [
        Value::Number(0.0),
        Value::Number(1.0),
        Value::Category("red"),
    ];
    recorder
        .record(&request(&inputs, &score, Some("us")))
        .unwrap();
    for fb in [
        label(1, 1, Some("us")),
        label(1, 2, Some("eu")),
        label(2, 2, Some("apac")), // over the budget of 2 segments
        label(0, 1, Some("latam")),
        label(2, 0, None),
    ] {
        recorder.feedback(&fb).unwrap();
    }
    let profile = recorder.finish().profile;
    assert_eq!(profile.segments.keys().collect::<Vec<_>>(), ["eu", "us"]);
    let eu = &profile.segments["eu"].feedback;
    assert_eq!((eu.total(), eu.correct()), (2, 1));
    assert_eq!(eu.count(1, 2), 1);
    assert_eq!(profile.segments["us"].feedback.accuracy(), Some(1.0));
    let overflow = &profile.segment_overflow.feedback;
    assert_eq!((overflow.total(), overflow.correct()), (2, 1));
    assert_eq!(overflow.count(0, 1), 1);
    let all = &profile.feedback;
    assert_eq!((all.total(), all.correct()), (6, 3));
    assert_eq!(all.accuracy(), Some(0.5));
    assert_eq!(all.count(2, 0), 1);
    // A segment created by feedback alone has no bins (it saw no request).
    assert!(profile.segments["eu"].bins.is_empty());
    assert_eq!(profile.segments["us"].bins.len(), 4);
    assert_eq!(profile.segments["eu"].requests, 0);
}

#[test]
fn classes_over_the_cap_share_the_other_row_and_column_without_faking_accuracy() {
    let reference = Arc::new(mixed_reference());
    let options = ProfileOptions {
        max_classes: 4,
        ..Default::default()
    };
    let mut recorder = Recorder::new(reference, key("d", 0), options).unwrap();
    for fb in [
        label(3, 3, None),     // last class under the cap
        label(4, 4, None),     // other, right
        label(900, 900, None), // other, right
        label(5, 6, None),     // other, wrong: not on the diagonal
        label(1, 70, None),    // predicted 1, actual other
        label(usize::MAX, 0, None),
    ] {
        recorder.feedback(&fb).unwrap();
    }
    let c = recorder.finish().profile.feedback;
    let other = Confusion::OTHER;
    assert_eq!(c.count(3, 3), 1);
    assert_eq!(c.count(other, other), 2);
    assert_eq!(c.other_mismatched(), 1);
    assert_eq!(c.count(1, other), 1);
    assert_eq!(c.count(other, 0), 1);
    assert_eq!((c.total(), c.correct()), (6, 3));
    assert_eq!(c.accuracy(), Some(0.5));
    // Bounded: at most (cap + 1)² cells.
    assert!(
        c.cells()
            .all(|((p, a), _)| (p < 4 || p == other) && (a < 4 || a == other))
    );
    assert_eq!(Confusion::new().accuracy(), None);
}
