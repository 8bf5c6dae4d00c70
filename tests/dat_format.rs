//! Byte-level tests of the trace.dat v6 writer and the reader, with synthetic
//! inputs (no tracefs needed): golden bytes, round trips, page walking, and
//! never-panic over random and truncated files, for the whole reader and for the
//! v6 metadata parser every caller shares.

use std::path::PathBuf;

use testkit::dat::{metadata_with_formats, HEADER_EVENT, HEADER_PAGE};
use testkit::{Rng, TempDir};
use tracecmd_rs::output::layout::{count_events, walk_page, EventLayout, PageError, PageLayout};
use tracecmd_rs::output::metadata::{trace_clock_of, Parts, V6Metadata};
use tracecmd_rs::output::reader::{DatError, InitialHeader, TraceDat};
use tracecmd_rs::output::{
    attach_cpu_data, bracketed_clock, option_id, write_options_block, write_trace_dat, BufferData,
    DatOption, Metadata, ReadAt, MAGIC,
};

/// Builds a page with `records` (raw record bytes) after the 16-byte header.
fn page(ts: u64, records: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 4096];
    p[..8].copy_from_slice(&ts.to_le_bytes());
    p[8..16].copy_from_slice(&(records.len() as u64).to_le_bytes());
    p[16..16 + records.len()].copy_from_slice(records);
    p
}

fn small_event(delta: u32, words: u32) -> Vec<u8> {
    let mut v = ((delta << 5) | words).to_le_bytes().to_vec();
    v.extend((0..words * 4).map(|i| i as u8));
    v
}

fn layouts() -> (PageLayout, EventLayout) {
    (
        PageLayout::parse(HEADER_PAGE.as_bytes()).unwrap(),
        EventLayout::parse(HEADER_EVENT.as_bytes()).unwrap(),
    )
}

#[test]
fn layouts_parse_kernel_text() {
    let (pl, el) = layouts();
    assert_eq!(pl.timestamp, (0, 8));
    assert_eq!(pl.commit, (8, 8));
    assert_eq!(pl.data, (16, 4080));
    assert_eq!(pl.sub_buffer_size(), 4096);
    assert_eq!(el, EventLayout::default());
    assert!(PageLayout::parse(b"garbage").is_none());
    assert!(EventLayout::parse(b"type_len : 5 bits\ntime_delta : 20 bits\n").is_none());
}

#[test]
fn metadata_golden_bytes() {
    let b = metadata_with_formats().to_bytes().unwrap();
    let mut want = Vec::new();
    want.extend_from_slice(b"\x17\x08\x44tracing6\0");
    want.extend_from_slice(&[0, 8, 0x00, 0x10, 0, 0]);
    want.extend_from_slice(b"header_page\0");
    want.extend_from_slice(&(HEADER_PAGE.len() as u64).to_le_bytes());
    want.extend_from_slice(HEADER_PAGE.as_bytes());
    want.extend_from_slice(b"header_event\0");
    want.extend_from_slice(&(HEADER_EVENT.len() as u64).to_le_bytes());
    want.extend_from_slice(HEADER_EVENT.as_bytes());
    want.extend_from_slice(&1u32.to_le_bytes());
    want.extend_from_slice(&18u64.to_le_bytes());
    want.extend_from_slice(b"name: print\nID: 5\n");
    want.extend_from_slice(&1u32.to_le_bytes());
    want.extend_from_slice(b"sched\0");
    want.extend_from_slice(&1u32.to_le_bytes());
    want.extend_from_slice(&27u64.to_le_bytes());
    want.extend_from_slice(b"name: sched_switch\nID: 300\n");
    want.extend_from_slice(&26u32.to_le_bytes());
    want.extend_from_slice(b"ffffffff81000000 T _stext\n");
    want.extend_from_slice(&0u32.to_le_bytes());
    want.extend_from_slice(&7u64.to_le_bytes());
    want.extend_from_slice(b"1 init\n");
    assert_eq!(b, want);
    let mut sink = Vec::new();
    assert_eq!(
        metadata_with_formats().write_to(&mut sink).unwrap(),
        want.len() as u64
    );
    assert_eq!(sink, want);
}

#[test]
fn options_block_golden_bytes() {
    let mut b = Vec::new();
    let opts = [
        DatOption::trace_clock("[local] global\n"),
        DatOption::cpu_stat(1, "entries: 3\n"),
    ];
    write_options_block(&mut b, 2, &opts).unwrap();
    let mut want = Vec::new();
    want.extend_from_slice(&2u32.to_le_bytes());
    want.extend_from_slice(b"options  \0");
    want.extend_from_slice(&[4, 0, 16, 0, 0, 0]);
    want.extend_from_slice(b"[local] global\n\0");
    want.extend_from_slice(&[2, 0, 19, 0, 0, 0]);
    want.extend_from_slice(b"CPU: 1\nentries: 3\n\0");
    want.extend_from_slice(&[0, 0]);
    assert_eq!(b, want);
    let bad = DatOption {
        id: option_id::DONE,
        data: vec![1],
    };
    assert!(write_options_block(&mut Vec::new(), 1, &[bad]).is_err());
}

/// Writes a file with two CPUs of synthetic pages and a named buffer, reads it back.
fn synthetic_file(t: &TempDir) -> (PathBuf, Vec<u8>) {
    let cpu0: Vec<u8> = [
        page(100, &[small_event(1, 2), small_event(2, 3)].concat()),
        page(200, &small_event(1, 1)),
    ]
    .concat();
    let cpu1 = page(300, &[]);
    let g0 = page(
        400,
        &[small_event(5, 4), small_event(5, 4), small_event(5, 4)].concat(),
    );
    let paths: Vec<PathBuf> = ["c0", "c1", "g0"].iter().map(|n| t.join(n)).collect();
    std::fs::write(&paths[0], &cpu0).unwrap();
    std::fs::write(&paths[1], &cpu1).unwrap();
    std::fs::write(&paths[2], &g0).unwrap();
    let top = BufferData {
        name: String::new(),
        trailing_clock: Some(bracketed_clock("local")),
        cpu_files: vec![Some(paths[0].clone()), Some(paths[1].clone())],
    };
    let guest = BufferData {
        name: "guest".into(),
        trailing_clock: Some(bracketed_clock("local")),
        cpu_files: vec![None, Some(paths[2].clone())],
    };
    let opts = [
        DatOption::trace_clock("[local] global\n"),
        DatOption::uname("Linux h 6.0 x86_64"),
        DatOption::version("0.1.0 tracecmd-rs"),
    ];
    let file = t.join("t.dat");
    let ranges =
        write_trace_dat(&file, &metadata_with_formats(), 2, &opts, &top, &[guest]).unwrap();
    assert_eq!(ranges.len(), 2);
    for r in ranges.iter().flatten() {
        assert_eq!(r.offset % 4096, 0);
    }
    assert_eq!(ranges[0][0].size, 8192);
    assert_eq!(ranges[1][0].size, 0);
    assert_eq!(ranges[1][1].size, 4096);
    let bytes = std::fs::read(&file).unwrap();
    (file, bytes)
}

#[test]
fn write_then_read_round_trip() {
    let t = TempDir::new("rt");
    let (_, bytes) = synthetic_file(&t);
    let d = TraceDat::parse(&bytes).unwrap();
    assert_eq!(
        (d.version, d.big_endian, d.long_size, d.page_size),
        (6, false, 8, 4096)
    );
    assert_eq!(&bytes[d.header_page.clone()], HEADER_PAGE.as_bytes());
    assert_eq!(&bytes[d.header_event.clone()], HEADER_EVENT.as_bytes());
    assert_eq!(d.ftrace_formats.len(), 1);
    assert_eq!(d.systems.len(), 1);
    assert_eq!(d.systems[0].0, "sched");
    assert_eq!(&bytes[d.cmdlines.clone()], b"1 init\n");
    assert_eq!(d.cpus, 2);
    let ids: Vec<u16> = d.options.iter().map(|o| o.id).collect();
    assert_eq!(ids, [4, 5, 9, 3]);
    assert_eq!(d.data_kind, "flyrecord");
    assert_eq!(d.buffers.len(), 2);
    assert_eq!(d.buffers[0].clock.as_deref(), Some("local"));
    assert_eq!(d.buffers[1].name, "guest");
    assert_eq!(d.count_events(&bytes, 0).unwrap(), vec![3, 0]);
    assert_eq!(d.count_events(&bytes, 1).unwrap(), vec![0, 3]);
    let uname: Vec<&[u8]> = d.options_with(&bytes, option_id::UNAME).collect();
    assert_eq!(uname, [&b"Linux h 6.0 x86_64\0"[..]]);
}

#[test]
fn page_walk_record_kinds() {
    let (pl, el) = layouts();
    let mut recs = Vec::new();
    // time extend: type 30, delta low bits 1, array 1 → +((1 << 27) | 1)
    recs.extend_from_slice(&((1u32 << 5) | 30).to_le_bytes());
    recs.extend_from_slice(&1u32.to_le_bytes());
    // long event (type_len 0): array[0] = 4 + 6 payload bytes, padded to 8
    recs.extend_from_slice(&(3u32 << 5).to_le_bytes());
    recs.extend_from_slice(&10u32.to_le_bytes());
    recs.extend_from_slice(&[9, 9, 9, 9, 9, 9, 0, 0]);
    // discarded event: padding with delta != 0; array[0] = 12 counts itself
    recs.extend_from_slice(&((1u32 << 5) | 29).to_le_bytes());
    recs.extend_from_slice(&12u32.to_le_bytes());
    recs.extend_from_slice(&[0; 8]);
    recs.extend(small_event(2, 1));
    let p = page(1000, &recs);
    let mut seen = Vec::new();
    walk_page(&p, &pl, &el, false, |r| {
        seen.push((r.ts, r.payload.to_vec()))
    })
    .unwrap();
    let base = 1000 + (1u64 << 27) + 1;
    assert_eq!(
        seen,
        vec![(base + 3, vec![9; 6]), (base + 6, vec![0, 1, 2, 3])]
    );
    // End-of-page padding (delta 0) stops the walk.
    let mut p2 = recs.clone();
    p2.splice(0..0, 29u32.to_le_bytes());
    assert_eq!(
        count_events(&page(0, &p2), 4096, &pl, &el, false).unwrap(),
        0
    );
    // Commit larger than the page.
    let mut p3 = page(0, &[]);
    p3[8..16].copy_from_slice(&5000u64.to_le_bytes());
    assert!(matches!(
        count_events(&p3, 4096, &pl, &el, false),
        Err(PageError::CommitTooLarge { .. })
    ));
    // A record that runs past the commit.
    let mut p4 = page(0, &small_event(1, 2));
    p4[8..16].copy_from_slice(&8u64.to_le_bytes());
    assert!(matches!(
        count_events(&p4, 4096, &pl, &el, false),
        Err(PageError::BadRecord { .. })
    ));
    // A short trailing page.
    assert!(count_events(&p[..100], 4096, &pl, &el, false).is_err());
}

#[test]
fn reader_rejects_bad_headers() {
    assert_eq!(TraceDat::parse(b"hello"), Err(DatError::BadMagic));
    assert!(matches!(
        TraceDat::parse(b"\x17\x08\x44tracing9\0\0\x08\0\x10\0\0"),
        Err(DatError::Version(v)) if v == "9"
    ));
    let mut b = metadata_with_formats().to_bytes().unwrap();
    b[12] = 7; // endian byte
    assert!(matches!(
        TraceDat::parse(&b),
        Err(DatError::Malformed { .. })
    ));
}

#[test]
fn reader_recognises_v7_options() {
    // header, "none" compression, options at 0x30
    let mut b = Vec::new();
    b.extend_from_slice(b"\x17\x08\x44tracing7\0\0\x08\0\x10\0\0none\0\0");
    let opt_at = b.len() as u64 + 8;
    b.extend_from_slice(&opt_at.to_le_bytes());
    let mut body = Vec::new();
    body.extend_from_slice(&[4, 0, 9, 0, 0, 0]);
    body.extend_from_slice(b"[local]\n\0");
    body.extend_from_slice(&[8, 0, 4, 0, 0, 0, 2, 0, 0, 0]);
    // BUFFER: section 0, "", "local", page 4096, 1 cpu: (1, 0x2000, 0)
    let mut buf = Vec::new();
    buf.extend_from_slice(&0u64.to_le_bytes());
    buf.extend_from_slice(b"\0local\0");
    buf.extend_from_slice(&4096u32.to_le_bytes());
    buf.extend_from_slice(&1u32.to_le_bytes());
    buf.extend_from_slice(&1u32.to_le_bytes());
    buf.extend_from_slice(&0x2000u64.to_le_bytes());
    buf.extend_from_slice(&0u64.to_le_bytes());
    body.extend_from_slice(&3u16.to_le_bytes());
    body.extend_from_slice(&(buf.len() as u32).to_le_bytes());
    body.extend_from_slice(&buf);
    body.extend_from_slice(&[0, 0, 8, 0, 0, 0]);
    body.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    b.extend_from_slice(&(body.len() as u64).to_le_bytes());
    b.extend_from_slice(&body);
    let d = TraceDat::parse(&b).unwrap();
    assert_eq!(d.version, 7);
    assert_eq!(d.compression, Some(("none".into(), "".into())));
    assert_eq!(d.cpus, 2);
    assert_eq!(
        d.options.iter().map(|o| o.id).collect::<Vec<_>>(),
        [4, 8, 3]
    );
    assert_eq!(d.buffers.len(), 1);
    assert_eq!(d.buffers[0].cpu_data, vec![(0, 0), (0x2000, 0)]);
    // A loop in the options chain is an error, not a hang.
    let mut looped = b.clone();
    let n = looped.len();
    looped[n - 8..].copy_from_slice(&opt_at.to_le_bytes());
    assert!(TraceDat::parse(&looped).is_err());
}

#[test]
fn reader_never_panics_on_random_or_truncated_input() {
    let t = TempDir::new("fuzz");
    let (_, good) = synthetic_file(&t);
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let check = |b: &[u8]| {
        if let Ok(d) = TraceDat::parse(b) {
            for i in 0..d.buffers.len() {
                let _ = d.count_events(b, i);
            }
        }
    };
    // Every truncation of the file.
    for n in (0..good.len()).step_by(7) {
        check(&good[..n]);
    }
    // Random byte flips in the metadata, tables and pages.
    for _ in 0..3000 {
        let mut b = good.clone();
        for _ in 0..1 + rng.below(8) {
            let i = rng.below(b.len());
            b[i] = rng.next() as u8;
        }
        check(&b);
    }
    // Pure noise behind a valid magic and version.
    for _ in 0..2000 {
        let len = rng.below(600);
        let mut b = b"\x17\x08\x44tracing6\0".to_vec();
        if rng.below(2) == 0 {
            b = b"\x17\x08\x44tracing7\0".to_vec();
        }
        b.extend((0..len).map(|_| rng.next() as u8));
        check(&b);
    }
    // Random pages for the walker.
    let (pl, el) = layouts();
    for _ in 0..3000 {
        let mut p: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
        let commit = rng.below(4200) as u64;
        p[8..16].copy_from_slice(&commit.to_le_bytes());
        let _ = count_events(&p, 4096, &pl, &el, rng.below(2) == 0);
    }
}

#[test]
fn initial_header_and_listener_style_trailing_clock() {
    let m = metadata_with_formats().to_bytes().unwrap();
    let h = InitialHeader::parse(&m[..18]).unwrap();
    assert_eq!(
        (h.version, h.big_endian, h.long_size, h.page_size, h.len),
        (6, false, 8, 4096, 18)
    );
    assert!(InitialHeader::parse(&m[..17]).is_err());
    // A virt-server listener writes its whole trace_clock file as the trailing clock.
    let t = TempDir::new("clock");
    let file = t.join("c.dat");
    let top = BufferData {
        name: String::new(),
        trailing_clock: Some(b"[global] local counter\n".to_vec()),
        cpu_files: vec![],
    };
    let opts = [DatOption::trace_clock("[global] local counter\n")];
    write_trace_dat(&file, &metadata_with_formats(), 1, &opts, &top, &[]).unwrap();
    let b = std::fs::read(&file).unwrap();
    let d = TraceDat::parse(&b).unwrap();
    assert_eq!(d.buffers[0].clock.as_deref(), Some("global"));
    assert_eq!(d.buffers[0].cpu_data.len(), 1);
    assert_eq!(d.buffers[0].cpu_data[0].1, 0);
    assert_eq!(d.buffers[0].cpu_data[0].0 % 4096, 0);
    assert_eq!(
        b.len() as u64,
        d.buffers[0].cpu_data[0].0,
        "file ends at the aligned offset"
    );
    // More buffers than the declared CPU count is refused.
    let wide = BufferData {
        cpu_files: vec![None, None],
        ..top
    };
    assert!(write_trace_dat(&file, &metadata_with_formats(), 1, &opts, &wide, &[]).is_err());
}

#[test]
fn listener_attach_golden_bytes() {
    // What a V1/V2 listener appends to streamed metadata (wire spec §3.2): CPU
    // count, an empty options block, flyrecord, the table, its own trace_clock
    // file as {u64 size, contents}, then page-aligned CPU data.
    let t = TempDir::new("listener");
    let cpu0 = t.join("trace.cpu0");
    let page0 = page(42, &small_event(1, 1));
    std::fs::write(&cpu0, &page0).unwrap();
    let file = t.join("trace.dat");
    let meta_bytes = metadata_with_formats().to_bytes().unwrap();
    std::fs::write(&file, &meta_bytes).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)
        .unwrap();
    let clock = b"[local] global\n".to_vec();
    let top = BufferData {
        name: String::new(),
        trailing_clock: Some(clock.clone()),
        cpu_files: vec![Some(cpu0)],
    };
    let ranges = attach_cpu_data(&mut f, 1, &[], &top, &[], 4096).unwrap();
    drop(f);
    let b = std::fs::read(&file).unwrap();
    let m = meta_bytes.len();
    let mut want = Vec::new();
    want.extend_from_slice(&1u32.to_le_bytes());
    want.extend_from_slice(b"options  \0\0\0flyrecord\0");
    let data_at = (m + want.len() + 16 + 8 + clock.len()).div_ceil(4096) * 4096;
    want.extend_from_slice(&(data_at as u64).to_le_bytes());
    want.extend_from_slice(&4096u64.to_le_bytes());
    want.extend_from_slice(&(clock.len() as u64).to_le_bytes());
    want.extend_from_slice(&clock);
    want.resize(data_at - m, 0);
    want.extend_from_slice(&page0);
    assert_eq!(&b[..m], &meta_bytes[..]);
    assert_eq!(&b[m..], &want[..]);
    assert_eq!(ranges[0][0].offset, data_at as u64);
}

/// v6 metadata, CPU count and options (TRACECLOCK last), as a V3 client streams
/// it; and where the metadata ends.
fn streamed() -> (Vec<u8>, usize) {
    let mut b = metadata_with_formats().to_bytes().unwrap();
    let meta_len = b.len();
    let opts = [
        DatOption::uname("Linux host 6.1 x86_64"),
        DatOption::trace_clock("local [global] counter\n"),
    ];
    write_options_block(&mut b, 3, &opts).unwrap();
    (b, meta_len)
}

/// Everything the shared parser says about `src`, for comparing inputs.
fn parse_all(src: &(impl ReadAt + ?Sized)) -> String {
    let Ok(m) = V6Metadata::parse(src) else {
        return format!("{:?}", V6Metadata::parse(src));
    };
    let options = m.options(src).map(|o| (o.cpus, o.collect::<Vec<_>>()));
    format!("{m:?} {options:?} {:?}", trace_clock_of(src))
}

/// Checks what the shared parser found in `b` lies inside it, in file order.
fn check_ranges(b: &[u8]) {
    let Ok(m) = V6Metadata::parse(b) else {
        return;
    };
    let len = b.len() as u64;
    let mut ranges = vec![m.header_page.clone(), m.header_event.clone()];
    ranges.extend(m.ftrace_formats.iter().cloned());
    ranges.extend(m.systems.iter().flat_map(|(_, l)| l.iter().cloned()));
    ranges.extend([
        m.kallsyms.clone(),
        m.printk_formats.clone(),
        m.cmdlines.clone(),
    ]);
    let mut at = m.header.len as u64;
    for r in ranges {
        assert!(
            at <= r.start && r.start <= r.end && r.end <= m.end,
            "{r:?} in {m:?}"
        );
        at = r.end;
    }
    assert!(m.end <= len);
    if let Ok(mut opts) = m.options(b) {
        let mut at = m.end + 4;
        for o in opts.by_ref() {
            let Ok(o) = o else { break };
            assert!(at <= o.at && o.at + 6 == o.data.start && o.data.end <= len);
            at = o.data.end;
        }
        assert!(opts.position() <= len);
    }
}

#[test]
fn metadata_parser_on_every_truncation() {
    let (b, meta_len) = streamed();
    let t = TempDir::new("cut");
    let path = t.join("m.dat");
    for n in 0..=b.len() {
        let p = &b[..n];
        let m = V6Metadata::parse(p);
        assert_eq!(m.is_ok(), n >= meta_len, "cut at {n}: {m:?}");
        if let Ok(m) = &m {
            assert_eq!(m.end, meta_len as u64);
        } else if n >= MAGIC.len() + 2 {
            assert!(
                matches!(m, Err(DatError::Truncated { .. })),
                "cut at {n}: {m:?}"
            );
        }
        assert_eq!(Metadata::parse(p).is_ok(), n == meta_len, "cut at {n}");
        // The clock is there once its option is whole (DONE follows it).
        assert_eq!(
            trace_clock_of(p).as_deref(),
            (n + 2 >= b.len()).then_some("global"),
            "cut at {n}"
        );
        check_ranges(p);
        // A file read in place, as the listener does, gives the same answers.
        if n % 5 == 0 || n + 2 >= b.len() {
            std::fs::write(&path, p).unwrap();
            let f = std::fs::File::open(&path).unwrap();
            assert_eq!(parse_all(&f), parse_all(p), "cut at {n}");
        }
    }
    assert_eq!(
        Metadata::parse(&b[..meta_len]).unwrap(),
        metadata_with_formats()
    );
}

#[test]
fn metadata_parser_on_random_input() {
    let (good, _) = streamed();
    let t = TempDir::new("rand");
    let path = t.join("m.dat");
    let mut rng = Rng::new(0x2545_f491_4f6c_dd1d);
    let mut parsed = 0;
    for i in 0..3000 {
        let mut b = good.clone();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(b.len());
            b[at] = rng.next() as u8;
        }
        check_ranges(&b);
        let _ = Metadata::parse(&b);
        parsed += usize::from(V6Metadata::parse(&b[..]).is_ok());
        if i % 15 == 0 {
            std::fs::write(&path, &b).unwrap();
            let f = std::fs::File::open(&path).unwrap();
            assert_eq!(parse_all(&f), parse_all(&b[..]), "case {i}");
        }
    }
    assert!(parsed > 300, "only {parsed} mutated inputs parsed");
    // Noise behind a valid magic and version.
    for _ in 0..3000 {
        let mut b = b"\x17\x08\x44tracing6\0".to_vec();
        b.extend((0..rng.below(400)).map(|_| rng.next() as u8));
        check_ranges(&b);
        let _ = trace_clock_of(&b[..]);
        assert!(Metadata::parse(&b).is_err() || V6Metadata::parse(&b[..]).is_ok());
    }
}

#[test]
fn metadata_parser_checks_sizes_before_using_them() {
    let good = metadata_with_formats().to_bytes().unwrap();
    let hp_size_at = 18 + b"header_page\0".len();
    // A header_page of 2^64 - 1 bytes: refused by the size, nothing read.
    let mut b = good.clone();
    b[hp_size_at..hp_size_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        V6Metadata::parse(&b[..]),
        Err(DatError::Truncated { need: u64::MAX, .. })
    ));
    // 2^32 - 1 ftrace formats in a short input: an error at the first missing one.
    let count_at = good.len() - (4 + 26 + 4 + 8 + 7) - (4 + 6 + 4 + 8 + 27) - (4 + 8 + 18);
    assert_eq!(&good[count_at..count_at + 4], &1u32.to_le_bytes());
    let mut b = good[..count_at].to_vec();
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    b.extend_from_slice(&[0; 64]);
    let e = V6Metadata::parse(&b[..]).unwrap_err();
    assert!(e.to_string().contains("ftrace format size"), "{e}");
    // A system name without a NUL for longer than any directory name.
    let mut b = good[..count_at].to_vec();
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend(std::iter::repeat(b'x').take(10_000));
    let e = V6Metadata::parse(&b[..]).unwrap_err();
    assert!(matches!(e, DatError::Malformed { .. }), "{e}");
}

/// `m` encoded big-endian, as a big-endian machine writes it.
fn big_endian(m: &Metadata) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(b"6\0\x01");
    b.push(m.long_size);
    b.extend_from_slice(&m.page_size.to_be_bytes());
    let blob64 = |b: &mut Vec<u8>, d: &[u8]| {
        b.extend_from_slice(&(d.len() as u64).to_be_bytes());
        b.extend_from_slice(d);
    };
    b.extend_from_slice(b"header_page\0");
    blob64(&mut b, &m.header_page);
    b.extend_from_slice(b"header_event\0");
    blob64(&mut b, &m.header_event);
    b.extend_from_slice(&(m.ftrace_formats.len() as u32).to_be_bytes());
    m.ftrace_formats.iter().for_each(|f| blob64(&mut b, f));
    b.extend_from_slice(&(m.systems.len() as u32).to_be_bytes());
    for (name, list) in &m.systems {
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        b.extend_from_slice(&(list.len() as u32).to_be_bytes());
        list.iter().for_each(|f| blob64(&mut b, f));
    }
    for d in [&m.kallsyms, &m.printk_formats] {
        b.extend_from_slice(&(d.len() as u32).to_be_bytes());
        b.extend_from_slice(d);
    }
    blob64(&mut b, &m.cmdlines);
    b
}

#[test]
fn big_endian_metadata_has_the_same_sections() {
    let le = metadata_with_formats().to_bytes().unwrap();
    let be = big_endian(&metadata_with_formats());
    assert_eq!(be.len(), le.len());
    let (l, b) = (
        V6Metadata::parse(&le[..]).unwrap(),
        V6Metadata::parse(&be[..]).unwrap(),
    );
    assert!(b.header.big_endian && !l.header.big_endian);
    assert_eq!(b.header.page_size, 4096);
    assert_eq!(
        (&b.header_page, &b.systems, &b.cmdlines, b.end),
        (&l.header_page, &l.systems, &l.cmdlines, l.end)
    );
    // Metadata is written little-endian only, so it refuses to hold this.
    let e = Metadata::parse(&be).unwrap_err();
    assert!(e.to_string().contains("big-endian"), "{e}");
}

#[test]
fn parts_read_a_section_body_alone() {
    // A v7 EVENT_FORMATS section body is the v6 part on its own (doc §4.2).
    let m = metadata_with_formats();
    let mut body = Vec::new();
    body.extend_from_slice(&2u32.to_le_bytes());
    for (name, list) in [("sched", &m.systems[0].1), ("empty", &Vec::new())] {
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for f in list {
            body.extend_from_slice(&(f.len() as u64).to_le_bytes());
            body.extend_from_slice(f);
        }
    }
    let mut p = Parts::new(&body[..], 0, false);
    let systems = p.event_formats().unwrap();
    assert_eq!(p.position(), body.len() as u64);
    let names: Vec<&str> = systems.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["sched", "empty"]);
    let r = systems[0].1[0].clone();
    assert_eq!(
        &body[r.start as usize..r.end as usize],
        &m.systems[0].1[0][..]
    );
    // Cut anywhere, it is an error, never a shorter list.
    for n in 0..body.len() {
        assert!(
            Parts::new(&body[..n], 0, false).event_formats().is_err(),
            "cut at {n}"
        );
    }
}
