//! The trace.dat version 6 writer (doc §2).

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::layout::PageLayout;
use super::{option_id, OutputError, MAGIC};
use crate::tracefs::{self, EventName, Instance};

fn write_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OutputError {
    let what = what.into();
    move |source| OutputError::Write { what, source }
}

fn too_large(what: &str, len: usize, max: u64) -> OutputError {
    OutputError::TooLarge {
        what: what.to_string(),
        len: len as u64,
        max,
    }
}

/// Everything of a v6 file before the CPU count: the part a network client sends
/// first (doc §2.1 rows 1–15).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Trace sub-buffer size (the file's "page size").
    pub page_size: u32,
    /// `sizeof(long)` of the recording program (8 on 64-bit).
    pub long_size: u8,
    /// `events/header_page`, verbatim.
    pub header_page: Vec<u8>,
    /// `events/header_event`, verbatim.
    pub header_event: Vec<u8>,
    /// `events/ftrace/*/format` texts.
    pub ftrace_formats: Vec<Vec<u8>>,
    /// Per system (not `ftrace`): its name and the format texts of its events.
    pub systems: Vec<(String, Vec<Vec<u8>>)>,
    /// `/proc/kallsyms` (may be empty).
    pub kallsyms: Vec<u8>,
    /// `printk_formats` (may be empty).
    pub printk_formats: Vec<u8>,
    /// `saved_cmdlines` (may be empty).
    pub cmdlines: Vec<u8>,
}

/// The sub-buffer size described by `header_page`, or the system page size.
pub fn page_size_of(header_page: &[u8]) -> u32 {
    PageLayout::parse(header_page)
        .and_then(|l| u32::try_from(l.sub_buffer_size()).ok())
        .unwrap_or_else(|| {
            nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
                .ok()
                .flatten()
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(4096)
        })
}

impl Metadata {
    /// Collects the metadata for a recording of `events` from tracefs: the
    /// instance's header formats, all ftrace formats, the formats of the given
    /// events (grouped by system), kallsyms, printk formats and saved cmdlines.
    pub fn from_tracefs(
        instance: &Instance,
        events: &[EventName],
    ) -> Result<Metadata, OutputError> {
        let header_page = instance.header_page()?;
        Ok(Metadata {
            page_size: page_size_of(&header_page),
            long_size: std::mem::size_of::<std::ffi::c_long>() as u8,
            header_event: instance.header_event()?,
            header_page,
            ftrace_formats: instance
                .ftrace_formats()?
                .into_iter()
                .map(|(_, f)| f)
                .collect(),
            systems: instance
                .system_formats(events)?
                .into_iter()
                .map(|(s, evs)| (s, evs.into_iter().map(|(_, f)| f).collect()))
                .collect(),
            kallsyms: tracefs::kallsyms()?,
            printk_formats: tracefs::printk_formats()?,
            cmdlines: tracefs::saved_cmdlines()?,
        })
    }

    /// Encodes the metadata (magic … saved cmdlines) into bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, OutputError> {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(b"6\0");
        b.push(0); // little-endian
        b.push(self.long_size);
        b.extend_from_slice(&self.page_size.to_le_bytes());
        for piece in self.pieces()? {
            b.extend_from_slice(&piece);
        }
        Ok(b)
    }

    /// The six pieces after the initial header, each as its raw bytes: header
    /// info, ftrace formats, event formats, kallsyms, printk formats, cmdlines.
    /// v6 writes them back to back; v7 puts each into its own section, ids 16–21
    /// (doc §4.1, whose table says the raw contents are the same).
    pub fn pieces(&self) -> Result<[Vec<u8>; 6], OutputError> {
        let mut header = Vec::new();
        header.extend_from_slice(b"header_page\0");
        put_u64_blob(&mut header, &self.header_page);
        header.extend_from_slice(b"header_event\0");
        put_u64_blob(&mut header, &self.header_event);
        let mut ftrace = Vec::new();
        put_count(
            &mut ftrace,
            "the ftrace format list",
            self.ftrace_formats.len(),
        )?;
        for f in &self.ftrace_formats {
            put_u64_blob(&mut ftrace, f);
        }
        let mut events = Vec::new();
        put_count(&mut events, "the event system list", self.systems.len())?;
        for (sys, formats) in &self.systems {
            if sys.as_bytes().contains(&0) {
                return Err(OutputError::Invalid(format!(
                    "system name {sys:?} contains a NUL byte"
                )));
            }
            events.extend_from_slice(sys.as_bytes());
            events.push(0);
            put_count(
                &mut events,
                &format!("the event list of system {sys}"),
                formats.len(),
            )?;
            for f in formats {
                put_u64_blob(&mut events, f);
            }
        }
        let mut kallsyms = Vec::new();
        put_u32_blob(&mut kallsyms, "kallsyms", &self.kallsyms)?;
        let mut printk = Vec::new();
        put_u32_blob(&mut printk, "printk_formats", &self.printk_formats)?;
        let mut cmdlines = Vec::new();
        put_u64_blob(&mut cmdlines, &self.cmdlines);
        Ok([header, ftrace, events, kallsyms, printk, cmdlines])
    }

    /// Writes the metadata into `w` and returns the number of bytes written.
    pub fn write_to<W: Write>(&self, w: &mut W) -> Result<u64, OutputError> {
        let b = self.to_bytes()?;
        w.write_all(&b)
            .map_err(write_err("the trace.dat metadata"))?;
        Ok(b.len() as u64)
    }
}

fn put_u64_blob(b: &mut Vec<u8>, data: &[u8]) {
    b.extend_from_slice(&(data.len() as u64).to_le_bytes());
    b.extend_from_slice(data);
}

fn put_u32_blob(b: &mut Vec<u8>, what: &str, data: &[u8]) -> Result<(), OutputError> {
    let n = u32::try_from(data.len()).map_err(|_| too_large(what, data.len(), u32::MAX.into()))?;
    b.extend_from_slice(&n.to_le_bytes());
    b.extend_from_slice(data);
    Ok(())
}

fn put_count(b: &mut Vec<u8>, what: &str, n: usize) -> Result<(), OutputError> {
    let n32 = u32::try_from(n).map_err(|_| too_large(what, n, u32::MAX.into()))?;
    b.extend_from_slice(&n32.to_le_bytes());
    Ok(())
}

/// One entry of the options block (doc §3): `u16 id, u32 size, data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatOption {
    /// Option id ([`option_id`]).
    pub id: u16,
    /// Payload, stored as is.
    pub data: Vec<u8>,
}

fn with_nul(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

impl DatOption {
    /// TRACECLOCK: the whole `trace_clock` file text (with its newline) + NUL.
    pub fn trace_clock(trace_clock_file: &str) -> DatOption {
        DatOption {
            id: option_id::TRACECLOCK,
            data: with_nul(trace_clock_file),
        }
    }

    /// UNAME: `"sysname nodename release machine"` + NUL.
    pub fn uname(uname: &str) -> DatOption {
        DatOption {
            id: option_id::UNAME,
            data: with_nul(uname),
        }
    }

    /// VERSION: the writing program's version + NUL.
    pub fn version(version: &str) -> DatOption {
        DatOption {
            id: option_id::VERSION,
            data: with_nul(version),
        }
    }

    /// CPUSTAT for one CPU: `"CPU: N\n"` + the stats file + NUL.
    pub fn cpu_stat(cpu: usize, stats_text: &str) -> DatOption {
        DatOption {
            id: option_id::CPUSTAT,
            data: with_nul(&format!("CPU: {cpu}\n{stats_text}")),
        }
    }

    /// The CPUSTAT that introduces a named buffer's per-CPU stats.
    pub fn buffer_stat_header(name: &str) -> DatOption {
        DatOption {
            id: option_id::CPUSTAT,
            data: with_nul(&format!("\nBuffer: {name}\n\n")),
        }
    }

    pub(crate) fn encode(&self, b: &mut Vec<u8>) -> Result<(), OutputError> {
        if self.id == option_id::DONE {
            return Err(OutputError::Invalid(
                "option id 0 is the end marker and cannot carry data".into(),
            ));
        }
        let n = u32::try_from(self.data.len())
            .map_err(|_| too_large("an option", self.data.len(), u32::MAX.into()))?;
        b.extend_from_slice(&self.id.to_le_bytes());
        b.extend_from_slice(&n.to_le_bytes());
        b.extend_from_slice(&self.data);
        Ok(())
    }
}

/// The standard options of a local recording: TRACECLOCK, UNAME, VERSION, then one
/// CPUSTAT per CPU (from `stats`, the per-CPU stats texts in CPU order).
pub fn standard_options(trace_clock_file: &str, stats: &[String]) -> Vec<DatOption> {
    let mut v = vec![
        DatOption::trace_clock(trace_clock_file),
        DatOption::uname(&tracefs::uname()),
        DatOption::version(&format!("{} tracecmd-rs", env!("CARGO_PKG_VERSION"))),
    ];
    v.extend(
        stats
            .iter()
            .enumerate()
            .map(|(i, s)| DatOption::cpu_stat(i, s)),
    );
    v
}

/// One ring buffer's recorded data: per-CPU files of raw sub-buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferData {
    /// `""` for the top buffer, else the instance name shown by `report`.
    pub name: String,
    /// The trailing clock field after the CPU table, written verbatim after its
    /// u64 length; `None` writes no such field. trace-cmd 3.x writes `"[local]"`
    /// (see [`bracketed_clock`]); the virt-server listener writes its whole
    /// `trace_clock` file. Readers only look at it when a TRACECLOCK option exists.
    pub trailing_clock: Option<Vec<u8>>,
    /// One file per CPU, in CPU order; `None` is an empty CPU.
    pub cpu_files: Vec<Option<PathBuf>>,
}

/// The trailing clock field trace-cmd 3.x writes for clock `name`: `"[name]"`.
pub fn bracketed_clock(name: &str) -> Vec<u8> {
    format!("[{name}]").into_bytes()
}

/// Where one CPU's data landed in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuRange {
    /// Absolute file offset (page-aligned).
    pub offset: u64,
    /// Bytes of data.
    pub size: u64,
}

fn options_block_bytes(
    cpus: u32,
    options: &[DatOption],
    buffer_names: &[&str],
    base: u64,
) -> Result<(Vec<u8>, Vec<u64>), OutputError> {
    let mut b = Vec::new();
    b.extend_from_slice(&cpus.to_le_bytes());
    b.extend_from_slice(b"options  \0");
    for o in options {
        o.encode(&mut b)?;
    }
    let mut patch = Vec::new();
    for name in buffer_names {
        if name.is_empty() || name.as_bytes().contains(&0) {
            return Err(OutputError::Invalid(format!(
                "a named buffer needs a non-empty name without NUL bytes, not {name:?}"
            )));
        }
        let mut data = vec![0u8; 8];
        data.extend_from_slice(&with_nul(name));
        // The offset is patched once the buffer's flyrecord is written (doc §2.3).
        patch.push(base + b.len() as u64 + 6);
        DatOption {
            id: option_id::BUFFER,
            data,
        }
        .encode(&mut b)?;
    }
    b.extend_from_slice(&option_id::DONE.to_le_bytes());
    Ok((b, patch))
}

/// Writes the CPU count and the options block (doc §2.1 rows 16–18) into `w`:
/// what follows the metadata in a v6 stream. No BUFFER options: those need a
/// seekable file, see [`attach_cpu_data`].
pub fn write_options_block<W: Write>(
    w: &mut W,
    cpus: u32,
    options: &[DatOption],
) -> Result<(), OutputError> {
    let (b, _) = options_block_bytes(cpus, options, &[], 0)?;
    w.write_all(&b).map_err(write_err("the options block"))
}

fn align_up(x: u64, to: u64) -> u64 {
    if to == 0 {
        x
    } else {
        x.div_ceil(to) * to
    }
}

/// Appends one `flyrecord` block at the end of `out` (doc §2.1 rows 19–23): the tag,
/// the per-CPU offset/size table (`cpus` entries; CPUs beyond `buffer.cpu_files` are
/// empty), the trailing clock, and each CPU's data copied from its file at a
/// `page_size`-aligned offset. Returns the offset of the tag and the CPU ranges.
///
/// Data is spliced and written with `O_DIRECT` where it can be (`copy.rs`), so the
/// bytes pass neither through user space nor through a CPU copy.
pub fn append_flyrecord(
    out: &mut File,
    cpus: u32,
    page_size: u32,
    buffer: &BufferData,
) -> Result<(u64, Vec<CpuRange>), OutputError> {
    if buffer.cpu_files.len() > cpus as usize {
        return Err(OutputError::Invalid(format!(
            "buffer {:?} has data for {} CPUs but the file declares {cpus}",
            buffer.name,
            buffer.cpu_files.len()
        )));
    }
    let what = |s: &str| format!("{s} of buffer {:?}", buffer.name);
    let start = out
        .seek(SeekFrom::End(0))
        .map_err(write_err(what("the flyrecord position")))?;
    let mut head = Vec::new();
    head.extend_from_slice(b"flyrecord\0");
    let table_pos = start + head.len() as u64;
    head.resize(head.len() + 16 * cpus as usize, 0);
    if let Some(clock) = &buffer.trailing_clock {
        head.extend_from_slice(&(clock.len() as u64).to_le_bytes());
        head.extend_from_slice(clock);
    }
    out.write_all(&head)
        .map_err(write_err(what("the flyrecord header")))?;
    let mut pos = start + head.len() as u64;
    let mut ranges = Vec::with_capacity(cpus as usize);
    for cpu in 0..cpus as usize {
        let offset = align_up(pos, page_size.into());
        let mut size = 0;
        if let Some(Some(path)) = buffer.cpu_files.get(cpu) {
            let mut src = File::open(path).map_err(|source| OutputError::CpuFile {
                path: path.clone(),
                source,
            })?;
            out.seek(SeekFrom::Start(offset))
                .map_err(write_err(what(&format!("CPU {cpu} data"))))?;
            size = super::copy::copy_cpu_data(&mut src, out)
                .map_err(write_err(what(&format!("CPU {cpu} data"))))?;
            if size % u64::from(page_size.max(1)) != 0 {
                log::warn!(
                    "CPU {cpu} data of buffer {:?} is {size} bytes, not whole pages",
                    buffer.name
                );
            }
        }
        ranges.push(CpuRange { offset, size });
        pos = offset + size;
    }
    // A file ending in an empty CPU still needs its aligned end to exist, so that
    // the next block starts page-aligned (doc P8).
    let end = out
        .seek(SeekFrom::End(0))
        .map_err(write_err(what("the flyrecord end")))?;
    if end < pos {
        out.set_len(pos)
            .map_err(write_err(what("padding after CPU data")))?;
    }
    let mut table = Vec::with_capacity(16 * ranges.len());
    for r in &ranges {
        table.extend_from_slice(&r.offset.to_le_bytes());
        table.extend_from_slice(&r.size.to_le_bytes());
    }
    out.seek(SeekFrom::Start(table_pos))
        .and_then(|_| out.write_all(&table))
        .and_then(|_| out.seek(SeekFrom::End(0)).map(|_| ()))
        .map_err(write_err(what("the CPU offset table")))?;
    Ok((start, ranges))
}

/// Writes, at the end of `out` (which already holds the metadata): CPU count,
/// options (plus one BUFFER option per named buffer), the top buffer's flyrecord
/// and data, then each named buffer's flyrecord and data, patching the BUFFER
/// offsets (doc §2.3). Every table has `cpus` entries (doc P15).
/// Returns the CPU ranges, top buffer first.
pub fn attach_cpu_data(
    out: &mut File,
    cpus: u32,
    options: &[DatOption],
    top: &BufferData,
    named: &[BufferData],
    page_size: u32,
) -> Result<Vec<Vec<CpuRange>>, OutputError> {
    let base = out
        .seek(SeekFrom::End(0))
        .map_err(write_err("the options block"))?;
    let names: Vec<&str> = named.iter().map(|b| b.name.as_str()).collect();
    let (block, patches) = options_block_bytes(cpus, options, &names, base)?;
    out.write_all(&block)
        .map_err(write_err("the options block"))?;
    let mut all = vec![append_flyrecord(out, cpus, page_size, top)?.1];
    for (buf, patch_at) in named.iter().zip(patches) {
        let (tag, ranges) = append_flyrecord(out, cpus, page_size, buf)?;
        out.seek(SeekFrom::Start(patch_at))
            .and_then(|_| out.write_all(&tag.to_le_bytes()))
            .and_then(|_| out.seek(SeekFrom::End(0)).map(|_| ()))
            .map_err(write_err(format!("the BUFFER offset of {:?}", buf.name)))?;
        all.push(ranges);
    }
    Ok(all)
}

/// Writes a complete v6 trace.dat at `path` (created or truncated).
pub fn write_trace_dat(
    path: &Path,
    meta: &Metadata,
    cpus: u32,
    options: &[DatOption],
    top: &BufferData,
    named: &[BufferData],
) -> Result<Vec<Vec<CpuRange>>, OutputError> {
    let mut f = File::create(path).map_err(write_err(path.display().to_string()))?;
    meta.write_to(&mut f)?;
    attach_cpu_data(&mut f, cpus, options, top, named, meta.page_size)
}
