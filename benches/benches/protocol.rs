//! Wire and trust costs on the device: decoding a command, verifying a
//! deploy (1 director + 2 release Ed25519 signatures), hashing an artifact.
//!
//! `cargo bench -p outpost-benches --bench protocol`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use outpost_protocol::bytes::Sha256;
use outpost_protocol::codec;
use outpost_protocol::messages::{Command, DeviceMessage};
use outpost_protocol::topic::{DeviceId, TopicKind};
use outpost_protocol::trust::keys::{self, SigningKey};
use outpost_protocol::trust::*;

const NOW: u64 = 1_800_000_000;

fn setup() -> (Verifier, TrustState, Command, TargetMeta, Vec<u8>) {
    let k = || SigningKey::generate().expect("key");
    let (r, rel1, rel2, d) = (k(), k(), k(), k());
    let root = Root {
        version: 1,
        expires: NOW + 1_000_000,
        keys: [&r, &rel1, &rel2, &d]
            .iter()
            .map(|k| k.public_key())
            .collect(),
        root: RoleKeys {
            threshold: 1,
            keys: vec![r.key_id()],
        },
        release: RoleKeys {
            threshold: 2,
            keys: vec![rel1.key_id(), rel2.key_id()],
        },
        director: RoleKeys {
            threshold: 1,
            keys: vec![d.key_id()],
        },
    };
    let state =
        TrustState::pinned(&keys::sign(&root, Role::Root, &[&r]).expect("sign")).expect("pinned");
    let artifact: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    let target = TargetMeta {
        name: "digits".into(),
        version: "2.0.0".into(),
        sha256: Sha256::of(&artifact),
        length: artifact.len() as u64,
        constraints: TargetConstraints::default(),
    };
    let release = ReleaseMetadata {
        version: 1,
        expires: NOW + 1000,
        targets: vec![target.clone()],
    };
    let directive = Directive {
        sequence: 1,
        selector: Selector::Device(DeviceId::new("pump-17").expect("id")),
        action: DirectiveAction::Deploy {
            target: target.reference(),
            probation: Probation::Canary,
        },
        rollout: None,
        issued_at: NOW,
        expires: NOW + 1000,
        offline_grace: OfflineGrace {
            max_offline_secs: 3600,
            then: GraceAction::RollBack,
        },
    };
    let command = Command {
        directive: keys::sign(&directive, Role::Director, &[&d]).expect("sign"),
        release: Some(keys::sign(&release, Role::Release, &[&rel1, &rel2]).expect("sign")),
        artifact_url: Some("http://127.0.0.1:7070/v1/packages/digits/2.0.0".into()),
    };
    let verifier = Verifier::new(DeviceIdentity {
        id: DeviceId::new("pump-17").expect("id"),
        arch: "x86_64".into(),
        memory_mb: 4096,
        engines: vec!["cpu".into()],
        cohorts: vec![],
    });
    (verifier, state, command, target, artifact)
}

fn bench(c: &mut Criterion) {
    let (verifier, state, command, target, artifact) = setup();
    let bytes = codec::encode(&command).expect("encode");
    c.bench_function("decode_command", |b| {
        b.iter(|| DeviceMessage::decode(TopicKind::Commands, &bytes).expect("decode"))
    });
    c.bench_function("verify_deploy", |b| {
        b.iter(|| {
            verifier
                .decide(&state, &command.directive, command.release.as_ref(), NOW)
                .expect("accepted")
        })
    });
    let mut g = c.benchmark_group("artifact_check");
    g.throughput(Throughput::Bytes(artifact.len() as u64));
    g.bench_function("sha256_4MiB", |b| {
        b.iter(|| {
            let mut check = ArtifactCheck::new(&target);
            for chunk in artifact.chunks(64 * 1024) {
                check.update(chunk).expect("within length");
            }
            check.finish().expect("matches")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
