//! A guest's metadata (the v6 header the agent sends as SENDMETA…FINMETA) read
//! back into an [`output::Metadata`](crate::output::Metadata), and merged with the
//! host's for one trace.dat.
//!
//! A v6 file has one table of event formats for all its buffers. When host and
//! guest run the same kernel the tables agree. Otherwise [`merge`] keeps the host's
//! formats, adds the guest's events the host lacks, and reports every event whose
//! ID differs between the two: `report` then shows those guest events under the
//! host's format (a limit of the v6 format; documented in the README).

use super::{Result, VirtError};
use crate::output::Metadata;

const MAGIC: &[u8] = b"\x17\x08\x44tracing";

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let left = (self.b.len() - self.at) as u64;
        if n > left {
            return Err(VirtError::BadMetadata(format!(
                "{what} at offset {} needs {n} bytes, only {left} left",
                self.at
            )));
        }
        let s = &self.b[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let s = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn blob64(&mut self, what: &str) -> Result<Vec<u8>> {
        let n = self.u64(what)?;
        Ok(self.take(n, what)?.to_vec())
    }
    fn blob32(&mut self, what: &str) -> Result<Vec<u8>> {
        let n = self.u32(what)?;
        Ok(self.take(n.into(), what)?.to_vec())
    }
    fn cstr(&mut self, what: &str) -> Result<&'a [u8]> {
        let rest = &self.b[self.at..];
        let end = rest.iter().position(|&c| c == 0).ok_or_else(|| {
            VirtError::BadMetadata(format!("{what} at offset {} has no NUL", self.at))
        })?;
        self.at += end + 1;
        Ok(&rest[..end])
    }
    fn expect(&mut self, lit: &[u8], what: &str) -> Result<()> {
        if self.take(lit.len() as u64, what)? != lit {
            return Err(VirtError::BadMetadata(format!("{what} missing")));
        }
        Ok(())
    }
}

/// Parses the v6 metadata (magic through saved cmdlines, little endian only).
pub fn parse_metadata(b: &[u8]) -> Result<Metadata> {
    let mut c = Cursor { b, at: 0 };
    c.expect(MAGIC, "the trace.dat magic")?;
    c.expect(b"6\0", "version 6")?;
    if c.take(1, "the endian byte")?[0] != 0 {
        return Err(VirtError::BadMetadata(
            "the guest is big endian; only little-endian guests are supported".into(),
        ));
    }
    let long_size = c.take(1, "long size")?[0];
    let page_size = c.u32("page size")?;
    c.expect(b"header_page\0", "the header_page tag")?;
    let header_page = c.blob64("header_page")?;
    c.expect(b"header_event\0", "the header_event tag")?;
    let header_event = c.blob64("header_event")?;
    let n = c.u32("ftrace format count")?;
    let mut ftrace_formats = Vec::new();
    for _ in 0..n {
        ftrace_formats.push(c.blob64("an ftrace format")?);
    }
    let n = c.u32("system count")?;
    let mut systems = Vec::new();
    for _ in 0..n {
        let name = String::from_utf8_lossy(c.cstr("a system name")?).into_owned();
        let k = c.u32("event count")?;
        let mut evs = Vec::new();
        for _ in 0..k {
            evs.push(c.blob64("an event format")?);
        }
        systems.push((name, evs));
    }
    let kallsyms = c.blob32("kallsyms")?;
    let printk_formats = c.blob32("printk formats")?;
    let cmdlines = c.blob64("saved cmdlines")?;
    if c.at != b.len() {
        return Err(VirtError::BadMetadata(format!(
            "{} bytes after the saved cmdlines",
            b.len() - c.at
        )));
    }
    Ok(Metadata {
        page_size,
        long_size,
        header_page,
        header_event,
        ftrace_formats,
        systems,
        kallsyms,
        printk_formats,
        cmdlines,
    })
}

/// `name` and `ID` of an event format text.
pub fn format_name_id(format: &[u8]) -> Option<(String, u32)> {
    let text = String::from_utf8_lossy(format);
    let mut name = None;
    let mut id = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("name:") {
            name = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("ID:") {
            id = v.trim().parse().ok();
        }
    }
    Some((name?, id?))
}

/// Merges a guest's metadata into the host's: guest events the host lacks are
/// added. Returns the names of events whose IDs differ (shown with the host's
/// format by `report`).
pub fn merge(host: &mut Metadata, guest: &Metadata) -> Vec<String> {
    let mut conflicts = Vec::new();
    for (sys, formats) in &guest.systems {
        let idx = match host.systems.iter().position(|(s, _)| s == sys) {
            Some(i) => i,
            None => {
                host.systems.push((sys.clone(), Vec::new()));
                host.systems.len() - 1
            }
        };
        for f in formats {
            let Some((name, id)) = format_name_id(f) else {
                continue;
            };
            let existing = host.systems[idx]
                .1
                .iter()
                .filter_map(|h| format_name_id(h))
                .find(|(n, _)| *n == name);
            match existing {
                Some((_, hid)) if hid != id => conflicts.push(format!("{sys}:{name}")),
                Some(_) => {}
                None => host.systems[idx].1.push(f.clone()),
            }
        }
    }
    if host.cmdlines.is_empty() {
        host.cmdlines = guest.cmdlines.clone();
    } else if !guest.cmdlines.is_empty() {
        host.cmdlines.extend_from_slice(&guest.cmdlines);
    }
    conflicts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Metadata {
        Metadata {
            page_size: 4096,
            long_size: 8,
            header_page: b"hp".to_vec(),
            header_event: b"he".to_vec(),
            ftrace_formats: vec![b"name: print\nID: 5\n".to_vec()],
            systems: vec![(
                "sched".into(),
                vec![b"name: sched_switch\nID: 300\n".to_vec()],
            )],
            kallsyms: b"k".to_vec(),
            printk_formats: vec![],
            cmdlines: b"1 init\n".to_vec(),
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        assert_eq!(parse_metadata(&m.to_bytes().unwrap()).unwrap(), m);
    }

    #[test]
    fn truncated_and_random_input_never_panics() {
        let good = sample().to_bytes().unwrap();
        for n in 0..good.len() {
            assert!(parse_metadata(&good[..n]).is_err(), "prefix {n}");
        }
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let mut b = good.clone();
            for _ in 0..(next() % 8 + 1) {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            let _ = parse_metadata(&b);
            let len = (next() % 200) as usize;
            let r: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            assert!(parse_metadata(&r).is_err());
        }
    }

    #[test]
    fn merge_adds_missing_and_reports_id_conflicts() {
        let mut host = sample();
        let mut guest = sample();
        guest.systems[0].1[0] = b"name: sched_switch\nID: 301\n".to_vec();
        guest.systems.push((
            "irq".into(),
            vec![b"name: irq_handler_entry\nID: 9\n".to_vec()],
        ));
        let conflicts = merge(&mut host, &guest);
        assert_eq!(conflicts, vec!["sched:sched_switch".to_string()]);
        assert_eq!(host.systems.len(), 2);
        assert_eq!(host.systems[0].1.len(), 1);
        assert_eq!(host.systems[1].0, "irq");
    }
}
