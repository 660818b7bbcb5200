//! The Outpost fleet server's library; the `outpost` binary is its CLI.
//!
//! - operator tooling that needs no server: model cards and their registry
//!   check ([`card`]), package building ([`pack`]), key, root and release
//!   management ([`trust`]);
//! - the server (`outpost serve`, [`server`]): registry rules
//!   ([`registry`]) and evaluation ([`eval`]), tokens and roles ([`auth`]),
//!   the inventory ([`inventory`]), the hash-chained audit log ([`audit`]),
//!   the director key ([`director`]), all persisted behind [`store::Store`].
#![forbid(unsafe_code)]

pub mod alerts;
pub mod audit;
pub mod auth;
pub mod card;
pub mod clock;
pub mod director;
pub mod drift;
pub mod eval;
pub mod harness;
pub mod inventory;
pub mod pack;
pub mod registry;
pub mod rollout;
pub mod server;
pub mod store;
pub mod trust;
