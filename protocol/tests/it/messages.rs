//! §7 payloads: golden bytes freeze the encoding; round trips and garbage
//! are property-tested.
//!
//! After a deliberate wire change, rewrite the golden files with
//! `OUTPOST_BLESS=1 cargo test -p outpost-protocol golden` and review the
//! diff (and bump `WIRE_VERSION`).

use std::fmt::Debug;
use std::path::PathBuf;

use arbitrary::{Arbitrary, Unstructured};
use outpost_protocol::bytes::{KeyId, Sha256, SignatureBytes};
use outpost_protocol::codec::{self, DecodeError};
use outpost_protocol::messages::*;
use outpost_protocol::topic::{DeviceId, TopicKind};
use outpost_protocol::trust::*;
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Encodes `value` both ways and compares with the checked-in files (or
/// writes them under `OUTPOST_BLESS=1`); decodes the files back too.
fn golden<T>(name: &str, value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bin = codec::encode(value).unwrap();
    let mut json = serde_json::to_vec_pretty(value).unwrap();
    json.push(b'\n');
    let (bin_path, json_path) = (
        golden_dir().join(format!("{name}.bin")),
        golden_dir().join(format!("{name}.json")),
    );
    if std::env::var("OUTPOST_BLESS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&bin_path, &bin).unwrap();
        std::fs::write(&json_path, &json).unwrap();
    }
    let want_bin = std::fs::read(&bin_path)
        .unwrap_or_else(|e| panic!("{}: {e} (bless with OUTPOST_BLESS=1)", bin_path.display()));
    assert_eq!(
        hex(&bin),
        hex(&want_bin),
        "{name}: the postcard encoding changed"
    );
    let want_json = std::fs::read(&json_path).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&json),
        String::from_utf8_lossy(&want_json),
        "{name}: the JSON encoding changed"
    );
    assert_eq!(&codec::decode::<T>(&want_bin, 1 << 20).unwrap(), value);
    assert_eq!(
        &codec::decode_json::<T>(&want_json, 1 << 20).unwrap(),
        value
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn model(version: &str) -> ModelRef {
    ModelRef {
        name: "digits".into(),
        version: version.into(),
        sha256: Sha256([0xab; 32]),
    }
}

fn target_ref() -> TargetRef {
    TargetRef {
        name: "digits".into(),
        version: "2.0.0".into(),
        sha256: Sha256([0xab; 32]),
        length: 123_456,
    }
}

fn signature(k: u8) -> Signature {
    Signature {
        key_id: KeyId([k; 32]),
        sig: SignatureBytes([k ^ 0x5a; 64]),
    }
}

fn directive() -> Directive {
    Directive {
        sequence: 42,
        selector: Selector::Cohort("line-a".into()),
        action: DirectiveAction::Deploy {
            target: target_ref(),
            probation: Probation::Canary,
        },
        rollout: Some(RolloutStage {
            rollout: "r-7".into(),
            stage: 1,
        }),
        issued_at: 1_800_000_000,
        expires: 1_800_086_400,
        offline_grace: OfflineGrace {
            max_offline_secs: 3600,
            then: GraceAction::RollBack,
        },
    }
}

fn release() -> ReleaseMetadata {
    ReleaseMetadata {
        version: 3,
        expires: 1_900_000_000,
        targets: vec![TargetMeta {
            name: "digits".into(),
            version: "2.0.0".into(),
            sha256: Sha256([0xab; 32]),
            length: 123_456,
            constraints: TargetConstraints {
                arch: vec!["aarch64".into()],
                min_memory_mb: Some(512),
                engine: Some("cpu".into()),
            },
        }],
    }
}

#[test]
fn golden_birth() {
    golden(
        "birth",
        &Birth {
            session: 3,
            at: 1_800_000_000,
            agent_version: "0.1.0".into(),
            target: "rpi4".into(),
            arch: "aarch64".into(),
            models: vec![
                InstalledModel {
                    model: model("2.0.0"),
                    slot: Slot::Active,
                },
                InstalledModel {
                    model: model("1.0.0"),
                    slot: Slot::Previous,
                },
            ],
            root_version: 1,
            last_directive: 41,
        },
    );
}

#[test]
fn golden_death() {
    golden("death", &Death { session: 3 });
}

#[test]
fn golden_telemetry() {
    golden(
        "telemetry",
        &TelemetryWindow {
            model: model("2.0.0"),
            slot: Slot::Candidate,
            window_start: 1_800_000_000,
            window_secs: 60,
            profile: vec![1, 2, 3, 250],
        },
    );
}

#[test]
fn golden_events() {
    let events = [
        Event {
            seq: 1,
            at: 1_800_000_001,
            kind: EventKind::Install {
                directive: 42,
                rollout: Some(RolloutStage {
                    rollout: "r-7".into(),
                    stage: 1,
                }),
                model: model("2.0.0"),
                step: InstallStep::Downloading {
                    done: 1000,
                    total: 123_456,
                },
            },
        },
        Event {
            seq: 2,
            at: 1_800_000_002,
            kind: EventKind::VerificationFailed {
                directive: Some(43),
                check: "replay".into(),
                detail: "directive sequence 43 is not above the last accepted 44".into(),
            },
        },
        Event {
            seq: 3,
            at: 1_800_000_003,
            kind: EventKind::RolledBack {
                directive: None,
                from: model("2.0.0"),
                to: Some(model("1.0.0")),
                reason: "self-test failed".into(),
            },
        },
        Event {
            seq: 4,
            at: 1_800_000_004,
            kind: EventKind::StoreRecovered {
                store: "outbox".into(),
                lost: "telemetry windows not yet sent".into(),
            },
        },
        Event {
            seq: 5,
            at: 1_800_000_005,
            kind: EventKind::TelemetryDropped {
                windows: 3,
                bytes: 12_345,
            },
        },
        Event {
            seq: 6,
            at: 1_800_000_006,
            kind: EventKind::ShadowReport {
                candidate: model("2.0.0"),
                active: model("1.0.0"),
                requests: 900,
                errors: 1,
                skipped_over_budget: 100,
                rows: 900,
                agreed: 873,
                delta_mean_micros: 12_500,
                delta_max_micros: 480_000,
            },
        },
        Event {
            seq: 7,
            at: 1_800_000_007,
            kind: EventKind::EngineSelected(EngineReport {
                model: model("2.0.0"),
                slot: Slot::Candidate,
                engine: "cpu".into(),
                reason: "the CPU is faster: measured at load with batch 1: CPU 73 µs, GPU 5577 µs"
                    .into(),
                cpu_us: Some(73),
                gpu_us: Some(5577),
                adapter: Some("llvmpipe (LLVM 15.0.6, 256 bits) on vulkan (cpu)".into()),
            }),
        },
    ];
    for (i, e) in events.iter().enumerate() {
        golden(&format!("event-{i}"), e);
    }
}

#[test]
fn golden_state() {
    golden(
        "state",
        &ReportedState {
            session: 3,
            at: 1_800_000_010,
            models: vec![ModelState {
                name: "digits".into(),
                active: Some(model("1.0.0")),
                candidate: Some(model("2.0.0")),
                previous: None,
                phase: Phase::Canary,
            }],
            health: Health {
                status: HealthStatus::Degraded,
                detail: Some("circuit breaker half-open".into()),
            },
            root_version: 1,
            last_directive: 42,
        },
    );
}

#[test]
fn golden_command_and_trust_metadata() {
    let signed_directive = Signed::<Directive>::from_parts(
        Signed::payload_of(&directive()).unwrap(),
        vec![signature(1)],
    );
    let signed_release = Signed::<ReleaseMetadata>::from_parts(
        Signed::payload_of(&release()).unwrap(),
        vec![signature(2), signature(3)],
    );
    golden("directive", &directive());
    golden("release", &release());
    golden(
        "command",
        &Command {
            directive: signed_directive,
            release: Some(signed_release),
            artifact_url: Some("http://127.0.0.1:7070/v1/packages/digits/2.0.0".into()),
        },
    );
    for (i, action) in [
        DirectiveAction::Shadow {
            target: target_ref(),
        },
        DirectiveAction::Rollback {
            target: target_ref(),
        },
        DirectiveAction::Retire {
            model: "digits".into(),
        },
        DirectiveAction::Rebirth,
    ]
    .into_iter()
    .enumerate()
    {
        golden(
            &format!("directive-{i}"),
            &Directive {
                action,
                selector: Selector::Device(DeviceId::new("pump-17").unwrap()),
                rollout: None,
                ..directive()
            },
        );
    }
    golden(
        "root",
        &Root {
            version: 1,
            expires: 1_900_000_000,
            keys: vec![outpost_protocol::bytes::PublicKey([7; 32])],
            root: RoleKeys {
                threshold: 1,
                keys: vec![outpost_protocol::bytes::PublicKey([7; 32]).key_id()],
            },
            release: RoleKeys {
                threshold: 1,
                keys: vec![outpost_protocol::bytes::PublicKey([7; 32]).key_id()],
            },
            director: RoleKeys {
                threshold: 1,
                keys: vec![outpost_protocol::bytes::PublicKey([7; 32]).key_id()],
            },
        },
    );
}

#[test]
fn every_topic_decodes_its_payload_in_both_encodings() {
    let msgs = [
        DeviceMessage::Death(Death { session: 9 }),
        DeviceMessage::Birth(Birth {
            session: 9,
            at: 1,
            agent_version: "0.1.0".into(),
            target: "rpi5".into(),
            arch: "aarch64".into(),
            models: vec![],
            root_version: 1,
            last_directive: 0,
        }),
    ];
    for m in msgs {
        for enc in [Encoding::Postcard, Encoding::Json] {
            let bytes = m.encode(enc).unwrap();
            assert_eq!(Encoding::detect(&bytes), enc);
            assert_eq!(DeviceMessage::decode(m.kind(), &bytes).unwrap(), m);
        }
    }
    // A birth payload on the death topic is refused, not misread.
    let birth = codec::encode(&Death { session: 9 }).unwrap();
    assert!(DeviceMessage::decode(TopicKind::Birth, &birth).is_err());
}

#[test]
fn oversized_payloads_are_refused_before_parsing() {
    let big = vec![1u8; max_payload(TopicKind::Events) + 1];
    assert!(matches!(
        DeviceMessage::decode(TopicKind::Events, &big),
        Err(DecodeError::TooLarge { .. })
    ));
    let mut json = b"{\"session\":".to_vec();
    json.extend(std::iter::repeat_n(b' ', 2000));
    json.extend(b"1}");
    assert!(matches!(
        DeviceMessage::decode(TopicKind::Death, &json),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn a_device_id_that_could_escape_a_topic_is_refused_inside_a_message_too() {
    let mut d = directive();
    d.selector = Selector::Device(DeviceId::new("pump-17").unwrap());
    let json = String::from_utf8(codec::encode_json(&d).unwrap()).unwrap();
    let evil = json.replace("pump-17", "pump/+/#");
    assert!(matches!(
        codec::decode_json::<Directive>(evil.as_bytes(), 1 << 16),
        Err(DecodeError::Malformed(_))
    ));
}

/// Builds a `T` from proptest's bytes with `Arbitrary`.
fn arb<T: for<'a> Arbitrary<'a>>(bytes: &[u8]) -> Option<T> {
    T::arbitrary(&mut Unstructured::new(bytes)).ok()
}

fn round_trips<T>(value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bin = codec::encode(value).unwrap();
    assert_eq!(&codec::decode::<T>(&bin, usize::MAX).unwrap(), value);
    let json = codec::encode_json(value).unwrap();
    assert_eq!(&codec::decode_json::<T>(&json, usize::MAX).unwrap(), value);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_message_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        if let Some(v) = arb::<Birth>(&bytes) { round_trips(&v) }
        if let Some(v) = arb::<Death>(&bytes) { round_trips(&v) }
        if let Some(v) = arb::<TelemetryWindow>(&bytes) { round_trips(&v) }
        if let Some(v) = arb::<Event>(&bytes) { round_trips(&v) }
        if let Some(v) = arb::<ReportedState>(&bytes) { round_trips(&v) }
        if let Some(v) = arb::<Command>(&bytes) { round_trips(&v) }
        if let Some(v) = arb::<Root>(&bytes) { round_trips(&v) }
        if let Some(v) = arb::<ReleaseMetadata>(&bytes) { round_trips(&v) }
        if let Some(v) = arb::<Directive>(&bytes) { round_trips(&v) }
    }

    #[test]
    fn garbage_on_any_topic_never_panics(
        kind in proptest::sample::select(TopicKind::ALL.to_vec()),
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let _ = DeviceMessage::decode(kind, &bytes);
        let mut json = b"{".to_vec();
        json.extend(&bytes);
        let _ = DeviceMessage::decode(kind, &json);
    }
}
