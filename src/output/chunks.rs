//! Per-CPU data of a version 7 file (doc §4.6): raw pages, or zstd-compressed chunks
//! of [`pages_in_chunk`] pages, written as the pages arrive.
//!
//! [`ChunkWriter`] turns a stream of ring-buffer pages into the chunk format (or
//! passes them through when uncompressed). [`super::CpuStream`] runs one on a thread
//! fed from a pipe, so a per-CPU recorder can write into the pipe's other end and
//! the data is compressed while it records. The listener and [`super::V7Writer`] both
//! go through `ChunkWriter`; there is no second compressor.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use super::v7::pages_in_chunk;
use super::OutputError;

/// zstd level trace-cmd uses (the library default, doc §4.5), and ours for the
/// metadata sections.
const ZSTD_LEVEL: i32 = 3;
/// zstd level of our CPU data chunks: on recorded sched pages and marker floods in
/// 512 KiB chunks ([`super::v7::CHUNK_BYTES`]) level 2 is smaller than level 3 (whose
/// larger tables pay off only on larger inputs) and than level 1, and the cheapest of
/// the three (cli/bench/README.md). Readers see ordinary frames.
const ZSTD_CHUNK_LEVEL: i32 = 2;
/// Hash and chain table sizes (log2 entries) instead of level 3's own (16–17): on
/// recorded sched pages and marker floods in 40 KiB chunks the result is as small or
/// smaller, and on kallsyms 3% smaller at 40% less CPU; the small tables also stay in
/// cache (cli/bench/README.md). The frame format is the same for readers.
const ZSTD_TABLE_LOG: u32 = 12;

/// How the CPU data (and the metadata sections) of a v7 file are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Raw pages, `"none"` in the header.
    None,
    /// zstd, level 3, one frame per chunk or section (doc §4.5).
    Zstd,
}

impl Compression {
    /// Parses trace-cmd's `--compression` value: `zstd`, `none`, or `any` (the
    /// best available, which is zstd; doc §4.5).
    pub fn parse(name: &str) -> Result<Compression, OutputError> {
        match name {
            "zstd" | "any" => Ok(Compression::Zstd),
            "none" => Ok(Compression::None),
            other => Err(OutputError::Invalid(format!(
                "compression {other:?} is not supported; use zstd, none or any"
            ))),
        }
    }

    /// The name and version the v7 header stores (doc §4.1): the version of the
    /// libzstd in use, `""` for none.
    pub fn header_strings(self) -> (&'static str, &'static str) {
        match self {
            Compression::None => ("none", ""),
            Compression::Zstd => ("zstd", zstd::zstd_safe::version_string()),
        }
    }

    /// A compressor of metadata sections for this compression, if it compresses.
    pub(crate) fn compressor(self) -> Result<Option<Zstd>, OutputError> {
        match self {
            Compression::Zstd => Zstd::new().map(Some),
            Compression::None => Ok(None),
        }
    }

    /// A compressor of CPU data chunks for this compression, if it compresses.
    fn chunk_compressor(self) -> Result<Option<Zstd>, OutputError> {
        match self {
            Compression::Zstd => Zstd::for_chunks().map(Some),
            Compression::None => Ok(None),
        }
    }
}

pub(crate) fn werr(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OutputError {
    let what = what.into();
    move |source| OutputError::Write { what, source }
}

/// zstd as trace-cmd uses it: one frame per block, no content size in the frame
/// header (doc §4.5, P11). Metadata sections get level 3 with smaller match tables
/// ([`ZSTD_TABLE_LOG`]), CPU data chunks [`ZSTD_CHUNK_LEVEL`]. The context is reused
/// between blocks.
pub(crate) struct Zstd {
    cctx: zstd::bulk::Compressor<'static>,
    out: Vec<u8>,
}

impl Zstd {
    /// The compressor of metadata sections.
    pub(crate) fn new() -> Result<Zstd, OutputError> {
        use zstd::zstd_safe::CParameter as P;
        Zstd::with(
            ZSTD_LEVEL,
            &[P::HashLog(ZSTD_TABLE_LOG), P::ChainLog(ZSTD_TABLE_LOG)],
        )
    }

    /// The compressor of CPU data chunks.
    fn for_chunks() -> Result<Zstd, OutputError> {
        Zstd::with(ZSTD_CHUNK_LEVEL, &[])
    }

    fn with(level: i32, params: &[zstd::zstd_safe::CParameter]) -> Result<Zstd, OutputError> {
        let mut cctx = zstd::bulk::Compressor::new(level).map_err(werr("the zstd compressor"))?;
        let no_size = zstd::zstd_safe::CParameter::ContentSizeFlag(false);
        for &p in std::iter::once(&no_size).chain(params) {
            cctx.set_parameter(p).map_err(werr("the zstd compressor"))?;
        }
        Ok(Zstd {
            cctx,
            out: Vec::new(),
        })
    }

    /// Compresses `raw` into one frame; the result lives until the next call.
    pub(crate) fn compress(&mut self, raw: &[u8]) -> Result<&[u8], OutputError> {
        self.out.clear();
        self.out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
        self.cctx
            .compress_to_buffer(raw, &mut self.out)
            .map_err(werr("zstd-compressed data"))?;
        Ok(&self.out)
    }

    /// `u32 zlen, u32 rawlen, frame`: a compressed section body or a chunk.
    pub(crate) fn block(&mut self, raw: &[u8]) -> Result<Vec<u8>, OutputError> {
        let raw_len = u32_len("a compressed block", raw.len())?;
        let z = self.compress(raw)?;
        let mut v = Vec::with_capacity(8 + z.len());
        v.extend_from_slice(&(z.len() as u32).to_le_bytes());
        v.extend_from_slice(&raw_len.to_le_bytes());
        v.extend_from_slice(z);
        Ok(v)
    }

    /// Memory the zstd context holds now.
    fn context_bytes(&mut self) -> usize {
        self.cctx.context_mut().sizeof()
    }
}

fn u32_len(what: &str, len: usize) -> Result<u32, OutputError> {
    u32::try_from(len).map_err(|_| OutputError::TooLarge {
        what: what.to_string(),
        len: len as u64,
        max: u32::MAX.into(),
    })
}

/// What a finished [`ChunkWriter`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuChunks {
    /// Chunks written (0 when uncompressed).
    pub chunks: u32,
    /// Bytes written to the output, without the u32 chunk count that precedes the
    /// chunks in the file: what 3.1.6 records as the CPU's size (doc §4.6).
    pub size: u64,
    /// Raw (uncompressed) bytes that went in.
    pub raw: u64,
}

/// Turns ring-buffer pages into v7 CPU data as they arrive: with zstd, chunks of
/// `u32 zlen, u32 rawlen, frame` holding at most [`pages_in_chunk`] whole pages;
/// without, the pages themselves. The u32 chunk count that precedes the chunks in
/// the file is not written here: it is known only at the end ([`CpuChunks`]).
///
/// Memory: one raw chunk ([`super::v7::CHUNK_BYTES`], 512 KiB), one compressed chunk
/// (a little more) and the zstd context: about 1.8 MiB in all with the bundled zstd
/// 1.5.7 at zstd level 2 ([`ChunkWriter::memory_bytes`]), whatever the amount
/// of data. (The raw buffer is touched only when pages arrive in pieces.)
pub struct ChunkWriter<W: Write> {
    out: W,
    zstd: Option<Zstd>,
    raw: Vec<u8>,
    filled: usize,
    page_size: usize,
    stats: CpuChunks,
}

impl<W: Write> ChunkWriter<W> {
    /// A writer of pages of `page_size` bytes into `out`.
    pub fn new(
        out: W,
        page_size: u32,
        compression: Compression,
    ) -> Result<ChunkWriter<W>, OutputError> {
        if page_size == 0 {
            return Err(OutputError::Invalid("a page size of 0 bytes".into()));
        }
        let zstd = compression.chunk_compressor()?;
        let page = page_size as usize;
        Ok(ChunkWriter {
            out,
            zstd,
            raw: vec![0; pages_in_chunk(page) * page],
            filled: 0,
            page_size: page_size as usize,
            stats: CpuChunks::default(),
        })
    }

    /// Takes any number of bytes (pages need not arrive whole).
    pub fn write_pages(&mut self, mut data: &[u8]) -> Result<(), OutputError> {
        // Whole chunks are compressed where they are, without a copy.
        while self.filled == 0 && data.len() >= self.raw.len() {
            let (chunk, rest) = data.split_at(self.raw.len());
            self.emit_from(chunk)?;
            data = rest;
        }
        while !data.is_empty() {
            let n = data.len().min(self.raw.len() - self.filled);
            self.raw[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == self.raw.len() {
                self.emit()?;
            }
        }
        Ok(())
    }

    /// Reads `src` to its end straight into the chunk buffer; returns the bytes read.
    pub fn fill_from(&mut self, src: &mut impl Read) -> Result<u64, OutputError> {
        let mut total = 0u64;
        loop {
            match src.read(&mut self.raw[self.filled..]) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    self.filled += n;
                    total += n as u64;
                    if self.filled == self.raw.len() {
                        self.emit()?;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(werr("per-CPU data (reading its source)")(e)),
            }
        }
    }

    /// Writes out what is buffered (a short last chunk) and returns the output and
    /// what was written. The data should be whole pages: trace-cmd reads chunks page
    /// by page, so a partial page is kept but warned about.
    pub fn finish(mut self) -> Result<(W, CpuChunks), OutputError> {
        if self.filled > 0 {
            self.emit()?;
        }
        if self.stats.raw % self.page_size as u64 != 0 {
            log::warn!(
                "per-CPU data of {} bytes is not whole pages of {}",
                self.stats.raw,
                self.page_size
            );
        }
        self.out.flush().map_err(werr("per-CPU data"))?;
        Ok((self.out, self.stats))
    }

    /// Bytes this writer holds in memory now (buffers and the zstd context).
    pub fn memory_bytes(&mut self) -> usize {
        let z = self
            .zstd
            .as_mut()
            .map_or(0, |z| z.out.capacity() + z.context_bytes());
        self.raw.capacity() + z
    }

    fn emit(&mut self) -> Result<(), OutputError> {
        let raw = std::mem::take(&mut self.raw);
        let r = self.emit_from(&raw[..self.filled]);
        self.raw = raw;
        if r.is_ok() {
            self.filled = 0;
        }
        r
    }

    /// Writes `raw` (at most one chunk) out as one chunk.
    fn emit_from(&mut self, raw: &[u8]) -> Result<(), OutputError> {
        match self.zstd.as_mut() {
            None => {
                self.out.write_all(raw).map_err(werr("per-CPU data"))?;
                self.stats.size += raw.len() as u64;
            }
            Some(z) => {
                let z = z.compress(raw)?;
                let mut hdr = [0u8; 8];
                hdr[..4].copy_from_slice(&(z.len() as u32).to_le_bytes());
                hdr[4..].copy_from_slice(&(raw.len() as u32).to_le_bytes());
                self.out
                    .write_all(&hdr)
                    .and_then(|_| self.out.write_all(z))
                    .map_err(werr("a compressed chunk of per-CPU data"))?;
                self.stats.chunks = self.stats.chunks.checked_add(1).ok_or_else(|| {
                    OutputError::Invalid("more than 2^32 chunks of one CPU".into())
                })?;
                self.stats.size += 8 + z.len() as u64;
            }
        }
        self.stats.raw += raw.len() as u64;
        Ok(())
    }
}

impl<W: Write> Write for ChunkWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_pages(buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    /// Only flushes the output: a partial chunk stays buffered until
    /// [`ChunkWriter::finish`], so chunks stay full.
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// An unnamed file in `dir` (O_TMPFILE) with permissions `mode`: it can be given
/// a name later (linkat), and disappears with its last fd otherwise.
pub(crate) fn unnamed_file(dir: &Path, mode: u32) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(mode)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir)
}

/// Whether an O_TMPFILE failure means the file system cannot do it (so a named
/// file is the way), rather than that no file can be made there.
pub(crate) fn tmpfile_unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
    )
}

/// An anonymous file in `dir` (O_TMPFILE, or created and unlinked at once): it
/// disappears with its last fd, so a crash or Ctrl-C leaves nothing behind.
pub(crate) fn anonymous_file(dir: &Path) -> Result<File, OutputError> {
    use std::os::unix::fs::OpenOptionsExt;
    let what = || format!("a temporary file in {}", dir.display());
    match unnamed_file(dir, 0o600) {
        Ok(f) => return Ok(f),
        Err(e) if !tmpfile_unsupported(&e) => return Err(werr(what())(e)),
        Err(_) => {}
    }
    for n in 0..100 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!(".tcrs-v7-{}-{seq}-{n}.tmp", std::process::id()));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => {
                std::fs::remove_file(&path).map_err(werr(what()))?;
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(werr(what())(e)),
        }
    }
    Err(OutputError::Invalid(format!(
        "cannot find a free temporary name in {}",
        dir.display()
    )))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn pages(n: usize, seed: u8) -> Vec<u8> {
        (0..n * 4096).map(|i| (i / 7) as u8 ^ seed).collect()
    }

    /// Splits chunk-format bytes into decompressed chunks.
    pub(crate) fn unchunk(mut b: &[u8]) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        while !b.is_empty() {
            let z = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
            let raw = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
            v.push(zstd::bulk::decompress(&b[8..8 + z], raw).unwrap());
            b = &b[8 + z..];
        }
        v
    }

    #[test]
    fn chunks_hold_whole_pages_however_the_bytes_arrive() {
        let per = pages_in_chunk(4096);
        let data = pages(2 * per + 3, 5);
        for piece in [1, 4096, 5000, 40960, 1_000_000] {
            let mut w = ChunkWriter::new(Vec::new(), 4096, Compression::Zstd).unwrap();
            for p in data.chunks(piece) {
                w.write_all(p).unwrap();
            }
            let (out, st) = w.finish().unwrap();
            assert_eq!(st.chunks, 3);
            assert_eq!(st.raw, data.len() as u64);
            assert_eq!(st.size, out.len() as u64);
            let chunks = unchunk(&out);
            let lens: Vec<usize> = chunks.iter().map(Vec::len).collect();
            assert_eq!(lens, [per * 4096, per * 4096, 3 * 4096], "piece {piece}");
            assert_eq!(chunks.concat(), data);
        }
    }

    #[test]
    fn uncompressed_passes_pages_through() {
        let data = pages(12, 9);
        let mut w = ChunkWriter::new(Vec::new(), 4096, Compression::None).unwrap();
        w.fill_from(&mut &data[..]).unwrap();
        let (out, st) = w.finish().unwrap();
        assert_eq!(out, data);
        assert_eq!((st.chunks, st.size, st.raw), (0, 49152, 49152));
    }

    struct FailAfter(usize);
    impl Write for FailAfter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.0 < b.len() {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.0 -= b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_output_is_an_error_naming_the_cause() {
        for c in [Compression::Zstd, Compression::None] {
            let mut w = ChunkWriter::new(FailAfter(100), 4096, c).unwrap();
            let e = w
                .write_pages(&pages(30, 1))
                .and_then(|_| w.finish().map(|_| ()))
                .unwrap_err();
            assert_eq!(e.errno(), libc::ENOSPC, "{e}");
        }
    }

    #[test]
    fn memory_stays_bounded() {
        let mut w = ChunkWriter::new(std::io::sink(), 4096, Compression::Zstd).unwrap();
        for i in 0..50 {
            w.write_pages(&pages(50, i as u8)).unwrap();
        }
        let m = w.memory_bytes();
        // 512 KiB raw + 512 KiB out + the level-2 context (about 800 KiB).
        assert!(m < 2 << 20, "{m} bytes");
    }
}
