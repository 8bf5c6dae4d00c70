//! trace.dat files written from real kernel recordings on private tracefs
//! instances, read back by our reader and by Debian's `trace-cmd report`.
//! Needs root, tracefs and /usr/bin/trace-cmd (3.1.6).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use testkit::debian::{report, sandbox, TRACE_CMD};
use testkit::tracefs::markers_on_cpu;
use testkit::{lock_top_buffer, Settings, TempDir};
use tracecmd_rs::output::reader::TraceDat;
use tracecmd_rs::output::{
    attach_cpu_data, bracketed_clock, standard_options, write_trace_dat, BufferData, DatOption,
    Metadata,
};
use tracecmd_rs::tracefs::{self, CpuStats, EventName, Instance, TracefsState};

/// What a test recording produced.
pub struct Recording {
    /// Per-CPU files of raw pages read from trace_pipe_raw.
    pub cpu_files: Vec<PathBuf>,
    /// Per-CPU stats read after stopping and before consuming the buffer.
    pub stats: Vec<CpuStats>,
    /// The instance's trace_clock file text.
    pub clock_text: String,
    /// The events that were enabled.
    pub events: Vec<EventName>,
}

/// Reads every page currently in `per_cpu/cpuN/trace_pipe_raw` (nonblocking) into `dst`.
pub fn drain_cpu(inst: &Instance, cpu: usize, page_size: usize, dst: &Path) -> u64 {
    let mut src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(inst.trace_pipe_raw(cpu))
        .expect("open trace_pipe_raw");
    let mut out = Vec::new();
    let mut page = vec![0u8; page_size];
    loop {
        match src.read(&mut page) {
            Ok(0) => break,
            Ok(n) => {
                assert_eq!(n, page_size, "trace_pipe_raw returned a partial page");
                out.extend_from_slice(&page[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("reading trace_pipe_raw of cpu {cpu}: {e}"),
        }
    }
    std::fs::write(dst, &out).expect("write cpu file");
    out.len() as u64
}

/// Records `selectors` on `inst` while `workload` runs, then stops, reads the
/// per-CPU stats and drains every CPU into files in `dir`. Restores the
/// instance's settings afterwards.
pub fn record(
    inst: &Instance,
    selectors: &[&str],
    dir: &Path,
    prefix: &str,
    workload: impl FnOnce(&Instance),
) -> Recording {
    let cpus = tracefs::cpu_count(inst).expect("cpu count");
    let page_size =
        tracecmd_rs::output::page_size_of(&inst.header_page().expect("header_page")) as usize;
    let mut state = TracefsState::new(inst);
    state.set_tracing_on(false).unwrap();
    state.set_buffer_size_kb(512).unwrap();
    state.set_trace_clock("local").unwrap();
    // No selectors: only trace_marker writes are recorded.
    let events = if selectors.is_empty() {
        Vec::new()
    } else {
        inst.resolve_events(selectors).expect("resolve events")
    };
    state.enable_events(&events).unwrap();
    state.set_tracing_on(true).unwrap();
    workload(inst);
    inst.set_tracing_on(false).unwrap();
    let stats: Vec<CpuStats> = (0..cpus).map(|c| inst.cpu_stats(c).unwrap()).collect();
    let cpu_files: Vec<PathBuf> = (0..cpus)
        .map(|c| {
            let p = dir.join(format!("{prefix}.cpu{c}"));
            drain_cpu(inst, c, page_size, &p);
            p
        })
        .collect();
    let clock_text = inst.trace_clock_text().unwrap();
    state.restore().unwrap();
    for s in &stats {
        assert_eq!(
            s.overrun, 0,
            "buffer overran; the test workload is too large"
        );
    }
    Recording {
        cpu_files,
        stats,
        clock_text,
        events,
    }
}

/// A workload that produces sched events and markers on every CPU.
fn workload(inst: &Instance) {
    workload_n(inst, 20);
}

/// Like [`workload`] with about `n` markers per CPU (many pages for large `n`).
fn workload_n(inst: &Instance, n: usize) {
    let cpus = tracefs::cpu_count(inst).unwrap();
    for cpu in 0..cpus {
        markers_on_cpu(inst, cpu, n + cpu * 7);
    }
    let st = std::process::Command::new("/bin/sleep")
        .arg("0.01")
        .status()
        .expect("run sleep");
    assert!(st.success());
}

fn top_buffer(rec: &Recording) -> BufferData {
    BufferData {
        name: String::new(),
        trailing_clock: Some(bracketed_clock("local")),
        cpu_files: rec.cpu_files.iter().cloned().map(Some).collect(),
    }
}

fn stats_texts(rec: &Recording) -> Vec<String> {
    rec.stats.iter().map(|s| s.text.clone()).collect()
}

fn entries(rec: &Recording) -> Vec<u64> {
    rec.stats.iter().map(|s| s.entries).collect()
}

/// Checks the file three ways: our reader's counts, report's counts, the kernel's
/// `entries` for each buffer (top first).
fn check_file(file: &Path, expected: &[(&str, Vec<u64>)]) {
    let bytes = std::fs::read(file).unwrap();
    let dat = TraceDat::parse(&bytes).expect("our reader parses the file");
    assert_eq!(dat.version, 6);
    assert_eq!(dat.buffers.len(), expected.len());
    let rep = report(file);
    for (i, (name, want)) in expected.iter().enumerate() {
        assert_eq!(dat.buffers[i].name, *name);
        let ours = dat.count_events(&bytes, i).expect("count events");
        let theirs = rep.per_cpu(name, want.len());
        assert!(
            want.iter().sum::<u64>() > 0,
            "the workload recorded nothing"
        );
        assert_eq!(ours, *want, "reader vs kernel entries, buffer {name:?}");
        assert_eq!(
            theirs, *want,
            "report vs kernel entries, buffer {name:?}\n{}",
            rep.stdout
        );
    }
    let total: u64 = expected.iter().map(|(_, v)| v.iter().sum::<u64>()).sum();
    assert_eq!(
        rep.counts.values().sum::<u64>(),
        total,
        "report printed extra events"
    );
}

#[test]
fn one_shot_sched_and_markers() {
    let inst = testkit::instance("oneshot");
    let dir = TempDir::new("oneshot");
    let rec = record(&inst, &["sched"], dir.path(), "rec", workload);
    let meta = Metadata::from_tracefs(&inst, &rec.events).unwrap();
    let cpus = rec.cpu_files.len() as u32;
    let file = dir.path().join("trace.dat");
    let ranges = write_trace_dat(
        &file,
        &meta,
        cpus,
        &standard_options(&rec.clock_text, &stats_texts(&rec)),
        &top_buffer(&rec),
        &[],
    )
    .unwrap();
    for r in &ranges[0] {
        assert_eq!(
            r.offset % u64::from(meta.page_size),
            0,
            "CPU data not page aligned"
        );
    }
    check_file(&file, &[("", entries(&rec))]);
    let rep = report(&file);
    assert!(
        rep.stdout.contains("tcrs marker 0 on cpu 0"),
        "marker text missing"
    );
    assert!(rep.stdout.contains("sched_"), "no sched event printed");
}

#[test]
fn metadata_then_attach_several_systems() {
    let inst = testkit::instance("attach");
    let dir = TempDir::new("attach");
    let rec = record(
        &inst,
        &["sched:sched_sw*", "timer", "irq"],
        dir.path(),
        "rec",
        |i| workload_n(i, 3000),
    );
    for f in &rec.cpu_files {
        assert!(
            std::fs::metadata(f).unwrap().len() > 4 * 4096,
            "wanted several pages"
        );
    }
    let meta = Metadata::from_tracefs(&inst, &rec.events).unwrap();
    let systems: Vec<&str> = meta.systems.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(systems, ["irq", "sched", "timer"]);
    let file = dir.path().join("trace.dat");
    // Phase 1: the metadata alone, as a network client would stream it.
    {
        let mut f = std::fs::File::create(&file).unwrap();
        meta.write_to(&mut f).unwrap();
    }
    let stream_len = std::fs::metadata(&file).unwrap().len();
    assert_eq!(stream_len, meta.to_bytes().unwrap().len() as u64);
    // Phase 2: a listener reopens it and attaches the CPU data from files.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)
        .unwrap();
    attach_cpu_data(
        &mut f,
        rec.cpu_files.len() as u32,
        &standard_options(&rec.clock_text, &stats_texts(&rec)),
        &top_buffer(&rec),
        &[],
        meta.page_size,
    )
    .unwrap();
    drop(f);
    check_file(&file, &[("", entries(&rec))]);
}

#[test]
fn named_buffer() {
    let top = testkit::instance("nbtop");
    let guest = testkit::instance("nbguest");
    let dir = TempDir::new("named");
    let rec_top = record(&top, &["sched:sched_switch"], dir.path(), "top", workload);
    // The guest buffer only gets markers on CPU 0: CPU 1 is empty.
    let rec_guest = record(&guest, &[], dir.path(), "guest", |i| {
        markers_on_cpu(i, 0, 50)
    });
    let guest_entries = entries(&rec_guest);
    assert_eq!(guest_entries[0], 50);
    assert!(guest_entries[1..].iter().all(|&n| n == 0));
    let meta = Metadata::from_tracefs(&top, &rec_top.events).unwrap();
    let cpus = rec_top.cpu_files.len() as u32;
    let mut options = standard_options(&rec_top.clock_text, &stats_texts(&rec_top));
    options.push(DatOption::buffer_stat_header("guest"));
    options.extend(
        stats_texts(&rec_guest)
            .iter()
            .enumerate()
            .map(|(i, s)| DatOption::cpu_stat(i, s)),
    );
    // Only CPU 0's file is given; the other CPUs are written as empty.
    let guest_buf = BufferData {
        name: "guest".into(),
        trailing_clock: Some(bracketed_clock("local")),
        cpu_files: vec![Some(rec_guest.cpu_files[0].clone())],
    };
    let file = dir.path().join("trace.dat");
    write_trace_dat(
        &file,
        &meta,
        cpus,
        &options,
        &top_buffer(&rec_top),
        &[guest_buf],
    )
    .unwrap();
    check_file(&file, &[("", entries(&rec_top)), ("guest", guest_entries)]);
    let rep = report(&file);
    assert!(rep.stdout.contains("guest:"), "no guest-prefixed line");
}

#[test]
fn reader_agrees_with_report_on_debian_v6_file() {
    let sandbox = sandbox();
    // Debian's record uses the top-level buffer, which other test programs share.
    let _lock = lock_top_buffer();
    let top = Instance::top().unwrap();
    let before = Settings::read(&top);
    let dir = TempDir::new("debian");
    let file = dir.path().join("d6.dat");
    let out = std::process::Command::new(&sandbox)
        .args([TRACE_CMD, "record", "--file-version", "6"])
        .args(["-e", "sched:sched_switch", "-e", "sched:sched_wakeup", "-o"])
        .arg(&file)
        .args(["/bin/sleep", "0.1"])
        .output()
        .expect("run trace-cmd record");
    // Whatever record left behind is put back before asserting anything.
    before.restore(&top);
    assert!(
        out.status.success(),
        "trace-cmd record failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&file).unwrap();
    let dat = TraceDat::parse(&bytes).expect("our reader parses Debian's v6 file");
    assert_eq!(dat.version, 6);
    assert_eq!(dat.buffers.len(), 1);
    assert_eq!(dat.buffers[0].clock.as_deref(), Some("local"));
    let cpus = dat.cpus as usize;
    let ours = dat.count_events(&bytes, 0).unwrap();
    let rep = report(&file);
    assert!(ours.iter().sum::<u64>() > 0, "Debian recorded no events");
    assert_eq!(ours, rep.per_cpu("", cpus));
    assert_eq!(
        dat.options_with(&bytes, tracecmd_rs::output::option_id::CPUSTAT)
            .count(),
        cpus
    );
}
