//! The Outpost device agent: a sans-IO core (update state machine, slots,
//! probation) and a tokio shell (MQTT, local HTTP API, store), ARCHITECTURE §6.
//!
//! This crate is laid out by the workspace issue and filled by the agent
//! issues; it has no public items yet.
#![forbid(unsafe_code)]
