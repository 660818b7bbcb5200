//! Shared checks of the fuzz targets.

use std::sync::OnceLock;

use outpost_protocol::codec;
use outpost_protocol::messages::{DeviceMessage, Encoding, max_payload};
use outpost_protocol::topic::{DeviceId, TopicKind};
use outpost_protocol::trust::keys::{self, SigningKey};
use outpost_protocol::trust::{
    DeviceIdentity, MAX_METADATA_BYTES, Role, RoleKeys, Root, Signed, TrustState, Verifier,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A payload on a `kind` topic: decoding never panics; an accepted message
/// re-encodes (both encodings) to bytes that decode to the same message.
pub fn payload(kind: TopicKind, data: &[u8]) {
    let Ok(msg) = DeviceMessage::decode(kind, data) else {
        return;
    };
    assert!(data.len() <= max_payload(kind));
    for enc in [Encoding::Postcard, Encoding::Json] {
        let bytes = msg.encode(enc).expect("an accepted message encodes");
        let again = DeviceMessage::decode(kind, &bytes);
        // JSON may grow past the limit (base64, escapes): that is a refusal,
        // not a difference.
        if let Ok(again) = again {
            assert_eq!(again, msg);
        }
    }
}

/// A metadata payload decoder, then the verifier on the same bytes: as an
/// envelope, and as a payload that carries valid signatures (so every
/// check after the signature check is reached).
pub fn metadata<T>(role: Role, data: &[u8], check: impl Fn(&World, &Signed<T>))
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = codec::decode::<T>(data, MAX_METADATA_BYTES) {
        let bytes = codec::encode(&v).expect("an accepted payload encodes");
        assert_eq!(codec::decode::<T>(&bytes, MAX_METADATA_BYTES).ok(), Some(v));
    }
    let w = world();
    if let Ok(envelope) = codec::decode::<Signed<T>>(data, MAX_METADATA_BYTES) {
        check(w, &envelope);
    }
    let mut signed = Signed::<T>::from_parts(data.to_vec(), vec![]);
    for k in w.keys(role) {
        keys::add_signature(&mut signed, role, k);
    }
    check(w, &signed);
}

/// One key per role, a root, a state and a verifier, made once.
#[derive(Debug)]
pub struct World {
    pub root_key: SigningKey,
    pub release_key: SigningKey,
    pub director_key: SigningKey,
    pub state: TrustState,
    pub verifier: Verifier,
}

impl World {
    pub fn keys(&self, role: Role) -> Vec<&SigningKey> {
        vec![match role {
            Role::Root => &self.root_key,
            Role::Release => &self.release_key,
            Role::Director => &self.director_key,
        }]
    }
}

/// "Now" for the verifier.
pub const NOW: u64 = 1_800_000_000;

pub fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let gen_key = || SigningKey::generate().expect("key generation");
        let (root_key, release_key, director_key) = (gen_key(), gen_key(), gen_key());
        let one = |k: &SigningKey| RoleKeys {
            threshold: 1,
            keys: vec![k.key_id()],
        };
        let root = Root {
            version: 1,
            expires: NOW + 1_000_000,
            keys: vec![
                root_key.public_key(),
                release_key.public_key(),
                director_key.public_key(),
            ],
            root: one(&root_key),
            release: one(&release_key),
            director: one(&director_key),
        };
        let pinned = keys::sign(&root, Role::Root, &[&root_key]).expect("sign root");
        let state = TrustState::pinned(&pinned).expect("pinned root");
        let verifier = Verifier::new(DeviceIdentity {
            id: DeviceId::new("pump-17").expect("id"),
            arch: "aarch64".into(),
            memory_mb: 4096,
            engines: vec!["cpu".into()],
            cohorts: vec!["line-a".into()],
        });
        World {
            root_key,
            release_key,
            director_key,
            state,
            verifier,
        }
    })
}

/// Used by the topic target.
pub fn topic(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let topics = outpost_protocol::topic::Topics::default();
    if let Ok((id, kind)) = topics.parse(s) {
        assert_eq!(topics.device(&id, kind), s);
        assert!(!id.as_str().contains(['/', '+', '#']));
    }
    let _ = DeviceId::new(s);
    let _ = s.parse::<TopicKind>();
}
