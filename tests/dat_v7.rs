//! trace.dat version 7 files written from real kernel recordings on private tracefs
//! instances, compressed with zstd or not, read back by our reader and by Debian's
//! `trace-cmd report` (no warnings, per-CPU counts equal to the kernel's entries).
//! Also: compression while recording (pages through the per-CPU sink, one at a
//! time, in bursts, and from the real recorder) and a full disk. Needs root,
//! tracefs and /usr/bin/trace-cmd (3.1.6).

use std::path::{Path, PathBuf};
use std::time::Duration;

use testkit::debian::report;
use testkit::kernel::{record, Recording};
use testkit::TempDir;
use tracecmd_rs::output::reader::TraceDat;
use tracecmd_rs::output::{
    bracketed_clock, standard_options, v7read, write_trace_dat, write_trace_dat_v7, BufferData,
    Compression, DatOption, Metadata, V7Writer,
};
use tracecmd_rs::recorder::{CpuRecorder, Input, Output, RecordFlags};
use tracecmd_rs::tracefs::{self, Instance, TracefsState};

const BOTH: [Compression; 2] = [Compression::Zstd, Compression::None];

fn workload(inst: &Instance) {
    testkit::kernel::workload(inst, 400);
}

/// A recording of sched events and markers on a private instance, and its metadata.
fn recorded(tag: &str) -> (TempDir, Recording, Metadata, u32) {
    let inst = testkit::instance(tag);
    let dir = TempDir::new(tag);
    let rec = record(&inst, &["sched"], dir.path(), "rec", workload);
    let meta = Metadata::from_tracefs(&inst, &rec.events).unwrap();
    let cpus = rec.cpu_files.len() as u32;
    (dir, rec, meta, cpus)
}

/// Options of a recording of `buffers` (top first if any), as `record` writes them.
fn options(clock_text: &str, buffers: &[(&str, &Recording)]) -> Vec<DatOption> {
    let mut o = standard_options(clock_text, &[]);
    for (name, rec) in buffers {
        if !name.is_empty() {
            o.push(DatOption::buffer_stat_header(name));
        }
        o.extend(
            rec.stats_texts()
                .iter()
                .enumerate()
                .map(|(i, s)| DatOption::cpu_stat(i, s)),
        );
    }
    o
}

/// Checks a v7 file: header, our reader's counts and report's counts against the
/// kernel's, per buffer in file order.
fn check_v7(file: &Path, compression: Compression, expected: &[(&str, Vec<u64>)]) {
    let bytes = std::fs::read(file).unwrap();
    let dat = TraceDat::parse(&bytes).expect("our reader parses the file");
    assert_eq!(dat.version, 7);
    let cname = dat.compression.as_ref().map(|(n, _)| n.as_str());
    assert_eq!(cname, Some(compression.header_strings().0));
    let names: Vec<&str> = dat.buffers.iter().map(|b| b.name.as_str()).collect();
    let want_names: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, want_names);
    for b in &dat.buffers {
        assert_eq!(b.clock.as_deref(), Some("local"));
    }
    testkit::kernel::assert_counts(file, expected, |i| {
        v7read::count_events(&bytes, &dat, i).expect("count events")
    });
}

#[test]
fn top_buffer_zstd_and_none() {
    let (dir, rec, meta, cpus) = recorded("v7top");
    for c in BOTH {
        let file = dir.path().join(format!("{c:?}.dat"));
        let ranges = write_trace_dat_v7(
            &file,
            &meta,
            cpus,
            &options(&rec.clock_text, &[("", &rec)]),
            &[rec.buffer("")],
            c,
        )
        .unwrap();
        for r in &ranges[0] {
            assert_eq!(r.offset % u64::from(meta.page_size), 0, "not page aligned");
        }
        check_v7(&file, c, &[("", rec.entries())]);
        let bytes = std::fs::read(&file).unwrap();
        let dat = TraceDat::parse(&bytes).unwrap();
        assert_eq!(dat.cpus, cpus, "CPUCOUNT");
        let stats = dat.options_with(&bytes, tracecmd_rs::output::option_id::CPUSTAT);
        assert_eq!(stats.count(), cpus as usize);
        // The data is exactly the recorded pages.
        let data = v7read::cpu_data(&bytes, &dat, 0).unwrap();
        for (cpu, f) in rec.cpu_files.iter().enumerate() {
            let raw = std::fs::read(f).unwrap();
            assert_eq!(data.get(cpu).cloned().unwrap_or_default(), raw, "CPU {cpu}");
        }
    }
    let listing: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(listing.is_empty(), "temporary files left: {listing:?}");
}

#[test]
fn named_buffer_alone_and_with_top() {
    let dir = TempDir::new("v7named");
    let (rec_top, rec_guest, meta) = testkit::kernel::top_and_guest(dir.path());
    let guest_entries = rec_guest.entries();
    let cpus = rec_top.cpu_files.len() as u32;
    let guest_buf = BufferData {
        cpu_files: vec![Some(rec_guest.cpu_files[0].clone())],
        ..rec_guest.buffer("guest")
    };
    for c in BOTH {
        // record -B guest: only the instance.
        let file = dir.path().join(format!("b-{c:?}.dat"));
        let mut w = V7Writer::new(&file, meta.page_size, c).unwrap();
        w.cpu_file("guest", 0, &rec_guest.cpu_files[0]).unwrap();
        w.finish(
            &meta,
            cpus,
            &options(&rec_top.clock_text, &[("guest", &rec_guest)]),
        )
        .unwrap();
        check_v7(&file, c, &[("guest", guest_entries.clone())]);
        // record -B guest -a / -A: top and the instance.
        let file = dir.path().join(format!("a-{c:?}.dat"));
        write_trace_dat_v7(
            &file,
            &meta,
            cpus,
            &options(
                &rec_top.clock_text,
                &[("", &rec_top), ("guest", &rec_guest)],
            ),
            // Given last, the top buffer is still written first.
            &[guest_buf.clone(), rec_top.buffer("")],
            c,
        )
        .unwrap();
        check_v7(
            &file,
            c,
            &[("", rec_top.entries()), ("guest", guest_entries.clone())],
        );
        assert!(
            report(&file).stdout.contains("guest:"),
            "no guest-prefixed line"
        );
    }
}

/// Feeds `data` into `fd` in pieces of the sizes `sizes` yields (cycled).
fn feed(
    mut w: tracecmd_rs::output::BlockSink,
    data: Vec<u8>,
    sizes: Vec<usize>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rest = &data[..];
        for n in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let k = (*n).min(rest.len());
            w.write_all(&rest[..k]).expect("feed the sink");
            rest = &rest[k..];
            std::thread::yield_now();
        }
    })
}

#[test]
fn sink_fed_page_by_page_and_in_bursts() {
    let top = testkit::instance("v7sinktop");
    let guest = testkit::instance("v7sinkguest");
    let dir = TempDir::new("v7sink");
    let rec_top = record(&top, &["sched"], dir.path(), "top", |i| {
        testkit::tracefs::markers_on_cpu(i, 0, 3000);
        workload(i)
    });
    let rec_guest = record(&guest, &[], dir.path(), "guest", workload);
    let meta = Metadata::from_tracefs(&top, &rec_top.events).unwrap();
    let page = meta.page_size as usize;
    let cpus = rec_top.cpu_files.len() as u32;
    assert!(
        std::fs::metadata(&rec_top.cpu_files[0]).unwrap().len() > 10 * page as u64,
        "wanted more than one chunk"
    );
    for c in BOTH {
        let file = dir.path().join(format!("{c:?}.dat"));
        let mut w = V7Writer::new(&file, meta.page_size, c).unwrap();
        let mut feeders = Vec::new();
        for (name, rec) in [("", &rec_top), ("guest", &rec_guest)] {
            for (cpu, f) in rec.cpu_files.iter().enumerate() {
                let data = std::fs::read(f).unwrap();
                // One page at a time; bursts of 3, 17 and 1 pages; a page and a half.
                let sizes = match cpu % 3 {
                    0 => vec![page],
                    1 => vec![3 * page, 17 * page, page],
                    _ => vec![page + page / 2],
                };
                feeders.push(feed(w.cpu_sink(name, cpu).unwrap(), data, sizes));
            }
        }
        for f in feeders {
            f.join().unwrap();
        }
        w.finish(
            &meta,
            cpus,
            &options(
                &rec_top.clock_text,
                &[("", &rec_top), ("guest", &rec_guest)],
            ),
        )
        .unwrap();
        check_v7(
            &file,
            c,
            &[("", rec_top.entries()), ("guest", rec_guest.entries())],
        );
    }
}

/// What a live recording on an instance produced.
struct Live {
    /// What each recorder's `record` + `finish` returned.
    results: Vec<Result<(), String>>,
    stats: Vec<String>,
    clock_text: String,
    meta: Metadata,
}

/// Records `events` of `inst` with the real per-CPU recorder into the outputs
/// `output(cpu)` gives while `workload` runs; stops tracing, reads the stats, stops
/// and finishes the recorders, and restores the instance.
fn record_live(
    inst: &Instance,
    events: &[&str],
    mut output: impl FnMut(usize) -> Output,
    workload: impl FnOnce(),
) -> Live {
    let cpus = tracefs::cpu_count(inst).unwrap();
    let mut state = TracefsState::new(inst);
    state.set_buffer_size_kb(2048).unwrap();
    state.set_trace_clock("local").unwrap();
    let events = if events.is_empty() {
        Vec::new()
    } else {
        inst.resolve_events(events).unwrap()
    };
    state.enable_events(&events).unwrap();
    state.set_tracing_on(true).unwrap();
    let mut stops = Vec::new();
    let mut threads = Vec::new();
    for cpu in 0..cpus {
        let input = Input::Buffer {
            dir: inst.path().to_path_buf(),
            cpu,
        };
        let mut rec = CpuRecorder::new(input, output(cpu), RecordFlags::default()).unwrap();
        stops.push(rec.stop_handle());
        threads.push(std::thread::spawn(move || {
            rec.record(Duration::from_millis(10))
                .and_then(|_| rec.finish())
                .map_err(|e| e.to_string())
        }));
    }
    workload();
    inst.set_tracing_on(false).unwrap();
    let stats = (0..cpus)
        .map(|c| inst.cpu_stats(c).unwrap())
        .collect::<Vec<_>>();
    for s in &stops {
        s.stop();
    }
    let results = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let clock_text = inst.trace_clock_text().unwrap();
    let meta = Metadata::from_tracefs(inst, &events).unwrap();
    state.restore().unwrap();
    Live {
        results,
        stats: stats.iter().map(|s| s.text.clone()).collect(),
        clock_text,
        meta,
    }
}

/// The real per-CPU recorder writing into the sinks while markers are written:
/// compression while recording, as `record` does it.
#[test]
fn recorder_writes_into_the_sinks() {
    let inst = testkit::instance("v7live");
    let dir = TempDir::new("v7live");
    let cpus = tracefs::cpu_count(&inst).unwrap();
    let page = tracecmd_rs::output::page_size_of(&inst.header_page().unwrap());
    let file = dir.path().join("live.dat");
    let mut w = V7Writer::new(&file, page, Compression::Zstd).unwrap();
    let markers: Vec<u64> = (0..cpus).map(|c| 5000 + 100 * c as u64).collect();
    let live = record_live(
        &inst,
        &[],
        |cpu| Output::Blocks(w.cpu_sink("", cpu).unwrap()),
        || {
            for (cpu, &n) in markers.iter().enumerate() {
                testkit::tracefs::markers_on_cpu(&inst, cpu, n as usize);
            }
        },
    );
    for r in &live.results {
        assert_eq!(r, &Ok(()), "a recorder failed");
    }
    // Prepared with other cmdlines than the final metadata has: those are
    // compressed again at the end, the rest is used as prepared.
    let mut early = live.meta.clone();
    early.cmdlines = b"1 early\n".to_vec();
    w.prepare_metadata(&early).unwrap();
    w.finish(
        &live.meta,
        cpus as u32,
        &standard_options(&live.clock_text, &live.stats),
    )
    .unwrap();
    check_v7(&file, Compression::Zstd, &[("", markers)]);
}

/// A tmpfs of `kb` KiB mounted on a fresh directory; unmounted on drop.
struct TinyFs(PathBuf);

impl TinyFs {
    fn mount(tag: &str, kb: u32) -> TinyFs {
        let p = std::env::temp_dir().join(format!("tcrs-tiny-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kb}k"), "tcrs-tiny"])
            .arg(&p)
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "cannot mount a tmpfs on {} (needs root)",
            p.display()
        );
        TinyFs(p)
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn entries_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn full_disk_leaves_no_file_that_looks_complete() {
    let (_dir, rec, meta, cpus) = recorded("v7full");
    let opts = options(&rec.clock_text, &[("", &rec)]);
    // The full file (kallsyms alone is megabytes) does not fit in 256 KiB: the
    // error comes while it is assembled.
    let tiny = TinyFs::mount("assemble", 256);
    let file = tiny.0.join("trace.dat");
    let write = |c| write_trace_dat_v7(&file, &meta, cpus, &opts, &[rec.buffer("")], c);
    let e = write(Compression::None).unwrap_err();
    assert_eq!(e.errno(), libc::ENOSPC, "{e}");
    assert!(
        entries_in(&tiny.0).is_empty(),
        "left behind: {:?}",
        entries_in(&tiny.0)
    );
    // An existing file of that name is left as it was.
    std::fs::write(&file, b"older").unwrap();
    write(Compression::Zstd).unwrap_err();
    assert_eq!(std::fs::read(&file).unwrap(), b"older");
    assert_eq!(entries_in(&tiny.0), ["trace.dat"]);
    drop(tiny);

    // While recording: the per-CPU temporary files fill the disk. The sink's
    // writer gets BrokenPipe instead of blocking, and finish names the error.
    let tiny = TinyFs::mount("stream", 64);
    let file = tiny.0.join("trace.dat");
    let mut w = V7Writer::new(&file, meta.page_size, Compression::None).unwrap();
    let mut sink = w.cpu_sink("", 0).unwrap();
    let page = vec![0x5au8; meta.page_size as usize];
    let mut refused = None;
    for _ in 0..1000 {
        if let Err(e) = sink.write_all(&page) {
            refused = Some(e);
            break;
        }
    }
    drop(sink);
    let refused = refused.expect("the sink kept accepting data after the disk was full");
    assert_eq!(refused.kind(), std::io::ErrorKind::BrokenPipe, "{refused}");
    let e = w.finish(&meta, cpus, &opts).unwrap_err();
    assert_eq!(e.errno(), libc::ENOSPC, "{e}");
    assert!(e.to_string().contains("CPU 0"), "{e}");
    assert!(
        entries_in(&tiny.0).is_empty(),
        "left behind: {:?}",
        entries_in(&tiny.0)
    );
}

/// The disk fills while the real recorders write into the sinks: the recorders
/// stop with an error instead of blocking, finish names the full disk, and no
/// file is left.
#[test]
fn full_disk_while_recording() {
    let inst = testkit::instance("v7livefull");
    let cpus = tracefs::cpu_count(&inst).unwrap();
    let page = tracecmd_rs::output::page_size_of(&inst.header_page().unwrap());
    let tiny = TinyFs::mount("live", 128);
    let file = tiny.0.join("trace.dat");
    // Uncompressed, so that the markers fill 128 KiB quickly.
    let mut w = V7Writer::new(&file, page, Compression::None).unwrap();
    let live = record_live(
        &inst,
        &[],
        |cpu| Output::Blocks(w.cpu_sink("", cpu).unwrap()),
        || {
            // More than a sink queues in memory (2 MiB), so the recorders see it.
            for cpu in 0..cpus {
                testkit::tracefs::markers_on_cpu(&inst, cpu, 60_000);
            }
        },
    );
    assert!(
        live.results.iter().any(Result::is_err),
        "no recorder noticed the full disk: {:?}",
        live.results
    );
    let e = w
        .finish(
            &live.meta,
            cpus as u32,
            &standard_options(&live.clock_text, &live.stats),
        )
        .unwrap_err();
    assert_eq!(e.errno(), libc::ENOSPC, "{e}");
    assert!(
        entries_in(&tiny.0).is_empty(),
        "left behind: {:?}",
        entries_in(&tiny.0)
    );
}

/// v7 with zstd against v6 on a sched-heavy recording made by the real recorder
/// (whatever the machine's other load adds): the same events, and the compressed
/// file is smaller (the ratio is printed for the record).
#[test]
fn zstd_file_is_smaller_than_v6() {
    let inst = testkit::instance("v7size");
    let dir = TempDir::new("v7size");
    let cpus = tracefs::cpu_count(&inst).unwrap();
    let files: Vec<PathBuf> = (0..cpus)
        .map(|c| dir.path().join(format!("cpu{c}")))
        .collect();
    let live = record_live(
        &inst,
        &["sched"],
        |cpu| Output::create_file(&files[cpu]).unwrap(),
        || {
            // Context switches and wake-ups on every CPU for about a second.
            let sleepers: Vec<_> = (0..4)
                .map(|_| {
                    std::thread::spawn(|| {
                        for _ in 0..10_000 {
                            std::thread::sleep(Duration::from_micros(20));
                        }
                    })
                })
                .collect();
            for t in sleepers {
                t.join().unwrap();
            }
        },
    );
    for r in &live.results {
        assert_eq!(r, &Ok(()), "a recorder failed");
    }
    let (meta, stats, clock_text) = (live.meta, live.stats, live.clock_text);
    let top = BufferData {
        name: String::new(),
        trailing_clock: Some(bracketed_clock("local")),
        cpu_files: files.iter().cloned().map(Some).collect(),
    };
    let opts = standard_options(&clock_text, &stats);
    let v6 = dir.path().join("v6.dat");
    write_trace_dat(&v6, &meta, cpus as u32, &opts, &top, &[]).unwrap();
    let v7 = dir.path().join("v7.dat");
    write_trace_dat_v7(&v7, &meta, cpus as u32, &opts, &[top], Compression::Zstd).unwrap();
    let b6 = std::fs::read(&v6).unwrap();
    let counts = TraceDat::parse(&b6).unwrap().count_events(&b6, 0).unwrap();
    check_v7(&v7, Compression::Zstd, &[("", counts.clone())]);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    let data: u64 = files.iter().map(|f| size(f)).sum();
    eprintln!(
        "sched-heavy: {} events, {data} bytes of pages; v6 {} bytes, v7/zstd {} bytes \
         ({:.3}x); without kallsyms etc.: pages {data} -> {} bytes of chunks",
        counts.iter().sum::<u64>(),
        size(&v6),
        size(&v7),
        size(&v7) as f64 / size(&v6) as f64,
        {
            let b7 = std::fs::read(&v7).unwrap();
            let d = TraceDat::parse(&b7).unwrap();
            d.buffers[0].cpu_data.iter().map(|c| c.1).sum::<u64>()
        }
    );
    assert!(size(&v7) < size(&v6));
}

/// Our reader (with `v7read` for the chunks) agrees with report on a file that
/// Debian's 3.1.6 `record` wrote: v7, zstd.
#[test]
fn reader_agrees_with_report_on_debian_v7_file() {
    let _lock = testkit::lock_top_buffer();
    let dir = TempDir::new("debian7");
    let file = dir.path().join("d7.dat");
    testkit::kernel::debian_record(&file, &[]);
    let bytes = std::fs::read(&file).unwrap();
    let dat = TraceDat::parse(&bytes).expect("our reader parses Debian's v7 file");
    assert_eq!(dat.version, 7);
    assert_eq!(dat.compression.as_ref().map(|c| c.0.as_str()), Some("zstd"));
    assert_eq!(dat.buffers.len(), 1);
    let ours = v7read::count_events(&bytes, &dat, 0).unwrap();
    assert!(ours.iter().sum::<u64>() > 0, "Debian recorded no events");
    let rep = report(&file);
    assert_eq!(ours, rep.per_cpu("", ours.len()));
}
