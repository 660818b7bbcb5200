//! The Outpost fleet server's library; the `outpost` binary is its CLI.
//!
//! This increment holds the operator-side tooling that needs no server:
//! model cards and their registry check ([`card`]), package building
//! ([`pack`]) and key, root and release management ([`trust`]).
#![forbid(unsafe_code)]

pub mod card;
pub mod clock;
pub mod pack;
pub mod trust;
