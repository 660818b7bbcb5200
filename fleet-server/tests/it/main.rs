//! The fleet server's integration tests: one test binary, one module per area.
#![allow(clippy::unwrap_used)]

mod alerts;
mod audit;
mod cli;
mod drift;
mod inventory;
mod registry;
mod rollout;
mod rollout_sim;
mod serve;
mod support;
