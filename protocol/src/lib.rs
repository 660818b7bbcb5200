//! Outpost's wire format and trust: the messages devices and the fleet
//! server exchange over MQTT (ARCHITECTURE §7) and the Uptane-style signing
//! of models and deployment directives (§8).
//!
//! Built so far: [`topic`] (topic builder and parser, device-id validation)
//! and [`codec`] (version byte + postcard, JSON, size-limited decoders).
//! The message types and the trust layer follow in the protocol issue.
//!
//! ```
//! use outpost_protocol::topic::{DeviceId, TopicKind, Topics};
//! # fn main() -> Result<(), outpost_protocol::topic::TopicError> {
//! let topics = Topics::default();
//! let id = DeviceId::new("pump-17")?;
//! let t = topics.device(&id, TopicKind::Telemetry);
//! assert_eq!(t, "outpost/v1/devices/pump-17/telemetry");
//! assert_eq!(topics.parse(&t)?, (id, TopicKind::Telemetry));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod codec;
pub mod topic;
