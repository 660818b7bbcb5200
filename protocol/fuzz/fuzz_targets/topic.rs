//! The topic parser and device-id validation: never panics; a parsed topic
//! rebuilds to itself and its id holds no MQTT wildcard or separator.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    outpost_protocol_fuzz::topic(data);
});
