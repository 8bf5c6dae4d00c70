//! Helpers shared by the recorder's kernel tests: a private tracefs instance, pinned
//! marker writers and a ring-buffer page parser.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

use tracecmd_rs::tracefs::{self, Instance};

/// Size of the ring-buffer page header on 64-bit kernels: u64 timestamp + 8-byte commit.
pub const PAGE_HEADER: usize = 16;
/// Flag bits the kernel keeps in the commit word (missed events, missed count stored).
const COMMIT_FLAGS: u64 = (1 << 31) | (1 << 30);

/// A private instance with an explicit buffer size; panics with the reason when the
/// machine cannot run kernel tests.
pub fn instance(tag: &str, buffer_kb: u32) -> Instance {
    if tracefs::tracing_dir().is_err() {
        panic!(
            "tracefs is not mounted: run as root with tracefs mounted (.ci/install-deps mounts it)"
        );
    }
    let name = format!("tcrs-rec-{tag}-{}", std::process::id());
    let inst = Instance::create(&name)
        .unwrap_or_else(|e| panic!("cannot create tracing instance {name} (needs root): {e}"));
    inst.write("buffer_size_kb", &buffer_kb.to_string())
        .expect("set buffer_size_kb");
    inst.write("tracing_on", "1").expect("set tracing_on");
    inst
}

/// CPUs of the instance that this process may run on.
pub fn cpus(inst: &Instance) -> Vec<usize> {
    let n = tracefs::cpu_count(inst).expect("count CPUs");
    let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    let cpus: Vec<usize> = (0..n)
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .collect();
    assert!(!cpus.is_empty(), "no CPU of the tracing instance is usable");
    cpus
}

/// The marker text number `i` of `cpu` in test `tag`.
pub fn marker(tag: &str, cpu: usize, i: usize) -> String {
    format!("tcrs-{tag}-cpu{cpu}-{i:06}")
}

/// Writes `count` markers into the instance's `trace_marker` from a thread pinned to
/// `cpu`, one write() each.
pub fn write_markers(inst_dir: PathBuf, tag: &'static str, cpu: usize, count: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .unwrap_or_else(|e| panic!("cannot pin the marker writer to CPU {cpu}: {e}"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(inst_dir.join("trace_marker"))
        .expect("open trace_marker");
    for i in 0..count {
        f.write_all(marker(tag, cpu, i).as_bytes())
            .expect("write trace_marker");
    }
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
    let commit = raw & !COMMIT_FLAGS;
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

/// True if `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A fresh temporary directory for output files.
pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tcrs-rec-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Small xorshift PRNG for test data.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Every marker of `tag` found inside the committed data of the pages (each page is
/// searched on its own: events never cross pages).
pub fn markers_in(pages: &[Page<'_>], tag: &str) -> std::collections::HashSet<String> {
    let prefix = format!("tcrs-{tag}-cpu");
    let len = marker(tag, 0, 0).len();
    let mut found = std::collections::HashSet::new();
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
