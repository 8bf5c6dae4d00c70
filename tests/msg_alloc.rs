//! A message claiming any size allocates no more than the 8 KiB message bound.
//!
//! A counting global allocator records, for the thread that enables it, the
//! largest single allocation and the total bytes requested while one message is
//! decoded (from a slice) or received (from a socket).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::os::unix::net::UnixStream;
use tracecmd_rs::msg::{v2, v3, Wait, MSG_MAX_LEN};

struct Counting;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = TRACK.try_with(|t| {
        if t.get() {
            LARGEST.with(|l| l.set(l.get().max(size)));
            TOTAL.with(|x| x.set(x.get() + size));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Runs `f` and returns (largest single allocation, total bytes allocated).
fn measure(f: impl FnOnce()) -> (usize, usize) {
    LARGEST.with(|l| l.set(0));
    TOTAL.with(|t| t.set(0));
    TRACK.with(|t| t.set(true));
    f();
    TRACK.with(|t| t.set(false));
    (LARGEST.with(Cell::get), TOTAL.with(Cell::get))
}

const CLAIMS: [u32; 10] = [
    0,
    8,
    12,
    20,
    4096,
    8192,
    8193,
    65536,
    0x7fff_ffff,
    0xffff_ffff,
];

fn message(size: u32, cmd: u32, rest: &[u8]) -> Vec<u8> {
    let mut v = size.to_be_bytes().to_vec();
    v.extend_from_slice(&cmd.to_be_bytes());
    v.extend_from_slice(rest);
    v
}

/// Asserts the 8 KiB bound for one message; returns its largest allocation.
fn check_bound(cmd: u32, size: u32, largest: usize, total: usize) -> usize {
    assert!(
        largest <= MSG_MAX_LEN,
        "cmd {cmd} size {size}: one allocation of {largest}"
    );
    assert!(
        total <= 2 * MSG_MAX_LEN,
        "cmd {cmd} size {size}: {total} bytes in all"
    );
    largest
}

#[test]
fn decoding_any_claimed_size_allocates_at_most_8_kib() {
    // Body bytes that make the data-carrying commands valid when size ≤ 8192.
    let mut filler = vec![0u8; 16 * 1024];
    let mut seen = 0;
    for (cmd, size) in (0..20u32).flat_map(|c| CLAIMS.map(|s| (c, s))) {
        let n = size.saturating_sub(12);
        filler[..4].copy_from_slice(&n.to_be_bytes());
        let bytes = message(size, cmd, &filler);
        let (largest, total) = measure(|| {
            let _ = v2::decode(&bytes);
        });
        seen = seen.max(check_bound(cmd, size, largest, total));
        let mut v3 = message(size, cmd, &[0; 4]);
        v3.extend_from_slice(&filler);
        let (largest, _) = measure(|| {
            let _ = v3::decode(&v3);
        });
        assert!(
            largest <= MSG_MAX_LEN,
            "V3 cmd {cmd} size {size}: {largest}"
        );
    }
    // The counter works: a full 8192-byte SENDMETA does allocate its 8180 bytes.
    assert!(seen >= 8180, "largest allocation seen: {seen}");
}

#[test]
fn receiving_any_claimed_size_allocates_at_most_8_kib() {
    let mut seen = 0;
    for (cmd, size) in [6u32, 3, 5, 4, 1, 17]
        .into_iter()
        .flat_map(|c| CLAIMS.map(|s| (c, s)))
    {
        let (mut a, b) = UnixStream::pair().unwrap();
        let n = size.saturating_sub(12);
        let mut body = n.to_be_bytes().to_vec();
        body.resize((size as usize).clamp(12, MSG_MAX_LEN) - 8, 0);
        a.write_all(&message(size, cmd, &body)).unwrap();
        drop(a);
        let ch = testkit::msg::chan(&b);
        let (largest, total) = measure(|| {
            let _ = v2::recv(&ch, Wait::Timed);
        });
        seen = seen.max(check_bound(cmd, size, largest, total));
    }
    assert!(seen >= 8180, "largest allocation seen: {seen}");
}
