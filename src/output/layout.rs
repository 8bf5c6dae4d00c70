//! The ring-buffer page and event-header layouts described by tracefs'
//! `events/header_page` and `events/header_event` (doc §2.1 rows 7–10), and a
//! walker over the records of one page.

use std::collections::HashMap;

/// Where the fields of a ring-buffer page header are (from `header_page`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLayout {
    /// Offset and size of the u64 page timestamp.
    pub timestamp: (usize, usize),
    /// Offset and size of the `commit` word (its low 27 bits: bytes of data).
    pub commit: (usize, usize),
    /// Offset of the first record and the capacity of the data area.
    pub data: (usize, usize),
}

/// Parses the `field: ...; offset:N; size:N;` lines of a tracefs format text into
/// name → (offset, size).
pub fn parse_fields(text: &[u8]) -> HashMap<String, (usize, usize)> {
    let text = String::from_utf8_lossy(text);
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';').map(str::trim);
        let Some(decl) = parts.next() else { continue };
        let name = decl
            .split_whitespace()
            .last()
            .unwrap_or("")
            .split('[')
            .next()
            .unwrap_or("")
            .to_string();
        let mut offset = None;
        let mut size = None;
        for p in parts {
            if let Some(v) = p.strip_prefix("offset:") {
                offset = v.trim().parse().ok();
            } else if let Some(v) = p.strip_prefix("size:") {
                size = v.trim().parse().ok();
            }
        }
        if let (Some(o), Some(s)) = (offset, size) {
            if !name.is_empty() {
                out.entry(name).or_insert((o, s));
            }
        }
    }
    out
}

impl PageLayout {
    /// Reads the layout from `header_page`; `None` if a field is missing or absurd.
    pub fn parse(header_page: &[u8]) -> Option<PageLayout> {
        let f = parse_fields(header_page);
        let timestamp = *f.get("timestamp")?;
        let commit = *f.get("commit")?;
        let data = *f.get("data")?;
        let sane = |(o, s): (usize, usize), max: usize| s >= 1 && s <= max && o <= 1 << 20;
        (sane(timestamp, 8) && sane(commit, 8) && sane(data, 1 << 24))
            .then_some(PageLayout {
                timestamp,
                commit,
                data,
            })
            .filter(|l| l.data.0 >= l.commit.0 + l.commit.1)
    }

    /// The sub-buffer size (data offset + data size), which trace.dat calls page size.
    pub fn sub_buffer_size(&self) -> usize {
        self.data.0 + self.data.1
    }
}

/// The compressed event header (from `header_event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLayout {
    /// Bits of `type_len` (5).
    pub type_len_bits: u32,
    /// Bits of `time_delta` (27).
    pub time_delta_bits: u32,
    /// `type_len` of padding records (29).
    pub padding: u32,
    /// `type_len` of time-extend records (30).
    pub time_extend: u32,
    /// `type_len` of absolute time-stamp records (31).
    pub time_stamp: u32,
    /// Largest `type_len` of a data record (28).
    pub data_max: u32,
}

impl Default for EventLayout {
    fn default() -> Self {
        EventLayout {
            type_len_bits: 5,
            time_delta_bits: 27,
            padding: 29,
            time_extend: 30,
            time_stamp: 31,
            data_max: 28,
        }
    }
}

impl EventLayout {
    /// Reads `header_event`; lines it lacks keep the kernel's usual values.
    /// `None` if the bit widths do not add up to 32.
    pub fn parse(header_event: &[u8]) -> Option<EventLayout> {
        let text = String::from_utf8_lossy(header_event);
        let mut l = EventLayout::default();
        let last_num = |s: &str| -> Option<u32> {
            s.split(|c: char| !c.is_ascii_digit())
                .rfind(|w| !w.is_empty())?
                .parse()
                .ok()
        };
        for line in text.lines() {
            let t = line.trim();
            let key = t.split(|c: char| c == ':' || c.is_whitespace()).next();
            let slot = match key {
                Some("type_len") => &mut l.type_len_bits,
                Some("time_delta") => &mut l.time_delta_bits,
                Some("padding") => &mut l.padding,
                Some("time_extend") => &mut l.time_extend,
                Some("time_stamp") => &mut l.time_stamp,
                Some("data") if t.contains("type_len") => &mut l.data_max,
                _ => continue,
            };
            if let Some(n) = last_num(t) {
                *slot = n;
            }
        }
        let ok = l.type_len_bits >= 1
            && l.type_len_bits < 32
            && l.type_len_bits + l.time_delta_bits == 32
            && l.data_max < l.padding;
        ok.then_some(l)
    }
}

/// Why a page could not be walked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// The page is shorter than its header.
    #[error("page of {0} bytes is shorter than the page header")]
    Short(usize),
    /// `commit` says there is more data than the page holds.
    #[error("page says it holds {commit} bytes of events, but only {room} fit")]
    CommitTooLarge {
        /// Data bytes claimed.
        commit: usize,
        /// Data bytes that fit.
        room: usize,
    },
    /// A record runs past the committed data or has an invalid type.
    #[error("bad event record at page offset {offset}: {detail}")]
    BadRecord {
        /// Offset of the record in the page.
        offset: usize,
        /// What is wrong.
        detail: String,
    },
}

/// One data record of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Timestamp (page timestamp plus the deltas so far), in trace-clock units.
    pub ts: u64,
    /// The event payload (starts with the u16 event id).
    pub payload: &'a [u8],
}

fn read_uint(b: &[u8], big_endian: bool) -> u64 {
    let mut v = 0u64;
    if big_endian {
        for &x in b {
            v = (v << 8) | u64::from(x);
        }
    } else {
        for &x in b.iter().rev() {
            v = (v << 8) | u64::from(x);
        }
    }
    v
}

/// Low bits of `commit` that hold the data size (the rest are flags).
const COMMIT_MASK: u64 = (1 << 27) - 1;

/// Calls `f` for every data record of one ring-buffer page, in order.
/// Padding and time records are consumed but not reported.
pub fn walk_page<'a>(
    page: &'a [u8],
    pl: &PageLayout,
    el: &EventLayout,
    big_endian: bool,
    mut f: impl FnMut(Record<'a>),
) -> Result<(), PageError> {
    let hdr_end = pl
        .data
        .0
        .max(pl.commit.0 + pl.commit.1)
        .max(pl.timestamp.0 + pl.timestamp.1);
    if page.len() < hdr_end {
        return Err(PageError::Short(page.len()));
    }
    let mut ts = read_uint(
        &page[pl.timestamp.0..pl.timestamp.0 + pl.timestamp.1],
        big_endian,
    );
    let commit = (read_uint(&page[pl.commit.0..pl.commit.0 + pl.commit.1], big_endian)
        & COMMIT_MASK) as usize;
    let room = page.len() - pl.data.0;
    if commit > room {
        return Err(PageError::CommitTooLarge { commit, room });
    }
    let end = pl.data.0 + commit;
    let u32_at = |o: usize| read_uint(&page[o..o + 4], big_endian) as u32;
    let bad = |offset: usize, detail: &str| PageError::BadRecord {
        offset,
        detail: detail.to_string(),
    };
    let mut off = pl.data.0;
    while off + 4 <= end {
        let h = u32_at(off);
        let (type_len, delta) = if big_endian {
            (
                h >> el.time_delta_bits,
                h & ((1u32 << el.time_delta_bits) - 1),
            )
        } else {
            (h & ((1u32 << el.type_len_bits) - 1), h >> el.type_len_bits)
        };
        let need = |n: usize| {
            if off + n > end {
                Err(bad(off, "record runs past the committed data"))
            } else {
                Ok(())
            }
        };
        let next = if type_len == el.padding {
            if delta == 0 {
                break; // the rest of the page is unused
            }
            need(8)?;
            // A discarded event keeps its delta (kernel rb_event_discard).
            ts = ts.wrapping_add(u64::from(delta));
            off + 4 + u32_at(off + 4) as usize
        } else if type_len == el.time_extend || type_len == el.time_stamp {
            need(8)?;
            let ext = (u64::from(u32_at(off + 4)) << el.time_delta_bits) | u64::from(delta);
            if type_len == el.time_extend {
                ts = ts.wrapping_add(ext);
            } else {
                ts = ext;
            }
            off + 8
        } else if type_len == 0 {
            need(8)?;
            let len = u32_at(off + 4) as usize;
            if len < 4 {
                return Err(bad(off, "length word smaller than itself"));
            }
            let body = (len - 4 + 3) & !3;
            need(8 + body)?;
            ts = ts.wrapping_add(u64::from(delta));
            f(Record {
                ts,
                payload: &page[off + 8..off + 8 + (len - 4)],
            });
            off + 8 + body
        } else if type_len <= el.data_max {
            let body = type_len as usize * 4;
            need(4 + body)?;
            ts = ts.wrapping_add(u64::from(delta));
            f(Record {
                ts,
                payload: &page[off + 4..off + 4 + body],
            });
            off + 4 + body
        } else {
            return Err(bad(off, &format!("unknown record type_len {type_len}")));
        };
        if next > end || next <= off {
            return Err(bad(off, "record length points outside the committed data"));
        }
        off = next;
    }
    Ok(())
}

/// Counts the data records in `data`, a sequence of whole pages of `page_size`
/// bytes (a shorter last piece is an error).
pub fn count_events(
    data: &[u8],
    page_size: usize,
    pl: &PageLayout,
    el: &EventLayout,
    big_endian: bool,
) -> Result<u64, PageError> {
    if page_size == 0 {
        return Err(PageError::Short(0));
    }
    let mut n = 0u64;
    for page in data.chunks(page_size) {
        if page.len() < page_size {
            return Err(PageError::Short(page.len()));
        }
        walk_page(page, pl, el, big_endian, |_| n += 1)?;
    }
    Ok(n)
}

/// Rewrites, in place, every whole ring-buffer page of the file at `path` (a
/// recorded per-CPU file): `rewrite` gets each page in turn, 64 pages read and
/// written back at a time. A trailing partial page is left as it is.
pub fn rewrite_file_pages(
    path: &std::path::Path,
    page_size: usize,
    mut rewrite: impl FnMut(&mut [u8]),
) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    if page_size == 0 {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut buf = vec![0u8; page_size * 64];
    let mut pos = 0u64;
    loop {
        f.seek(SeekFrom::Start(pos))?;
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        let whole = n - n % page_size;
        if whole == 0 {
            return Ok(());
        }
        buf[..whole].chunks_mut(page_size).for_each(&mut rewrite);
        f.seek(SeekFrom::Start(pos))?;
        f.write_all(&buf[..whole])?;
        pos += whole as u64;
        if n < buf.len() {
            return Ok(());
        }
    }
}
