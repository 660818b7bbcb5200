//! Root metadata: the payload decoder, then pinning and rotation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_protocol::trust::{Role, Root, TrustState};

fuzz_target!(|data: &[u8]| {
    outpost_protocol_fuzz::metadata::<Root>(Role::Root, data, |w, signed| {
        let _ = TrustState::pinned(signed);
        if let Ok(next) = w.state.rotate(signed) {
            // A rotation is accepted only as version + 1.
            assert_eq!(next.root.version, w.state.root.version + 1);
        }
    });
});
