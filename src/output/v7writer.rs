//! The trace.dat version 7 writer (doc §4), for a local recording: header, the
//! metadata sections 16–21, options, one BUFFER section per buffer and STRINGS,
//! compressed with zstd or not.
//!
//! Per-CPU data is compressed while it is recorded: [`V7Writer::cpu_sink`] hands out
//! a [`BlockSink`] that a per-CPU recorder reads into, and a thread turns what
//! arrives into chunks in an anonymous temporary file ([`CpuStream`]). At
//! [`V7Writer::finish`] the file is assembled by copying those compressed bytes.
//! The file is built under a temporary name next to the target and renamed only
//! once complete, so a failure (a full disk, a killed process) never leaves a file
//! with the final name that looks complete.
//!
//! The pieces that build sections are shared with the listener's v7 path
//! ([`super::v7::append_buffer`]).

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::chunks::{
    tmpfile_unsupported, unnamed_file, werr, ChunkWriter, Compression, CpuChunks, Zstd,
};
use super::stream::{BlockSink, CpuStream};
use super::v7::STRINGS;
use super::{option_id, BufferData, CpuRange, DatOption, Metadata, OutputError, MAGIC};

/// Ids of the metadata sections, in the order of [`Metadata::pieces`] (doc §4.1).
const META_SECTIONS: [(u16, &str); 6] = [
    (16, "headers"),
    (17, "ftrace events"),
    (18, "events format"),
    (19, "kallsyms"),
    (20, "printk"),
    (21, "command lines"),
];

/// The descriptions of sections: ids are byte offsets into the STRINGS text (doc §4.4).
#[derive(Debug, Default)]
pub(crate) struct Strings {
    text: Vec<u8>,
}

impl Strings {
    /// The id of `s`, adding it on first use.
    pub(crate) fn id(&mut self, s: &str) -> u32 {
        let mut at = 0;
        for part in self.text.split(|&c| c == 0) {
            if part == s.as_bytes() && at < self.text.len() {
                return at as u32;
            }
            at += part.len() + 1;
        }
        let id = self.text.len() as u32;
        self.text.extend_from_slice(s.as_bytes());
        self.text.push(0);
        id
    }
}

/// Section header: id, flags (bit 0: compressed), description id, size (doc §4.1).
pub(crate) fn section_header(id: u16, compressed: bool, desc: u32, size: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..2].copy_from_slice(&id.to_le_bytes());
    h[2..4].copy_from_slice(&u16::from(compressed).to_le_bytes());
    h[4..8].copy_from_slice(&desc.to_le_bytes());
    h[8..16].copy_from_slice(&size.to_le_bytes());
    h
}

fn section(id: u16, compressed: bool, desc: u32, body: &[u8]) -> Vec<u8> {
    let mut v = section_header(id, compressed, desc, body.len() as u64).to_vec();
    v.extend_from_slice(body);
    v
}

/// A section whose body is compressed when `zstd` is given (doc §4.1).
fn maybe_compressed(
    id: u16,
    desc: u32,
    raw: &[u8],
    zstd: Option<&mut Zstd>,
) -> Result<Vec<u8>, OutputError> {
    Ok(match zstd {
        Some(z) => section(id, true, desc, &z.block(raw)?),
        None => section(id, false, desc, raw),
    })
}

/// An options section (never compressed) holding `options` and a DONE whose `next`
/// is 0; returns it and the offset of that `next` field within it (doc §4.3).
pub(crate) fn options_section(
    desc: u32,
    options: &[DatOption],
) -> Result<(Vec<u8>, u64), OutputError> {
    let mut body = Vec::new();
    for o in options {
        o.encode(&mut body)?;
    }
    body.extend_from_slice(&option_id::DONE.to_le_bytes());
    body.extend_from_slice(&8u32.to_le_bytes());
    body.extend_from_slice(&0u64.to_le_bytes());
    let v = section(0, false, desc, &body);
    let next_at = v.len() as u64 - 8;
    Ok((v, next_at))
}

/// The STRINGS section, compressed like the rest of the file.
pub(crate) fn strings_section(
    strings: &mut Strings,
    zstd: Option<&mut Zstd>,
) -> Result<Vec<u8>, OutputError> {
    let desc = strings.id("strings");
    maybe_compressed(STRINGS, desc, &strings.text, zstd)
}

/// The v7 BUFFER option (doc §4.6): section offset, name, clock, page size and
/// the CPUs that have data.
pub(crate) fn buffer_option(
    section_at: u64,
    name: &str,
    clock: &str,
    page_size: u32,
    ranges: &[CpuRange],
) -> Result<DatOption, OutputError> {
    if name.contains('\0') || clock.contains('\0') {
        return Err(OutputError::Invalid(format!(
            "buffer name {name:?} and clock {clock:?} must not contain NUL bytes"
        )));
    }
    let mut d = Vec::new();
    d.extend_from_slice(&section_at.to_le_bytes());
    d.extend_from_slice(name.as_bytes());
    d.push(0);
    d.extend_from_slice(clock.as_bytes());
    d.push(0);
    d.extend_from_slice(&page_size.to_le_bytes());
    let listed: Vec<(usize, &CpuRange)> = ranges
        .iter()
        .enumerate()
        .filter(|(_, r)| r.size > 0)
        .collect();
    d.extend_from_slice(&(listed.len() as u32).to_le_bytes());
    for (cpu, r) in listed {
        d.extend_from_slice(&(cpu as u32).to_le_bytes());
        d.extend_from_slice(&r.offset.to_le_bytes());
        d.extend_from_slice(&r.size.to_le_bytes());
    }
    Ok(DatOption {
        id: option_id::BUFFER,
        data: d,
    })
}

/// Where one CPU's data comes from when a BUFFER section is written.
pub(crate) enum CpuSource {
    /// No data.
    Empty,
    /// Raw pages, compressed (if the file is) while they are copied in.
    Raw(File),
    /// Already in the file's format (chunks, or raw pages when uncompressed),
    /// from offset 0 of the file.
    Ready(File, CpuChunks),
}

pub(crate) fn align_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to.max(1)) * to.max(1)
}

/// Writes a BUFFER section at the end of `out` (doc §4.6): header, padding, each
/// CPU's data at a page-aligned absolute offset. Returns the section's offset, the
/// CPU ranges (sizes as 3.1.6 records them) and the end of the data.
pub(crate) fn write_buffer_section(
    out: &mut File,
    desc: u32,
    page_size: u32,
    compression: Compression,
    cpus: Vec<CpuSource>,
    what: &str,
) -> Result<(u64, Vec<CpuRange>, u64), OutputError> {
    let compressed = compression == Compression::Zstd;
    let start = out
        .seek(SeekFrom::End(0))
        .map_err(werr(format!("the BUFFER section of {what}")))?;
    out.write_all(&section_header(option_id::BUFFER, compressed, desc, 0))
        .map_err(werr(format!("the BUFFER section of {what}")))?;
    let mut end = start + 16;
    let mut ranges = Vec::with_capacity(cpus.len());
    for (cpu, src) in cpus.into_iter().enumerate() {
        let offset = align_up(end, page_size.into());
        let werr_cpu = || werr(format!("CPU {cpu} data of {what}"));
        let size = match src {
            CpuSource::Empty => 0,
            CpuSource::Raw(mut f) if !compressed => {
                out.seek(SeekFrom::Start(offset)).map_err(werr_cpu())?;
                super::copy::copy_cpu_data(&mut f, out).map_err(werr_cpu())?
            }
            CpuSource::Raw(mut f) => {
                out.seek(SeekFrom::Start(offset)).map_err(werr_cpu())?;
                out.write_all(&0u32.to_le_bytes()).map_err(werr_cpu())?;
                let mut w = ChunkWriter::new(&mut *out, page_size, compression)?;
                w.fill_from(&mut f)?;
                let (_, st) = w.finish()?;
                out.write_all_at(&st.chunks.to_le_bytes(), offset)
                    .map_err(werr_cpu())?;
                if st.raw == 0 {
                    // Nothing came: the CPU is empty, not a count of 0 chunks.
                    out.set_len(end).map_err(werr_cpu())?;
                }
                st.size
            }
            CpuSource::Ready(mut f, st) if st.raw > 0 => {
                out.seek(SeekFrom::Start(offset)).map_err(werr_cpu())?;
                if compressed {
                    out.write_all(&st.chunks.to_le_bytes())
                        .map_err(werr_cpu())?;
                }
                f.seek(SeekFrom::Start(0)).map_err(werr_cpu())?;
                let n = super::copy::copy_cpu_data(&mut f, out).map_err(werr_cpu())?;
                if n != st.size {
                    return Err(OutputError::Invalid(format!(
                        "CPU {cpu} data of {what}: the temporary file holds {n} bytes, not {}",
                        st.size
                    )));
                }
                st.size
            }
            CpuSource::Ready(..) => 0,
        };
        if size > 0 {
            end = out.stream_position().map_err(werr_cpu())?;
        }
        ranges.push(CpuRange { offset, size });
    }
    out.write_all_at(&(end - start - 16).to_le_bytes(), start + 8)
        .map_err(werr(format!("the BUFFER section size of {what}")))?;
    Ok((start, ranges, end))
}

/// Where a CPU's data goes before assembly.
enum Slot {
    Empty,
    Stream(CpuStream),
    File(PathBuf),
}

struct Pending {
    name: String,
    clock: Option<String>,
    page_size: u32,
    cpus: Vec<Slot>,
}

/// A version 7 trace.dat being recorded. See the module documentation.
///
/// For the recording engine:
/// 1. [`V7Writer::new`] with the output path, the page (sub-buffer) size and the
///    compression;
/// 2. per buffer (`""` = top, else the instance or guest name) and CPU,
///    [`V7Writer::cpu_sink`]: the returned sink is what the per-CPU recorder reads
///    into (`recorder::Output::Blocks`); or [`V7Writer::cpu_file`] for data
///    already in a file;
/// 3. optionally [`V7Writer::set_buffer_clock`] / [`V7Writer::set_buffer_page_size`],
///    and, while recording, [`V7Writer::prepare_metadata`] so that the end has
///    less to do;
/// 4. once every recorder is finished (their sinks closed), [`V7Writer::finish`] with
///    the metadata, the CPU count and the options (as for v6: TRACECLOCK, UNAME,
///    VERSION, CPUSTAT…, see [`super::standard_options`]).
pub struct V7Writer {
    path: PathBuf,
    temp_dir: PathBuf,
    page_size: u32,
    compression: Compression,
    sync: bool,
    buffers: Vec<Pending>,
    prepared: Prepared,
}

/// Metadata pieces compressed ahead of time: (raw, compressed block) pairs.
type Prepared = Vec<(Vec<u8>, Vec<u8>)>;

impl std::fmt::Debug for V7Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V7Writer")
            .field("path", &self.path)
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

impl V7Writer {
    /// A writer of `path` whose pages are `page_size` bytes (the metadata's
    /// `page_size`). Nothing is created until data arrives; temporary files go
    /// into the directory of `path`.
    pub fn new(
        path: &Path,
        page_size: u32,
        compression: Compression,
    ) -> Result<V7Writer, OutputError> {
        if page_size == 0 {
            return Err(OutputError::Invalid("a page size of 0 bytes".into()));
        }
        let temp_dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(V7Writer {
            path: path.to_path_buf(),
            temp_dir,
            page_size,
            compression,
            sync: true,
            buffers: Vec::new(),
            prepared: Vec::new(),
        })
    }

    /// Whether [`V7Writer::finish`] syncs the file to disk before renaming it to its
    /// name (default: yes, so that a crash right after cannot leave a file with the
    /// final name but missing data).
    pub fn set_sync(&mut self, sync: bool) {
        self.sync = sync;
    }

    /// Compresses the metadata sections now, while recording, so that
    /// [`V7Writer::finish`] need not (kallsyms alone is megabytes: tens of ms).
    /// `finish` uses a prepared section only if its contents are unchanged, so a
    /// `meta` whose cmdlines are read again at the end is still right.
    pub fn prepare_metadata(&mut self, meta: &Metadata) -> Result<(), OutputError> {
        let Some(mut z) = self.compression.compressor()? else {
            return Ok(());
        };
        self.prepared = meta
            .pieces()?
            .into_iter()
            .map(|raw| z.block(&raw).map(|b| (raw, b)))
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    /// Where the per-CPU temporary files go (default: the directory of the output).
    pub fn set_temp_dir(&mut self, dir: &Path) {
        self.temp_dir = dir.to_path_buf();
    }

    fn buffer(&mut self, name: &str) -> &mut Pending {
        let i = match self.buffers.iter().position(|b| b.name == name) {
            Some(i) => i,
            None => {
                self.buffers.push(Pending {
                    name: name.to_string(),
                    clock: None,
                    page_size: self.page_size,
                    cpus: Vec::new(),
                });
                self.buffers.len() - 1
            }
        };
        &mut self.buffers[i]
    }

    fn slot(&mut self, buffer: &str, cpu: usize) -> Result<&mut Slot, OutputError> {
        let b = self.buffer(buffer);
        if cpu >= 1 << 16 {
            return Err(OutputError::Invalid(format!(
                "CPU number {cpu} is too large"
            )));
        }
        if b.cpus.len() <= cpu {
            b.cpus.resize_with(cpu + 1, || Slot::Empty);
        }
        let slot = &mut b.cpus[cpu];
        if !matches!(slot, Slot::Empty) {
            return Err(OutputError::Invalid(format!(
                "CPU {cpu} of buffer {buffer:?} already has its data"
            )));
        }
        Ok(slot)
    }

    /// The clock the BUFFER option of `buffer` names (default: the current clock of
    /// the TRACECLOCK option given to [`V7Writer::finish`], else "local").
    pub fn set_buffer_clock(&mut self, buffer: &str, clock: &str) {
        self.buffer(buffer).clock = Some(clock.to_string());
    }

    /// The page (sub-buffer) size of `buffer` if it differs from the file's. Call it
    /// before the buffer's first [`V7Writer::cpu_sink`].
    pub fn set_buffer_page_size(&mut self, buffer: &str, page_size: u32) {
        if page_size > 0 {
            self.buffer(buffer).page_size = page_size;
        }
    }

    /// Starts compressing CPU `cpu` of `buffer` while it is recorded: returns the
    /// recorder's end (`recorder::Output::Blocks`), which reads straight into the
    /// compressor's queue. The data is complete once the sink is closed or dropped.
    /// Memory: see [`CpuStream`].
    pub fn cpu_sink(&mut self, buffer: &str, cpu: usize) -> Result<BlockSink, OutputError> {
        let label = format!("CPU {cpu} of buffer {buffer:?}");
        let (dir, compression) = (self.temp_dir.clone(), self.compression);
        let page = self.buffer(buffer).page_size;
        let slot = self.slot(buffer, cpu)?;
        let (sink, stream) = CpuStream::spawn(&dir, page, compression, label)?;
        *slot = Slot::Stream(stream);
        Ok(sink)
    }

    /// Uses the raw pages in `raw` for CPU `cpu` of `buffer`; they are compressed
    /// while the file is assembled.
    pub fn cpu_file(&mut self, buffer: &str, cpu: usize, raw: &Path) -> Result<(), OutputError> {
        *self.slot(buffer, cpu)? = Slot::File(raw.to_path_buf());
        Ok(())
    }

    /// Raw bytes recorded so far into `buffer` through its sinks (files given with
    /// [`V7Writer::cpu_file`] are not counted).
    pub fn streamed_bytes(&self, buffer: &str) -> u64 {
        self.buffers
            .iter()
            .filter(|b| b.name == buffer)
            .flat_map(|b| &b.cpus)
            .map(|s| match s {
                Slot::Stream(st) => st.bytes_in(),
                _ => 0,
            })
            .sum()
    }

    /// Gives up the file: waits for every compressing thread (all sink fds must be
    /// closed) and returns the first error one of them met, e.g. a full disk that
    /// made it close its pipe (the recorder then saw only EPIPE). Nothing is left.
    pub fn abandon(self) -> Option<OutputError> {
        let mut first = None;
        for slot in self.buffers.into_iter().flat_map(|b| b.cpus) {
            if let Slot::Stream(s) = slot {
                if let Err(e) = s.finish() {
                    first.get_or_insert(e);
                }
            }
        }
        first
    }

    /// Waits for every CPU's data (all sink fds must be closed), then writes the file
    /// under a temporary name and renames it to its path. Returns the CPU ranges per
    /// buffer, the top buffer (`""`) first, then the others in the order they were
    /// first named. On error no file exists at the path (an existing one is left
    /// alone) and no temporary file is left.
    pub fn finish(
        self,
        meta: &Metadata,
        cpus: u32,
        options: &[DatOption],
    ) -> Result<Vec<(String, Vec<CpuRange>)>, OutputError> {
        let V7Writer {
            path,
            page_size,
            compression,
            sync,
            mut buffers,
            prepared,
            ..
        } = self;
        if meta.page_size != page_size {
            return Err(OutputError::Invalid(format!(
                "the metadata's page size {} differs from the writer's {page_size}",
                meta.page_size
            )));
        }
        // Top buffer first, as trace-cmd writes it.
        buffers.sort_by_key(|b| !b.name.is_empty());
        // Every thread is joined, even after an error, so none outlives this call.
        let mut first_err = None;
        let mut ready = Vec::with_capacity(buffers.len());
        for b in buffers {
            let mut srcs = Vec::with_capacity(b.cpus.len());
            for slot in b.cpus {
                let src = match slot {
                    Slot::Empty => Ok(CpuSource::Empty),
                    Slot::Stream(s) => s.finish().map(|(f, st)| CpuSource::Ready(f, st)),
                    Slot::File(p) => File::open(&p)
                        .map(CpuSource::Raw)
                        .map_err(|source| OutputError::CpuFile { path: p, source }),
                };
                match src {
                    Ok(s) => srcs.push(s),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            ready.push((b.name, b.clock, b.page_size, srcs));
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let mut partial = Partial::create(&path)?;
        let ranges = assemble(
            &mut partial.file,
            meta,
            cpus,
            options,
            compression,
            &prepared,
            ready,
        )?;
        partial.commit(sync)?;
        Ok(ranges)
    }
}

/// The output being written: an unnamed file in the target's directory (O_TMPFILE),
/// or on file systems without that a hidden temporary name removed on drop. Only
/// [`Partial::commit`] gives it the target's name, so whatever happens before
/// (an error, a crash, Ctrl-C) never leaves a file there that looks complete.
struct Partial {
    file: File,
    unnamed: bool,
    tmp: PathBuf,
    path: PathBuf,
    done: bool,
}

impl Partial {
    fn create(path: &Path) -> Result<Partial, OutputError> {
        let name = path
            .file_name()
            .ok_or_else(|| OutputError::Invalid(format!("{} names no file", path.display())))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".partial-{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let (file, unnamed) = match unnamed_file(dir, 0o644) {
            Ok(f) => (f, true),
            Err(e) if !tmpfile_unsupported(&e) => {
                return Err(werr(format!("{} (creating it)", path.display()))(e))
            }
            Err(_) => {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&tmp)
                    .map_err(werr(tmp.display().to_string()))?;
                (f, false)
            }
        };
        Ok(Partial {
            file,
            unnamed,
            tmp,
            path: path.to_path_buf(),
            done: false,
        })
    }

    fn commit(mut self, sync: bool) -> Result<(), OutputError> {
        if sync {
            self.file
                .sync_all()
                .map_err(werr(format!("{} (syncing it)", self.path.display())))?;
        }
        if self.unnamed {
            // A name for the finished file, then the target's name in one step
            // (linkat cannot replace an existing file; rename does).
            let fd = format!("/proc/self/fd/{}", self.file.as_raw_fd());
            nix::unistd::linkat(
                None,
                Path::new(&fd),
                None,
                self.tmp.as_path(),
                nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
            )
            .map_err(|e| {
                werr(format!("{} (naming it)", self.tmp.display()))(
                    std::io::Error::from_raw_os_error(e as i32),
                )
            })?;
            self.unnamed = false;
        }
        std::fs::rename(&self.tmp, &self.path).map_err(werr(format!(
            "{} (renaming {} to it)",
            self.path.display(),
            self.tmp.display()
        )))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done && !self.unnamed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

type ReadyBuffer = (String, Option<String>, u32, Vec<CpuSource>);

/// Appends `b` at the end of `out`; returns where it starts.
fn append(out: &mut File, b: &[u8], what: &str) -> Result<u64, OutputError> {
    let at = out.seek(SeekFrom::End(0)).map_err(werr(what))?;
    out.write_all(b).map_err(werr(what))?;
    Ok(at)
}

/// Writes the whole file into `out` (empty), in 3.1.6's order (doc §4.2).
fn assemble(
    out: &mut File,
    meta: &Metadata,
    cpus: u32,
    options: &[DatOption],
    compression: Compression,
    prepared: &Prepared,
    buffers: Vec<ReadyBuffer>,
) -> Result<Vec<(String, Vec<CpuRange>)>, OutputError> {
    let mut zstd = compression.compressor()?;
    let mut strings = Strings::default();
    let (cname, cver) = compression.header_strings();
    let mut head = MAGIC.to_vec();
    head.extend_from_slice(b"7\0");
    head.push(0); // little-endian
    head.push(meta.long_size);
    head.extend_from_slice(&meta.page_size.to_le_bytes());
    for s in [cname, cver] {
        head.extend_from_slice(s.as_bytes());
        head.push(0);
    }
    let first_options_at = head.len() as u64;
    head.extend_from_slice(&0u64.to_le_bytes());
    append(out, &head, "the file header")?;

    // Sections 16–21; each is found through an option holding its offset.
    let mut section_opts = Vec::new();
    for (i, ((id, desc), raw)) in META_SECTIONS.iter().zip(meta.pieces()?).enumerate() {
        let desc = strings.id(desc);
        let sec = match prepared.get(i) {
            Some((r, block)) if *r == raw => section(*id, true, desc, block),
            _ => maybe_compressed(*id, desc, &raw, zstd.as_mut())?,
        };
        let at = append(out, &sec, &format!("metadata section {id}"))?;
        section_opts.push(DatOption {
            id: *id,
            data: at.to_le_bytes().to_vec(),
        });
    }
    // 3.1.6's order: offsets 16–20, the caller's options, CMDLINES, CPUCOUNT.
    let cmdlines = section_opts.pop();
    let mut first = section_opts;
    first.extend(options.iter().cloned());
    first.extend(cmdlines);
    first.push(DatOption {
        id: option_id::CPUCOUNT,
        data: cpus.to_le_bytes().to_vec(),
    });
    let (sec, next_at) = options_section(strings.id("options"), &first)?;
    let at = append(out, &sec, "the options section")?;
    out.write_all_at(&at.to_le_bytes(), first_options_at)
        .map_err(werr("the first options offset"))?;
    let mut last_next = at + next_at;

    let default_clock = options
        .iter()
        .rev()
        .find(|o| o.id == option_id::TRACECLOCK)
        .and_then(|o| super::v7::current_clock(&o.data))
        .unwrap_or_else(|| "local".to_string());
    let mut all = Vec::with_capacity(buffers.len());
    for (name, clock, page_size, srcs) in buffers {
        let what = format!("buffer {name:?}");
        let desc = strings.id(&format!("buffer flyrecord {name}"));
        let (start, ranges, end) =
            write_buffer_section(out, desc, page_size, compression, srcs, &what)?;
        let clock = clock.as_deref().unwrap_or(&default_clock);
        let opt = buffer_option(start, &name, clock, page_size, &ranges)?;
        let (sec, next_at) = options_section(strings.id("options"), &[opt])?;
        out.write_all_at(&sec, end)
            .map_err(werr(format!("the options section of {what}")))?;
        out.write_all_at(&end.to_le_bytes(), last_next)
            .map_err(werr("the link to the next options section"))?;
        last_next = end + next_at;
        all.push((name, ranges));
    }
    let sec = strings_section(&mut strings, zstd.as_mut())?;
    append(out, &sec, "the STRINGS section")?;
    Ok(all)
}

/// The clock a v6 trailing clock field names (`"[local]"` → `local`), if any.
pub fn clock_of_trailing(field: &[u8]) -> Option<String> {
    let c = String::from_utf8_lossy(field);
    let name = c.trim().trim_start_matches('[');
    let name = name.split(']').next().unwrap_or("");
    (!name.is_empty()).then(|| name.to_string())
}

/// Writes a complete v7 trace.dat at `path` from the inputs of the v6
/// [`super::write_trace_dat`], with the buffers in one list: the top buffer (`""`)
/// if it was recorded, and named buffers. Their per-CPU files of raw pages are
/// compressed while the file is assembled. A buffer's clock is its trailing clock
/// without brackets, else the TRACECLOCK option's current clock. Returns the CPU
/// ranges per buffer, top first, then in the order given.
pub fn write_trace_dat_v7(
    path: &Path,
    meta: &Metadata,
    cpus: u32,
    options: &[DatOption],
    buffers: &[BufferData],
    compression: Compression,
) -> Result<Vec<Vec<CpuRange>>, OutputError> {
    let mut w = V7Writer::new(path, meta.page_size, compression)?;
    for b in buffers {
        // Registers the buffer even when it has no CPU data.
        w.buffer(&b.name);
        if let Some(name) = b.trailing_clock.as_deref().and_then(clock_of_trailing) {
            w.set_buffer_clock(&b.name, &name);
        }
        for (cpu, f) in b.cpu_files.iter().enumerate() {
            if let Some(f) = f {
                w.cpu_file(&b.name, cpu, f)?;
            }
        }
    }
    Ok(w.finish(meta, cpus, options)?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::reader::TraceDat;
    use crate::output::v7read;

    fn meta() -> Metadata {
        Metadata {
            page_size: 4096,
            long_size: 8,
            header_page: b"\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;\n\
                \tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;\n\
                \tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;\n"
                .to_vec(),
            header_event: b"\ttype_len    :    5 bits\n\ttime_delta  :   27 bits\n".to_vec(),
            ftrace_formats: vec![b"name: print\nID: 5\n".to_vec()],
            systems: vec![("sched".into(), vec![b"name: sched_switch\n".to_vec()])],
            kallsyms: b"ffffffff81000000 T _stext\n".to_vec(),
            printk_formats: Vec::new(),
            cmdlines: b"1 init\n".to_vec(),
        }
    }

    /// `n` pages, each with one 8-byte event (type_len 2) at time `i`.
    fn pages(n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n * 4096];
        for (i, p) in v.chunks_mut(4096).enumerate() {
            p[..8].copy_from_slice(&(i as u64).to_le_bytes());
            p[8..16].copy_from_slice(&12u64.to_le_bytes());
            p[16..20].copy_from_slice(&2u32.to_le_bytes());
        }
        v
    }

    use crate::testutil::TempDir;

    fn tmp(tag: &str) -> TempDir {
        TempDir::new(&format!("v7w-{tag}"))
    }

    /// A file with a top buffer (CPU 0 streamed, CPU 1 from a file, CPU 2 empty)
    /// and a named buffer with data on CPU 1 only.
    fn sample(dir: &Path, c: Compression) -> Vec<u8> {
        sample_prepared(dir, c, None)
    }

    fn sample_prepared(dir: &Path, c: Compression, early: Option<&Metadata>) -> Vec<u8> {
        let path = dir.join(format!("{c:?}.dat"));
        let raw = dir.join("raw1");
        std::fs::write(&raw, pages(3)).unwrap();
        let mut w = V7Writer::new(&path, 4096, c).unwrap();
        w.set_sync(false);
        if let Some(m) = early {
            w.prepare_metadata(m).unwrap();
        }
        w.cpu_file("guest", 1, &raw).unwrap();
        w.cpu_sink("", 0).unwrap().write_all(&pages(25)).unwrap();
        w.cpu_file("", 1, &raw).unwrap();
        w.set_buffer_clock("guest", "x86-tsc");
        let opts = [DatOption::trace_clock("[local] global\n")];
        let r = w.finish(&meta(), 3, &opts).unwrap();
        assert_eq!(r[0].0, "");
        assert_eq!(r[1].0, "guest");
        std::fs::read(&path).unwrap()
    }

    #[test]
    fn header_and_gap_free_section_chain() {
        let t = tmp("chain");
        for c in [Compression::Zstd, Compression::None] {
            let b = sample(&t, c);
            let (name, ver) = c.header_strings();
            let mut head = b"\x17\x08\x44tracing7\0\0\x08\x00\x10\x00\x00".to_vec();
            head.extend_from_slice(name.as_bytes());
            head.push(0);
            head.extend_from_slice(ver.as_bytes());
            head.push(0);
            assert_eq!(&b[..head.len()], &head[..]);
            // 3.1.6 finds STRINGS by walking sections from the header on (doc §4.4).
            let mut pos = head.len() as u64 + 8;
            let (mut ids, mut last) = (Vec::new(), Vec::new());
            while pos < b.len() as u64 {
                let (id, body) = v7read::section(&b, pos).unwrap();
                ids.push(id);
                last = body;
                pos += 16 + u64::from_le_bytes(b[pos as usize + 8..][..8].try_into().unwrap());
            }
            assert_eq!(pos, b.len() as u64, "the last section ends the file");
            assert_eq!(ids, [16, 17, 18, 19, 20, 21, 0, 3, 0, 3, 0, STRINGS]);
            let strings = last;
            let text = String::from_utf8(strings).unwrap();
            assert!(text.contains("buffer flyrecord guest\0"), "{text:?}");
            assert!(text.contains("buffer flyrecord \0"), "{text:?}");

            let dat = TraceDat::parse(&b).unwrap();
            assert_eq!(dat.cpus, 3);
            let names: Vec<&str> = dat.buffers.iter().map(|x| x.name.as_str()).collect();
            assert_eq!(names, ["", "guest"]);
            assert_eq!(dat.buffers[0].clock.as_deref(), Some("local"));
            assert_eq!(dat.buffers[1].clock.as_deref(), Some("x86-tsc"));
            for buf in &dat.buffers {
                for &(off, size) in &buf.cpu_data {
                    assert!(size == 0 || off % 4096 == 0, "unaligned CPU data");
                }
            }
            let top = v7read::cpu_data(&b, &dat, 0).unwrap();
            assert_eq!(top[0], pages(25));
            assert_eq!(top[1], pages(3));
            assert_eq!(top.get(2).map_or(0, Vec::len), 0);
            assert_eq!(v7read::count_events(&b, &dat, 0).unwrap()[..2], [25, 3]);
            assert_eq!(v7read::count_events(&b, &dat, 1).unwrap(), [0, 3]);
        }
    }

    #[test]
    fn prepared_metadata_gives_the_same_file() {
        let t = tmp("prep");
        for c in [Compression::Zstd, Compression::None] {
            let plain = sample(&t, c);
            assert_eq!(sample_prepared(&t, c, Some(&meta())), plain);
            // Prepared from other cmdlines: the final ones are written.
            let mut early = meta();
            early.cmdlines = b"2 other\n".to_vec();
            assert_eq!(sample_prepared(&t, c, Some(&early)), plain);
        }
    }

    #[test]
    fn v7read_never_panics_on_truncated_or_mutated_files() {
        let t = tmp("fuzz");
        let good = sample(&t, Compression::Zstd);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let try_all = |b: &[u8]| {
            if let Ok(dat) = TraceDat::parse(b) {
                for i in 0..dat.buffers.len() {
                    let _ = v7read::count_events(b, &dat, i);
                }
                let _ = v7read::layouts(b, &dat);
            }
            for off in [0, 37, 100, b.len() as u64 / 2] {
                let _ = v7read::section(b, off);
            }
        };
        for cut in (0..good.len()).step_by(97) {
            try_all(&good[..cut]);
        }
        for _ in 0..3000 {
            let mut b = good.clone();
            for _ in 0..(next() % 8 + 1) {
                let i = (next() % b.len() as u64) as usize;
                b[i] = next() as u8;
            }
            try_all(&b);
        }
    }

    #[test]
    fn a_failed_finish_leaves_nothing_and_joins_every_thread() {
        let t = tmp("fail");
        let path = t.join("out.dat");
        let mut w = V7Writer::new(&path, 4096, Compression::Zstd).unwrap();
        w.cpu_sink("", 0).unwrap().write_all(&pages(2)).unwrap();
        w.cpu_file("", 1, &t.join("missing")).unwrap();
        let e = w.finish(&meta(), 2, &[]).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        let left: Vec<_> = std::fs::read_dir(&t).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        // The same CPU twice is refused.
        let mut w = V7Writer::new(&path, 4096, Compression::None).unwrap();
        w.cpu_file("", 0, &path).unwrap();
        assert!(w.cpu_sink("", 0).is_err());
    }
}
