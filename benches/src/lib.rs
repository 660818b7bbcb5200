//! Outpost benchmarks. The criterion benches live in `benches/`:
//!
//! - `runtime`: batch-1 latency of every reference model variant (fp32 and
//!   each int8 form, with the execution strategy the runtime picks and with
//!   the other one), and cold start from ONNX versus from a package's
//!   pre-optimized NNEF form.
//!
//! Run with `cargo bench -p outpost-benches`; figures are recorded in
//! docs/architecture.md. Benchmarks measure; tests never assert on time.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

/// The runtime's committed fixtures.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/tests/fixtures")
}

/// `${OUTPOST_CACHE:-$HOME/.cache/outpost}`.
pub fn cache() -> PathBuf {
    match std::env::var_os("OUTPOST_CACHE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
            .join(".cache/outpost"),
    }
}
