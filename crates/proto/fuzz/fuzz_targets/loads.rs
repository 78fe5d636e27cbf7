//! Every load parser, on any msgpack value (what an accepted minion can send once decrypted).
#![no_main]

use brine_proto::codec;
use brine_proto::loads::{
    AuthRequest, CliPublish, JobLoad, MinionEvent, PillarRequest, ReturnLoad, SyndicReturn,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = codec::decode(data) else { return };
    if let Ok(a) = AuthRequest::from_value(&v) {
        let _ = a.to_value();
    }
    if let Ok(j) = JobLoad::from_value(&v) {
        let _ = (j.to_value(), j.fun_name(), j.tgt_type());
    }
    if let Ok(r) = ReturnLoad::from_value(&v) {
        let _ = r.to_value();
    }
    if let Ok(e) = MinionEvent::from_value(&v) {
        let _ = e.to_value();
    }
    let _ = PillarRequest::from_value(&v);
    if let Ok(s) = SyndicReturn::from_value(&v) {
        let _ = (s.to_returns(), s.to_value());
    }
    let _ = CliPublish::from_value(&v);
});
