//! Every metadata parser that reads a client's or a guest's metadata: v7
//! sections, v6 (the guest merge of `record -A`), the clock option, and the
//! page/event header layouts.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tracecmd_rs::output::layout::{parse_fields, EventLayout, PageLayout};
use tracecmd_rs::output::v7;
use tracecmd_rs::virt::meta;

fuzz_target!(|data: &[u8]| {
    let _ = v7::parse_metadata(data);
    let _ = v7::current_clock(data);
    if let Ok(m) = meta::parse_metadata(data) {
        // Merging a guest into itself exercises the format rewriting.
        let mut host = m.clone();
        let _ = meta::merge_remapped(&mut host, &m);
    }
    let _ = meta::format_name_id(data);
    let _ = parse_fields(data);
    let _ = PageLayout::parse(data);
    let _ = EventLayout::parse(data);
});
