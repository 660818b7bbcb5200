//! Whole rollouts in simulated time: promoted, halted, paused, held.

use std::collections::BTreeSet;

use outpost_fleet::rollout::{
    AlertKind, Calendar, DirectiveKind, Freeze, GateKind, GateVerdict, HaltReason, OperatorCommand,
    PauseReason, RolloutError, State,
};
use outpost_protocol::trust::{DirectiveAction, Probation, Selector};

use super::harness::*;

const DEVICES: usize = 24;

fn touched(sim: &Sim) -> BTreeSet<String> {
    sim.published(DirectiveKind::Canary)
        .iter()
        .map(|d| d.as_str().to_owned())
        .collect()
}

fn rolled_back(sim: &Sim) -> BTreeSet<String> {
    sim.published(DirectiveKind::Rollback)
        .iter()
        .map(|d| d.as_str().to_owned())
        .collect()
}

#[test]
fn a_good_canary_is_promoted_stage_by_stage_to_the_whole_fleet() {
    let mut sim = Sim::new(spec("r-good", PLAN, DEVICES), config(), Behaviour::GOOD);
    let steps = sim.run(200);
    let status = sim.rollout().status();
    assert!(matches!(sim.state(), State::Completed(_)), "{:#?}", status);
    assert_eq!(sim.log.started, vec![0, 1, 2]);
    assert_eq!(
        sim.log
            .advanced
            .iter()
            .map(|a| (a.0, a.1))
            .collect::<Vec<_>>(),
        vec![(0, 1), (1, 2)]
    );
    // 25 % then 50 % then 100 %: 6, then 6 more, then the other 12.
    let cohorts = sim.rollout().cohorts();
    assert_eq!(
        cohorts.iter().map(|c| c.canary.len()).collect::<Vec<_>>(),
        vec![6, 12, 24]
    );
    assert_eq!(cohorts[2].control.len(), 0);
    assert_eq!(touched(&sim).len(), DEVICES);
    // Every device was deployed once and committed once; no rollback.
    assert_eq!(sim.published(DirectiveKind::Canary).len(), DEVICES);
    assert_eq!(sim.published(DirectiveKind::Commit).len(), DEVICES);
    assert!(sim.published(DirectiveKind::Rollback).is_empty());
    assert_eq!(sim.log.completed, 1);
    // The last stage compared with the previous stage's control (baseline).
    let last = sim.rollout().snapshot().history.last().unwrap();
    assert_eq!(last.outcome, "passed");
    let latency = last
        .reports
        .iter()
        .find(|r| r.gate == GateKind::Latency)
        .unwrap();
    assert_eq!(latency.verdict, GateVerdict::Pass);
    assert!(latency.n_control > 0 && latency.upper.unwrap() < 0.10);
    assert!(steps < 40, "took {steps} windows");
    // Directives: signed-ready protocol directives, sequences increasing
    // in publication order, tagged with the rollout and stage.
    let mut last_seq = 0;
    for (planned, d) in &sim.log.published {
        assert!(d.sequence > last_seq);
        last_seq = d.sequence;
        assert_eq!(d.selector, Selector::Device(planned.device.clone()));
        let tag = d.rollout.as_ref().unwrap();
        assert_eq!((tag.rollout.as_str(), tag.stage), ("r-good", planned.stage));
        assert!(d.expires > d.issued_at);
        if planned.kind == DirectiveKind::Canary {
            assert!(matches!(
                &d.action,
                DirectiveAction::Deploy { target, probation: Probation::Canary } if target.version == TO
            ));
        }
    }
    // The status report serializes (for `outpost rollout status --json`).
    let json = serde_json::to_string(&sim.rollout().status()).unwrap();
    assert!(json.contains("\"completed\""), "{json}");
}

fn halted_at_first_stage(sim: &mut Sim, gate: GateKind) {
    sim.run(100);
    let State::Halted(h) = sim.state() else {
        panic!("{:#?}", sim.rollout().status());
    };
    assert_eq!(h.stage, Some(0));
    match &h.reason {
        HaltReason::GateFailed { gates } => assert!(gates.contains(&gate), "{gates:?}"),
        other => panic!("{other:?}"),
    }
    let report = sim
        .rollout()
        .snapshot()
        .reports
        .iter()
        .find(|r| r.gate == gate)
        .unwrap()
        .clone();
    assert_eq!(report.verdict, GateVerdict::Fail, "{report:?}");
    assert!(report.statistic.is_some() && report.n_canary > 0);
    // Rollback went to every touched device (the first stage's canary),
    // nowhere else, once each, to the current version.
    let stage0: BTreeSet<String> = sim.rollout().cohorts()[0]
        .canary
        .iter()
        .map(|d| d.as_str().to_owned())
        .collect();
    assert_eq!(touched(sim), stage0);
    assert_eq!(rolled_back(sim), stage0);
    assert_eq!(sim.published(DirectiveKind::Rollback).len(), stage0.len());
    for (p, d) in &sim.log.published {
        if p.kind == DirectiveKind::Rollback {
            assert!(
                matches!(&d.action, DirectiveAction::Rollback { target } if target.version == FROM)
            );
        }
    }
    assert!(sim.log.advanced.is_empty());
    assert!(sim.log.alerts.iter().any(|(k, _)| *k == AlertKind::Halted));
    // Every device serves the current version again.
    assert!(sim.serving.values().all(|v| v == FROM));
}

#[test]
fn a_slower_canary_is_halted_at_the_first_stage_and_rolled_back() {
    let slow = Behaviour {
        latency_us: 1_400.0,
        ..Behaviour::GOOD
    };
    let mut sim = Sim::new(spec("r-slow", PLAN, DEVICES), config(), slow);
    halted_at_first_stage(&mut sim, GateKind::Latency);
}

#[test]
fn a_less_accurate_canary_is_halted_on_feedback() {
    let wrong = Behaviour {
        accuracy: Some(0.6),
        ..Behaviour::GOOD
    };
    let mut sim = Sim::new(spec("r-acc", PLAN, DEVICES), config(), wrong);
    halted_at_first_stage(&mut sim, GateKind::Accuracy);
}

#[test]
fn a_canary_fed_drifted_inputs_is_halted_on_drift() {
    let drifted = Behaviour {
        shift: 6.0,
        ..Behaviour::GOOD
    };
    let mut sim = Sim::new(spec("r-drift", PLAN, DEVICES), config(), drifted);
    halted_at_first_stage(&mut sim, GateKind::Drift);
}

const NO_LABELS_PLAN: &str = r#"
[[stage]]
percent = 25
min_devices = 3
max_duration = "2h"
[[stage.gate]]
kind = "latency"
[[stage.gate]]
kind = "accuracy"
optional = false
[[stage]]
percent = 100
max_duration = "2h"
"#;

#[test]
fn an_inconclusive_stage_pauses_and_alerts_after_its_maximum_duration() {
    let unlabelled = Behaviour {
        accuracy: None,
        ..Behaviour::GOOD
    };
    let mut sim = Sim::new(
        spec("r-wait", NO_LABELS_PLAN, DEVICES),
        config(),
        unlabelled,
    );
    sim.behaviour.insert(FROM.into(), unlabelled);
    sim.run(60);
    let State::Paused(p) = sim.state().clone() else {
        panic!("{:#?}", sim.rollout().status());
    };
    assert_eq!(
        p.reason,
        PauseReason::Inconclusive {
            gates: vec![GateKind::Accuracy]
        }
    );
    // Not before the maximum duration (2 h), at the first evaluation after it.
    assert!(
        p.at >= T0 + 7_200 && p.at <= T0 + 7_200 + WINDOW,
        "{}",
        p.at - T0
    );
    let alert = sim
        .log
        .alerts
        .iter()
        .find(|(k, _)| *k == AlertKind::Inconclusive)
        .unwrap();
    assert!(alert.1.contains("accuracy"), "{}", alert.1);
    // Paused: no timer, no advance, no rollback.
    assert_eq!(sim.rollout().poll_timeout(), None);
    for _ in 0..10 {
        sim.step();
    }
    assert!(matches!(sim.state(), State::Paused(_)));
    assert!(sim.log.advanced.is_empty() && sim.published(DirectiveKind::Rollback).is_empty());
    // Labels arrive; the operator resumes; the stage passes.
    sim.behaviour.insert(FROM.into(), Behaviour::GOOD);
    sim.behaviour.insert(TO.into(), Behaviour::GOOD);
    let now = sim.now;
    sim.rollout_mut()
        .handle_operator(now, OperatorCommand::Resume, "alice")
        .unwrap();
    sim.drive();
    sim.run(100);
    assert!(
        matches!(sim.state(), State::Completed(_)),
        "{:#?}",
        sim.rollout().status()
    );
}

#[test]
fn operators_pause_resume_and_abort() {
    let mut sim = Sim::new(spec("r-op", PLAN, DEVICES), config(), Behaviour::GOOD);
    sim.step();
    let now = sim.now;
    sim.rollout_mut()
        .handle_operator(now, OperatorCommand::Pause, "bob")
        .unwrap();
    sim.drive();
    assert!(matches!(
        sim.state(),
        State::Paused(p) if p.reason == PauseReason::Operator { actor: "bob".into() }
    ));
    // A second pause is refused and changes nothing.
    assert!(matches!(
        sim.rollout_mut()
            .handle_operator(now, OperatorCommand::Pause, "bob"),
        Err(RolloutError::NotNow { .. })
    ));
    // Paused long past the stage's evidence and duration: no advance.
    for _ in 0..50 {
        sim.step();
    }
    assert!(sim.log.advanced.is_empty());
    let now = sim.now;
    sim.rollout_mut()
        .handle_operator(now, OperatorCommand::Resume, "bob")
        .unwrap();
    sim.drive();
    // Windows counted while paused are evidence: the stage passes at the
    // next evaluation.
    sim.step();
    assert_eq!(sim.log.advanced.len(), 1, "{:#?}", sim.rollout().status());
    let now = sim.now;
    sim.rollout_mut()
        .handle_operator(now, OperatorCommand::Abort, "carol")
        .unwrap();
    sim.drive();
    let State::Halted(h) = sim.state() else {
        panic!()
    };
    assert_eq!(
        h.reason,
        HaltReason::Aborted {
            actor: "carol".into()
        }
    );
    assert_eq!(rolled_back(&sim), touched(&sim));
    assert_eq!(touched(&sim).len(), 12);
    assert!(matches!(
        sim.rollout_mut()
            .handle_operator(now, OperatorCommand::Resume, "carol"),
        Err(RolloutError::NotNow { .. })
    ));
}

#[test]
fn no_stage_advances_inside_a_freeze() {
    let freeze = Freeze {
        start: T0 + 300,
        end: T0 + 6 * 3_600,
        reason: "year-end".into(),
    };
    let config = outpost_fleet::rollout::RolloutConfig {
        calendar: Calendar {
            change_windows: vec![],
            freezes: vec![freeze.clone()],
        },
        ..config()
    };
    let mut sim = Sim::new(spec("r-freeze", PLAN, DEVICES), config, Behaviour::GOOD);
    sim.run(200);
    assert!(matches!(sim.state(), State::Completed(_)));
    let (from, to, at) = sim.log.advanced[0];
    assert_eq!((from, to), (0, 1));
    // The first stage had passed long before, but advanced only when the
    // freeze ended (at the first timer at or after its end).
    assert!(
        at >= freeze.end && at < freeze.end + WINDOW,
        "advanced at T0+{}",
        at - T0
    );
    for (_, _, at) in &sim.log.advanced {
        assert!(
            !(freeze.start <= *at && *at < freeze.end),
            "advanced in the freeze"
        );
    }
    assert!(
        sim.log
            .alerts
            .iter()
            .any(|(k, _)| *k == AlertKind::HeldByCalendar)
    );
    // The held stage did not pause at its deadline (3 h, inside the freeze).
    assert_eq!(sim.log.paused, 0);
}

#[test]
fn a_rollout_created_in_a_freeze_waits_for_it_to_end() {
    let config = outpost_fleet::rollout::RolloutConfig {
        calendar: Calendar {
            change_windows: vec![],
            freezes: vec![Freeze {
                start: T0 - 10,
                end: T0 + 3_600,
                reason: String::new(),
            }],
        },
        ..config()
    };
    let mut sim = Sim::new(
        spec("r-wait-freeze", PLAN, DEVICES),
        config,
        Behaviour::GOOD,
    );
    assert!(matches!(sim.state(), State::Waiting(_)));
    assert!(sim.log.published.is_empty());
    assert_eq!(sim.rollout().poll_timeout(), Some(T0 + 3_600));
    for _ in 0..11 {
        sim.step();
    }
    assert!(sim.log.published.is_empty(), "deployed inside the freeze");
    sim.step();
    assert!(matches!(sim.state(), State::Running(_)));
    assert_eq!(sim.published(DirectiveKind::Canary).len(), 6);
}

#[test]
fn device_failures_past_the_stage_allowance_halt_the_rollout() {
    let mut sim = Sim::new(spec("r-dev", PLAN, DEVICES), config(), Behaviour::GOOD);
    sim.step();
    let canary: Vec<_> = sim.rollout().cohorts()[0].canary.iter().cloned().collect();
    let now = sim.now;
    // An outsider's failure does not count.
    let outsider = sim.rollout().cohorts()[0]
        .control
        .iter()
        .next()
        .unwrap()
        .clone();
    assert!(
        !sim.rollout_mut()
            .handle_device_failure(now, &outsider, "x".into())
    );
    assert!(
        sim.rollout_mut()
            .handle_device_failure(now, &canary[0], "health_check_failed".into())
    );
    sim.drive();
    let State::Halted(h) = sim.state() else {
        panic!()
    };
    assert!(matches!(&h.reason, HaltReason::DeviceFailures { devices } if devices == &canary[..1]));
    assert_eq!(rolled_back(&sim).len(), canary.len());
}

const SHADOW_PLAN: &str = r#"
[[stage]]
name = "shadow"
mode = "shadow"
percent = 25
min_devices = 6
min_windows = 12
max_duration = "2h"
[[stage.gate]]
kind = "shadow_agreement"
optional = false
tolerance = 0.95
[[stage]]
percent = 25
min_devices = 6
min_windows = 6
max_duration = "2h"
[[stage.gate]]
kind = "latency"
[[stage]]
percent = 100
min_devices = 24
min_windows = 24
max_duration = "2h"
"#;

#[test]
fn a_shadow_stage_gates_on_agreement_then_promotes_its_devices_to_canary() {
    let mut sim = Sim::new(
        spec("r-shadow", SHADOW_PLAN, DEVICES),
        config(),
        Behaviour::GOOD,
    );
    let shadowed: BTreeSet<_> = sim.published(DirectiveKind::Shadow).into_iter().collect();
    assert_eq!(shadowed.len(), 6);
    assert!(sim.published(DirectiveKind::Canary).is_empty());
    sim.run(100);
    assert!(
        matches!(sim.state(), State::Completed(_)),
        "{:#?}",
        sim.rollout().status()
    );
    let history = &sim.rollout().snapshot().history;
    let agreement = &history[0].reports[0];
    assert_eq!(
        (agreement.gate, agreement.verdict),
        (GateKind::ShadowAgreement, GateVerdict::Pass)
    );
    assert!(agreement.lower.unwrap() >= 0.95);
    // The shadowing devices were promoted (Deploy canary) at stage 2, the
    // others deployed as they joined: one canary deploy per device.
    let canary = sim.published(DirectiveKind::Canary);
    assert_eq!(canary.len(), DEVICES);
    for (p, d) in &sim.log.published {
        if p.kind == DirectiveKind::Shadow {
            assert!(
                matches!(&d.action, DirectiveAction::Shadow { target } if target.version == TO)
            );
        }
        if p.kind == DirectiveKind::Canary && shadowed.contains(&p.device) {
            assert_eq!(p.stage, 1);
        }
    }
}

#[test]
fn a_shadow_that_disagrees_is_halted_before_serving_anyone() {
    let mut sim = Sim::new(
        spec("r-shadow-bad", SHADOW_PLAN, DEVICES),
        config(),
        Behaviour::GOOD,
    );
    sim.agreement = 0.8;
    sim.run(100);
    let State::Halted(h) = sim.state() else {
        panic!("{:#?}", sim.rollout().status())
    };
    assert_eq!(
        h.reason,
        HaltReason::GateFailed {
            gates: vec![GateKind::ShadowAgreement]
        }
    );
    assert!(sim.published(DirectiveKind::Canary).is_empty());
    assert_eq!(rolled_back(&sim).len(), 6);
    assert!(sim.serving.values().all(|v| v == FROM));
}

/// The server stores snapshots as JSON: every snapshot of a promoted
/// rollout (labels, so confusion matrices, and a 100 % stage, so a
/// baseline) goes through JSON and back unchanged.
#[test]
fn every_snapshot_of_a_promoted_rollout_survives_json() {
    let mut sim = Sim::new(spec("r-json", PLAN, DEVICES), config(), Behaviour::GOOD);
    sim.run(200);
    assert!(matches!(sim.state(), State::Completed(_)));
    let with_baseline = sim
        .log
        .persisted
        .iter()
        .filter(|s| s.baseline.is_some())
        .count();
    assert!(with_baseline > 0, "no snapshot had a baseline");
    for snapshot in &sim.log.persisted {
        let text = serde_json::to_string(snapshot).unwrap();
        let back: outpost_fleet::rollout::Snapshot = serde_json::from_str(&text).unwrap();
        // Everything that drives the rollout comes back exactly; the gate
        // reports' floats may differ in their last bit (serde_json parsing).
        assert_eq!(back.spec, snapshot.spec);
        assert_eq!(back.state, snapshot.state);
        assert_eq!(back.directives, snapshot.directives);
        assert_eq!(back.failures, snapshot.failures);
        assert_eq!(back.baseline, snapshot.baseline);
        assert_eq!(back.history.len(), snapshot.history.len());
    }
}
