//! Outpost's wire format and trust: the messages devices and the fleet
//! server exchange over MQTT (ARCHITECTURE §7) and the Uptane-style signing
//! of models and deployment directives (§8).
//!
//! This crate is laid out by the workspace issue and filled by the protocol
//! issue; it has no public items yet.
#![forbid(unsafe_code)]
