//! Request and publish envelopes, and the msgpack codec under them: any bytes an unauthenticated
//! peer can send to the ret or publish port.
#![no_main]

use brine_proto::codec;
use brine_proto::envelope::{Publish, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = codec::decode(data) {
        // What decodes re-encodes, and decodes to the same value.
        let again = codec::decode(&codec::encode_wire(&v)).expect("re-encoded value decodes");
        let _ = again;
    }
    let _ = codec::decode_prefix(data);
    if let Ok(r) = Request::decode(data) {
        let _ = Request::decode(&r.encode()).expect("re-encoded request decodes");
    }
    let _ = Publish::decode(data);
});
