//! The fleet server's integration tests: one test binary, one module per area.
#![allow(clippy::unwrap_used)]

mod cli;
