//! The server killed at every point of a rollout's work and restarted from
//! its last persisted snapshot: no directive goes out twice, no stage
//! advances twice, and the rollout ends where an uninterrupted one does.

use std::collections::BTreeSet;

use outpost_fleet::rollout::{DirectiveKind, State};

use super::harness::*;

const DEVICES: usize = 8;

const CRASH_PLAN: &str = r#"
[[stage]]
percent = 25
min_devices = 2
min_windows = 2
max_duration = "2h"
[[stage.gate]]
kind = "latency"
[[stage.gate]]
kind = "error_rate"
tolerance = 0.02
[[stage]]
percent = 50
min_devices = 4
min_windows = 4
max_duration = "2h"
[[stage.gate]]
kind = "latency"
[[stage]]
percent = 100
min_devices = 8
min_windows = 8
max_duration = "2h"
[[stage.gate]]
kind = "latency"
"#;

type Outcome = (String, Option<u32>, BTreeSet<(String, DirectiveKind)>);

fn outcome(sim: &Sim) -> Outcome {
    let published = sim
        .log
        .published
        .iter()
        .map(|(p, _)| (p.device.as_str().to_owned(), p.kind))
        .collect();
    (
        sim.state().name().to_owned(),
        sim.state().stage(),
        published,
    )
}

fn check_every_crash_point(id: &str, to: Behaviour) -> usize {
    let mut clean = Sim::new(spec(id, CRASH_PLAN, DEVICES), config(), to);
    clean.run(100);
    assert!(clean.state().is_final());
    let expected = outcome(&clean);
    let points = clean.work;
    assert!(points > 10, "only {points} crash points");
    for after in 1..=points {
        let mut sim = Sim::with_crash(
            spec(id, CRASH_PLAN, DEVICES),
            config(),
            to,
            Some(Crash { after }),
        );
        sim.run(100);
        let ctx = format!("crash after {after} of {points}");
        assert_eq!(sim.crashes, 1, "{ctx}");
        // Ends where the uninterrupted run ended, with the same directives.
        assert_eq!(outcome(&sim), expected, "{ctx}");
        // No (device, action) published twice; no key published twice.
        let pairs: Vec<_> = sim
            .log
            .published
            .iter()
            .map(|(p, _)| (p.device.clone(), p.kind))
            .collect();
        let unique: BTreeSet<_> = pairs.iter().cloned().collect();
        assert_eq!(pairs.len(), unique.len(), "{ctx}: {pairs:?}");
        let keys: BTreeSet<_> = sim
            .log
            .published
            .iter()
            .map(|(p, _)| p.key.clone())
            .collect();
        assert_eq!(keys.len(), sim.log.published.len(), "{ctx}");
        // The core's log holds each decision once, and all went out.
        let log = &sim.rollout().snapshot().directives;
        let decided: BTreeSet<_> = log.iter().map(|d| (d.device.clone(), d.kind)).collect();
        assert_eq!(decided.len(), log.len(), "{ctx}");
        assert!(log.iter().all(|d| d.sequence.is_some()), "{ctx}");
        // No stage advanced or started twice.
        let started: Vec<u32> = sim.log.started.clone();
        let started_once: BTreeSet<u32> = started.iter().copied().collect();
        assert_eq!(started.len(), started_once.len(), "{ctx}: {started:?}");
        let froms: Vec<u32> = sim.log.advanced.iter().map(|a| a.0).collect();
        let distinct: BTreeSet<u32> = froms.iter().copied().collect();
        assert_eq!(froms.len(), distinct.len(), "{ctx}: {froms:?}");
        let history: Vec<u32> = sim
            .rollout()
            .snapshot()
            .history
            .iter()
            .map(|h| h.stage)
            .collect();
        assert!(
            history.windows(2).all(|w| w[0] < w[1]),
            "{ctx}: {history:?}"
        );
    }
    points
}

#[test]
fn a_promoted_rollout_survives_a_crash_at_every_point() {
    let points = check_every_crash_point("r-crash-good", Behaviour::GOOD);
    // 8 deploys and 8 commits, each journaled and reported, plus persists.
    assert!(points >= 2 * 16 + 16, "{points}");
}

#[test]
fn a_halted_rollout_survives_a_crash_at_every_point() {
    let slow = Behaviour {
        latency_us: 1_400.0,
        ..Behaviour::GOOD
    };
    check_every_crash_point("r-crash-slow", slow);
}

#[test]
fn a_restored_rollout_re_sends_only_what_was_not_reported() {
    let mut sim = Sim::new(
        spec("r-restore", CRASH_PLAN, DEVICES),
        config(),
        Behaviour::GOOD,
    );

    // The first snapshot (before any send was reported) holds two unsent
    // deploys: restoring from it asks for both again; the journal answers
    // with the sequences they went out with, and nothing is published anew.
    let first = sim.log.persisted[0].clone();
    assert_eq!(
        first
            .directives
            .iter()
            .filter(|d| d.sequence.is_none())
            .count(),
        2
    );
    let published = sim.log.published.len();
    sim.log.persisted.push(first);
    sim.restart();
    assert_eq!(sim.log.published.len(), published);
    assert_eq!(sim.log.republished, 2);
    assert!(matches!(sim.state(), State::Running(r) if r.stage == 0));
    sim.run(100);
    assert!(matches!(sim.state(), State::Completed(_)));
    assert_eq!(sim.published(DirectiveKind::Canary).len(), DEVICES);
}
