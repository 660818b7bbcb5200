//! The fleet server's integration tests: one test binary, one module per area.
#![allow(clippy::unwrap_used)]

mod audit;
mod cli;
mod inventory;
mod registry;
mod rollout_sim;
mod serve;
mod support;
