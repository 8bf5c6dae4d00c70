//! A small, well-formed trace.dat metadata for tests that need one but do not
//! read it from the kernel.

use tracecmd_rs::output::Metadata;

/// Page size of the synthetic metadata and of the scripted clients.
pub const PAGE: usize = 4096;

/// A 64-bit kernel's `events/header_page`.
pub const HEADER_PAGE: &str = "\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;\n\
\tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;\n\
\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;\n\
\tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;\n";

/// The kernel's `events/header_event`.
pub const HEADER_EVENT: &str = "# compressed entry header\n\ttype_len    :    5 bits\n\
\ttime_delta  :   27 bits\n\tarray       :   32 bits\n\n\tpadding     : type == 29\n\
\ttime_extend : type == 30\n\ttime_stamp : type == 31\n\tdata max type_len  == 28\n";

/// Metadata with the kernel's headers, no formats and one cmdline; tests add
/// what they need with `Metadata { .., ..metadata() }`.
pub fn metadata() -> Metadata {
    Metadata {
        page_size: PAGE as u32,
        long_size: 8,
        header_page: HEADER_PAGE.as_bytes().to_vec(),
        header_event: HEADER_EVENT.as_bytes().to_vec(),
        ftrace_formats: vec![],
        systems: vec![],
        kallsyms: vec![],
        printk_formats: vec![],
        cmdlines: b"1 init\n".to_vec(),
    }
}

/// [`metadata`] as v6 bytes (header … cmdlines).
pub fn metadata_bytes() -> Vec<u8> {
    metadata().to_bytes().unwrap()
}

/// [`metadata`] with one ftrace format, one event system (sched_switch, ID 300)
/// and one kallsyms line: every section of the metadata holds something.
pub fn metadata_with_formats() -> Metadata {
    Metadata {
        ftrace_formats: vec![b"name: print\nID: 5\n".to_vec()],
        systems: vec![(
            "sched".into(),
            vec![b"name: sched_switch\nID: 300\n".to_vec()],
        )],
        kallsyms: b"ffffffff81000000 T _stext\n".to_vec(),
        ..metadata()
    }
}
