//! Merging a guest's metadata into the host's for one trace.dat (`record -A`).
//!
//! A v6 file has one table of event formats for all its buffers. When host and
//! guest run the same kernel the tables agree. Otherwise [`merge_remapped`] keeps
//! the host's formats, gives every guest event that clashes with one of them a
//! free ID (with its own format text), and [`remap_file_ids`] rewrites those IDs
//! in the guest's recorded pages, so `report` decodes both. [`merge_guest`] also
//! moves the guest's kernel symbols into the file's kallsyms (see
//! [`super::guestsym`]) and adds its process names, and [`rewrite_guest_file`]
//! applies both to the guest's pages in one pass.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::guestsym::{merge_symbols, pointer_fields, shift_payload, PointerField, SymbolShift};
use super::layout::{rewrite_file_pages, walk_page, EventLayout, PageLayout};
use super::{Metadata, OutputError};

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

fn system_index(host: &mut Metadata, sys: &str) -> usize {
    match host.systems.iter().position(|(s, _)| s == sys) {
        Some(i) => i,
        None => {
            host.systems.push((sys.to_string(), Vec::new()));
            host.systems.len() - 1
        }
    }
}

/// The pid of a saved_cmdlines line (`PID COMM`).
fn cmdline_pid(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Adds the guest's process names for the pids the host's table lacks. The file
/// has one table, and libtraceevent keeps one name per pid (which of two, when a
/// pid is listed twice, depends on its sort): on a pid both have, the host's name
/// stays, and the guest's process shows under it. Returns the guest names left
/// out that way.
fn merge_cmdlines(host: &mut Metadata, guest: &Metadata) -> usize {
    let known: HashSet<u32> = host
        .cmdlines
        .split(|&b| b == b'\n')
        .filter_map(cmdline_pid)
        .collect();
    let mut clashes = 0;
    let mut added = Vec::new();
    for line in guest.cmdlines.split(|&b| b == b'\n') {
        match cmdline_pid(line) {
            Some(pid) if known.contains(&pid) => clashes += 1,
            Some(_) => {
                added.extend_from_slice(line);
                added.push(b'\n');
            }
            None => {}
        }
    }
    if !added.is_empty() {
        if !host.cmdlines.is_empty() && !host.cmdlines.ends_with(b"\n") {
            host.cmdlines.push(b'\n');
        }
        host.cmdlines.extend_from_slice(&added);
    }
    clashes
}

/// Guest event ID → the ID it has in the merged file.
pub type IdMap = HashMap<u16, u16>;

/// Replaces the `ID:` line of a format text.
fn with_id(format: &[u8], id: u16) -> Vec<u8> {
    let text = String::from_utf8_lossy(format);
    let mut out = String::with_capacity(text.len() + 4);
    for line in text.split_inclusive('\n') {
        if line.starts_with("ID:") {
            out.push_str(&format!("ID: {id}\n"));
        } else {
            out.push_str(line);
        }
    }
    out.into_bytes()
}

/// Merges a guest's metadata into the host's so that both stay decodable: a guest
/// event whose format the host has under the same ID is shared; any other guest
/// event keeps its ID if that is free, else gets a new unused one, with its own
/// format text. Returns the guest IDs that moved (apply them to the guest's pages
/// with [`remap_file_ids`]) and how many guest events could not be given an ID.
pub fn merge_remapped(host: &mut Metadata, guest: &Metadata) -> (IdMap, usize) {
    let mut used: HashMap<u32, Vec<u8>> = HashMap::new();
    let all_host = host
        .ftrace_formats
        .iter()
        .chain(host.systems.iter().flat_map(|(_, f)| f.iter()));
    for f in all_host {
        if let Some((_, id)) = format_name_id(f) {
            used.insert(id, f.clone());
        }
    }
    let guest_max = guest
        .systems
        .iter()
        .flat_map(|(_, f)| f.iter())
        .filter_map(|f| format_name_id(f))
        .map(|(_, id)| id)
        .max()
        .unwrap_or(0);
    let mut next = used.keys().copied().max().unwrap_or(0).max(guest_max) + 1;
    let mut map = IdMap::new();
    let mut lost = 0;
    for (sys, formats) in &guest.systems {
        let idx = system_index(host, sys);
        for f in formats {
            let Some((_, gid)) = format_name_id(f) else {
                continue;
            };
            match used.get(&gid) {
                Some(h) if h == f => continue, // the very same event
                None if gid <= u32::from(u16::MAX) => {
                    used.insert(gid, f.clone());
                    host.systems[idx].1.push(f.clone());
                    continue;
                }
                _ => {}
            }
            let (Ok(old), Ok(new)) = (u16::try_from(gid), u16::try_from(next)) else {
                lost += 1;
                continue;
            };
            next += 1;
            let moved = with_id(f, new);
            used.insert(u32::from(new), moved.clone());
            host.systems[idx].1.push(moved);
            map.insert(old, new);
        }
    }
    (map, lost)
}

/// What [`rewrite_guest_file`] changes in a guest's recorded pages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestRewrite {
    /// Event IDs moved to free ones ([`merge_remapped`]).
    pub ids: IdMap,
    /// Per guest event ID (as recorded), its fields holding kernel addresses.
    pub pointers: HashMap<u16, Vec<PointerField>>,
    /// How those addresses move; `None`: they stay.
    pub symbols: Option<SymbolShift>,
}

impl GuestRewrite {
    /// Whether the pages need no change.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && (self.symbols.is_none() || self.pointers.is_empty())
    }
}

/// What [`merge_guest`] did, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestMerge {
    /// Apply to the guest's pages with [`rewrite_guest_file`].
    pub rewrite: GuestRewrite,
    /// Guest events that found no free ID (report cannot decode them).
    pub lost: usize,
    /// Guest process names left out because the host has their pid.
    pub cmdline_clashes: usize,
}

/// Merges a guest's metadata into the file's: its event formats
/// ([`merge_remapped`]), its kernel symbols and printk formats (moved to a window
/// of their own, see [`super::guestsym`]) and the process names of pids the host's
/// table lacks.
pub fn merge_guest(host: &mut Metadata, guest: &Metadata) -> GuestMerge {
    let (ids, lost) = merge_remapped(host, guest);
    let cmdline_clashes = merge_cmdlines(host, guest);
    let symbols = merge_symbols(
        &mut host.kallsyms,
        &mut host.printk_formats,
        &guest.kallsyms,
        &guest.printk_formats,
    );
    let mut pointers = HashMap::new();
    if symbols.is_some() {
        let all = guest
            .ftrace_formats
            .iter()
            .chain(guest.systems.iter().flat_map(|(_, f)| f.iter()));
        for f in all {
            let Some((_, id)) = format_name_id(f) else {
                continue;
            };
            let fields = pointer_fields(f);
            if let (Ok(id), false) = (u16::try_from(id), fields.is_empty()) {
                pointers.insert(id, fields);
            }
        }
    }
    GuestMerge {
        rewrite: GuestRewrite {
            ids,
            pointers,
            symbols,
        },
        lost,
        cmdline_clashes,
    }
}

/// Rewrites every data record of a file of whole ring-buffer pages (a guest's
/// per-CPU data) as `rw` says: moved event IDs, and kernel addresses moved into the
/// guest's symbol window. Only records of events with such a change are touched.
/// Returns the records changed.
pub fn rewrite_guest_file(
    path: &Path,
    page_size: usize,
    header_page: &[u8],
    header_event: &[u8],
    rw: &GuestRewrite,
) -> Result<u64, OutputError> {
    let pl = PageLayout::parse(header_page)
        .ok_or_else(|| OutputError::Invalid("the guest's header_page is unreadable".into()))?;
    let el = EventLayout::parse(header_event)
        .ok_or_else(|| OutputError::Invalid("the guest's header_event is unreadable".into()))?;
    if rw.is_empty() || page_size == 0 {
        return Ok(0);
    }
    let io = |source| OutputError::Rewrite {
        path: path.to_path_buf(),
        source,
    };
    let mut changed = 0u64;
    rewrite_file_pages(path, page_size, |page| {
        let mut at = Vec::new();
        let base = page.as_ptr() as usize;
        // A page that cannot be walked is left as it is (report names it).
        let _ = walk_page(page, &pl, &el, false, |r| {
            let o = r.payload.as_ptr() as usize - base;
            at.push((o, o + r.payload.len()));
        });
        for (o, end) in at {
            if o + 2 > end || end > page.len() {
                continue;
            }
            let id = u16::from_le_bytes([page[o], page[o + 1]]);
            let mut hit = false;
            if let (Some(fields), Some(shift)) = (rw.pointers.get(&id), &rw.symbols) {
                hit |= shift_payload(&mut page[o..end], fields, shift);
            }
            if let Some(new) = rw.ids.get(&id) {
                page[o..o + 2].copy_from_slice(&new.to_le_bytes());
                hit = true;
            }
            changed += u64::from(hit);
        }
    })
    .map_err(io)?;
    Ok(changed)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Small metadata with one ftrace and one sched event.
    pub(crate) fn sample() -> Metadata {
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
    fn clashing_guest_events_move_to_free_ids() {
        let mut host = sample();
        let mut guest = sample();
        // Same event, same ID and text: shared. Another kernel's sched_wakeup at
        // 300 (taken by the host's sched_switch): moved. A free ID: kept.
        guest.systems[0]
            .1
            .push(b"name: sched_wakeup\nID: 300\nformat:x\n".to_vec());
        guest.systems[0].1.remove(0);
        guest.systems[0]
            .1
            .push(b"name: sched_switch\nID: 300\n".to_vec());
        guest.systems.push((
            "irq".into(),
            vec![b"name: irq_handler_entry\nID: 9\n".to_vec()],
        ));
        let (map, lost) = merge_remapped(&mut host, &guest);
        assert_eq!(lost, 0);
        assert_eq!(map, IdMap::from([(300, 301)]));
        let ids: Vec<(String, u32)> = host
            .systems
            .iter()
            .flat_map(|(_, f)| f.iter())
            .filter_map(|f| format_name_id(f))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("sched_switch".into(), 300),
                ("sched_wakeup".into(), 301),
                ("irq_handler_entry".into(), 9)
            ]
        );
        assert!(String::from_utf8_lossy(&host.systems[0].1[1]).contains("format:x"));
    }

    #[test]
    fn guest_names_join_for_pids_the_host_lacks() {
        let mut host = sample();
        let mut guest = sample();
        guest.cmdlines = b"1 guest-init\n77 guest-sh\n".to_vec();
        let m = merge_guest(&mut host, &guest);
        assert_eq!(m.cmdline_clashes, 1);
        assert_eq!(host.cmdlines, b"1 init\n77 guest-sh\n");
    }

    const HEADER_PAGE: &[u8] = b"\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;\n\tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;\n\tfield: char data;\toffset:16;\tsize:4080;\tsigned:1;\n";

    #[test]
    fn ids_are_rewritten_in_the_pages() {
        // Two pages, each: one 8-byte record (type_len 2) with event id 300, then
        // one with id 7.
        let mut data = Vec::new();
        for _ in 0..2 {
            let mut page = vec![0u8; 4096];
            page[8..16].copy_from_slice(&24u64.to_le_bytes());
            for (i, id) in [300u16, 7].into_iter().enumerate() {
                let o = 16 + i * 12;
                page[o..o + 4].copy_from_slice(&(2u32 | (5 << 5)).to_le_bytes());
                page[o + 4..o + 6].copy_from_slice(&id.to_le_bytes());
            }
            data.extend_from_slice(&page);
        }
        let path = std::env::temp_dir().join(format!("tcrs-remap-{}", std::process::id()));
        std::fs::write(&path, &data).unwrap();
        let rw = GuestRewrite {
            ids: IdMap::from([(300, 301)]),
            ..GuestRewrite::default()
        };
        let n = rewrite_guest_file(&path, 4096, HEADER_PAGE, b"", &rw).unwrap();
        let out = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(n, 2);
        for p in 0..2 {
            let o = p * 4096 + 20;
            assert_eq!(u16::from_le_bytes([out[o], out[o + 1]]), 301);
            assert_eq!(u16::from_le_bytes([out[o + 12], out[o + 13]]), 7);
        }
        let mut expect = data.clone();
        for p in 0..2 {
            expect[p * 4096 + 20..p * 4096 + 22].copy_from_slice(&301u16.to_le_bytes());
        }
        assert_eq!(out, expect, "only the IDs changed");
    }
}
