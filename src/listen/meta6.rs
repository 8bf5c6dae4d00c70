//! Finds the TRACECLOCK option in the version 6 metadata a V3 client sent (doc
//! §2.1 rows 1–18), so that the trailing clock after the flyrecord table names the
//! client's clock: 3.x listeners write their own there, which gives wrong
//! timestamps when the two machines' clocks differ (doc §6.8, P6).

use crate::output::v7::{current_clock, ReadAt};
use crate::output::{option_id, MAGIC};

struct Walk<'a, S: ReadAt + ?Sized> {
    src: &'a S,
    pos: u64,
}

impl<S: ReadAt + ?Sized> Walk<'_, S> {
    fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut b = [0u8; N];
        self.src.read_at_exact(self.pos, &mut b).ok()?;
        self.pos += N as u64;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        self.bytes().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.bytes().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.bytes().map(u64::from_le_bytes)
    }
    /// Skips `n` bytes that must exist.
    fn skip(&mut self, n: u64) -> Option<()> {
        let end = self.pos.checked_add(n)?;
        (end <= self.src.len_bytes()).then(|| self.pos = end)
    }
    /// A NUL-terminated string of at most 256 bytes.
    fn cstr(&mut self) -> Option<Vec<u8>> {
        let mut v = Vec::new();
        loop {
            let [b] = self.bytes::<1>()?;
            if b == 0 {
                return Some(v);
            }
            if v.len() == 256 {
                return None;
            }
            v.push(b);
        }
    }
    fn tag(&mut self, want: &[u8]) -> Option<()> {
        let mut b = vec![0u8; want.len()];
        self.src.read_at_exact(self.pos, &mut b).ok()?;
        self.pos += want.len() as u64;
        (b == want).then_some(())
    }
}

/// The clock named by the TRACECLOCK option of little-endian v6 metadata that
/// runs through the options block; `None` when there is no such option or the
/// metadata is not laid out as expected.
pub fn client_clock(src: &(impl ReadAt + ?Sized)) -> Option<String> {
    let mut w = Walk { src, pos: 0 };
    w.tag(MAGIC)?;
    w.tag(b"6\0")?;
    let [endian, _long] = w.bytes::<2>()?;
    if endian != 0 {
        return None;
    }
    w.u32()?; // page size
    w.tag(b"header_page\0")?;
    let n = w.u64()?;
    w.skip(n)?;
    w.tag(b"header_event\0")?;
    let n = w.u64()?;
    w.skip(n)?;
    for _ in 0..w.u32()? {
        let n = w.u64()?;
        w.skip(n)?;
    }
    for _ in 0..w.u32()? {
        w.cstr()?;
        for _ in 0..w.u32()? {
            let n = w.u64()?;
            w.skip(n)?;
        }
    }
    let n = w.u32()?; // kallsyms
    w.skip(n.into())?;
    let n = w.u32()?; // printk formats
    w.skip(n.into())?;
    let n = w.u64()?; // saved cmdlines
    w.skip(n)?;
    w.u32()?; // CPU count
    w.tag(b"options  \0")?;
    loop {
        let id = w.u16()?;
        if id == option_id::DONE {
            return None;
        }
        let size = w.u32()?;
        if id == option_id::TRACECLOCK && size <= 4096 {
            let mut text = vec![0u8; size as usize];
            src.read_at_exact(w.pos, &mut text).ok()?;
            return current_clock(&text);
        }
        w.skip(size.into())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{write_options_block, DatOption, Metadata};

    fn meta(options: &[DatOption]) -> Vec<u8> {
        let mut m = Metadata {
            page_size: 4096,
            long_size: 8,
            header_page: b"hp".to_vec(),
            header_event: b"he".to_vec(),
            ftrace_formats: vec![b"f1".to_vec()],
            systems: vec![("sched".into(), vec![b"e1".to_vec(), b"e2".to_vec()])],
            kallsyms: b"k".to_vec(),
            printk_formats: vec![],
            cmdlines: b"1 init\n".to_vec(),
        }
        .to_bytes()
        .unwrap();
        write_options_block(&mut m, 2, options).unwrap();
        m
    }

    #[test]
    fn finds_the_clients_clock() {
        let m = meta(&[
            DatOption::uname("Linux x 6 x86_64"),
            DatOption::trace_clock("local global [mono] x86-tsc\n"),
        ]);
        assert_eq!(client_clock(&m[..]).as_deref(), Some("mono"));
        assert_eq!(client_clock(&meta(&[])[..]), None);
    }

    #[test]
    fn never_panics_on_cut_or_mutated_metadata() {
        let good = meta(&[DatOption::trace_clock("[local] global\n")]);
        for cut in 0..good.len() {
            let _ = client_clock(&good[..cut]);
        }
        let mut x = 0x0123_4567_89ab_cdefu64;
        for _ in 0..20000 {
            let mut b = good.clone();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % b.len() as u64) as usize;
            b[i] = (x >> 32) as u8;
            let _ = client_clock(&b[..]);
        }
    }
}
