//! outpost-agent's integration tests (one binary).
#![allow(clippy::unwrap_used)]

mod api;
mod common;
mod config;
mod crash;
mod download;
mod engine;
mod events;
mod health;
mod mqtt;
mod start;
mod tls;
mod update_shell;
mod update_sim;
mod waiting;
