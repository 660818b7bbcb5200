//! MQTT topics of ARCHITECTURE §7: `{prefix}/devices/{id}/{kind}`, with the
//! prefix `outpost/v1` by default.
//!
//! Device ids are validated before they are ever put in a topic: an id with
//! `+`, `#` or `/` would turn a publish or an ACL pattern into a wildcard or
//! reach into another device's subtree (MQTT 3.1.1 §4.7.1, MQTT 5 §4.7.1).

use std::fmt;
use std::str::FromStr;

/// Default topic prefix.
pub const DEFAULT_PREFIX: &str = "outpost/v1";
/// Longest device id accepted, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// A validated device id: 1–128 bytes of `A–Z a–z 0–9 - _ . :`.
///
/// Deserializing validates too, so a message can never carry an id that
/// could not be put in a topic.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

impl TryFrom<String> for DeviceId {
    type Error = TopicError;
    fn try_from(s: String) -> Result<Self, TopicError> {
        DeviceId::new(s)
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> String {
        id.0
    }
}

#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for DeviceId {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        const ALPHABET: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:";
        let len = u.int_in_range(1..=24)?;
        let mut id = String::with_capacity(len);
        for _ in 0..len {
            id.push(char::from(*u.choose(ALPHABET)?));
        }
        Ok(DeviceId(id))
    }
}

/// Why a device id or a topic was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The id is empty.
    #[error("device id is empty")]
    EmptyId,
    /// The id is longer than [`MAX_DEVICE_ID_LEN`] bytes.
    #[error("device id is {0} bytes, over the limit of {MAX_DEVICE_ID_LEN}")]
    IdTooLong(usize),
    /// The id contains a character outside `A–Z a–z 0–9 - _ . :`; MQTT
    /// wildcards (`+`, `#`) and the level separator (`/`) are among them.
    #[error("device id {id:?} contains {ch:?}; use A–Z a–z 0–9 - _ . :")]
    BadIdChar { id: String, ch: char },
    /// The topic does not have the shape `{prefix}/devices/{id}/{kind}`.
    #[error("topic {0:?} is not an Outpost device topic")]
    NotADeviceTopic(String),
    /// The last level is not one of the known kinds.
    #[error(
        "unknown topic kind {0:?} (expected birth, death, telemetry, events, state or commands)"
    )]
    UnknownKind(String),
}

impl DeviceId {
    /// Validates an id.
    pub fn new(id: impl Into<String>) -> Result<Self, TopicError> {
        let id = id.into();
        if id.is_empty() {
            return Err(TopicError::EmptyId);
        }
        if id.len() > MAX_DEVICE_ID_LEN {
            return Err(TopicError::IdTooLong(id.len()));
        }
        if let Some(ch) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "-_.:".contains(*c)))
        {
            return Err(TopicError::BadIdChar { id, ch });
        }
        Ok(DeviceId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for DeviceId {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, TopicError> {
        DeviceId::new(s)
    }
}

/// The per-device topics and who publishes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    /// Device → server: session start.
    Birth,
    /// Broker (last will) → server: session end.
    Death,
    /// Device → server: telemetry windows, QoS 1.
    Telemetry,
    /// Device → server: install progress, failures, rollbacks.
    Events,
    /// Device → server (retained): reported state.
    State,
    /// Server → device: signed directives.
    Commands,
}

impl TopicKind {
    pub const ALL: [TopicKind; 6] = [
        TopicKind::Birth,
        TopicKind::Death,
        TopicKind::Telemetry,
        TopicKind::Events,
        TopicKind::State,
        TopicKind::Commands,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Birth => "birth",
            TopicKind::Death => "death",
            TopicKind::Telemetry => "telemetry",
            TopicKind::Events => "events",
            TopicKind::State => "state",
            TopicKind::Commands => "commands",
        }
    }
}

impl FromStr for TopicKind {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, TopicError> {
        TopicKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| TopicError::UnknownKind(s.to_owned()))
    }
}

/// Builds and parses topics under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            prefix: DEFAULT_PREFIX.into(),
        }
    }
}

impl Topics {
    /// Topics under a custom prefix (no leading or trailing `/`).
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Topics {
            prefix: prefix.into().trim_matches('/').to_owned(),
        }
    }

    /// `{prefix}/devices/{id}/{kind}`.
    pub fn device(&self, id: &DeviceId, kind: TopicKind) -> String {
        format!("{}/devices/{}/{}", self.prefix, id, kind.as_str())
    }

    /// The server's subscription for one kind from every device, shared
    /// between server instances (`$share/{group}/…`, MQTT 5 §4.8.2).
    pub fn shared_subscription(&self, group: &str, kind: TopicKind) -> String {
        format!("$share/{group}/{}/devices/+/{}", self.prefix, kind.as_str())
    }

    /// Splits a device topic into its id and kind.
    pub fn parse(&self, topic: &str) -> Result<(DeviceId, TopicKind), TopicError> {
        let not = || TopicError::NotADeviceTopic(topic.to_owned());
        let rest = topic
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix("/devices/"))
            .ok_or_else(not)?;
        let (id, kind) = rest.split_once('/').ok_or_else(not)?;
        if kind.contains('/') {
            return Err(not());
        }
        Ok((DeviceId::new(id)?, kind.parse()?))
    }
}
