//! A trace.dat reader for tests and tools: parses version 6 fully and the header
//! and options of version 7 (doc §2, §4). It works on the file's bytes, never
//! panics on malformed input, and allocates no more than the input holds. The
//! v6 metadata and options are read by [`super::metadata`], as for every caller.

use std::ops::Range;

use super::layout::{count_events, EventLayout, PageError, PageLayout};
pub use super::metadata::InitialHeader;
use super::metadata::{bad, Cur, V6Metadata};
use super::option_id;

/// Why a file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatError {
    /// The file does not start with the trace.dat magic.
    #[error("not a trace.dat file (bad magic)")]
    BadMagic,
    /// A version this reader does not know.
    #[error("trace.dat version {0:?} is not supported (only 6 and 7)")]
    Version(String),
    /// The file ends inside a field.
    #[error("trace.dat is truncated: {what} at offset {offset} needs {need} bytes")]
    Truncated {
        /// The field being read.
        what: String,
        /// Where it starts.
        offset: usize,
        /// How many bytes it needs.
        need: u64,
    },
    /// A field has a value that cannot be right.
    #[error("trace.dat is malformed at offset {offset}: {detail}")]
    Malformed {
        /// Where.
        offset: usize,
        /// What.
        detail: String,
    },
    /// A page of CPU data could not be walked.
    #[error("bad ring-buffer page in CPU {cpu} data of buffer {buffer:?}: {source}")]
    Page {
        /// Buffer name (`""` = top).
        buffer: String,
        /// CPU.
        cpu: usize,
        /// What is wrong with the page.
        source: PageError,
    },
}

/// One option of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatOptionRef {
    /// Option id.
    pub id: u16,
    /// Where its payload is in the file.
    pub data: Range<usize>,
}

/// One ring buffer (the top one or a named instance) and its per-CPU data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferRef {
    /// `""` for the top buffer.
    pub name: String,
    /// The trailing clock (v6) or the BUFFER option clock (v7), if any.
    pub clock: Option<String>,
    /// Per-CPU (offset, size) of the data, as the table says.
    pub cpu_data: Vec<(u64, u64)>,
}

/// A parsed trace.dat file. Byte ranges point into the slice given to [`TraceDat::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceDat {
    /// 6 or 7.
    pub version: u32,
    /// Endian byte: true for big-endian.
    pub big_endian: bool,
    /// `sizeof(long)` of the writer.
    pub long_size: u8,
    /// Page (sub-buffer) size.
    pub page_size: u32,
    /// v7 compression name and version.
    pub compression: Option<(String, String)>,
    /// `header_page` text (v6).
    pub header_page: Range<usize>,
    /// `header_event` text (v6).
    pub header_event: Range<usize>,
    /// ftrace format texts (v6).
    pub ftrace_formats: Vec<Range<usize>>,
    /// Systems and their event format texts (v6).
    pub systems: Vec<(String, Vec<Range<usize>>)>,
    /// kallsyms text (v6).
    pub kallsyms: Range<usize>,
    /// printk formats text (v6).
    pub printk_formats: Range<usize>,
    /// saved cmdlines text (v6).
    pub cmdlines: Range<usize>,
    /// CPU count (v6; v7 from CPUCOUNT if present).
    pub cpus: u32,
    /// All options, in file order.
    pub options: Vec<DatOptionRef>,
    /// `"flyrecord"` or `"latency"` (v6).
    pub data_kind: String,
    /// Buffers: the top one first (v6), then named buffers from BUFFER options.
    pub buffers: Vec<BufferRef>,
}

/// A byte range of the input as slice indices (the parser took it from the slice).
fn idx(r: Range<u64>) -> Range<usize> {
    r.start as usize..r.end as usize
}

impl TraceDat {
    /// Parses a whole file.
    pub fn parse(b: &[u8]) -> Result<TraceDat, DatError> {
        let h = InitialHeader::parse(b)?;
        let mut d = TraceDat {
            version: h.version,
            big_endian: h.big_endian,
            long_size: h.long_size,
            page_size: h.page_size,
            compression: None,
            header_page: 0..0,
            header_event: 0..0,
            ftrace_formats: Vec::new(),
            systems: Vec::new(),
            kallsyms: 0..0,
            printk_formats: 0..0,
            cmdlines: 0..0,
            cpus: 0,
            options: Vec::new(),
            data_kind: String::new(),
            buffers: Vec::new(),
        };
        if h.version == 7 {
            d.parse_v7(&mut Cur::new(b, h.len as u64, h.big_endian))?;
        } else {
            d.parse_v6(b, h)?;
        }
        Ok(d)
    }

    fn parse_v6(&mut self, b: &[u8], h: InitialHeader) -> Result<(), DatError> {
        let m = V6Metadata::parse_after(b, h)?;
        self.header_page = idx(m.header_page.clone());
        self.header_event = idx(m.header_event.clone());
        self.ftrace_formats = m.ftrace_formats.iter().cloned().map(idx).collect();
        self.systems = m
            .systems
            .iter()
            .map(|(name, list)| (name.clone(), list.iter().cloned().map(idx).collect()))
            .collect();
        self.kallsyms = idx(m.kallsyms.clone());
        self.printk_formats = idx(m.printk_formats.clone());
        self.cmdlines = idx(m.cmdlines.clone());
        // Options block is optional (doc §2.1 row 17).
        let mut options = m.options(b)?;
        self.cpus = options.cpus;
        let mut named = Vec::new();
        for o in options.by_ref() {
            let o = o?;
            let mut oc = Cur::new(b, o.data.start, h.big_endian).within(o.data.clone());
            match o.id {
                option_id::BUFFER => {
                    if o.data.end - o.data.start < 9 {
                        return Err(bad(o.at, "BUFFER option shorter than offset + name"));
                    }
                    let off = oc.u64("buffer offset")?;
                    let name = oc.cstr("buffer name")?;
                    named.push((name, off));
                }
                option_id::CPUCOUNT => self.cpus = oc.u32("CPUCOUNT")?,
                _ => {}
            }
            self.options.push(DatOptionRef {
                id: o.id,
                data: idx(o.data),
            });
        }
        let mut c = Cur::new(b, options.position(), h.big_endian);
        let tag_at = c.pos;
        let tag = idx(c.take(10, "flyrecord tag")?);
        let has_clock = self.options.iter().any(|o| o.id == option_id::TRACECLOCK);
        match &b[tag] {
            b"flyrecord\0" => {
                self.data_kind = "flyrecord".into();
                let top = self.parse_flyrecord_body(&mut c, "", has_clock)?;
                self.buffers.push(top);
                // Real tables never overlap, so together they fit in the file;
                // checking that keeps crafted files from costing quadratic memory.
                let entries = u64::from(self.cpus) * (named.len() as u64 + 1);
                if entries.saturating_mul(16) > b.len() as u64 {
                    return Err(bad(tag_at, "buffer CPU tables are larger than the file"));
                }
                for (name, off) in named {
                    let mut bc = Cur::new(b, off, h.big_endian);
                    bc.expect(b"flyrecord\0", &format!("flyrecord tag of buffer {name:?}"))?;
                    let buf = self.parse_flyrecord_body(&mut bc, &name, has_clock)?;
                    self.buffers.push(buf);
                }
            }
            b"latency  \0" => self.data_kind = "latency".into(),
            _ => {
                return Err(bad(
                    tag_at,
                    "expected \"options\", \"flyrecord\" or \"latency\"",
                ))
            }
        }
        Ok(())
    }

    fn parse_flyrecord_body(
        &self,
        c: &mut Cur<[u8]>,
        name: &str,
        has_clock: bool,
    ) -> Result<BufferRef, DatError> {
        let mut cpu_data = Vec::new();
        for cpu in 0..self.cpus {
            let at = c.pos;
            let off = c.u64("CPU data offset")?;
            let size = c.u64("CPU data size")?;
            let fits = off.checked_add(size).is_some_and(|end| end <= c.end);
            if size > 0 && !fits {
                return Err(bad(
                    at,
                    format!(
                        "CPU {cpu} data ({size} bytes at {off}) lies beyond the end of the file"
                    ),
                ));
            }
            cpu_data.push((off, size));
        }
        let mut clock = None;
        if has_clock {
            let at = c.pos;
            let n = c.u64("trailing clock length")?;
            if n > 0 {
                if n > 4096 {
                    return Err(bad(at, format!("trailing clock of {n} bytes")));
                }
                let r = idx(c.take(n, "trailing clock")?);
                let s = String::from_utf8_lossy(&c.src[r]).into_owned();
                // "[local]" (3.x) or a whole trace_clock file (virt-server listener).
                let name = match (s.find('['), s.find(']')) {
                    (Some(a), Some(z)) if a < z => s[a + 1..z].to_string(),
                    _ => s.trim().to_string(),
                };
                clock = Some(name);
            }
        }
        Ok(BufferRef {
            name: name.to_string(),
            clock,
            cpu_data,
        })
    }

    fn parse_v7(&mut self, c: &mut Cur<[u8]>) -> Result<(), DatError> {
        let name = c.cstr("compression name")?;
        let ver = c.cstr("compression version")?;
        self.compression = Some((name, ver));
        let mut next = c.u64("first options offset")?;
        let mut seen = 0;
        while next != 0 {
            seen += 1;
            if seen > 4096 {
                return Err(bad(c.pos, "options sections form a loop"));
            }
            let mut s = Cur::new(c.src, next, c.be);
            let at = s.pos;
            let id = s.u16("section id")?;
            let flags = s.u16("section flags")?;
            let _desc = s.u32("section description")?;
            let size = s.u64("section size")?;
            if id != 0 || flags & 1 != 0 {
                return Err(bad(
                    at,
                    format!(
                        "expected an uncompressed options section, found id {id} flags {flags}"
                    ),
                ));
            }
            let body = s.take(size, "options section")?;
            let mut o = s.within(body);
            loop {
                let id = o.u16("option id")?;
                let n = o.u32("option size")?;
                let data = o.take(n.into(), "option data")?;
                let mut dc = o.within(data.clone());
                if id == option_id::DONE {
                    next = dc.u64("next options offset")?;
                    break;
                }
                if id == option_id::CPUCOUNT {
                    self.cpus = dc.u32("CPUCOUNT")?;
                }
                if id == option_id::BUFFER {
                    self.buffers.push(parse_v7_buffer(&mut dc)?);
                }
                self.options.push(DatOptionRef {
                    id,
                    data: idx(data),
                });
            }
        }
        Ok(())
    }

    /// Payloads of all options with this id.
    pub fn options_with<'a>(&'a self, b: &'a [u8], id: u16) -> impl Iterator<Item = &'a [u8]> {
        self.options
            .iter()
            .filter(move |o| o.id == id)
            .filter_map(move |o| b.get(o.data.clone()))
    }

    /// The event layouts from the file's header_page and header_event.
    pub fn layouts(&self, b: &[u8]) -> Result<(PageLayout, EventLayout), DatError> {
        let hp = b.get(self.header_page.clone()).unwrap_or(&[]);
        let he = b.get(self.header_event.clone()).unwrap_or(&[]);
        let pl = PageLayout::parse(hp).ok_or_else(|| {
            bad(
                self.header_page.start as u64,
                "header_page lacks timestamp/commit/data fields",
            )
        })?;
        let el = EventLayout::parse(he).ok_or_else(|| {
            bad(
                self.header_event.start as u64,
                "header_event layout is not understood",
            )
        })?;
        Ok((pl, el))
    }

    /// Counts the events of each CPU of buffer `buffer` (index into `buffers`), in
    /// a file of either version.
    pub fn count_events(&self, b: &[u8], buffer: usize) -> Result<Vec<u64>, DatError> {
        if self.version >= 7 {
            return super::v7read::count_events(b, self, buffer);
        }
        let (pl, el) = self.layouts(b)?;
        let Some(buf) = self.buffers.get(buffer) else {
            return Err(bad(0, format!("no buffer number {buffer}")));
        };
        if self.compression.as_ref().is_some_and(|(n, _)| n != "none") {
            return Err(bad(0, "compressed CPU data cannot be counted"));
        }
        let mut out = Vec::with_capacity(buf.cpu_data.len());
        for (cpu, &(off, size)) in buf.cpu_data.iter().enumerate() {
            if size == 0 {
                out.push(0);
                continue;
            }
            let data = usize::try_from(off)
                .ok()
                .zip(usize::try_from(size).ok())
                .and_then(|(o, s)| b.get(o..o.checked_add(s)?))
                .ok_or_else(|| bad(0, format!("CPU {cpu} data lies beyond the end of the file")))?;
            let n = count_events(data, self.page_size as usize, &pl, &el, self.big_endian)
                .map_err(|source| DatError::Page {
                    buffer: buf.name.clone(),
                    cpu,
                    source,
                })?;
            out.push(n);
        }
        Ok(out)
    }
}

/// v7 BUFFER option: u64 section offset, name, clock, u32 page size, u32 n, n × (u32 cpu, u64 off, u64 size).
fn parse_v7_buffer(o: &mut Cur<[u8]>) -> Result<BufferRef, DatError> {
    let _section = o.u64("BUFFER section offset")?;
    let name = o.cstr("BUFFER name")?;
    let clock = o.cstr("BUFFER clock")?;
    let _page = o.u32("BUFFER page size")?;
    let n = o.u32("BUFFER CPU count")?;
    let mut cpu_data = Vec::new();
    for _ in 0..n {
        let at = o.pos;
        let cpu = o.u32("BUFFER CPU id")? as usize;
        let off = o.u64("BUFFER CPU offset")?;
        let size = o.u64("BUFFER CPU size")?;
        // Ids may have gaps, but not so many that the table outgrows the input.
        if cpu >= 8 * n as usize + 64 {
            return Err(bad(at, format!("CPU id {cpu} is implausible for {n} CPUs")));
        }
        if cpu_data.len() <= cpu {
            cpu_data.resize(cpu + 1, (0, 0));
        }
        cpu_data[cpu] = (off, size);
    }
    Ok(BufferRef {
        name,
        clock: Some(clock),
        cpu_data,
    })
}
