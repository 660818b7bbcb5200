//! Release metadata: the payload decoder, then the verifier.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_protocol::trust::{ReleaseMetadata, Role};
use outpost_protocol_fuzz::NOW;

fuzz_target!(|data: &[u8]| {
    outpost_protocol_fuzz::metadata::<ReleaseMetadata>(Role::Release, data, |w, signed| {
        if let Ok(r) = w.verifier.verify_release(&w.state, signed, NOW) {
            assert!(r.metadata().expires > NOW);
        }
    });
});
