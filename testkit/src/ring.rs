//! The recorder tests' view of a ring buffer: a private instance that is
//! tracing, numbered markers written from a pinned thread, and a parser of the
//! recorded pages that finds them again.

use std::collections::HashSet;
use std::path::Path;

use tracecmd_rs::recorder::{CpuRecorder, RecordFlags};
use tracecmd_rs::tracefs::Instance;

use crate::TempDir;

/// Size of the ring-buffer page header on 64-bit kernels: u64 timestamp + 8-byte commit.
pub const PAGE_HEADER: usize = 16;
/// The length part of the commit word. The kernel keeps flags above it (missed
/// events = bit 31, missed count stored = bit 30, added as an `int`, so on 64-bit
/// they arrive sign-extended into the upper half); readers such as libtraceevent's
/// kbuffer mask the length with 2^27 - 1.
const COMMIT_MASK: u64 = (1 << 27) - 1;

/// A private instance of `buffer_kb` KiB per CPU with tracing on.
pub fn tracing_instance(tag: &str, buffer_kb: u32) -> Instance {
    let inst = crate::instance(tag);
    inst.write("buffer_size_kb", &buffer_kb.to_string())
        .expect("set buffer_size_kb");
    inst.write("tracing_on", "1").expect("set tracing_on");
    inst
}

/// A tracing private instance, its first usable CPU and a fresh output directory.
pub fn setup(tag: &str, buffer_kb: u32) -> (Instance, usize, TempDir) {
    let inst = tracing_instance(tag, buffer_kb);
    let cpu = crate::tracefs::usable_cpus(&inst)[0];
    (inst, cpu, TempDir::new(tag))
}

/// The ring buffer of `cpu` in `inst` as a recorder input.
pub fn buffer_input(inst: &Instance, cpu: usize) -> tracecmd_rs::recorder::Input {
    tracecmd_rs::recorder::Input::Buffer {
        dir: inst.path().to_path_buf(),
        cpu,
    }
}

/// A recorder of `cpu` of `inst` into the file `out`, default flags, no max-kb.
pub fn recorder(inst: &Instance, cpu: usize, out: &Path) -> CpuRecorder {
    CpuRecorder::to_file(buffer_input(inst, cpu), out, 0, RecordFlags::default())
        .expect("create recorder")
}

/// The marker text number `i` of `cpu` in test `tag`.
pub fn marker(tag: &str, cpu: usize, i: usize) -> String {
    format!("tcrs-{tag}-cpu{cpu}-{i:06}")
}

/// Writes markers 0..count of (`tag`, `cpu`) into the instance at `inst_dir`
/// from the calling thread, pinned to `cpu`.
pub fn write_markers(inst_dir: &Path, tag: &str, cpu: usize, count: usize) {
    crate::tracefs::write_markers(inst_dir, cpu, (0..count).map(|i| marker(tag, cpu, i)));
}

/// One parsed ring-buffer page.
#[derive(Debug)]
pub struct Page<'a> {
    pub timestamp: u64,
    pub data: &'a [u8],
}

/// Parses a recorded page: header timestamp, commit length (flag bits masked) within
/// the page.
pub fn parse_page(page: &[u8], page_size: usize) -> Result<Page<'_>, String> {
    if page.len() != page_size {
        return Err(format!("page of {} bytes, want {page_size}", page.len()));
    }
    let timestamp = u64::from_le_bytes(page[..8].try_into().unwrap());
    let raw = u64::from_le_bytes(page[8..16].try_into().unwrap());
    let commit = raw & COMMIT_MASK;
    if commit as usize > page_size - PAGE_HEADER {
        return Err(format!("commit {commit:#x} (raw {raw:#x}) beyond the page"));
    }
    Ok(Page {
        timestamp,
        data: &page[PAGE_HEADER..PAGE_HEADER + commit as usize],
    })
}

/// Parses every page of a recording; panics with the page number on a bad one.
pub fn parse_all(data: &[u8], page_size: usize) -> Vec<Page<'_>> {
    assert_eq!(
        data.len() % page_size,
        0,
        "output of {} bytes is not whole pages",
        data.len()
    );
    data.chunks(page_size)
        .enumerate()
        .map(|(i, p)| parse_page(p, page_size).unwrap_or_else(|e| panic!("page {i}: {e}")))
        .collect()
}

/// Every marker of `tag` found inside the committed data of the pages (each page is
/// searched on its own: events never cross pages).
pub fn markers_in(pages: &[Page<'_>], tag: &str) -> HashSet<String> {
    let prefix = format!("tcrs-{tag}-cpu");
    let len = marker(tag, 0, 0).len();
    let mut found = HashSet::new();
    for p in pages {
        let d = p.data;
        let mut i = 0;
        while i + len <= d.len() {
            if d[i..].starts_with(prefix.as_bytes()) {
                found.insert(String::from_utf8_lossy(&d[i..i + len]).into_owned());
                i += len;
            } else {
                i += 1;
            }
        }
    }
    found
}
