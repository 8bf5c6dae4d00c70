//! The trace.dat reader: a whole file, then its page layouts and every
//! buffer's pages, as `trace-cmd dump`-like tools and the tests read it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tracecmd_rs::output::reader::{InitialHeader, TraceDat};

fuzz_target!(|data: &[u8]| {
    let _ = InitialHeader::parse(data);
    let Ok(dat) = TraceDat::parse(data) else { return };
    let _ = dat.layouts(data);
    for i in 0..dat.buffers.len() {
        let _ = dat.count_events(data, i);
    }
    for o in &dat.options {
        let _ = dat.options_with(data, o.id).count();
    }
});
