//! The verifier against hostile metadata and artifacts (one test per
//! attack class), and its good paths.

use outpost_protocol::bytes::{KeyId, Sha256};
use outpost_protocol::codec::DecodeError;
use outpost_protocol::topic::DeviceId;
use outpost_protocol::trust::keys::{self, SigningKey};
use outpost_protocol::trust::*;

use crate::common::*;

fn verifier() -> Verifier {
    Verifier::new(identity())
}

fn decide(w: &World, d: &Directive) -> Result<Decision, TrustError> {
    verifier().decide(&w.state(), &w.sign_directive(d), Some(&w.release()), NOW)
}

#[test]
fn a_signed_deploy_is_accepted_and_the_state_advances() {
    let w = World::new();
    let decision = decide(&w, &w.deploy(7, &w.target)).unwrap();
    assert_eq!(decision.target.as_ref(), Some(&w.target));
    assert_eq!(decision.directive.sequence, 7);
    assert_eq!(decision.state.last_sequence, 7);
    assert_eq!(decision.state.last_seen, NOW);
    let mut check = ArtifactCheck::new(&w.target);
    for chunk in w.artifact.chunks(777) {
        check.update(chunk).unwrap();
    }
    check.finish().unwrap();
    assert_eq!(
        check_reader(&w.target, w.artifact.as_slice()).unwrap(),
        Ok(())
    );
}

#[test]
fn actions_without_a_target_need_no_release_metadata() {
    let w = World::new();
    for action in [
        DirectiveAction::Rebirth,
        DirectiveAction::Retire {
            model: "digits".into(),
        },
    ] {
        let d = w.sign_directive(&w.directive(1, action.clone()));
        let decision = verifier().decide(&w.state(), &d, None, NOW).unwrap();
        assert_eq!(decision.directive.action, action);
        assert_eq!(decision.target, None);
    }
}

#[test]
fn a_tampered_artifact_is_refused() {
    let w = World::new();
    let mut bad = w.artifact.clone();
    bad[5000] ^= 1;
    let err = check_reader(&w.target, bad.as_slice())
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, TrustError::HashMismatch { expected, .. } if expected == w.target.sha256)
    );
    let short = &w.artifact[..w.artifact.len() - 1];
    let err = check_reader(&w.target, short).unwrap().unwrap_err();
    assert_eq!(
        err,
        TrustError::LengthMismatch {
            expected: 10_000,
            got: 9_999
        }
    );
}

#[test]
fn endless_data_is_cut_off_at_the_signed_length() {
    let w = World::new();
    // An endless stream: check_reader must stop by itself.
    let err = check_reader(&w.target, std::io::repeat(0u8))
        .unwrap()
        .unwrap_err();
    assert_eq!(err, TrustError::EndlessData { length: 10_000 });
    let mut check = ArtifactCheck::new(&w.target);
    check.update(&w.artifact).unwrap();
    assert_eq!(
        check.update(&[0]),
        Err(TrustError::EndlessData { length: 10_000 })
    );
    assert_eq!(check.seen(), 10_000);
}

#[test]
fn tampered_metadata_is_refused() {
    let w = World::new();
    let mut release = w.release();
    // Flip the last payload byte (inside the target's constraints).
    *release.payload.last_mut().unwrap() ^= 0x01;
    let err = verifier()
        .verify_release(&w.state(), &release, NOW)
        .unwrap_err();
    assert!(matches!(
        err,
        TrustError::BadSignature {
            role: Role::Release,
            ..
        }
    ));
    let mut directive = w.sign_directive(&w.deploy(1, &w.target));
    directive.payload[3] ^= 0x40;
    let err = verifier()
        .decide(&w.state(), &directive, Some(&w.release()), NOW)
        .unwrap_err();
    assert!(matches!(
        err,
        TrustError::BadSignature {
            role: Role::Director,
            ..
        }
    ));
}

#[test]
fn a_signature_by_the_wrong_key_is_refused() {
    let w = World::new();
    // Claims to be release key 1, signed with a key nobody trusts.
    let forger = SigningKey::generate().unwrap();
    let mut release = keys::sign(
        &w.release_meta(vec![w.target.clone()]),
        Role::Release,
        &[&w.release_keys[0], &forger],
    )
    .unwrap();
    release.signatures[1].key_id = w.release_keys[1].key_id();
    let err = verifier()
        .verify_release(&w.state(), &release, NOW)
        .unwrap_err();
    assert_eq!(
        err,
        TrustError::BadSignature {
            role: Role::Release,
            key_id: w.release_keys[1].key_id()
        }
    );
    // A trusted key of another role: the director cannot sign releases.
    let release = keys::sign(
        &w.release_meta(vec![w.target.clone()]),
        Role::Release,
        &[&w.release_keys[0], &w.director],
    )
    .unwrap();
    let err = verifier()
        .verify_release(&w.state(), &release, NOW)
        .unwrap_err();
    assert_eq!(
        err,
        TrustError::KeyNotInRole {
            role: Role::Release,
            key_id: w.director.key_id()
        }
    );
}

#[test]
fn a_signature_for_one_role_never_counts_for_another() {
    // One key holding both the release and the director role: its release
    // signature over a payload must not verify as a directive signature.
    let mut w = World::new();
    w.root.director = role(1, &[&w.release_keys[0]]);
    let d = w.deploy(1, &w.target);
    let mut signed = keys::sign(&d, Role::Release, &[&w.release_keys[0]]).unwrap();
    let err = verifier()
        .decide(&w.state(), &signed, Some(&w.release()), NOW)
        .unwrap_err();
    assert_eq!(
        err,
        TrustError::BadSignature {
            role: Role::Director,
            key_id: w.release_keys[0].key_id()
        }
    );
    signed = keys::sign(&d, Role::Director, &[&w.release_keys[0]]).unwrap();
    verifier()
        .decide(&w.state(), &signed, Some(&w.release()), NOW)
        .unwrap();
}

#[test]
fn a_signature_by_an_unknown_key_is_refused() {
    let w = World::new();
    let stranger = SigningKey::generate().unwrap();
    let d = keys::sign(&w.deploy(1, &w.target), Role::Director, &[&stranger]).unwrap();
    let err = verifier()
        .decide(&w.state(), &d, Some(&w.release()), NOW)
        .unwrap_err();
    assert_eq!(
        err,
        TrustError::UnknownKey {
            role: Role::Director,
            key_id: stranger.key_id()
        }
    );
}

#[test]
fn the_same_signature_counted_twice_is_refused() {
    let w = World::new();
    let mut release = keys::sign(
        &w.release_meta(vec![w.target.clone()]),
        Role::Release,
        &[&w.release_keys[0]],
    )
    .unwrap();
    let dup = release.signatures[0].clone();
    release.signatures.push(dup);
    let err = verifier()
        .verify_release(&w.state(), &release, NOW)
        .unwrap_err();
    assert_eq!(
        err,
        TrustError::DuplicateSignature {
            role: Role::Release,
            key_id: w.release_keys[0].key_id()
        }
    );
}

#[test]
fn signatures_below_the_threshold_are_refused() {
    let w = World::new();
    let release = keys::sign(
        &w.release_meta(vec![w.target.clone()]),
        Role::Release,
        &[&w.release_keys[2]],
    )
    .unwrap();
    let err = verifier()
        .verify_release(&w.state(), &release, NOW)
        .unwrap_err();
    assert_eq!(
        err,
        TrustError::BelowThreshold {
            role: Role::Release,
            valid: 1,
            threshold: 2
        }
    );
    let unsigned = Signed::<Directive>::from_parts(
        Signed::payload_of(&w.deploy(1, &w.target)).unwrap(),
        vec![],
    );
    let err = verifier()
        .decide(&w.state(), &unsigned, Some(&w.release()), NOW)
        .unwrap_err();
    assert_eq!(err.check(), "below_threshold");
    // k-of-n signing passes the envelope between holders: 2 of 3 suffice.
    let mut release = keys::sign(
        &w.release_meta(vec![w.target.clone()]),
        Role::Release,
        &[&w.release_keys[2]],
    )
    .unwrap();
    keys::add_signature(&mut release, Role::Release, &w.release_keys[0]);
    keys::add_signature(&mut release, Role::Release, &w.release_keys[0]);
    assert_eq!(release.signatures.len(), 2);
    verifier()
        .verify_release(&w.state(), &release, NOW)
        .unwrap();
}

#[test]
fn expired_release_metadata_is_refused() {
    let w = World::new();
    let mut meta = w.release_meta(vec![w.target.clone()]);
    meta.expires = NOW - 1;
    let err = verifier()
        .verify_release(&w.state(), &w.sign_release(&meta), NOW)
        .unwrap_err();
    assert_eq!(
        err,
        TrustError::Expired {
            role: Role::Release,
            expires: NOW - 1,
            now: NOW
        }
    );
    // Through a directive too: both roles must verify.
    let d = w.sign_directive(&w.deploy(1, &w.target));
    let err = verifier()
        .decide(&w.state(), &d, Some(&w.sign_release(&meta)), NOW)
        .unwrap_err();
    assert!(matches!(
        err,
        TrustError::Expired {
            role: Role::Release,
            ..
        }
    ));
}

#[test]
fn an_expired_directive_is_refused_even_when_the_clock_is_set_back() {
    let w = World::new();
    let d = w.sign_directive(&w.deploy(5, &w.target));
    let err = verifier()
        .decide(&w.state(), &d, Some(&w.release()), NOW + DAY)
        .unwrap_err();
    assert!(matches!(
        err,
        TrustError::Expired {
            role: Role::Director,
            ..
        }
    ));
    // The device has seen NOW + 2 days; its clock is then reset to NOW.
    // The stale directive must still count as expired (freeze attack).
    let mut state = w.state();
    state.last_seen = NOW + 2 * DAY;
    let err = verifier()
        .decide(&state, &d, Some(&w.release()), NOW)
        .unwrap_err();
    assert_eq!(
        err,
        TrustError::Expired {
            role: Role::Director,
            expires: NOW + DAY,
            now: NOW + 2 * DAY
        }
    );
}

#[test]
fn an_expired_root_freezes_every_install() {
    let mut w = World::new();
    w.root.expires = NOW;
    let d = w.sign_directive(&w.deploy(1, &w.target));
    let err = verifier()
        .decide(&w.state(), &d, Some(&w.release()), NOW)
        .unwrap_err();
    assert!(matches!(
        err,
        TrustError::Expired {
            role: Role::Root,
            ..
        }
    ));
}

#[test]
fn a_replayed_directive_is_refused() {
    let w = World::new();
    let d = w.sign_directive(&w.deploy(10, &w.target));
    let first = verifier()
        .decide(&w.state(), &d, Some(&w.release()), NOW)
        .unwrap();
    let err = verifier()
        .decide(&first.state, &d, Some(&w.release()), NOW + 60)
        .unwrap_err();
    assert_eq!(
        err,
        TrustError::Replay {
            sequence: 10,
            last: 10
        }
    );
    let older = w.sign_directive(&w.deploy(9, &w.target));
    let err = verifier()
        .decide(&first.state, &older, Some(&w.release()), NOW + 60)
        .unwrap_err();
    assert_eq!(err.check(), "replay");
}

#[test]
fn going_back_to_an_older_model_is_a_new_directive_and_is_accepted() {
    let w = World::new();
    let old_artifact = b"model one".to_vec();
    let old = target_for("digits", "1.0.0", &old_artifact);
    let release = w.sign_release(&w.release_meta(vec![old.clone(), w.target.clone()]));
    let v = verifier();
    let up = v
        .decide(
            &w.state(),
            &w.sign_directive(&w.deploy(1, &w.target)),
            Some(&release),
            NOW,
        )
        .unwrap();
    let back = w.directive(
        2,
        DirectiveAction::Rollback {
            target: old.reference(),
        },
    );
    let down = v
        .decide(&up.state, &w.sign_directive(&back), Some(&release), NOW + 5)
        .unwrap();
    assert_eq!(down.target, Some(old.clone()));
    assert_eq!(down.state.last_sequence, 2);
    // ... and so is a deploy of the old version.
    let again = v
        .decide(
            &down.state,
            &w.sign_directive(&w.deploy(3, &old)),
            Some(&release),
            NOW + 6,
        )
        .unwrap();
    assert_eq!(again.target, Some(old));
}

#[test]
fn a_directive_for_another_device_or_cohort_is_refused() {
    let w = World::new();
    let mut d = w.deploy(1, &w.target);
    d.selector = Selector::Device(DeviceId::new("pump-18").unwrap());
    let err = decide(&w, &d).unwrap_err();
    assert_eq!(
        err,
        TrustError::WrongDevice {
            selector: "device pump-18".into(),
            device: device()
        }
    );
    d.selector = Selector::Cohort("line-b".into());
    assert_eq!(decide(&w, &d).unwrap_err().check(), "wrong_device");
    d.selector = Selector::Cohort("line-a".into());
    decide(&w, &d).unwrap();
}

#[test]
fn a_target_that_does_not_fit_the_device_is_refused() {
    let w = World::new();
    for (constraints, needle) in [
        (
            TargetConstraints {
                arch: vec!["x86_64".into()],
                ..Default::default()
            },
            "arch",
        ),
        (
            TargetConstraints {
                min_memory_mb: Some(8192),
                ..Default::default()
            },
            "memory",
        ),
        (
            TargetConstraints {
                engine: Some("gpu".into()),
                ..Default::default()
            },
            "gpu",
        ),
    ] {
        let target = TargetMeta {
            constraints,
            ..w.target.clone()
        };
        let release = w.sign_release(&w.release_meta(vec![target.clone()]));
        let err = verifier()
            .decide(
                &w.state(),
                &w.sign_directive(&w.deploy(1, &target)),
                Some(&release),
                NOW,
            )
            .unwrap_err();
        match err {
            TrustError::TargetMismatch { reason, .. } => assert!(reason.contains(needle)),
            other => panic!("expected a target mismatch, got {other}"),
        }
    }
}

#[test]
fn mix_and_match_is_refused() {
    let w = World::new();
    // The director points at other bytes under the released name/version.
    let mut evil = w.target.clone();
    evil.sha256 = Sha256::of(b"something else");
    let err = decide(&w, &w.deploy(1, &evil)).unwrap_err();
    match &err {
        TrustError::MixAndMatch { directive, release } => {
            assert_eq!(directive.sha256, evil.sha256);
            assert_eq!(release.sha256, w.target.sha256);
        }
        other => panic!("expected mix-and-match, got {other}"),
    }
    // Same hash, longer length (room for endless data).
    let mut longer = w.target.clone();
    longer.length += 1;
    assert_eq!(
        decide(&w, &w.deploy(1, &longer)).unwrap_err().check(),
        "mix_and_match"
    );
    // A version the release keys never signed.
    let mut unsigned = w.target.clone();
    unsigned.version = "9.9.9".into();
    assert_eq!(
        decide(&w, &w.deploy(1, &unsigned)).unwrap_err(),
        TrustError::NotInRelease {
            name: "digits".into(),
            version: "9.9.9".into()
        }
    );
    // A deploy without any release metadata.
    let err = verifier()
        .decide(
            &w.state(),
            &w.sign_directive(&w.deploy(1, &w.target)),
            None,
            NOW,
        )
        .unwrap_err();
    assert_eq!(err.check(), "release_missing");
}

#[test]
fn garbage_under_valid_signatures_is_a_decode_error() {
    let w = World::new();
    let mut s = Signed::<Directive>::from_parts(vec![1, 0xff, 0xff, 0xff], vec![]);
    keys::add_signature(&mut s, Role::Director, &w.director);
    let err = verifier().decide(&w.state(), &s, None, NOW).unwrap_err();
    assert!(matches!(
        err,
        TrustError::Decode {
            role: Role::Director,
            source: DecodeError::Malformed(_) | DecodeError::Truncated(_)
        }
    ));
}

/// Root v2: release key 0 is replaced by a new key; root keys rotate too.
fn rotation(w: &World) -> (Root, Vec<SigningKey>, SigningKey) {
    let new_root_keys = new_keys(2);
    let new_release = SigningKey::generate().unwrap();
    let release: Vec<&SigningKey> = vec![&new_release, &w.release_keys[1], &w.release_keys[2]];
    let mut keys: Vec<&SigningKey> = new_root_keys.iter().chain(release.clone()).collect();
    keys.push(&w.director);
    let root = Root {
        version: 2,
        expires: NOW + 365 * DAY,
        keys: keys.iter().map(|k| k.public_key()).collect(),
        root: role(2, &new_root_keys.iter().collect::<Vec<_>>()),
        release: role(2, &release),
        director: role(1, &[&w.director]),
    };
    (root, new_root_keys, new_release)
}

#[test]
fn a_key_removed_by_root_rotation_is_no_longer_trusted() {
    let w = World::new();
    let (v2, new_root_keys, new_release) = rotation(&w);
    let signed = keys::sign_root_rotation(
        &v2,
        &[&w.root_keys[0], &w.root_keys[2]],
        &[&new_root_keys[0], &new_root_keys[1]],
    )
    .unwrap();
    let state = w.state().rotate(&signed).unwrap();
    assert_eq!(state.root.version, 2);
    // Release key 0 signed this, and root v2 removed it.
    let err = verifier()
        .verify_release(&state, &w.release(), NOW)
        .unwrap_err();
    assert_eq!(
        err,
        TrustError::UnknownKey {
            role: Role::Release,
            key_id: w.release_keys[0].key_id()
        }
    );
    // The replacement key counts.
    let meta = w.release_meta(vec![w.target.clone()]);
    let release = keys::sign(&meta, Role::Release, &[&new_release, &w.release_keys[1]]).unwrap();
    verifier().verify_release(&state, &release, NOW).unwrap();
    // And an old root key can no longer sign roots.
    let (mut v3, ..) = rotation(&w);
    v3.version = 3;
    let signed = keys::sign(&v3, Role::Root, &[&w.root_keys[0], &w.root_keys[1]]).unwrap();
    assert!(matches!(
        state.rotate(&signed).unwrap_err(),
        TrustError::UnknownKey {
            role: Role::Root,
            ..
        }
    ));
}

#[test]
fn a_root_rotation_signed_only_by_the_new_keys_is_refused() {
    let w = World::new();
    let (v2, new_root_keys, _) = rotation(&w);
    let signed = keys::sign(&v2, Role::Root, &[&new_root_keys[0], &new_root_keys[1]]).unwrap();
    assert_eq!(
        w.state().rotate(&signed).unwrap_err(),
        TrustError::RotationNotAuthorized {
            version: 2,
            valid: 0,
            threshold: 2
        }
    );
    // Only by the old keys: the new root does not vouch for itself.
    let signed = keys::sign(&v2, Role::Root, &[&w.root_keys[0], &w.root_keys[1]]).unwrap();
    assert_eq!(
        w.state().rotate(&signed).unwrap_err(),
        TrustError::BelowThreshold {
            role: Role::Root,
            valid: 0,
            threshold: 2
        }
    );
}

#[test]
fn root_versions_must_follow_one_another() {
    let w = World::new();
    let (mut v3, new_root_keys, _) = rotation(&w);
    v3.version = 3;
    let all = [
        &w.root_keys[0],
        &w.root_keys[1],
        &new_root_keys[0],
        &new_root_keys[1],
    ];
    let signed = keys::sign(&v3, Role::Root, &all).unwrap();
    assert_eq!(
        w.state().rotate(&signed).unwrap_err(),
        TrustError::RootVersion { current: 1, got: 3 }
    );
    // A chain 1 → 2 → 3 is applied in order; the sequence survives it.
    let (v2, k2, _) = rotation(&w);
    let s2 = keys::sign_root_rotation(&v2, &[&w.root_keys[0], &w.root_keys[1]], &[&k2[0], &k2[1]])
        .unwrap();
    let mut v3b = v2.clone();
    v3b.version = 3;
    let s3 = keys::sign(&v3b, Role::Root, &[&k2[0], &k2[1]]).unwrap();
    let mut state = w.state();
    state.last_sequence = 41;
    let state = state.rotate_chain([&s2, &s3]).unwrap();
    assert_eq!((state.root.version, state.last_sequence), (3, 41));
}

#[test]
fn a_pinned_root_must_be_valid_and_signed_by_its_threshold() {
    let w = World::new();
    let one = keys::sign(&w.root, Role::Root, &[&w.root_keys[0]]).unwrap();
    assert_eq!(
        TrustState::pinned(&one).unwrap_err(),
        TrustError::BelowThreshold {
            role: Role::Root,
            valid: 1,
            threshold: 2
        }
    );
    let mut bad = w.root.clone();
    bad.release.threshold = 4;
    let signed = keys::sign(&bad, Role::Root, &[&w.root_keys[0], &w.root_keys[1]]).unwrap();
    assert!(matches!(
        TrustState::pinned(&signed).unwrap_err(),
        TrustError::InvalidRoot { .. }
    ));
    let mut bad = w.root.clone();
    bad.director.keys.push(KeyId([9; 32]));
    bad.director.threshold = 1;
    let signed = keys::sign(&bad, Role::Root, &[&w.root_keys[0], &w.root_keys[1]]).unwrap();
    assert_eq!(
        TrustState::pinned(&signed).unwrap_err().check(),
        "invalid_root"
    );
}
