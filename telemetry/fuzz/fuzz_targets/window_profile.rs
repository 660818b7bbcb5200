//! `WindowProfile::from_bytes` (what a device sends): never panics, and an
//! accepted window re-encodes stably and survives merges and statistics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    outpost_telemetry_fuzz::window_profile(data);
});
