//! trace.dat files written from real kernel recordings on private tracefs
//! instances, read back by our reader and by Debian's `trace-cmd report`.
//! Needs root, tracefs and /usr/bin/trace-cmd (3.1.6).

use std::path::Path;

use testkit::debian::report;
use testkit::kernel::record;
use testkit::TempDir;
use tracecmd_rs::output::reader::TraceDat;
use tracecmd_rs::output::{
    attach_cpu_data, bracketed_clock, standard_options, write_trace_dat, BufferData, DatOption,
    Metadata,
};
use tracecmd_rs::tracefs::Instance;

fn workload(inst: &Instance) {
    testkit::kernel::workload(inst, 20);
}

fn workload_n(inst: &Instance, n: usize) {
    testkit::kernel::workload(inst, n);
}

/// Checks the file three ways: our reader's counts, report's counts, the kernel's
/// `entries` for each buffer (top first).
fn check_file(file: &Path, expected: &[(&str, Vec<u64>)]) {
    let bytes = std::fs::read(file).unwrap();
    let dat = TraceDat::parse(&bytes).expect("our reader parses the file");
    assert_eq!(dat.version, 6);
    assert_eq!(dat.buffers.len(), expected.len());
    for (i, (name, _)) in expected.iter().enumerate() {
        assert_eq!(dat.buffers[i].name, *name);
    }
    testkit::kernel::assert_counts(file, expected, |i| {
        dat.count_events(&bytes, i).expect("count events")
    });
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
        &standard_options(&rec.clock_text, &rec.stats_texts()),
        &rec.buffer(""),
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
    check_file(&file, &[("", rec.entries())]);
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
        &standard_options(&rec.clock_text, &rec.stats_texts()),
        &rec.buffer(""),
        &[],
        meta.page_size,
    )
    .unwrap();
    drop(f);
    check_file(&file, &[("", rec.entries())]);
}

#[test]
fn named_buffer() {
    let dir = TempDir::new("named");
    let (rec_top, rec_guest, meta) = testkit::kernel::top_and_guest(dir.path());
    let guest_entries = rec_guest.entries();
    let cpus = rec_top.cpu_files.len() as u32;
    let mut options = standard_options(&rec_top.clock_text, &rec_top.stats_texts());
    options.push(DatOption::buffer_stat_header("guest"));
    options.extend(
        rec_guest
            .stats_texts()
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
        &rec_top.buffer(""),
        &[guest_buf],
    )
    .unwrap();
    check_file(&file, &[("", rec_top.entries()), ("guest", guest_entries)]);
    let rep = report(&file);
    assert!(rep.stdout.contains("guest:"), "no guest-prefixed line");
}

#[test]
fn reader_agrees_with_report_on_debian_v6_file() {
    let _lock = testkit::lock_top_buffer();
    let dir = TempDir::new("debian");
    let file = dir.path().join("d6.dat");
    testkit::kernel::debian_record(&file, &["--file-version", "6"]);
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
