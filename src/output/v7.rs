//! Finishing a version 7 trace.dat whose metadata a network client sent (doc §4,
//! §6.5, §6.8): what a 3.x listener appends after the client's FIN_DATA.
//!
//! The client sends the header, the (compressed) sections 16–21 and one options
//! section ending in `DONE(next = 0)`. The listener then appends
//!
//! 1. a BUFFER section (id 3) with each CPU's raw pages at a page-aligned offset,
//!    compressed in chunks of [`pages_in_chunk`] pages (512 KiB; 3.x writes 10) when the
//!    file is (doc §4.6);
//! 2. an options section holding the BUFFER option and a final DONE, and patches
//!    the previous DONE's `next` to point at it (doc §4.3);
//! 3. a STRINGS section with the three descriptions it used (doc §4.4).
//!
//! [`parse_metadata`] checks what the client sent (never panics, reads only what the
//! fields point at); [`append_buffer`] does the rest.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::chunks::{werr, Compression};
use super::v7writer::{
    buffer_option, options_section, strings_section, write_buffer_section, CpuSource, Strings,
};
use super::{option_id, CpuRange, OutputError, MAGIC};

/// Section / option id of the STRINGS section.
pub const STRINGS: u16 = 15;
/// Pages per compressed chunk that trace-cmd 3.x writes (`PAGES_IN_CHUNK`, doc §4.6).
pub const PAGES_IN_CHUNK: usize = 10;
/// Raw bytes our writer puts in a chunk (whole pages, at least one): every reader
/// takes a chunk's size from its header (3.1.6's `tracecmd_load_chunks_info`), and on
/// recorded pages 512 KiB chunks at zstd level 2 came out 8–30% smaller than
/// 10-page chunks at level 3, for 20–25% less CPU (cli/bench/README.md).
pub const CHUNK_BYTES: usize = 512 << 10;
/// Most raw bytes a reader accepts in one chunk: a bound on what a chunk can make it
/// allocate, above what any writer uses.
pub const MAX_CHUNK_RAW: usize = 16 << 20;

/// Pages our writer puts in one chunk, for pages of `page_size` bytes.
pub fn pages_in_chunk(page_size: usize) -> usize {
    (CHUNK_BYTES / page_size.max(1)).max(1)
}
/// Most options sections followed before the chain is called a loop.
const MAX_OPTION_SECTIONS: usize = 1024;
/// Largest page size accepted from a header.
const MAX_PAGE_SIZE: u32 = 1 << 20;

pub use super::read_at::ReadAt;

/// What the listener needs to know about the client's v7 metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V7Metadata {
    /// The file's page (sub-buffer) size: CPU data is aligned to it.
    pub page_size: u32,
    /// The compression named in the header; `None` for "none".
    pub compression: Option<(String, String)>,
    /// Offset of the `next` field of the last DONE option (patched on append).
    pub last_done_next: u64,
    /// The CPUCOUNT option, if the client sent one.
    pub cpu_count: Option<u32>,
    /// The current clock named by the client's TRACECLOCK option, if any.
    pub trace_clock: Option<String>,
    /// Length of the metadata (where the appended sections start).
    pub len: u64,
}

fn bad(detail: impl Into<String>) -> OutputError {
    OutputError::Invalid(format!(
        "the client's version 7 metadata is incomplete or malformed: {}",
        detail.into()
    ))
}

fn read<const N: usize>(
    src: &(impl ReadAt + ?Sized),
    off: u64,
    what: &str,
) -> Result<[u8; N], OutputError> {
    let mut b = [0u8; N];
    src.read_at_exact(off, &mut b).map_err(|_| {
        bad(format!(
            "{what} at offset {off} lies past the end ({} bytes)",
            src.len_bytes()
        ))
    })?;
    Ok(b)
}

/// Reads a NUL-terminated string of at most `max` bytes at `off`; returns it and
/// the offset after its NUL.
fn cstring(
    src: &(impl ReadAt + ?Sized),
    off: u64,
    max: usize,
    what: &str,
) -> Result<(String, u64), OutputError> {
    let avail = src.len_bytes().saturating_sub(off).min(max as u64 + 1) as usize;
    let mut b = vec![0u8; avail];
    src.read_at_exact(off, &mut b)
        .map_err(|_| bad(format!("{what} lies past the end")))?;
    let nul = b.iter().position(|&c| c == 0).ok_or_else(|| {
        bad(format!(
            "{what} is not a NUL-terminated string of at most {max} bytes"
        ))
    })?;
    Ok((
        String::from_utf8_lossy(&b[..nul]).into_owned(),
        off + nul as u64 + 1,
    ))
}

/// Parses the header and walks the options-section chain of version 7 metadata
/// (doc §4.1, §4.3). Fails with a sentence on anything unexpected.
pub fn parse_metadata(src: &(impl ReadAt + ?Sized)) -> Result<V7Metadata, OutputError> {
    let len = src.len_bytes();
    let magic: [u8; 10] = read(src, 0, "the magic")?;
    if &magic != MAGIC {
        return Err(bad("it does not start with the trace.dat magic"));
    }
    let (version, off) = cstring(src, 10, 8, "the version string")?;
    if version != "7" {
        return Err(bad(format!("file version {version:?} is not 7")));
    }
    let [endian, _long_size]: [u8; 2] = read(src, off, "the endian byte")?;
    if endian != 0 {
        return Err(OutputError::Invalid(
            "the client's metadata is big-endian; this listener appends little-endian data only"
                .into(),
        ));
    }
    let page_size = u32::from_le_bytes(read(src, off + 2, "the page size")?);
    if page_size == 0 || page_size > MAX_PAGE_SIZE {
        return Err(bad(format!("page size {page_size} is out of range")));
    }
    let (cname, off) = cstring(src, off + 6, 64, "the compression name")?;
    let (cver, off) = cstring(src, off, 64, "the compression version")?;
    let mut section = u64::from_le_bytes(read(src, off, "the first options offset")?);
    let compression = (cname != "none").then_some((cname, cver));
    let mut cpu_count = None;
    let mut trace_clock = None;
    for _ in 0..MAX_OPTION_SECTIONS {
        let h: [u8; 16] = read(src, section, "an options section header")?;
        let id = u16::from_le_bytes([h[0], h[1]]);
        let flags = u16::from_le_bytes([h[2], h[3]]);
        let size = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
        if id != 0 {
            return Err(bad(format!(
                "section at {section} has id {id}, not an options section"
            )));
        }
        if flags & 1 != 0 {
            return Err(bad(
                "a compressed options section (trace-cmd never writes one)",
            ));
        }
        let body = section + 16;
        let end = body
            .checked_add(size)
            .filter(|&e| e <= len)
            .ok_or_else(|| {
                bad(format!(
                    "options section at {section} of {size} bytes runs past the end"
                ))
            })?;
        let mut pos = body;
        let next = loop {
            if pos + 6 > end {
                return Err(bad(format!(
                    "options section at {section} has no DONE option"
                )));
            }
            let oh: [u8; 6] = read(src, pos, "an option header")?;
            let oid = u16::from_le_bytes([oh[0], oh[1]]);
            let osize = u64::from(u32::from_le_bytes([oh[2], oh[3], oh[4], oh[5]]));
            let data = pos + 6;
            if data + osize > end {
                return Err(bad(format!("option {oid} at {pos} runs past its section")));
            }
            if oid == option_id::DONE {
                if osize != 8 {
                    return Err(bad(format!("DONE option at {pos} has size {osize}, not 8")));
                }
                let next = u64::from_le_bytes(read(src, data, "the DONE offset")?);
                break (data, next);
            }
            if oid == option_id::CPUCOUNT && osize == 4 {
                cpu_count = Some(u32::from_le_bytes(read(src, data, "the CPU count")?));
            }
            if oid == option_id::TRACECLOCK && osize <= 4096 {
                let mut text = vec![0u8; osize as usize];
                src.read_at_exact(data, &mut text)
                    .map_err(|_| bad("the TRACECLOCK option lies past the end"))?;
                trace_clock = current_clock(&text);
            }
            pos = data + osize;
        };
        if next.1 == 0 {
            return Ok(V7Metadata {
                page_size,
                compression,
                last_done_next: next.0,
                cpu_count,
                trace_clock,
                len,
            });
        }
        section = next.1;
    }
    Err(bad("the options sections form a loop"))
}

/// The clock in brackets in a TRACECLOCK option's text (`"[local] global\n\0"`).
pub fn current_clock(option: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(option);
    let text = text.trim_end_matches('\0');
    crate::tracefs::parse_trace_clock(text).map(|(c, _)| c)
}

/// Appends the BUFFER section for the top buffer `""`, its options section and
/// a STRINGS section to `out`, which holds exactly the client's v7 metadata
/// described by `meta` (doc §6.8 step 3). `cpu_files[i]` is CPU i's raw pages
/// (`None`: no data). `clock` goes into the BUFFER option.
///
/// Compression: "zstd" as the header says, "none" uncompressed; any other
/// algorithm is an error (nothing is appended).
pub fn append_buffer(
    out: &mut File,
    meta: &V7Metadata,
    clock: &str,
    cpu_files: &[Option<PathBuf>],
) -> Result<Vec<CpuRange>, OutputError> {
    let compression = match &meta.compression {
        None => Compression::None,
        Some((name, _)) if name == "zstd" => Compression::Zstd,
        Some((name, version)) => {
            return Err(OutputError::Invalid(format!(
                "the client compresses with {name} {version}, which this listener cannot write; \
                 record with --compression zstd or none"
            )))
        }
    };
    let mut zstd = compression.compressor()?;
    let mut srcs = Vec::with_capacity(cpu_files.len());
    for path in cpu_files {
        srcs.push(match path {
            Some(path) => {
                CpuSource::Raw(File::open(path).map_err(|source| OutputError::CpuFile {
                    path: path.clone(),
                    source,
                })?)
            }
            None => CpuSource::Empty,
        });
    }
    // The listener's STRINGS start at id 0 (doc §6.8): the client's ids dangle.
    let mut strings = Strings::default();
    let desc = strings.id("buffer flyrecord ");
    let (start, ranges, end) = write_buffer_section(
        out,
        desc,
        meta.page_size,
        compression,
        srcs,
        "the client's data",
    )?;
    // Options section #2: BUFFER + DONE(0), linked from the client's last DONE.
    let opt = buffer_option(start, "", clock, meta.page_size, &ranges)?;
    let (sec, _) = options_section(strings.id("options"), &[opt])?;
    out.write_all_at(&sec, end)
        .map_err(werr("the options section"))?;
    out.write_all_at(&end.to_le_bytes(), meta.last_done_next)
        .map_err(werr("the link to the new options section"))?;
    let strings = strings_section(&mut strings, zstd.as_mut())?;
    out.write_all_at(&strings, end + sec.len() as u64)
        .map_err(werr("the STRINGS section"))?;
    out.seek(SeekFrom::End(0))
        .map_err(werr("the end of the file"))?;
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::reader::TraceDat;
    use crate::output::v7writer::section_header;

    fn section(id: u16, body: &[u8]) -> Vec<u8> {
        let mut v = section_header(id, false, 0, body.len() as u64).to_vec();
        v.extend_from_slice(body);
        v
    }

    /// What a 3.1.6 client sends in v7: header, one section, options{CPUCOUNT, DONE 0}.
    fn client_metadata(compression: &str) -> Vec<u8> {
        let mut m = MAGIC.to_vec();
        m.extend_from_slice(b"7\0\0\x08");
        m.extend_from_slice(&4096u32.to_le_bytes());
        m.extend_from_slice(compression.as_bytes());
        m.extend_from_slice(b"\x001.5.4\0");
        let first_at = m.len();
        m.extend_from_slice(&[0; 8]);
        m.extend(section(16, b"not really headers"));
        let opts = m.len() as u64;
        m[first_at..first_at + 8].copy_from_slice(&opts.to_le_bytes());
        let mut body = Vec::new();
        body.extend_from_slice(&option_id::CPUCOUNT.to_le_bytes());
        body.extend_from_slice(&4u32.to_le_bytes());
        body.extend_from_slice(&3u32.to_le_bytes());
        body.extend_from_slice(&[0, 0, 8, 0, 0, 0]);
        body.extend_from_slice(&0u64.to_le_bytes());
        m.extend(section(0, &body));
        m
    }

    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn pages(n: usize, seed: u8) -> Vec<u8> {
        (0..n * 4096).map(|i| (i / 7) as u8 ^ seed).collect()
    }

    #[test]
    fn appended_buffer_reads_back() {
        for compression in ["zstd", "none"] {
            let tmp =
                Tmp(std::env::temp_dir()
                    .join(format!("tcrs-v7-{}-{compression}", std::process::id())));
            std::fs::create_dir_all(&tmp.0).unwrap();
            let meta_bytes = client_metadata(compression);
            let meta = parse_metadata(&meta_bytes[..]).unwrap();
            assert_eq!(meta.page_size, 4096);
            assert_eq!(meta.cpu_count, Some(3));
            assert_eq!(meta.compression.is_some(), compression == "zstd");
            assert_eq!(meta.last_done_next, meta_bytes.len() as u64 - 8);
            let data = [pages(25, 1), vec![], pages(1, 2)];
            let mut files = Vec::new();
            for (i, d) in data.iter().enumerate() {
                let p = tmp.0.join(format!("cpu{i}"));
                std::fs::write(&p, d).unwrap();
                files.push(Some(p));
            }
            let path = tmp.0.join("out.dat");
            std::fs::write(&path, &meta_bytes).unwrap();
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let ranges = append_buffer(&mut f, &meta, "local", &files).unwrap();
            drop(f);
            let b = std::fs::read(&path).unwrap();
            let dat = TraceDat::parse(&b).expect("our reader parses the result");
            assert_eq!(dat.buffers.len(), 1);
            assert_eq!(dat.buffers[0].name, "");
            assert_eq!(dat.buffers[0].clock.as_deref(), Some("local"));
            for (cpu, d) in data.iter().enumerate() {
                let r = ranges[cpu];
                assert_eq!(r.offset % 4096, 0);
                if d.is_empty() {
                    assert_eq!(r.size, 0);
                    continue;
                }
                let at = r.offset as usize;
                let got = if compression == "none" {
                    b[at..at + d.len()].to_vec()
                } else {
                    let n = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
                    assert_eq!(n, d.len().div_ceil(CHUNK_BYTES));
                    let (mut pos, mut out, mut sum) = (at + 4, Vec::new(), 0u64);
                    for _ in 0..n {
                        let z = u32::from_le_bytes(b[pos..pos + 4].try_into().unwrap()) as usize;
                        let raw =
                            u32::from_le_bytes(b[pos + 4..pos + 8].try_into().unwrap()) as usize;
                        assert!(raw <= CHUNK_BYTES);
                        // Frames carry no content size (doc P11): the magic then a 0 descriptor.
                        assert_eq!(&b[pos + 8..pos + 13], &[0x28, 0xb5, 0x2f, 0xfd, 0x00]);
                        out.extend(zstd::bulk::decompress(&b[pos + 8..pos + 8 + z], raw).unwrap());
                        pos += 8 + z;
                        sum += 8 + z as u64;
                    }
                    assert_eq!(r.size, sum, "3.1.6 records the chunks without the count");
                    out
                };
                assert_eq!(&got, d, "CPU {cpu} ({compression})");
            }
            // The chain: the client's DONE now points at the new options section,
            // whose DONE ends it, and a STRINGS section follows it.
            let next =
                u64::from_le_bytes(b[meta.last_done_next as usize..][..8].try_into().unwrap());
            assert!(next > meta.len);
            assert_eq!(&b[next as usize..next as usize + 2], &[0, 0]);
            let reparsed = parse_metadata(&b[..]).unwrap();
            let opt_size = u64::from_le_bytes(b[next as usize + 8..][..8].try_into().unwrap());
            let strings = (next + 16 + opt_size) as usize;
            assert_eq!(u16::from_le_bytes([b[strings], b[strings + 1]]), STRINGS);
            assert_eq!(reparsed.last_done_next, next + 16 + opt_size - 8);
            let ssize = u64::from_le_bytes(b[strings + 8..][..8].try_into().unwrap());
            assert_eq!(
                strings as u64 + 16 + ssize,
                b.len() as u64,
                "STRINGS ends the file"
            );
        }
    }

    #[test]
    fn other_compressions_are_refused() {
        let meta = parse_metadata(&client_metadata("zlib")[..]).unwrap();
        let tmp = std::env::temp_dir().join(format!("tcrs-v7-zlib-{}", std::process::id()));
        let mut f = File::create(&tmp).unwrap();
        let e = append_buffer(&mut f, &meta, "local", &[]).unwrap_err();
        assert!(e.to_string().contains("zlib"), "{e}");
        assert_eq!(f.metadata().unwrap().len(), 0, "nothing appended");
        let _ = std::fs::remove_file(tmp);
    }

    #[test]
    fn parser_never_panics_on_random_or_truncated_input() {
        let good = client_metadata("zstd");
        for cut in 0..good.len() {
            assert!(parse_metadata(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20000 {
            let mut b = good.clone();
            for _ in 0..(next() % 6 + 1) {
                let i = (next() % b.len() as u64) as usize;
                b[i] = next() as u8;
            }
            let len = (next() % (b.len() as u64 + 1)) as usize;
            let _ = parse_metadata(&b[..len]);
            let junk: Vec<u8> = (0..next() % 200).map(|_| next() as u8).collect();
            let _ = parse_metadata(&junk[..]);
        }
    }

    #[test]
    fn option_loops_end() {
        // A DONE pointing back at its own section.
        let mut m = client_metadata("none");
        let first = u64::from_le_bytes(
            m[MAGIC.len() + 2 + 2 + 4 + b"none\0".len() + b"1.5.4\0".len()..][..8]
                .try_into()
                .unwrap(),
        );
        let n = m.len();
        m[n - 8..].copy_from_slice(&first.to_le_bytes());
        let e = parse_metadata(&m[..]).unwrap_err();
        assert!(e.to_string().contains("loop"), "{e}");
    }
}
