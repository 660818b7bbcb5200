//! Whole-system scenarios (ARCHITECTURE §10): real `outpost serve` and
//! `outpost-agent` processes over the embedded broker, driven through the
//! `outpost` CLI, with the apps' traffic and labels. Each scenario prints
//! one `SUMMARY` line with its figures.
//!
//! The binaries are the workspace's own (`target/<profile>/outpost` and
//! `outpost-agent`, which `cargo test --workspace` builds before any test
//! runs); without them a scenario prints SKIPPED, or fails under
//! `OUTPOST_REQUIRE_ALL=1`. Scenarios run one at a time (each drives a
//! fleet of `OUTPOST_FLEET_DEVICES` agents, default 20, on this machine's
//! cores).
#![allow(clippy::unwrap_used)]

mod acl;
mod attacks;
mod crashes;
mod disk;
mod garbage;
mod outage;
mod retire;
mod rollouts;
mod support;
