//! The one reader of version 6 trace.dat metadata (doc §2.1 rows 1–17): the
//! initial header, header_page, header_event, the ftrace and event formats,
//! kallsyms, printk formats, saved cmdlines, the CPU count and the options block.
//!
//! Every caller goes through it, so they cannot disagree about a file: the file
//! reader ([`TraceDat`](super::reader::TraceDat)), `record -A` reading a guest's
//! metadata ([`Metadata::parse`]) and the listener finishing a V3 client's file
//! ([`InitialHeader::parse`], [`trace_clock_of`]). It reads through [`ReadAt`],
//! so the listener reads its file in place; it never panics, and checks every size
//! field against the bytes that are there before it reads or keeps anything.

use std::ops::Range;

use super::read_at::ReadAt;
use super::reader::DatError;
use super::v7::current_clock;
use super::{option_id, Metadata, MAGIC};

/// Longest NUL-terminated string accepted (system names are directory names).
const MAX_CSTR: usize = 4096;
/// Longest TRACECLOCK option read (a `trace_clock` file is a few dozen bytes).
const MAX_TRACECLOCK: u64 = 4096;

pub(super) fn bad(offset: u64, detail: impl Into<String>) -> DatError {
    DatError::Malformed {
        offset: usize::try_from(offset).unwrap_or(usize::MAX),
        detail: detail.into(),
    }
}

/// A position in trace.dat bytes that reads nothing past `end`, numbers in the
/// file's byte order.
pub(super) struct Cur<'a, S: ReadAt + ?Sized> {
    pub src: &'a S,
    pub pos: u64,
    pub end: u64,
    pub be: bool,
}

impl<'a, S: ReadAt + ?Sized> Cur<'a, S> {
    /// A cursor at `pos` that may read to the end of `src`.
    pub fn new(src: &'a S, pos: u64, be: bool) -> Self {
        Cur {
            src,
            pos,
            end: src.len_bytes(),
            be,
        }
    }

    /// A cursor over `r` only (an option's payload, a section's body).
    pub fn within(&self, r: Range<u64>) -> Self {
        Cur {
            src: self.src,
            pos: r.start,
            end: r.end.min(self.end),
            be: self.be,
        }
    }

    fn truncated(&self, what: &str, need: u64) -> DatError {
        DatError::Truncated {
            what: what.to_string(),
            offset: usize::try_from(self.pos).unwrap_or(usize::MAX),
            need,
        }
    }

    /// Steps over `n` bytes that must be there; returns where they lie.
    pub fn take(&mut self, n: u64, what: &str) -> Result<Range<u64>, DatError> {
        if n > self.end.saturating_sub(self.pos) {
            return Err(self.truncated(what, n));
        }
        let r = self.pos..self.pos + n;
        self.pos = r.end;
        Ok(r)
    }

    /// Reads the bytes of `r`, which the caller took from this input.
    pub fn read(&self, r: Range<u64>, what: &str, buf: &mut [u8]) -> Result<(), DatError> {
        self.src
            .read_at_exact(r.start, buf)
            .map_err(|_| DatError::Truncated {
                what: what.to_string(),
                offset: usize::try_from(r.start).unwrap_or(usize::MAX),
                need: r.end - r.start,
            })
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], DatError> {
        let r = self.take(N as u64, what)?;
        let mut b = [0u8; N];
        self.read(r, what, &mut b)?;
        Ok(b)
    }

    /// An unsigned number of `N` bytes in the file's byte order.
    fn uint<const N: usize>(&mut self, what: &str) -> Result<u64, DatError> {
        let b = self.array::<N>(what)?;
        let fold = |v: u64, &x: &u8| (v << 8) | u64::from(x);
        Ok(if self.be {
            b.iter().fold(0, fold)
        } else {
            b.iter().rev().fold(0, fold)
        })
    }

    pub fn u8(&mut self, what: &str) -> Result<u8, DatError> {
        Ok(self.uint::<1>(what)? as u8)
    }

    pub fn u16(&mut self, what: &str) -> Result<u16, DatError> {
        Ok(self.uint::<2>(what)? as u16)
    }

    pub fn u32(&mut self, what: &str) -> Result<u32, DatError> {
        Ok(self.uint::<4>(what)? as u32)
    }

    pub fn u64(&mut self, what: &str) -> Result<u64, DatError> {
        self.uint::<8>(what)
    }

    /// A NUL-terminated string of at most [`MAX_CSTR`] bytes.
    pub fn cstr(&mut self, what: &str) -> Result<String, DatError> {
        let start = self.pos;
        let mut s = Vec::new();
        let mut chunk = [0u8; 64];
        loop {
            let left = self.end.saturating_sub(self.pos);
            let n = left.min(chunk.len() as u64) as usize;
            let got = n > 0 && self.src.read_at_exact(self.pos, &mut chunk[..n]).is_ok();
            if !got {
                self.pos = start;
                return Err(self.truncated(
                    &format!("{what} (no NUL)"),
                    self.end.saturating_sub(start) + 1,
                ));
            }
            if let Some(i) = chunk[..n].iter().position(|&c| c == 0) {
                s.extend_from_slice(&chunk[..i]);
                self.pos += i as u64 + 1;
                return Ok(String::from_utf8_lossy(&s).into_owned());
            }
            s.extend_from_slice(&chunk[..n]);
            self.pos += n as u64;
            if s.len() > MAX_CSTR {
                return Err(bad(
                    start,
                    format!("{what} is not NUL-terminated within {MAX_CSTR} bytes"),
                ));
            }
        }
    }

    /// Steps over `tag`, which must be next.
    pub fn expect(&mut self, tag: &[u8], what: &str) -> Result<(), DatError> {
        let at = self.pos;
        let r = self.take(tag.len() as u64, what)?;
        let mut b = vec![0u8; tag.len()];
        self.read(r, what, &mut b)?;
        if b != tag {
            return Err(bad(
                at,
                format!("expected {:?}", String::from_utf8_lossy(tag)),
            ));
        }
        Ok(())
    }

    /// A u64 size, then that many bytes.
    fn blob64(&mut self, what: &str, size_what: &str) -> Result<Range<u64>, DatError> {
        let n = self.u64(size_what)?;
        self.take(n, what)
    }

    /// A u32 size, then that many bytes.
    fn blob32(&mut self, what: &str, size_what: &str) -> Result<Range<u64>, DatError> {
        let n = self.u32(size_what)?;
        self.take(n.into(), what)
    }
}

/// The fixed start of every trace.dat (doc §2.1 rows 1–6): what a listener reads
/// back from a streamed metadata file before attaching CPU data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitialHeader {
    /// 6 or 7.
    pub version: u32,
    /// True for big-endian files.
    pub big_endian: bool,
    /// `sizeof(long)` of the writer.
    pub long_size: u8,
    /// Page (sub-buffer) size.
    pub page_size: u32,
    /// Bytes the header occupies (where header_page starts in v6).
    pub len: usize,
}

impl InitialHeader {
    /// Parses the header from the start of `src` (at most 32 bytes are needed).
    pub fn parse(src: &(impl ReadAt + ?Sized)) -> Result<InitialHeader, DatError> {
        let mut c = Cur::new(src, 0, false);
        let magic: [u8; 10] = c.array("magic").map_err(|_| DatError::BadMagic)?;
        if &magic != MAGIC {
            return Err(DatError::BadMagic);
        }
        let version_str = c.cstr("version")?;
        let version = match version_str.as_str() {
            "6" => 6,
            "7" => 7,
            _ => return Err(DatError::Version(version_str)),
        };
        let endian_at = c.pos;
        c.be = match c.u8("endian")? {
            0 => false,
            1 => true,
            e => {
                return Err(bad(
                    endian_at,
                    format!("endian byte {e} is neither 0 nor 1"),
                ))
            }
        };
        let long_size = c.u8("long size")?;
        let page_size = c.u32("page size")?;
        Ok(InitialHeader {
            version,
            big_endian: c.be,
            long_size,
            page_size,
            len: c.pos as usize,
        })
    }

    /// Where the endian byte lies.
    fn endian_at(&self) -> u64 {
        self.len as u64 - 6
    }
}

/// A system's name and where its event format texts lie.
pub type SystemFormats = (String, Vec<Range<u64>>);

/// Where each part of version 6 metadata lies in the input (doc §2.1 rows 1–15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V6Metadata {
    /// The initial header.
    pub header: InitialHeader,
    /// `header_page` text.
    pub header_page: Range<u64>,
    /// `header_event` text.
    pub header_event: Range<u64>,
    /// ftrace format texts.
    pub ftrace_formats: Vec<Range<u64>>,
    /// Systems and their event format texts.
    pub systems: Vec<SystemFormats>,
    /// kallsyms text.
    pub kallsyms: Range<u64>,
    /// printk formats text.
    pub printk_formats: Range<u64>,
    /// saved cmdlines text.
    pub cmdlines: Range<u64>,
    /// Where the metadata ends: the CPU count follows in a whole file.
    pub end: u64,
}

impl V6Metadata {
    /// Parses version 6 metadata at the start of `src`, in either byte order.
    pub fn parse(src: &(impl ReadAt + ?Sized)) -> Result<V6Metadata, DatError> {
        let header = InitialHeader::parse(src)?;
        V6Metadata::parse_after(src, header)
    }

    /// Parses the metadata that follows `header`, already read from `src`.
    pub fn parse_after(
        src: &(impl ReadAt + ?Sized),
        header: InitialHeader,
    ) -> Result<V6Metadata, DatError> {
        if header.version != 6 {
            return Err(bad(
                MAGIC.len() as u64,
                format!(
                    "version {} metadata where version 6 was expected",
                    header.version
                ),
            ));
        }
        let mut p = Parts::new(src, header.len as u64, header.big_endian);
        let (header_page, header_event) = p.header_info()?;
        Ok(V6Metadata {
            header,
            header_page,
            header_event,
            ftrace_formats: p.ftrace_formats()?,
            systems: p.event_formats()?,
            kallsyms: p.kallsyms()?,
            printk_formats: p.printk_formats()?,
            cmdlines: p.cmdlines()?,
            end: p.position(),
        })
    }

    /// The CPU count after the metadata, and the options block after it if the
    /// input has one (doc §2.1 rows 16–17).
    pub fn options<'a, S: ReadAt + ?Sized>(
        &self,
        src: &'a S,
    ) -> Result<V6Options<'a, S>, DatError> {
        let mut cur = Cur::new(src, self.end, self.header.big_endian);
        let cpus = cur.u32("CPU count")?;
        let tag_at = cur.pos;
        let tag: [u8; 10] = cur.array("options/flyrecord tag")?;
        let walking = &tag == b"options  \0";
        if !walking {
            cur.pos = tag_at;
        }
        Ok(V6Options {
            cpus,
            has_block: walking,
            cur,
            walking,
        })
    }
}

/// Reads the parts of v6 metadata one after the other, from any position: a
/// version 7 file holds the same parts, one per section (doc §4.2, sections
/// 16–21), so a v7 reader uses this on a section's (decompressed) body.
pub struct Parts<'a, S: ReadAt + ?Sized> {
    cur: Cur<'a, S>,
}

impl<'a, S: ReadAt + ?Sized> Parts<'a, S> {
    /// Reads from `pos` of `src`, numbers in the given byte order.
    pub fn new(src: &'a S, pos: u64, big_endian: bool) -> Self {
        Parts {
            cur: Cur::new(src, pos, big_endian),
        }
    }

    /// Where the next part starts.
    pub fn position(&self) -> u64 {
        self.cur.pos
    }

    /// `header_page` and `header_event`, each after its tag (section 16).
    pub fn header_info(&mut self) -> Result<(Range<u64>, Range<u64>), DatError> {
        let c = &mut self.cur;
        c.expect(b"header_page\0", "header_page tag")?;
        let page = c.blob64("header_page", "header_page size")?;
        c.expect(b"header_event\0", "header_event tag")?;
        let event = c.blob64("header_event", "header_event size")?;
        Ok((page, event))
    }

    /// The ftrace format texts (section 17).
    pub fn ftrace_formats(&mut self) -> Result<Vec<Range<u64>>, DatError> {
        let c = &mut self.cur;
        // Entries are kept only once their bytes were found, so the lists grow
        // with the input, never with a count field.
        let count = c.u32("ftrace format count")?;
        let mut list = Vec::new();
        for _ in 0..count {
            list.push(c.blob64("ftrace format", "ftrace format size")?);
        }
        Ok(list)
    }

    /// The systems and their event format texts (section 18).
    pub fn event_formats(&mut self) -> Result<Vec<SystemFormats>, DatError> {
        let c = &mut self.cur;
        let count = c.u32("system count")?;
        let mut systems = Vec::new();
        for _ in 0..count {
            let name = c.cstr("system name")?;
            let events = c.u32("event count")?;
            let mut list = Vec::new();
            for _ in 0..events {
                list.push(c.blob64("event format", "event format size")?);
            }
            systems.push((name, list));
        }
        Ok(systems)
    }

    /// The kallsyms text (section 19).
    pub fn kallsyms(&mut self) -> Result<Range<u64>, DatError> {
        self.cur.blob32("kallsyms", "kallsyms size")
    }

    /// The printk formats text (section 20).
    pub fn printk_formats(&mut self) -> Result<Range<u64>, DatError> {
        self.cur.blob32("printk formats", "printk formats size")
    }

    /// The saved cmdlines text (section 21).
    pub fn cmdlines(&mut self) -> Result<Range<u64>, DatError> {
        self.cur.blob64("cmdlines", "cmdlines size")
    }
}

/// One option of a v6 options block (doc §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionAt {
    /// Option id ([`option_id`]).
    pub id: u16,
    /// Where the option (its id) starts.
    pub at: u64,
    /// Where its payload lies.
    pub data: Range<u64>,
}

/// The CPU count and, one by one, the options of a v6 file: an iterator that
/// ends after DONE, or after yielding the first error.
pub struct V6Options<'a, S: ReadAt + ?Sized> {
    /// The CPU count field.
    pub cpus: u32,
    /// Whether the input has an options block at all.
    pub has_block: bool,
    cur: Cur<'a, S>,
    walking: bool,
}

impl<S: ReadAt + ?Sized> V6Options<'_, S> {
    /// Where the data part's tag lies once the options are walked: after DONE,
    /// or after the CPU count when there is no options block.
    pub fn position(&self) -> u64 {
        self.cur.pos
    }

    fn step(&mut self) -> Result<Option<OptionAt>, DatError> {
        let at = self.cur.pos;
        let id = self.cur.u16("option id")?;
        if id == option_id::DONE {
            return Ok(None);
        }
        let n = self.cur.u32("option size")?;
        let data = self.cur.take(n.into(), "option data")?;
        Ok(Some(OptionAt { id, at, data }))
    }
}

impl<S: ReadAt + ?Sized> Iterator for V6Options<'_, S> {
    type Item = Result<OptionAt, DatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if !self.walking {
            return None;
        }
        let r = self.step();
        self.walking = matches!(r, Ok(Some(_)));
        r.transpose()
    }
}

/// The current clock named by the first TRACECLOCK option of the version 6
/// metadata in `src`; `None` without one, or when the metadata breaks off before
/// it. What a listener writes as the trailing clock for a V3 client (doc P6).
pub fn trace_clock_of(src: &(impl ReadAt + ?Sized)) -> Option<String> {
    let meta = V6Metadata::parse(src).ok()?;
    let options = meta.options(src).ok()?;
    for o in options {
        let o = o.ok()?;
        if o.id == option_id::TRACECLOCK && o.data.end - o.data.start <= MAX_TRACECLOCK {
            let mut text = vec![0u8; (o.data.end - o.data.start) as usize];
            src.read_at_exact(o.data.start, &mut text).ok()?;
            return current_clock(&text);
        }
    }
    None
}

impl Metadata {
    /// Reads little-endian version 6 metadata that is exactly magic … saved
    /// cmdlines, what [`Metadata::to_bytes`] writes and a guest agent sends.
    pub fn parse(b: &[u8]) -> Result<Metadata, DatError> {
        let header = InitialHeader::parse(b)?;
        if header.big_endian {
            // Metadata is written little-endian, and a guest's pages are
            // rewritten as little-endian ones (merge.rs).
            return Err(bad(
                header.endian_at(),
                "the metadata is big-endian; only little-endian metadata is supported",
            ));
        }
        let m = V6Metadata::parse_after(b, header)?;
        let len = b.len() as u64;
        if m.end != len {
            return Err(bad(
                m.end,
                format!("{} bytes after the saved cmdlines", len - m.end),
            ));
        }
        Ok(Metadata::from_v6(b, &m))
    }

    /// The parts `m` found in `b`.
    fn from_v6(b: &[u8], m: &V6Metadata) -> Metadata {
        // Every range lies inside `b`: the parser took it from there.
        let get = |r: &Range<u64>| b[r.start as usize..r.end as usize].to_vec();
        Metadata {
            page_size: m.header.page_size,
            long_size: m.header.long_size,
            header_page: get(&m.header_page),
            header_event: get(&m.header_event),
            ftrace_formats: m.ftrace_formats.iter().map(get).collect(),
            systems: m
                .systems
                .iter()
                .map(|(name, list)| (name.clone(), list.iter().map(get).collect()))
                .collect(),
            kallsyms: get(&m.kallsyms),
            printk_formats: get(&m.printk_formats),
            cmdlines: get(&m.cmdlines),
        }
    }

    /// Reads what a 3.x agent (like a V3 `record -N` client) sends before its
    /// data: version 6 metadata, with or without the CPU count and options after
    /// it, or a version 7 header with its metadata sections (16–21, compressed or
    /// not) and options. Little endian only; no section may unpack to more than
    /// `max_section` bytes.
    pub fn parse_streamed(b: &[u8], max_section: usize) -> Result<Metadata, DatError> {
        let header = InitialHeader::parse(b)?;
        if header.big_endian {
            return Err(bad(
                header.endian_at(),
                "the metadata is big-endian; only little-endian metadata is supported",
            ));
        }
        if header.version == 6 {
            return Ok(Metadata::from_v6(b, &V6Metadata::parse_after(b, header)?));
        }
        let dat = super::reader::TraceDat::parse(b)?;
        let section = |id: u16| -> Result<Vec<u8>, DatError> {
            let at = dat
                .options_with(b, id)
                .find_map(|d| <[u8; 8]>::try_from(d).ok())
                .map(u64::from_le_bytes)
                .ok_or_else(|| bad(0, format!("no option pointing at metadata section {id}")))?;
            let (got, raw) = super::v7read::section_at_most(b, at, max_section)?;
            if got != id {
                return Err(bad(at, format!("option {id} points at section {got}")));
            }
            Ok(raw)
        };
        let whole = |raw: &[u8], r: Range<u64>| raw[r.start as usize..r.end as usize].to_vec();
        let raw = section(16)?;
        let (hp, he) = Parts::new(&raw[..], 0, false).header_info()?;
        let (header_page, header_event) = (whole(&raw, hp), whole(&raw, he));
        let raw = section(17)?;
        let ftrace_formats = Parts::new(&raw[..], 0, false)
            .ftrace_formats()?
            .into_iter()
            .map(|r| whole(&raw, r))
            .collect();
        let raw = section(18)?;
        let systems = Parts::new(&raw[..], 0, false)
            .event_formats()?
            .into_iter()
            .map(|(name, list)| (name, list.into_iter().map(|r| whole(&raw, r)).collect()))
            .collect();
        let raw = section(19)?;
        let kallsyms = whole(&raw, Parts::new(&raw[..], 0, false).kallsyms()?);
        let raw = section(20)?;
        let printk_formats = whole(&raw, Parts::new(&raw[..], 0, false).printk_formats()?);
        let raw = section(21)?;
        let cmdlines = whole(&raw, Parts::new(&raw[..], 0, false).cmdlines()?);
        Ok(Metadata {
            page_size: header.page_size,
            long_size: header.long_size,
            header_page,
            header_event,
            ftrace_formats,
            systems,
            kallsyms,
            printk_formats,
            cmdlines,
        })
    }
}

#[cfg(test)]
mod tests {
    //! Every caller's entry point fed the same v6 metadata: they must agree.

    use super::*;
    use crate::listen::meta6::{client_clock, file_header};
    use crate::output::merge::tests::sample;
    use crate::output::reader::TraceDat;
    use crate::output::{append_flyrecord, write_options_block, BufferData, DatOption};
    use crate::virt::meta::parse_metadata;

    /// What a V3 client streams: metadata, CPU count and options; and where the
    /// metadata ends.
    fn client_stream(m: &Metadata, cpus: u32) -> (Vec<u8>, usize) {
        let mut b = m.to_bytes().unwrap();
        let meta_len = b.len();
        let opts = [
            DatOption::uname("Linux guest 6.1 x86_64"),
            DatOption::trace_clock("local global [mono] x86-tsc\n"),
        ];
        write_options_block(&mut b, cpus, &opts).unwrap();
        (b, meta_len)
    }

    /// The reader's view of the TRACECLOCK option: its current clock.
    fn reader_clock(d: &TraceDat, whole: &[u8]) -> Option<String> {
        d.options_with(whole, option_id::TRACECLOCK)
            .next()
            .and_then(current_clock)
    }

    /// The reader's sections as `Metadata`.
    fn reader_metadata(d: &TraceDat, b: &[u8]) -> Metadata {
        let get = |r: &Range<usize>| b[r.clone()].to_vec();
        Metadata {
            page_size: d.page_size,
            long_size: d.long_size,
            header_page: get(&d.header_page),
            header_event: get(&d.header_event),
            ftrace_formats: d.ftrace_formats.iter().map(get).collect(),
            systems: d
                .systems
                .iter()
                .map(|(n, l)| (n.clone(), l.iter().map(get).collect()))
                .collect(),
            kallsyms: get(&d.kallsyms),
            printk_formats: get(&d.printk_formats),
            cmdlines: get(&d.cmdlines),
        }
    }

    #[test]
    fn reader_virt_and_listener_agree_on_the_same_metadata() {
        let m = sample();
        let (stream, meta_len) = client_stream(&m, 2);
        // record -A: the guest's metadata.
        let guest = parse_metadata(&stream[..meta_len]).unwrap();
        assert_eq!(guest, m);
        // The listener: reads the streamed file back in place, then appends
        // flyrecord with the client's clock, as listen::session does.
        let path = std::env::temp_dir().join(format!("tcrs-agree-{}", std::process::id()));
        std::fs::write(&path, &stream).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let (version, page) = file_header(&f).unwrap();
        let clock = client_clock(&f);
        let top = BufferData {
            name: String::new(),
            trailing_clock: clock.as_deref().map(crate::output::bracketed_clock),
            cpu_files: vec![],
        };
        append_flyrecord(&mut f, 2, page, &top).unwrap();
        drop(f);
        let whole = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        // The reader, on the finished file.
        let d = TraceDat::parse(&whole).unwrap();
        assert_eq!((version.as_str(), page), ("6", m.page_size));
        assert_eq!(d.version, 6);
        assert_eq!(reader_metadata(&d, &whole), guest);
        assert_eq!(clock.as_deref(), Some("mono"));
        assert_eq!(reader_clock(&d, &whole), clock);
        assert_eq!(d.buffers[0].clock, clock, "the trailing clock names it too");
        assert_eq!(d.cpus, 2);
    }

    #[test]
    fn callers_agree_on_mutated_and_truncated_metadata() {
        let m = sample();
        let (good, meta_len) = client_stream(&m, 2);
        let mut x = 0x5851_f42d_4c95_7f2du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut virt_ok, mut clocks) = (0, 0);
        for i in 0..4000 {
            let mut b = good.clone();
            if i % 4 == 0 {
                b.truncate((next() % b.len() as u64) as usize);
            } else {
                for _ in 0..1 + next() % 3 {
                    let at = (next() % b.len() as u64) as usize;
                    b[at] = next() as u8;
                }
            }
            let unified = V6Metadata::parse(&b[..]);
            // record -A accepts exactly the metadata the unified parser finds
            // little-endian and ending where the guest's bytes end.
            let cut = meta_len.min(b.len());
            let guest = parse_metadata(&b[..cut]);
            let whole = matches!(&unified, Ok(u) if u.end == cut as u64 && !u.header.big_endian);
            assert_eq!(guest.is_ok(), whole, "case {i}: {guest:?} vs {unified:?}");
            // The listener's header is the unified one, or an error.
            let header = InitialHeader::parse(&b[..]);
            match file_header(&b[..]) {
                Ok((v, page)) => {
                    let h = header.unwrap();
                    assert_eq!((v, page), (h.version.to_string(), h.page_size));
                    assert!(!h.big_endian);
                }
                Err(_) => assert!(header.map_or(true, |h| h.big_endian
                    || h.page_size == 0
                    || h.page_size > 1 << 20)),
            }
            let clock = client_clock(&b[..]);
            let Ok(u) = unified else {
                assert_eq!(clock, None, "case {i}: a clock from unparsable metadata");
                continue;
            };
            if let Ok(g) = &guest {
                virt_ok += 1;
                // What record -A keeps is what the reader's ranges hold.
                let get = |r: &Range<u64>| b[r.start as usize..r.end as usize].to_vec();
                assert_eq!(g.header_page, get(&u.header_page));
                assert_eq!(g.cmdlines, get(&u.cmdlines));
                assert_eq!(g.systems.len(), u.systems.len());
            }
            // The reader, on this metadata finished as a listener would.
            let Ok(opts) = u.options(&b[..]) else {
                continue;
            };
            if opts.cpus > 64 || opts.collect::<Result<Vec<_>, _>>().is_err() {
                continue;
            }
            let mut whole = b.clone();
            let put = |v: &mut Vec<u8>, x: u64| {
                if u.header.big_endian {
                    v.extend_from_slice(&x.to_be_bytes())
                } else {
                    v.extend_from_slice(&x.to_le_bytes())
                }
            };
            whole.extend_from_slice(b"flyrecord\0");
            for _ in 0..u.options(&b[..]).unwrap().cpus * 2 + 1 {
                put(&mut whole, 0);
            }
            if let Ok(d) = TraceDat::parse(&whole) {
                assert_eq!(reader_clock(&d, &whole), clock, "case {i}");
                clocks += usize::from(clock.is_some());
            }
        }
        // The mutations left enough inputs intact for the comparisons to mean something.
        assert!(virt_ok > 100 && clocks > 100, "{virt_ok} {clocks}");
    }

    #[test]
    fn streamed_metadata_of_either_version() {
        use crate::output::{write_trace_dat_v7, Compression};
        let m = sample();
        let max = 1 << 20;
        // Version 6 alone, and with the CPU count and options after it.
        assert_eq!(
            Metadata::parse_streamed(&m.to_bytes().unwrap(), max).unwrap(),
            m
        );
        let (stream, _) = client_stream(&m, 2);
        assert_eq!(Metadata::parse_streamed(&stream, max).unwrap(), m);
        // Version 7, compressed and not: header, sections 16-21, options.
        for (c, name) in [
            (Compression::Zstd, "zstd.dat"),
            (Compression::None, "none.dat"),
        ] {
            let p = crate::testutil::tmp(name);
            write_trace_dat_v7(&p, &m, 1, &[], &[], c).unwrap();
            let b = std::fs::read(&*p).unwrap();
            assert_eq!(Metadata::parse_streamed(&b, max).unwrap(), m, "{name}");
            if c == Compression::Zstd {
                // A section that unpacks to more than allowed is refused.
                assert!(Metadata::parse_streamed(&b, 1).is_err());
            }
            for n in 0..b.len() {
                let _ = Metadata::parse_streamed(&b[..n], max);
            }
            let mut x = b.clone();
            for i in 0..x.len() {
                x[i] ^= 0x5a;
                let _ = Metadata::parse_streamed(&x, max);
                x[i] ^= 0x5a;
            }
        }
    }
}
