//! Scenario builders and the crash-everywhere driver.

use super::*;

// ------------------------------------------------------------ scenarios

pub(super) type Build = fn(&World) -> Sim<'_>;
pub(super) type Check = fn(&mut Sim<'_>);

/// v1 → deploy v2 without probation.
pub(super) fn deploy_now(w: &World) -> Sim<'_> {
    let mut s = Sim::new(w);
    s.cmd(10, w.deploy(1, 2, Probation::None));
    s
}

pub(super) fn ends_on_v2_after_v1(s: &mut Sim<'_>) {
    s.assert_settled();
    assert_eq!((s.active(), s.previous()), (Some("2.0.0"), Some("1.0.0")));
}

/// Canary, then the server's commit verdict.
pub(super) fn canary_commit(w: &World) -> Sim<'_> {
    let mut s = Sim::new(w);
    s.cmd(10, w.deploy(1, 2, Probation::Canary));
    s.cmd(600, w.deploy(2, 2, Probation::None));
    s
}

/// Canary, then the server's rollback verdict.
pub(super) fn canary_rollback(w: &World) -> Sim<'_> {
    let mut s = Sim::new(w);
    s.cmd(10, w.deploy(1, 2, Probation::Canary));
    s.cmd(600, w.rollback(2, 1));
    s
}

pub(super) fn ends_on_v1_alone(s: &mut Sim<'_>) {
    s.assert_settled();
    assert_eq!((s.active(), s.previous()), (Some("1.0.0"), None));
}

/// Shadow, promoted to canary, then committed: three directives, one
/// download.
pub(super) fn shadow_canary_commit(w: &World) -> Sim<'_> {
    let mut s = Sim::new(w);
    s.cmd(10, w.shadow(1, 2));
    s.cmd(600, w.deploy(2, 2, Probation::Canary));
    s.cmd(1200, w.deploy(3, 2, Probation::None));
    s
}

/// v2 active over v1; the server rolls back to v1.
pub(super) fn rollback_previous(w: &World) -> Sim<'_> {
    let mut s = Sim::new(w);
    s.install(2, Some(1));
    s.cmd(10, w.rollback(1, 1));
    s
}

pub(super) fn retire(w: &World) -> Sim<'_> {
    let mut s = Sim::new(w);
    s.install(2, Some(1));
    s.cmd(
        10,
        w.command(1, DirectiveAction::Retire { model: NAME.into() }),
    );
    s
}

pub(super) fn ends_retired(s: &mut Sim<'_>) {
    s.assert_settled();
    assert!(s.pointers.is_empty());
    assert!(s.files.is_empty());
}

/// The connection drops twice during the download.
pub(super) fn interrupted(w: &World) -> Sim<'_> {
    let mut s = Sim::new(w);
    s.faults.interrupt_at = [4_000, 9_000].into();
    s.cmd(10, w.deploy(1, 2, Probation::None));
    s
}

/// A canary of v2 is superseded mid-download by a deploy of v3.
pub(super) fn superseded(w: &World) -> Sim<'_> {
    let mut s = Sim::new(w);
    s.cmd(10, w.deploy(1, 2, Probation::Canary));
    s.cmd(13, w.deploy(2, 3, Probation::None));
    s
}

pub(super) fn ends_on_v3_after_v1(s: &mut Sim<'_>) {
    s.assert_settled();
    assert_eq!((s.active(), s.previous()), (Some("3.0.0"), Some("1.0.0")));
}

/// Runs `build` clean, then once per step with a crash injected after that
/// step (and, for every third point, a second crash a few steps later);
/// each run must end as the clean run does. Returns the crash points.
pub(super) fn crash_everywhere(
    w: &World,
    build: Build,
    end: Check,
    last_sequence: u64,
    tally: &mut BTreeMap<(String, String), usize>,
) -> usize {
    let mut clean = build(w);
    clean.drive();
    end(&mut clean);
    let n = clean.steps;
    let mut points = 0;
    for k in 1..=n {
        let mut s = build(w);
        s.resumed.clear();
        for _ in 0..k {
            s.step();
        }
        s.crash();
        points += 1;
        if k % 3 == 0 {
            for _ in 0..(k % 7 + 1) {
                s.step();
            }
            s.crash();
            points += 1;
        }
        s.drive();
        eprintln!(
            "crash after step {k}: discards {:?}, refusals {:?}",
            s.discards(),
            s.refusals()
        );
        end(&mut s);
        for r in s.resumed.drain(..) {
            *tally.entry(r).or_default() += 1;
        }
        assert_eq!(
            s.core().trust().last_sequence,
            last_sequence,
            "crash after step {k}"
        );
    }
    points
}

// ---------------------------------------------------------------- tests
