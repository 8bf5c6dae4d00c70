//! The ring-buffer page walker and the event-ID rewriting that `record -A`
//! applies to a guest's per-CPU data. Structure-aware: the layouts are the
//! kernel's real header_page/header_event texts (or fuzzed ones), the pages
//! and the ID map come from the fuzzer.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use tracecmd_rs::output::layout::{walk_page, EventLayout, PageLayout};

const HEADER_PAGE: &[u8] = b"\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;\n\
\tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;\n\
\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;\n\
\tfield: char data;\toffset:16;\tsize:4080;\tsigned:1;\n";
const HEADER_EVENT: &[u8] = b"# compressed entry header\n\
\ttype_len    :    5 bits\n\
\ttime_delta  :   27 bits\n\
\tarray       :   32 bits\n\
\n\
\tpadding     : type == 29\n\
\ttime_extend : type == 30\n\
\ttime_stamp : type == 31\n\
\tdata max type_len  == 28\n";

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    header_page: Option<&'a [u8]>,
    header_event: Option<&'a [u8]>,
    big_endian: bool,
    page_shift: u8,
    map: Vec<(u16, u16)>,
    pages: &'a [u8],
}

fuzz_target!(|inp: Input| {
    let hp = inp.header_page.unwrap_or(HEADER_PAGE);
    let he = inp.header_event.unwrap_or(HEADER_EVENT);
    let page_size = 64usize << (inp.page_shift % 8);
    if let (Some(pl), Some(el)) = (PageLayout::parse(hp), EventLayout::parse(he)) {
        for page in inp.pages.chunks(page_size) {
            let _ = walk_page(page, &pl, &el, inp.big_endian, |_| {});
        }
    }
    let map: HashMap<u16, u16> = inp.map.into_iter().collect();
    let dir = std::env::temp_dir().join(format!("tracecmd-fuzz-pages-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("cpu0");
    std::fs::write(&path, inp.pages).expect("write the page file");
    let before = inp.pages.len();
    if tracecmd_rs::output::merge::remap_file_ids(&path, page_size, hp, he, &map).is_ok() {
        // Rewriting IDs never changes the size of the data.
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, before);
    }
});
