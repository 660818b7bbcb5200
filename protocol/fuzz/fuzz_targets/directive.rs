//! Directives: the payload decoder, then the verifier (with and without
//! valid release metadata for whatever target the directive names).
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_protocol::trust::{Directive, ReleaseMetadata, Role, keys};
use outpost_protocol_fuzz::NOW;

fuzz_target!(|data: &[u8]| {
    outpost_protocol_fuzz::metadata::<Directive>(Role::Director, data, |w, signed| {
        let release = signed.decode_unverified().ok().and_then(|d| {
            let target = d.action.target()?;
            let meta = ReleaseMetadata {
                version: 1,
                expires: NOW + 1000,
                targets: vec![outpost_protocol::trust::TargetMeta {
                    name: target.name.clone(),
                    version: target.version.clone(),
                    sha256: target.sha256,
                    length: target.length,
                    constraints: Default::default(),
                }],
            };
            keys::sign(&meta, Role::Release, &w.keys(Role::Release)).ok()
        });
        for r in [None, release.as_ref()] {
            if let Ok(decision) = w.verifier.decide(&w.state, signed, r, NOW) {
                assert!(decision.state.last_sequence > w.state.last_sequence);
                assert!(decision.directive.expires > NOW);
            }
        }
    });
});
