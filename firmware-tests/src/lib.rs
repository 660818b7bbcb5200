//! Whole-system tests of Outpost: real `outpost serve` and `outpost-agent`
//! processes, real brokers, fault injection (ARCHITECTURE §10). The
//! scenarios live in `tests/it/`; the fleet they run is
//! `outpost_fleet::harness::Fleet` (shared with `outpost demo`), started
//! with the `outpost-agent` binary.
#![forbid(unsafe_code)]
