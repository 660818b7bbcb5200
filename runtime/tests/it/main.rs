//! Integration tests of outpost-runtime (one binary; modules by topic).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod conformance;
mod digits;
mod gpu;
mod package;
mod qgemm;
mod robustness;
mod thirdparty;
