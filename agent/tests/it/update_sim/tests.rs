//! The update machine's tests.

use super::scenarios::*;
use super::*;

#[test]
fn a_deploy_without_probation_commits_and_keeps_the_previous_model() {
    let w = World::new();
    let mut s = deploy_now(&w);
    s.drive();
    ends_on_v2_after_v1(&mut s);
    let steps = s.install_steps();
    assert_eq!(
        steps.first(),
        Some(&InstallStep::Downloading {
            done: 0,
            total: 10_000
        })
    );
    let tail: Vec<_> = steps
        .iter()
        .filter(|s| !matches!(s, InstallStep::Downloading { .. }))
        .collect();
    use InstallStep::*;
    assert_eq!(tail, [&Verified, &Staged, &SelfTested, &Committed]);
    assert!(steps.contains(&Downloading {
        done: 10_000,
        total: 10_000
    }));
    assert_eq!(s.downloads(), [0]);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
}

#[test]
fn a_canary_is_committed_by_the_servers_verdict_without_a_second_download() {
    let w = World::new();
    let mut s = canary_commit(&w);
    s.drive();
    ends_on_v2_after_v1(&mut s);
    assert!(s.install_steps().contains(&InstallStep::Canary));
    assert_eq!(s.downloads(), [0]);
}

#[test]
fn a_rollback_verdict_discards_the_canary_and_keeps_the_active_model() {
    let w = World::new();
    let mut s = canary_rollback(&w);
    s.drive();
    ends_on_v1_alone(&mut s);
    assert_eq!(s.discards(), [AbandonReason::Verdict { directive: 2 }]);
    assert_eq!(s.downloads(), [0]);
}

#[test]
fn shadow_then_canary_then_commit_downloads_once() {
    let w = World::new();
    let mut s = shadow_canary_commit(&w);
    s.drive();
    ends_on_v2_after_v1(&mut s);
    let steps = s.install_steps();
    let shadow = steps
        .iter()
        .position(|s| *s == InstallStep::Shadow)
        .unwrap();
    let canary = steps
        .iter()
        .position(|s| *s == InstallStep::Canary)
        .unwrap();
    assert!(shadow < canary);
    assert_eq!(s.downloads(), [0]);
}

#[test]
fn a_rollback_directive_restores_the_previous_model_without_a_download() {
    let w = World::new();
    let mut s = rollback_previous(&w);
    s.drive();
    ends_on_v1_alone(&mut s);
    assert!(s.downloads().is_empty());
    assert!(s.events.iter().any(|e| matches!(e,
        EventKind::RolledBack { to: Some(to), .. } if to.version == "1.0.0")));
}

#[test]
fn retire_removes_the_model_and_acknowledges_with_an_event() {
    let w = World::new();
    let mut s = retire(&w);
    s.drive();
    ends_retired(&mut s);
    assert!(s.events.iter().any(|e| matches!(e,
        EventKind::RolledBack { to: None, reason, .. } if reason.starts_with("retired"))));
}

#[test]
fn an_interrupted_download_resumes_from_the_bytes_written() {
    let w = World::new();
    let mut s = interrupted(&w);
    s.drive();
    ends_on_v2_after_v1(&mut s);
    assert_eq!(s.downloads(), [0, 4_000, 9_000]);
}

#[test]
fn a_download_that_keeps_failing_is_abandoned_after_backing_off() {
    let w = World::new();
    let mut s = Sim::new(&w);
    s.faults.always_interrupt = true;
    s.cmd(10, w.deploy(1, 2, Probation::None));
    s.drive();
    ends_on_v1_alone(&mut s);
    assert_eq!(
        s.discards(),
        [AbandonReason::Download(
            DownloadFailureKind::RetriesExhausted
        )]
    );
    let starts: Vec<u64> = s
        .actions
        .iter()
        .filter(|(_, a)| matches!(a, Action::Download { .. }))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(starts.len(), 8, "one attempt per allowed failure");
    let gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.windows(2).all(|g| g[1] >= g[0]),
        "backoff grows: {gaps:?}"
    );
}

#[test]
fn a_superseding_deploy_discards_the_candidate_in_flight() {
    let w = World::new();
    let mut s = superseded(&w);
    s.drive();
    ends_on_v3_after_v1(&mut s);
    assert_eq!(s.discards(), [AbandonReason::Superseded { by: 2 }]);
    // The first job's chunks stopped; any of its completions are stale.
    assert!(
        s.errors
            .iter()
            .all(|e| matches!(e, UpdateError::Unexpected { .. }))
    );
}

#[test]
fn duplicated_out_of_order_expired_and_replayed_directives_are_refused() {
    let w = World::new();
    let mut s = Sim::new(&w);
    let deploy3 = w.deploy(3, 2, Probation::None);
    s.cmd(10, deploy3.clone());
    s.cmd(11, deploy3.clone()); // duplicated
    s.cmd(12, w.deploy(2, 3, Probation::None)); // out of order
    let mut expired = w.directive(
        4,
        DirectiveAction::Rollback {
            target: w.v(1).reference(),
        },
    );
    expired.expires = NOW + 5;
    s.cmd(13, w.command_for(&expired, &w.director)); // expired
    let forged = w.directive(
        9,
        DirectiveAction::Rollback {
            target: w.v(1).reference(),
        },
    );
    s.cmd(14, w.command_for(&forged, &w.intruder)); // not the director's key
    let mut other = w.directive(10, DirectiveAction::Rebirth);
    other.selector = Selector::Device(DeviceId::new("pump-18").unwrap());
    s.cmd(15, w.command_for(&other, &w.director)); // another device
    s.cmd(500, deploy3); // replayed later
    s.drive();
    ends_on_v2_after_v1(&mut s);
    assert_eq!(
        s.refusals(),
        [
            "replay",
            "replay",
            "expired",
            "key_not_in_role",
            "wrong_device",
            "replay"
        ]
    );
    assert_eq!(s.core().trust().last_sequence, 3);
    assert_eq!(s.downloads(), [0]);
    let refused = s
        .errors
        .iter()
        .filter(|e| matches!(e, UpdateError::Refused(_)))
        .count();
    assert_eq!(refused, 6);
}

#[test]
fn a_directive_without_an_artifact_url_does_not_use_up_its_sequence() {
    let w = World::new();
    let mut s = Sim::new(&w);
    let mut bare = w.deploy(1, 2, Probation::None);
    bare.artifact_url = None;
    s.cmd(10, bare);
    s.cmd(20, w.deploy(1, 2, Probation::None));
    s.drive();
    ends_on_v2_after_v1(&mut s);
    assert_eq!(s.refusals(), ["artifact_url_missing"]);
}

#[test]
fn a_tampered_download_is_refused_and_the_active_model_kept() {
    let w = World::new();
    let mut s = Sim::new(&w);
    s.faults.tamper = true;
    s.cmd(10, w.deploy(1, 2, Probation::None));
    s.drive();
    ends_on_v1_alone(&mut s);
    assert_eq!(s.refusals(), ["hash_mismatch"]);
    assert_eq!(
        s.discards(),
        [AbandonReason::Unverified {
            check: "hash_mismatch".into()
        }]
    );
}

#[test]
fn endless_data_is_cut_off_at_the_signed_length() {
    let w = World::new();
    let mut s = Sim::new(&w);
    s.faults.endless = true;
    s.cmd(10, w.deploy(1, 2, Probation::None));
    s.drive();
    ends_on_v1_alone(&mut s);
    assert_eq!(s.refusals(), ["endless_data"]);
}

#[test]
fn a_corrupted_staged_file_is_refused_at_the_self_test() {
    let w = World::new();
    let mut s = Sim::new(&w);
    s.faults.rot_staged = true;
    s.cmd(10, w.deploy(1, 2, Probation::Canary));
    s.drive();
    ends_on_v1_alone(&mut s);
    assert_eq!(s.refusals(), ["hash_mismatch"]);
    assert!(!s.install_steps().contains(&InstallStep::SelfTested));
}

#[test]
fn a_failing_self_test_rolls_back() {
    let w = World::new();
    let mut s = Sim::new(&w);
    s.faults.fail_self_test.insert(w.v(2).sha256);
    s.cmd(10, w.deploy(1, 2, Probation::None));
    s.drive();
    ends_on_v1_alone(&mut s);
    assert!(matches!(
        &s.discards()[..],
        [AbandonReason::SelfTest { .. }]
    ));
    assert!(s.events.iter().any(|e| matches!(e,
        EventKind::RolledBack { reason, .. } if reason.starts_with("self_test_failed"))));
}

#[test]
fn a_full_disk_is_a_typed_failure_and_leaves_the_active_model_alone() {
    let w = World::new();
    let mut s = Sim::new(&w);
    s.faults.disk_full = true;
    s.cmd(10, w.deploy(1, 2, Probation::None));
    s.drive();
    ends_on_v1_alone(&mut s);
    assert_eq!(
        s.discards(),
        [AbandonReason::Disk(DiskFailureKind::NoSpace)]
    );
    assert!(s.events.iter().any(|e| matches!(e,
        EventKind::RolledBack { reason, .. } if reason.starts_with("disk_full"))));
}

#[test]
fn offline_grace_expiry_during_a_canary_rolls_back() {
    let w = World::new();
    let mut s = Sim::new(&w);
    s.cmd(10, w.deploy(1, 2, Probation::Canary));
    s.drive();
    ends_on_v1_alone(&mut s);
    assert_eq!(s.discards(), [AbandonReason::GraceExpired]);
    let started = s
        .actions
        .iter()
        .find(|(_, a)| matches!(a, Action::StartProbation { .. }))
        .unwrap()
        .0;
    let dropped = s
        .actions
        .iter()
        .find(|(_, a)| matches!(a, Action::Discard { .. }))
        .unwrap()
        .0;
    assert_eq!(dropped - started, GRACE);
}

#[test]
fn contact_with_the_server_keeps_a_canary_alive_past_the_grace() {
    let w = World::new();
    let mut s = Sim::new(&w);
    s.cmd(10, w.deploy(1, 2, Probation::Canary));
    for t in (1_000..=10_000).step_by(1_000) {
        s.at(t, Ev::Contact);
    }
    s.cmd(10_500, w.deploy(2, 2, Probation::None));
    s.drive();
    ends_on_v2_after_v1(&mut s);
    assert!(s.discards().is_empty());
}

#[test]
fn keep_candidate_grace_keeps_the_canary_until_a_verdict() {
    let w = World::new();
    let mut s = Sim::new(&w);
    let mut d = w.directive(
        1,
        DirectiveAction::Deploy {
            target: w.v(2).reference(),
            probation: Probation::Canary,
        },
    );
    d.offline_grace.then = GraceAction::KeepCandidate;
    s.cmd(10, w.command_for(&d, &w.director));
    s.cmd(5 * GRACE, w.deploy(2, 2, Probation::None));
    s.drive();
    ends_on_v2_after_v1(&mut s);
    assert!(s.discards().is_empty());
}

#[test]
fn a_health_failure_during_a_canary_rolls_back() {
    let w = World::new();
    let mut s = Sim::new(&w);
    s.cmd(10, w.deploy(1, 2, Probation::Canary));
    s.at(300, Ev::Health(HealthFailure::ErrorRate { per_mille: 120 }));
    s.drive();
    ends_on_v1_alone(&mut s);
    assert_eq!(
        s.discards(),
        [AbandonReason::Health(HealthFailure::ErrorRate {
            per_mille: 120
        })]
    );
}

#[test]
fn a_restart_after_the_grace_ran_out_rolls_back_at_once() {
    let w = World::new();
    let mut s = Sim::new(&w);
    s.cmd(10, w.deploy(1, 2, Probation::Canary));
    while s.probation.is_none() {
        assert!(s.step());
    }
    s.t += 2 * GRACE; // powered off for two hours
    s.crash();
    assert!(matches!(s.core().state(), State::Idle));
    s.drive();
    ends_on_v1_alone(&mut s);
    assert_eq!(s.discards(), [AbandonReason::GraceExpired]);
}

#[test]
fn a_directive_during_a_commit_waits_for_the_rename() {
    let w = World::new();
    let mut s = Sim::new(&w);
    s.cmd(10, w.deploy(1, 2, Probation::None));
    while !matches!(s.core().state(), State::Committing(_)) {
        assert!(s.step());
    }
    let now = s.now();
    let rollback = w.rollback(2, 1);
    s.core().handle_command(now, &rollback).unwrap();
    assert_eq!(s.core().trust().last_sequence, 1, "held, not yet verified");
    s.drive();
    ends_on_v1_alone(&mut s);
    assert_eq!(s.core().trust().last_sequence, 2);
}

#[test]
fn handle_timeout_is_idempotent() {
    let w = World::new();
    let mut s = Sim::new(&w);
    s.cmd(10, w.deploy(1, 2, Probation::Canary));
    while s.probation.is_none() {
        assert!(s.step());
    }
    while s.core().poll_action().is_some() {}
    let due = s.core().poll_timeout().unwrap();
    s.core().handle_timeout(due - Duration::from_secs(1));
    assert!(s.core().poll_action().is_none(), "not due yet");
    s.core().handle_timeout(due);
    let first: Vec<_> = std::iter::from_fn(|| s.core().poll_action()).collect();
    assert!(first.iter().any(|a| matches!(a, Action::Discard { .. })));
    s.core().handle_timeout(due);
    assert!(s.core().poll_action().is_none());
    assert!(s.core().poll_timeout().is_none());
}

#[test]
fn a_record_of_another_format_is_refused() {
    let w = World::new();
    let s = Sim::new(&w);
    let mut r = s.core.as_ref().unwrap().record();
    r.format = 99;
    let e = Updater::restore(
        w.verifier(),
        UpdateConfig::default(),
        r,
        Slots::new(),
        s.now(),
        NOW,
    )
    .unwrap_err();
    assert_eq!(
        e,
        UpdateError::RecordFormat {
            found: 99,
            expected: 1
        }
    );
}

#[test]
fn a_crash_at_every_step_resumes_or_rolls_back_to_a_verified_model() {
    let w = World::new();
    let cases: [(&str, Build, Check, u64); 8] = [
        ("deploy", deploy_now, ends_on_v2_after_v1, 1),
        ("canary+commit", canary_commit, ends_on_v2_after_v1, 2),
        ("canary+rollback", canary_rollback, ends_on_v1_alone, 2),
        (
            "shadow+canary+commit",
            shadow_canary_commit,
            ends_on_v2_after_v1,
            3,
        ),
        (
            "rollback to previous",
            rollback_previous,
            ends_on_v1_alone,
            1,
        ),
        ("retire", retire, ends_retired, 1),
        ("interrupted download", interrupted, ends_on_v2_after_v1, 1),
        ("superseded", superseded, ends_on_v3_after_v1, 2),
    ];
    let mut total = 0;
    let mut tally = BTreeMap::new();
    for (name, build, end, seq) in cases {
        let n = crash_everywhere(&w, build, end, seq, &mut tally);
        eprintln!("{name}: {n} crash points");
        total += n;
    }
    eprintln!("total: {total} crash points; on restart, by persisted step:");
    for ((step, did), n) in &tally {
        eprintln!("  {step:>13} -> {did}: {n}");
    }
    assert!(total > 300, "{total}");
    // Every kind of resume happened at least once.
    let did = |step: &str, what: &str| tally.keys().any(|(s, d)| s == step && d.contains(what));
    assert!(did("downloading", "Download(resume_from>0: true)"));
    assert!(did("verifying", "VerifyArtifact"));
    assert!(did("staging", "Stage"));
    assert!(did("self_testing", "SelfTest"));
    assert!(did("probation", "StartProbation"));
    assert!(did("committing", "Commit"));
    assert!(did("committing", "finished the step"));
    assert!(did("rolling_back", "finished the step"));
    assert!(did("rolling_back", "RollBack"));
    assert!(did("retiring", "Retire"));
}

#[test]
fn a_paused_download_resumes_from_its_bytes_at_once_without_counting_a_failure() {
    let w = World::new();
    let mut s = Sim::new(&w);
    s.cmd(10, w.deploy(1, 2, Probation::None));
    let name = part(&w.versions[1].0.sha256);
    while s.files.get(&name).map_or(0, Vec::len) < CHUNK {
        assert!(s.step(), "the download never started");
    }
    // The shell stops between reads (a command is waiting): no further
    // chunk or report of this attempt arrives.
    s.pending.retain(|(_, _, ev)| {
        !matches!(ev, Ev::Chunk { .. } | Ev::Progress { .. } | Ev::Done { .. })
    });
    let have = s.files[&name].len() as u64;
    let now = s.now();
    s.core().handle_download_paused(now, 1, have).unwrap();
    match s.core().state() {
        State::Downloading(d) => {
            assert_eq!((d.done, d.failures), (have, 0));
            assert!(d.retry_at.is_some());
        }
        other => panic!("{other:?}"),
    }
    // Persisted first, and due at once: no backoff.
    let persist = s.core().poll_action().unwrap();
    assert!(matches!(persist, Action::Persist(_)));
    s.queued.push_back(persist);
    assert!(s.core().poll_timeout().unwrap() <= now);
    // A second pause report for the same attempt is refused.
    assert!(s.core().handle_download_paused(now, 1, have).is_err());
    s.drive();
    ends_on_v2_after_v1(&mut s);
    assert_eq!(s.downloads(), [0, have]);
}
