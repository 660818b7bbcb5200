//! Outpost's wire format and trust: the messages devices and the fleet
//! server exchange over MQTT (ARCHITECTURE §7) and the Uptane-style signing
//! of models and deployment directives (§8).
//!
//! - [`topic`]: topic builder and parser, device-id validation;
//! - [`codec`]: version byte + postcard, JSON, size-limited decoders;
//! - [`messages`]: the payload of every topic, [`messages::DeviceMessage`]
//!   to decode one by the topic it arrived on;
//! - [`trust`]: root, release and director metadata, the device's
//!   verifier, and key tooling.
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

pub mod bytes;
pub mod codec;
pub mod messages;
pub mod topic;
pub mod trust;
