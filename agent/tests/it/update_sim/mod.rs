//! Deterministic simulation of the update machine (issue agent-update):
//! the sans-IO core driven by a fake shell that performs its actions in
//! memory (a "disk" of files and slot pointers, a "download server" that
//! can be interrupted or tampered with), on simulated time, with crashes
//! injected at every step.
//!
//! After every step the harness asserts: every model a slot pointer makes
//! active (and a candidate running on probation) is a release-signed
//! package whose bytes match its digest; the persisted trust state's last
//! sequence never goes backwards; and every action is preceded by the
//! persisted record of its step.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use outpost_agent::update::*;
use outpost_protocol::bytes::Sha256;
use outpost_protocol::messages::{Command, EventKind, InstallStep, ModelRef};
use outpost_protocol::topic::DeviceId;
use outpost_protocol::trust::keys::{self, SigningKey};
use outpost_protocol::trust::*;

const NOW: UnixSeconds = 1_800_000_000;
const DAY: u64 = 86_400;
const GRACE: u64 = 3_600;
const CHUNK: usize = 4_096;
const NAME: &str = "digits";

// ---------------------------------------------------------------- world

/// Keys, three signed versions of one model, the device.
struct World {
    root_key: SigningKey,
    release_key: SigningKey,
    director: SigningKey,
    /// Signs directives but is no director key.
    intruder: SigningKey,
    root: Root,
    versions: Vec<(TargetMeta, Vec<u8>)>,
}

impl World {
    fn new() -> World {
        let k = || SigningKey::generate().unwrap();
        let (root_key, release_key, director, intruder) = (k(), k(), k(), k());
        let one = |k: &SigningKey| RoleKeys {
            threshold: 1,
            keys: vec![k.key_id()],
        };
        let root = Root {
            version: 1,
            expires: NOW + 365 * DAY,
            keys: [&root_key, &release_key, &director, &intruder]
                .iter()
                .map(|k| k.public_key())
                .collect(),
            root: one(&root_key),
            release: one(&release_key),
            director: one(&director),
        };
        let versions = (1..=3u8)
            .map(|v| {
                let bytes: Vec<u8> = (0..10_000u32)
                    .map(|i| (i.wrapping_mul(7 + u32::from(v)) % 251) as u8)
                    .collect();
                let t = TargetMeta {
                    name: NAME.into(),
                    version: format!("{v}.0.0"),
                    sha256: Sha256::of(&bytes),
                    length: bytes.len() as u64,
                    constraints: TargetConstraints::default(),
                };
                (t, bytes)
            })
            .collect();
        World {
            root_key,
            release_key,
            director,
            intruder,
            root,
            versions,
        }
    }

    fn v(&self, n: usize) -> &TargetMeta {
        &self.versions[n - 1].0
    }

    fn model(&self, n: usize) -> ModelRef {
        let t = self.v(n);
        ModelRef {
            name: t.name.clone(),
            version: t.version.clone(),
            sha256: t.sha256,
        }
    }

    fn trust(&self) -> TrustState {
        let pinned = keys::sign(&self.root, Role::Root, &[&self.root_key]).unwrap();
        TrustState::pinned(&pinned).unwrap()
    }

    fn verifier(&self) -> Verifier {
        Verifier::new(DeviceIdentity {
            id: DeviceId::new("pump-17").unwrap(),
            arch: "aarch64".into(),
            memory_mb: 4096,
            engines: vec!["cpu".into()],
            cohorts: vec![],
        })
    }

    fn signed(&self, sha: &Sha256) -> bool {
        self.versions.iter().any(|(t, _)| t.sha256 == *sha)
    }

    fn directive(&self, seq: u64, action: DirectiveAction) -> Directive {
        Directive {
            sequence: seq,
            selector: Selector::Device(DeviceId::new("pump-17").unwrap()),
            action,
            rollout: Some(RolloutStage {
                rollout: "r-1".into(),
                stage: 0,
            }),
            issued_at: NOW,
            expires: NOW + DAY,
            offline_grace: OfflineGrace {
                max_offline_secs: GRACE,
                then: GraceAction::RollBack,
            },
        }
    }

    fn command_for(&self, d: &Directive, key: &SigningKey) -> Command {
        let release = ReleaseMetadata {
            version: 1,
            expires: NOW + 30 * DAY,
            targets: self.versions.iter().map(|(t, _)| t.clone()).collect(),
        };
        Command {
            directive: keys::sign(d, Role::Director, &[key]).unwrap(),
            release: d
                .action
                .target()
                .map(|_| keys::sign(&release, Role::Release, &[&self.release_key]).unwrap()),
            artifact_url: d.action.target().map(|t| url(&t.version)),
        }
    }

    fn command(&self, seq: u64, action: DirectiveAction) -> Command {
        self.command_for(&self.directive(seq, action), &self.director)
    }

    fn deploy(&self, seq: u64, v: usize, probation: Probation) -> Command {
        let target = self.v(v).reference();
        self.command(seq, DirectiveAction::Deploy { target, probation })
    }

    fn rollback(&self, seq: u64, v: usize) -> Command {
        let target = self.v(v).reference();
        self.command(seq, DirectiveAction::Rollback { target })
    }

    fn shadow(&self, seq: u64, v: usize) -> Command {
        let target = self.v(v).reference();
        self.command(seq, DirectiveAction::Shadow { target })
    }
}

fn url(version: &str) -> String {
    format!("https://mirror.example/digits-{version}.opk")
}

fn part(sha: &Sha256) -> String {
    format!("{}.part", sha.to_hex())
}

fn opk(sha: &Sha256) -> String {
    format!("{}.opk", sha.to_hex())
}

// ---------------------------------------------------------------- shell

/// What happens next, at a simulated time.
#[derive(Debug, Clone)]
enum Ev {
    Chunk {
        job: JobId,
        url: String,
        target: TargetMeta,
    },
    Progress {
        job: JobId,
        n: u64,
    },
    Done {
        job: JobId,
        n: u64,
    },
    DlFailed {
        job: JobId,
        f: DownloadFailure,
    },
    Checked {
        job: JobId,
        r: Result<(), TrustError>,
    },
    Staged {
        job: JobId,
        r: Result<(), DiskFailure>,
    },
    Tested {
        job: JobId,
        o: SelfTestOutcome,
    },
    SlotsWritten {
        name: String,
    },
    Command(Box<Command>),
    Contact,
    Health(HealthFailure),
}

/// Faults the fake shell injects.
#[derive(Debug, Default, Clone)]
struct Faults {
    /// Byte offsets at which the server drops the connection (each once).
    interrupt_at: BTreeSet<u64>,
    /// The server drops every connection before sending a byte.
    always_interrupt: bool,
    /// The server serves other bytes than the signed ones.
    tamper: bool,
    /// The server serves more bytes than the signed length.
    endless: bool,
    /// One byte of the staged file rots right after staging.
    rot_staged: bool,
    /// Staging fails with ENOSPC.
    disk_full: bool,
    /// Self-tests of these digests fail.
    fail_self_test: BTreeSet<Sha256>,
}

struct Sim<'w> {
    w: &'w World,
    start: Instant,
    /// Seconds since `start`.
    t: u64,
    core: Option<Updater>,
    config: UpdateConfig,
    // The disk: survives crashes.
    record: Option<Vec<u8>>,
    pointers: Slots,
    files: BTreeMap<String, Vec<u8>>,
    // The process: lost in a crash.
    pending: Vec<(u64, u64, Ev)>,
    probation: Option<(ModelRef, ProbationMode)>,
    // The outside world.
    script: Vec<(u64, Ev)>,
    delivered: Vec<Command>,
    faults: Faults,
    // Observations.
    actions: Vec<(u64, Action)>,
    events: Vec<EventKind>,
    errors: Vec<UpdateError>,
    max_sequence: u64,
    steps: usize,
    crashes: usize,
    order: u64,
    /// Actions `restore` queued, performed before anything else.
    queued: std::collections::VecDeque<Action>,
    /// Per restore: the persisted step, and what the core did about it.
    resumed: Vec<(String, String)>,
}

mod harness;
mod scenarios;
mod tests;
