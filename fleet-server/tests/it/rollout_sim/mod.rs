//! Deterministic simulation of the rollout controller (and the pure fleet
//! drift and alert cores): simulated time, a simulated shell and fleet,
//! crashes injected at every point.

mod alerts;
mod cohorts;
mod crash;
mod drift;
mod harness;
mod scenarios;
