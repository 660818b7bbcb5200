//! The `…/commands` payload decoder: never panics, stays within its size
//! limit, and whatever it accepts re-encodes to a payload it accepts again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_protocol::topic::TopicKind;

fuzz_target!(|data: &[u8]| {
    outpost_protocol_fuzz::payload(TopicKind::Commands, data);
});
