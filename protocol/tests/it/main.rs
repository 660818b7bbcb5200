//! outpost-protocol's integration tests (one binary).
#![allow(clippy::unwrap_used)]

mod common;
mod keys;
mod messages;
mod topics_codec;
mod trust;
