//! A small trust world for the tests: root keys (2 of 3), release keys
//! (2 of 3), one director key, one model artifact, one device.

use outpost_protocol::bytes::Sha256;
use outpost_protocol::topic::DeviceId;
use outpost_protocol::trust::keys::{self, SigningKey};
use outpost_protocol::trust::*;

/// "Now" in the tests: 2027-01-15.
pub const NOW: UnixSeconds = 1_800_000_000;
pub const DAY: UnixSeconds = 86_400;

pub struct World {
    pub root_keys: Vec<SigningKey>,
    pub release_keys: Vec<SigningKey>,
    pub director: SigningKey,
    pub root: Root,
    pub artifact: Vec<u8>,
    pub target: TargetMeta,
}

pub fn device() -> DeviceId {
    DeviceId::new("pump-17").unwrap()
}

pub fn identity() -> DeviceIdentity {
    DeviceIdentity {
        id: device(),
        arch: "aarch64".into(),
        memory_mb: 4096,
        engines: vec!["cpu".into()],
        cohorts: vec!["line-a".into()],
    }
}

pub fn new_keys(n: usize) -> Vec<SigningKey> {
    (0..n).map(|_| SigningKey::generate().unwrap()).collect()
}

pub fn role(threshold: u32, keys: &[&SigningKey]) -> RoleKeys {
    RoleKeys {
        threshold,
        keys: keys.iter().map(|k| k.key_id()).collect(),
    }
}

pub fn target_for(name: &str, version: &str, artifact: &[u8]) -> TargetMeta {
    TargetMeta {
        name: name.into(),
        version: version.into(),
        sha256: Sha256::of(artifact),
        length: artifact.len() as u64,
        constraints: TargetConstraints {
            arch: vec!["aarch64".into(), "x86_64".into()],
            min_memory_mb: Some(512),
            engine: Some("cpu".into()),
        },
    }
}

impl World {
    pub fn new() -> World {
        let root_keys = new_keys(3);
        let release_keys = new_keys(3);
        let director = SigningKey::generate().unwrap();
        let all: Vec<&SigningKey> = root_keys
            .iter()
            .chain(&release_keys)
            .chain([&director])
            .collect();
        let root = Root {
            version: 1,
            expires: NOW + 365 * DAY,
            keys: all.iter().map(|k| k.public_key()).collect(),
            root: role(2, &root_keys.iter().collect::<Vec<_>>()),
            release: role(2, &release_keys.iter().collect::<Vec<_>>()),
            director: role(1, &[&director]),
        };
        let artifact: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let target = target_for("digits", "2.0.0", &artifact);
        World {
            root_keys,
            release_keys,
            director,
            root,
            artifact,
            target,
        }
    }

    pub fn pinned(&self) -> Signed<Root> {
        keys::sign(
            &self.root,
            Role::Root,
            &[&self.root_keys[0], &self.root_keys[1]],
        )
        .unwrap()
    }

    pub fn state(&self) -> TrustState {
        TrustState::pinned(&self.pinned()).unwrap()
    }

    pub fn release_meta(&self, targets: Vec<TargetMeta>) -> ReleaseMetadata {
        ReleaseMetadata {
            version: 1,
            expires: NOW + 30 * DAY,
            targets,
        }
    }

    /// Release metadata for `self.target`, signed by release keys 0 and 1.
    pub fn release(&self) -> Signed<ReleaseMetadata> {
        self.sign_release(&self.release_meta(vec![self.target.clone()]))
    }

    pub fn sign_release(&self, meta: &ReleaseMetadata) -> Signed<ReleaseMetadata> {
        keys::sign(
            meta,
            Role::Release,
            &[&self.release_keys[0], &self.release_keys[1]],
        )
        .unwrap()
    }

    pub fn directive(&self, sequence: u64, action: DirectiveAction) -> Directive {
        Directive {
            sequence,
            selector: Selector::Device(device()),
            action,
            rollout: Some(RolloutStage {
                rollout: "r-1".into(),
                stage: 0,
            }),
            issued_at: NOW,
            expires: NOW + DAY,
            offline_grace: OfflineGrace {
                max_offline_secs: 3600,
                then: GraceAction::RollBack,
            },
        }
    }

    pub fn deploy(&self, sequence: u64, target: &TargetMeta) -> Directive {
        self.directive(
            sequence,
            DirectiveAction::Deploy {
                target: target.reference(),
                probation: Probation::Canary,
            },
        )
    }

    pub fn sign_directive(&self, d: &Directive) -> Signed<Directive> {
        keys::sign(d, Role::Director, &[&self.director]).unwrap()
    }
}

/// Tests that need something optional skip with a printed reason, except
/// in CI (`OUTPOST_REQUIRE_ALL=1`), where a missing prerequisite fails.
pub fn skip_or_fail(reason: &str) {
    if std::env::var("OUTPOST_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("OUTPOST_REQUIRE_ALL=1 but a prerequisite is missing: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}
