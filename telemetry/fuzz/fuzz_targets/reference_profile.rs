//! `ReferenceProfile::from_bytes` (`reference.bin` from a model package):
//! never panics, and an accepted reference re-encodes stably.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    outpost_telemetry_fuzz::reference_profile(data);
});
