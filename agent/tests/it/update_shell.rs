//! The update machine driven by the real shell: a signed package served
//! over HTTP is downloaded, checked, staged, self-tested with its golden
//! rows, committed by its pointer file and served; a rollback restores the
//! previous model without a download; a tampered package never serves.

use std::time::Instant;

use outpost_agent::config::{BreakerConfig, Fallback};
use outpost_agent::download::http_agent;
use outpost_agent::serve::{LoadContext, LoadedModel, ModelHost};
use outpost_agent::update::{SlotPointer, Slots, UpdateConfig, Updater};
use outpost_agent::update_fs::UpdateFiles;
use outpost_agent::update_shell::{Shell, drive};
use outpost_protocol::messages::{Command, EventKind, InstallStep, ModelRef};
use outpost_protocol::trust::keys;
use outpost_protocol::trust::*;

use crate::common::*;
use crate::download::serve;

struct Device {
    files: UpdateFiles,
    host: ModelHost,
    http: ureq::Agent,
    verifier: Verifier,
    target: outpost_runtime::TargetProfile,
    breaker: BreakerConfig,
    core: Updater,
}

fn model_ref(name: &str, version: &str, bytes: &[u8]) -> ModelRef {
    ModelRef {
        name: name.into(),
        version: version.into(),
        sha256: outpost_protocol::bytes::Sha256::of(bytes),
    }
}

/// A device serving digits 1.0.0 (installed, with its pointer file).
fn device(w: &World) -> Device {
    let config = w.config("shell-dev", 1, "");
    let files = UpdateFiles::open(&config.data_dir).unwrap();
    let trust = TrustState::pinned(
        &outpost_protocol::codec::decode(&std::fs::read(&w.root_path).unwrap(), 1 << 16).unwrap(),
    )
    .unwrap();
    let verifier = Verifier::new(DeviceIdentity {
        id: config.device_id.clone(),
        arch: config.target.arch.clone(),
        memory_mb: config.target.memory_mb,
        engines: vec!["cpu".into()],
        cohorts: vec![],
    });
    let v1 = model_ref("digits", "1.0.0", &w.package);
    std::fs::write(files.package_path(&v1.sha256), &w.package).unwrap();
    let pointer = SlotPointer {
        active: v1.clone(),
        previous: None,
    };
    files.write_pointer("digits", &pointer).unwrap();
    let host = ModelHost::default();
    let ctx = LoadContext {
        state: &trust,
        verifier: &verifier,
        target: &config.target,
        now_unix: now(),
        breaker: &config.breaker,
    };
    host.activate(
        LoadedModel::load_verified(&w.package_path, &w.release_path, &ctx, Fallback::Reject)
            .unwrap(),
    );
    let slots: Slots = files.read_slots().unwrap();
    let core = Updater::new(
        verifier.clone(),
        UpdateConfig::default(),
        trust,
        slots,
        Instant::now(),
        now(),
    );
    Device {
        files,
        host,
        http: http_agent(),
        verifier,
        target: config.target.clone(),
        breaker: config.breaker.clone(),
        core,
    }
}

impl Device {
    fn run(&mut self, cmd: &Command) -> Vec<EventKind> {
        let _ = self.core.handle_command(Instant::now(), cmd);
        let trust = self.core.trust().clone();
        let shell = Shell {
            files: &self.files,
            host: &self.host,
            http: &self.http,
            load: LoadContext {
                state: &trust,
                verifier: &self.verifier,
                target: &self.target,
                now_unix: now(),
                breaker: &self.breaker,
            },
            fallback: Fallback::Reject,
            shadow_budget_percent: 100,
            interrupt: None,
        };
        drive(&mut self.core, &shell).unwrap().events
    }

    fn serving(&self) -> (String, Option<String>) {
        let (a, p) = self.host.slots_of("digits").unwrap();
        (a.version.clone(), p.map(|p| p.version.clone()))
    }
}

fn command(
    w: &World,
    seq: u64,
    action: DirectiveAction,
    targets: &[TargetMeta],
    url: Option<String>,
) -> Command {
    let directive = device_directive("shell-dev", seq, action);
    let release = (!targets.is_empty()).then(|| {
        let meta = ReleaseMetadata {
            version: 1,
            expires: now() + 86_400,
            targets: targets.to_vec(),
        };
        keys::sign(&meta, Role::Release, &[&w.release_key]).unwrap()
    });
    Command {
        directive: keys::sign(&directive, Role::Director, &[&w.director_key]).unwrap(),
        release,
        artifact_url: url,
    }
}

/// Deploys digits 2.0.0 with `probation` from a local HTTP server (which
/// sends a corrupted copy when `tamper`); the target and the events.
fn deploy_v2(
    w: &World,
    d: &mut Device,
    probation: Probation,
    tamper: bool,
) -> (TargetMeta, Vec<EventKind>) {
    let v2 = package_bytes("digits", "2.0.0");
    let t2 = w.target("digits", "2.0.0", &v2);
    let mut served = v2;
    if tamper {
        let n = served.len();
        served[n / 2] ^= 1;
    }
    let server = serve(served);
    let deploy = DirectiveAction::Deploy {
        target: t2.reference(),
        probation,
    };
    let url = Some(format!("{}/ok", server.base));
    let events = d.run(&command(w, 1, deploy, std::slice::from_ref(&t2), url));
    (t2, events)
}

#[test]
fn a_deploy_is_downloaded_self_tested_committed_and_served_and_a_rollback_needs_no_download() {
    let w = World::new();
    let mut d = device(&w);
    let (t2, events) = deploy_v2(&w, &mut d, Probation::None, false);
    assert!(
        events.iter().any(|e| matches!(
            e,
            EventKind::Install {
                step: InstallStep::Committed,
                ..
            }
        )),
        "{events:?}"
    );
    assert_eq!(d.serving(), ("2.0.0".into(), Some("1.0.0".into())));
    let pointer = &d.files.read_slots().unwrap()["digits"];
    assert_eq!(pointer.active.version, "2.0.0");
    assert_eq!(pointer.previous.as_ref().unwrap().version, "1.0.0");
    assert!(d.files.package_path(&t2.sha256).exists());
    assert!(!d.files.download_path(&t2.sha256).exists());
    // It answers.
    let (rows, _) = digits(2);
    let x = outpost_runtime::Tensor::from_shape(&[2, 64], &rows.concat()).unwrap();
    let out = d.host.infer("digits", vec![(None, x)]).unwrap();
    assert_eq!(out.model.version, "2.0.0");

    // Back to 1.0.0: a new directive, no download (the server is gone).
    let v1 = model_ref("digits", "1.0.0", &w.package);
    let t1 = w.target("digits", "1.0.0", &w.package);
    let back = DirectiveAction::Rollback {
        target: t1.reference(),
    };
    let events = d.run(&command(&w, 2, back, &[t1], None));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, EventKind::RolledBack { .. })),
        "{events:?}"
    );
    assert_eq!(d.serving().0, "1.0.0");
    assert_eq!(d.files.read_slots().unwrap()["digits"].active, v1);
    assert!(
        !d.files.package_path(&t2.sha256).exists(),
        "the rolled-back package is deleted"
    );
}

#[test]
fn a_tampered_package_is_never_served() {
    let w = World::new();
    let mut d = device(&w);
    let (t2, events) = deploy_v2(&w, &mut d, Probation::None, true);
    assert!(
        events
            .iter()
            .any(|e| format!("{e:?}").contains("hash_mismatch")),
        "{events:?}"
    );
    assert_eq!(d.serving(), ("1.0.0".into(), None));
    assert_eq!(
        d.files.read_slots().unwrap()["digits"].active.version,
        "1.0.0"
    );
    assert!(!d.files.package_path(&t2.sha256).exists());
    assert!(!d.files.download_path(&t2.sha256).exists());
}

fn digits_input(n: usize) -> outpost_runtime::Tensor {
    let (rows, _) = digits(n);
    outpost_runtime::Tensor::from_shape(&[n, 64], &rows.concat()).unwrap()
}

#[test]
fn a_canary_answers_until_the_verdict_commits_it_without_a_reload() {
    let w = World::new();
    let mut d = device(&w);
    let (t2, events) = deploy_v2(&w, &mut d, Probation::Canary, false);
    assert!(
        events.iter().any(|e| matches!(
            e,
            EventKind::Install {
                step: InstallStep::Canary,
                ..
            }
        )),
        "{events:?}"
    );
    // On probation: the pointer still names 1.0.0; the canary answers.
    assert_eq!(
        d.files.read_slots().unwrap()["digits"].active.version,
        "1.0.0"
    );
    let canary = d.host.candidate_of("digits").unwrap();
    let out = d
        .host
        .infer("digits", vec![(None, digits_input(3))])
        .unwrap();
    assert_eq!(out.answered_by, outpost_agent::serve::AnsweredBy::Candidate);
    assert_eq!(out.model.version, "2.0.0");
    assert!(out.shadow.is_none());
    assert_eq!(canary.stats.snapshot().requests, 1);

    // The server's verdict: Deploy{2.0.0, None} commits the same loaded model.
    let commit = DirectiveAction::Deploy {
        target: t2.reference(),
        probation: Probation::None,
    };
    let events = d.run(&command(&w, 2, commit, std::slice::from_ref(&t2), None));
    assert!(
        events.iter().any(|e| matches!(
            e,
            EventKind::Install {
                step: InstallStep::Committed,
                ..
            }
        )),
        "{events:?}"
    );
    let (active, previous) = d.host.slots_of("digits").unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&active, &canary.model),
        "promoted as loaded"
    );
    assert_eq!(previous.unwrap().version, "1.0.0");
    assert!(d.host.candidate_of("digits").is_none());
    assert_eq!(
        d.files.read_slots().unwrap()["digits"].active.version,
        "2.0.0"
    );
}

#[test]
fn a_shadow_runs_after_the_active_answers_and_a_rollback_verdict_discards_it() {
    let w = World::new();
    let mut d = device(&w);
    let v2 = package_bytes("digits", "2.0.0");
    let t2 = w.target("digits", "2.0.0", &v2);
    let server = serve(v2);
    let shadow_action = DirectiveAction::Shadow {
        target: t2.reference(),
    };
    let url = Some(format!("{}/ok", server.base));
    let events = d.run(&command(
        &w,
        1,
        shadow_action,
        std::slice::from_ref(&t2),
        url,
    ));
    assert!(
        events.iter().any(|e| matches!(
            e,
            EventKind::Install {
                step: InstallStep::Shadow,
                ..
            }
        )),
        "{events:?}"
    );
    let shadow = d.host.candidate_of("digits").unwrap();
    assert_eq!(shadow.mode, outpost_agent::update::ProbationMode::Shadow);
    // Callers see the active model; the shadow run is handed back to run
    // after answering, and compares the two on the same rows.
    let mut out = d
        .host
        .infer("digits", vec![(None, digits_input(5))])
        .unwrap();
    assert_eq!(out.answered_by, outpost_agent::serve::AnsweredBy::Active);
    assert_eq!(out.model.version, "1.0.0");
    let ran = out.shadow.take().unwrap().run();
    assert_eq!(ran.candidate.version, "2.0.0");
    assert!(ran.outputs.is_some());
    let s = shadow.stats.snapshot();
    assert_eq!((s.requests, s.errors, s.rows), (1, 0, 5));
    // Same weights, other version: every row agrees, no score delta.
    assert_eq!(s.agreed, 5);
    assert_eq!(s.delta_max_micros, 0);

    // The verdict: back to 1.0.0 (a rollback to the active model).
    let t1 = w.target("digits", "1.0.0", &w.package);
    let back = DirectiveAction::Rollback {
        target: t1.reference(),
    };
    let events = d.run(&command(&w, 2, back, &[t1], None));
    assert!(
        events.iter().any(
            |e| matches!(e, EventKind::RolledBack { reason, .. } if reason.starts_with("verdict"))
        ),
        "{events:?}"
    );
    assert!(d.host.candidate_of("digits").is_none());
    assert_eq!(d.serving(), ("1.0.0".into(), None));
    assert!(!d.files.package_path(&t2.sha256).exists());
}
