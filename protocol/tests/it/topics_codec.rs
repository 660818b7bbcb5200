//! Topics and payload codec: validation, round trips, hostile bytes.

use outpost_protocol::codec::{self, DecodeError, WIRE_VERSION};
use outpost_protocol::topic::{DeviceId, TopicError, TopicKind, Topics};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[test]
fn device_ids_that_could_escape_a_topic_are_refused() {
    for bad in [
        "",
        "a/b",
        "a+",
        "#",
        "dev ice",
        "dévice",
        "a\0b",
        &"x".repeat(129),
    ] {
        assert!(DeviceId::new(bad).is_err(), "{bad:?} was accepted");
    }
    assert!(matches!(
        DeviceId::new("a/b"),
        Err(TopicError::BadIdChar { ch: '/', .. })
    ));
    assert!(matches!(
        DeviceId::new("x".repeat(129)),
        Err(TopicError::IdTooLong(129))
    ));
    for good in ["pump-17", "rpi4_0001", "site.a:device.b", &"x".repeat(128)] {
        DeviceId::new(good).unwrap();
    }
}

#[test]
fn topics_are_built_and_parsed_for_every_kind() {
    let topics = Topics::default();
    let id = DeviceId::new("dev-1").unwrap();
    for kind in TopicKind::ALL {
        let t = topics.device(&id, kind);
        assert_eq!(t, format!("outpost/v1/devices/dev-1/{}", kind.as_str()));
        assert_eq!(topics.parse(&t).unwrap(), (id.clone(), kind));
    }
    assert_eq!(
        topics.shared_subscription("outpost-fleet", TopicKind::Telemetry),
        "$share/outpost-fleet/outpost/v1/devices/+/telemetry"
    );
    let custom = Topics::with_prefix("/acme/outpost/");
    assert_eq!(
        custom.device(&id, TopicKind::State),
        "acme/outpost/devices/dev-1/state"
    );
}

#[test]
fn foreign_and_malformed_topics_are_refused() {
    let topics = Topics::default();
    for bad in [
        "outpost/v2/devices/dev-1/birth",
        "outpost/v1/devices/dev-1",
        "outpost/v1/devices/dev-1/birth/extra",
        "outpost/v1/devices//birth",
        "outpost/v1/device/dev-1/birth",
        "outpost/v1/devices/+/birth",
    ] {
        assert!(topics.parse(bad).is_err(), "{bad:?} was accepted");
    }
    assert!(matches!(
        topics.parse("outpost/v1/devices/dev-1/logs"),
        Err(TopicError::UnknownKind(_))
    ));
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sample {
    seq: u64,
    name: String,
    values: Vec<f32>,
    flag: Option<bool>,
}

fn sample() -> Sample {
    Sample {
        seq: 7,
        name: "dev-1".into(),
        values: vec![0.5, -1.0],
        flag: Some(true),
    }
}

#[test]
fn payloads_start_with_the_version_byte_and_round_trip() {
    let bytes = codec::encode(&sample()).unwrap();
    assert_eq!(bytes[0], WIRE_VERSION);
    assert_eq!(codec::decode::<Sample>(&bytes, 1024).unwrap(), sample());
    let json = codec::encode_json(&sample()).unwrap();
    assert_eq!(codec::decode_json::<Sample>(&json, 1024).unwrap(), sample());
}

#[test]
fn hostile_payloads_get_typed_errors() {
    let bytes = codec::encode(&sample()).unwrap();
    assert_eq!(codec::decode::<Sample>(&[], 1024), Err(DecodeError::Empty));
    assert!(matches!(
        codec::decode::<Sample>(&bytes, 4),
        Err(DecodeError::TooLarge { limit: 4, .. })
    ));
    let mut newer = bytes.clone();
    newer[0] = 2;
    assert_eq!(
        codec::decode::<Sample>(&newer, 1024),
        Err(DecodeError::UnknownVersion(2))
    );
    assert!(matches!(
        codec::decode::<Sample>(&bytes[..bytes.len() - 3], 1024),
        Err(DecodeError::Truncated(_))
    ));
    let mut trailing = bytes.clone();
    trailing.extend([0, 0]);
    assert_eq!(
        codec::decode::<Sample>(&trailing, 1024),
        Err(DecodeError::TrailingBytes(2))
    );
    assert!(matches!(
        codec::decode_json::<Sample>(b"{\"seq\": 1", 1024),
        Err(DecodeError::Truncated(_))
    ));
    assert!(matches!(
        codec::decode_json::<Sample>(b"[1,2,3]", 1024),
        Err(DecodeError::Malformed(_))
    ));
}

proptest! {
    #[test]
    fn any_sample_round_trips(seq: u64, name in ".{0,40}", values in proptest::collection::vec(any::<f32>().prop_filter("NaN != NaN", |v| !v.is_nan()), 0..20), flag: Option<bool>) {
        let msg = Sample { seq, name, values, flag };
        let bytes = codec::encode(&msg).unwrap();
        prop_assert_eq!(codec::decode::<Sample>(&bytes, 1 << 16).unwrap(), msg.clone());
        let json = codec::encode_json(&msg).unwrap();
        prop_assert_eq!(codec::decode_json::<Sample>(&json, 1 << 16).unwrap(), msg);
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = codec::decode::<Sample>(&bytes, 1 << 16);
        let _ = codec::decode_json::<Sample>(&bytes, 1 << 16);
    }

    #[test]
    fn every_valid_id_round_trips_through_a_topic(id in "[A-Za-z0-9._:-]{1,128}") {
        let topics = Topics::default();
        let id = DeviceId::new(id).unwrap();
        let t = topics.device(&id, TopicKind::Events);
        prop_assert_eq!(topics.parse(&t).unwrap(), (id, TopicKind::Events));
    }
}
