//! Reading what [`super::reader::TraceDat`] leaves compressed in a version 7 file:
//! the metadata sections (doc §4.1) and per-CPU chunks (doc §4.6). Never panics, and
//! allocates no more than the sizes the format allows (a chunk holds at most
//! [`MAX_CHUNK_RAW`] bytes, or 3.x's [`PAGES_IN_CHUNK`] pages of the largest size).

use super::layout::{EventLayout, PageLayout};
use super::reader::{DatError, TraceDat};
use super::v7::{MAX_CHUNK_RAW, PAGES_IN_CHUNK};

/// Largest raw size accepted for one compressed section.
const MAX_SECTION_RAW: usize = 1 << 30;
/// Largest page size accepted when sizing a chunk.
const MAX_PAGE: usize = 1 << 20;

fn bad(offset: u64, detail: impl Into<String>) -> DatError {
    DatError::Malformed {
        offset: usize::try_from(offset).unwrap_or(usize::MAX),
        detail: detail.into(),
    }
}

fn slice<'a>(b: &'a [u8], off: u64, len: u64, what: &str) -> Result<&'a [u8], DatError> {
    usize::try_from(off)
        .ok()
        .zip(usize::try_from(len).ok())
        .and_then(|(o, n)| b.get(o..o.checked_add(n)?))
        .ok_or_else(|| DatError::Truncated {
            what: what.to_string(),
            offset: usize::try_from(off).unwrap_or(usize::MAX),
            need: len,
        })
}

fn u32_at(b: &[u8], off: u64, what: &str) -> Result<u32, DatError> {
    let s = slice(b, off, 4, what)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: u64, what: &str) -> Result<u64, DatError> {
    let s = slice(b, off, 8, what)?;
    Ok(u64::from_le_bytes(s.try_into().unwrap_or_default()))
}

/// `u32 zlen, u32 rawlen, frame` at `off`: the raw bytes and the block's length.
fn block(b: &[u8], off: u64, max_raw: usize, what: &str) -> Result<(Vec<u8>, u64), DatError> {
    let zlen = u32_at(b, off, what)?;
    let raw = u32_at(b, off + 4, what)? as usize;
    if raw > max_raw {
        return Err(bad(off, format!("{what} claims {raw} raw bytes")));
    }
    let z = slice(b, off + 8, zlen.into(), what)?;
    let data = zstd::bulk::decompress(z, raw)
        .map_err(|e| bad(off, format!("{what} does not decompress: {e}")))?;
    if data.len() != raw {
        return Err(bad(
            off,
            format!("{what} holds {} bytes, not {raw}", data.len()),
        ));
    }
    Ok((data, 8 + u64::from(zlen)))
}

/// The id and raw contents of the section whose header is at `offset`.
pub fn section(file: &[u8], offset: u64) -> Result<(u16, Vec<u8>), DatError> {
    section_at_most(file, offset, MAX_SECTION_RAW)
}

/// [`section`], refusing a compressed section that claims more than `max_raw`
/// bytes (for input from a peer, before anything is allocated for it).
pub fn section_at_most(
    file: &[u8],
    offset: u64,
    max_raw: usize,
) -> Result<(u16, Vec<u8>), DatError> {
    let h = slice(file, offset, 16, "a section header")?;
    let id = u16::from_le_bytes([h[0], h[1]]);
    let flags = u16::from_le_bytes([h[2], h[3]]);
    let size = u64_at(file, offset + 8, "a section size")?;
    let body = slice(file, offset + 16, size, "a section body")?;
    if flags & 1 == 0 {
        return Ok((id, body.to_vec()));
    }
    let (raw, _) = block(body, 0, max_raw, "a compressed section")?;
    Ok((id, raw))
}

/// The page and event layouts from section 16 (header_page, header_event).
pub fn layouts(file: &[u8], dat: &TraceDat) -> Result<(PageLayout, EventLayout), DatError> {
    let at = dat
        .options_with(file, 16)
        .next()
        .filter(|d| d.len() == 8)
        .map(|d| u64::from_le_bytes(d.try_into().unwrap_or_default()))
        .ok_or_else(|| bad(0, "no HEADER_INFO option"))?;
    let (id, raw) = section(file, at)?;
    if id != 16 {
        return Err(bad(at, format!("HEADER_INFO points at section {id}")));
    }
    let mut pos = 0u64;
    let mut text = |tag: &[u8]| -> Result<Vec<u8>, DatError> {
        let t = slice(&raw, pos, tag.len() as u64, "a header tag")?;
        if t != tag {
            return Err(bad(at, "HEADER_INFO lacks its tags"));
        }
        let n = u64_at(&raw, pos + tag.len() as u64, "a header size")?;
        let s = slice(&raw, pos + tag.len() as u64 + 8, n, "a header text")?.to_vec();
        pos += tag.len() as u64 + 8 + n;
        Ok(s)
    };
    let hp = text(b"header_page\0")?;
    let he = text(b"header_event\0")?;
    let pl = PageLayout::parse(&hp).ok_or_else(|| bad(at, "header_page is not understood"))?;
    let el = EventLayout::parse(&he).ok_or_else(|| bad(at, "header_event is not understood"))?;
    Ok((pl, el))
}

/// The raw pages of each CPU of buffer number `buffer` (decompressed if the file is).
pub fn cpu_data(file: &[u8], dat: &TraceDat, buffer: usize) -> Result<Vec<Vec<u8>>, DatError> {
    let buf = dat
        .buffers
        .get(buffer)
        .ok_or_else(|| bad(0, format!("no buffer number {buffer}")))?;
    let compressed = dat.compression.as_ref().is_some_and(|(n, _)| n != "none");
    let max_chunk = MAX_CHUNK_RAW.max(PAGES_IN_CHUNK * (dat.page_size as usize).min(MAX_PAGE));
    let mut out = Vec::with_capacity(buf.cpu_data.len());
    for (cpu, &(off, size)) in buf.cpu_data.iter().enumerate() {
        if size == 0 {
            out.push(Vec::new());
            continue;
        }
        if !compressed {
            out.push(slice(file, off, size, "CPU data")?.to_vec());
            continue;
        }
        let n = u32_at(file, off, "a chunk count")?;
        let (mut pos, mut data) = (off + 4, Vec::new());
        for _ in 0..n {
            let (raw, len) = block(file, pos, max_chunk, &format!("a chunk of CPU {cpu}"))?;
            data.extend_from_slice(&raw);
            pos += len;
        }
        // 3.1.6 records Σ(8 + zlen), HEAD adds the count's 4 bytes (doc §8).
        if pos - off - 4 != size && pos - off != size {
            return Err(bad(
                off,
                format!(
                    "CPU {cpu}: the chunks take {} bytes, the option says {size}",
                    pos - off
                ),
            ));
        }
        out.push(data);
    }
    Ok(out)
}

/// Events per CPU of buffer number `buffer`.
pub fn count_events(file: &[u8], dat: &TraceDat, buffer: usize) -> Result<Vec<u64>, DatError> {
    let (pl, el) = layouts(file, dat)?;
    let name = dat
        .buffers
        .get(buffer)
        .map(|b| b.name.clone())
        .unwrap_or_default();
    cpu_data(file, dat, buffer)?
        .iter()
        .enumerate()
        .map(|(cpu, d)| {
            super::layout::count_events(d, dat.page_size as usize, &pl, &el, dat.big_endian)
                .map_err(|source| DatError::Page {
                    buffer: name.clone(),
                    cpu,
                    source,
                })
        })
        .collect()
}
