//! Fleet drift: a shifted feature is found by PSI and KS; a completeness
//! fault shows in completeness, not in drift; the class view tells which.

use std::collections::BTreeMap;

use outpost_fleet::drift::{DriftSettings, Suspect, fleet_drift, render_table};
use outpost_telemetry::ProfileSet;

use super::harness::*;

/// 6 rpi4 and 6 jetson devices, 4 windows each; `jetson` behaves as given.
fn windows(jetson: Behaviour) -> (ProfileSet, BTreeMap<String, String>) {
    let reference = reference();
    let mut pool = Pool::default();
    let mut set = ProfileSet::new();
    let mut classes = BTreeMap::new();
    for i in 0..12 {
        let id = device(i);
        let (class, b) = if i < 6 {
            ("rpi4", Behaviour::GOOD)
        } else {
            ("jetson", jetson)
        };
        classes.insert(id.as_str().to_owned(), class.to_owned());
        for w in 0..4 {
            let window = pool.window(&reference, b, &id, FROM, T0 + w * WINDOW);
            set.insert(window.clone());
            set.insert(window); // a QoS 1 duplicate counts once
        }
    }
    (set, classes)
}

#[test]
fn a_shifted_feature_is_found_by_psi_and_ks_with_bounds() {
    let shifted = Behaviour {
        shift: 5.0,
        ..Behaviour::GOOD
    };
    let (set, classes) = windows(shifted);
    let report = fleet_drift(&reference(), &set, &classes, &DriftSettings::default()).unwrap();
    assert_eq!(
        (report.windows, report.devices, report.skipped),
        (48, 12, 0)
    );
    assert_eq!(report.requests, 48 * REQUESTS as u64);
    let temp = report.inputs.iter().find(|c| c.name == "temp").unwrap();
    assert!(temp.drift);
    let psi = temp.psi.as_ref().unwrap();
    assert_eq!(
        (psi.verdict.as_str(), psi.error_bound),
        ("drift", Some(0.0))
    );
    let ks = temp.ks.as_ref().unwrap();
    assert_eq!(ks.verdict, "drift");
    assert!(
        ks.error_bound.unwrap() > 0.0,
        "the sketch error is in the bound"
    );
    let load = report.inputs.iter().find(|c| c.name == "load").unwrap();
    assert!(!load.drift, "{load:?}");
    assert_eq!(report.predictions.len(), 1);
    assert!(!report.predictions[0].drift);
    // The class view: jetson drifts with complete inputs, rpi4 is healthy.
    let class = |name: &str| report.by_class.iter().find(|r| r.class == name).unwrap();
    assert_eq!(class("jetson").suspect, Suspect::InputDrift);
    assert_eq!(class("jetson").drifted, vec!["temp".to_owned()]);
    assert_eq!(class("rpi4").suspect, Suspect::Healthy);
    let table = render_table(&report);
    assert!(
        table.contains("temp") && table.contains("input drift"),
        "{table}"
    );
    let json = serde_json::to_string(&report).unwrap();
    assert!(json.contains("\"input_drift\""));
}

#[test]
fn a_completeness_fault_shows_in_completeness_not_in_drift() {
    let broken_sensor = Behaviour {
        missing: 0.3,
        ..Behaviour::GOOD
    };
    let (set, classes) = windows(broken_sensor);
    let report = fleet_drift(&reference(), &set, &classes, &DriftSettings::default()).unwrap();
    let temp = report.inputs.iter().find(|c| c.name == "temp").unwrap();
    assert!(!temp.drift, "{temp:?}");
    let rate = temp.completeness.complete_rate.unwrap();
    assert!((0.8..0.9).contains(&rate), "{rate}");
    assert!(temp.completeness.missing > 0);
    let jetson = report
        .by_class
        .iter()
        .find(|r| r.class == "jetson")
        .unwrap();
    assert_eq!(jetson.suspect, Suspect::DataPipeline);
    assert!(jetson.drifted.is_empty());
    assert!(jetson.complete_rate.unwrap() < 0.8);
}

#[test]
fn windows_of_another_reference_are_skipped() {
    let (mut set, classes) = windows(Behaviour::GOOD);
    let mut other = set
        .windows()
        .next()
        .map(|(k, p)| (k.clone(), p.clone()))
        .unwrap();
    other.0.start += 1;
    other.1.reference ^= 1;
    set.insert(outpost_telemetry::WindowProfile {
        key: other.0,
        profile: other.1,
    });
    let report = fleet_drift(&reference(), &set, &classes, &DriftSettings::default()).unwrap();
    assert_eq!((report.windows, report.skipped), (48, 1));
}
