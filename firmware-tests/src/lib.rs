//! Whole-system tests of Outpost: real `outpost serve` and `outpost-agent`
//! processes, real brokers, fault injection (ARCHITECTURE §10). The
//! scenarios live in `tests/`; this library will hold the fleet harness.
#![forbid(unsafe_code)]
