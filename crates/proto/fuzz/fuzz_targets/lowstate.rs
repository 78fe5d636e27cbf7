//! The HTTP API's lowstate parser: any body a client can POST to `/` (JSON, YAML-less form
//! data), turned into publish specs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else { return };
    let ct = ["application/json", "application/x-www-form-urlencoded", ""][usize::from(sel) % 3];
    if let Ok(chunks) = brine_mofm::api::parse_lowstate(ct, body) {
        for c in &chunks {
            let _ = brine_mofm::api::publish_spec(c);
        }
    }
});
