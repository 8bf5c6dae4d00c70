//! Recording a private tracefs instance by hand (tracefs set up, a workload,
//! every CPU drained from `trace_pipe_raw` into files), for the trace.dat writer
//! tests (`tests/dat_kernel.rs`, `tests/dat_v7.rs`), and Debian's `record` as the
//! reference writer.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tracecmd_rs::tracefs::{self, CpuStats, EventName, Instance, TracefsState};

use crate::debian::{report, sandbox, Report, TRACE_CMD};
use crate::tracefs::markers_on_cpu;
use crate::{instance, Settings};

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

impl Recording {
    /// The recording as a buffer named `name` (`""` = top) with clock `[local]`.
    pub fn buffer(&self, name: &str) -> tracecmd_rs::output::BufferData {
        tracecmd_rs::output::BufferData {
            name: name.into(),
            trailing_clock: Some(tracecmd_rs::output::bracketed_clock("local")),
            cpu_files: self.cpu_files.iter().cloned().map(Some).collect(),
        }
    }

    /// The per-CPU stats texts, in CPU order.
    pub fn stats_texts(&self) -> Vec<String> {
        self.stats.iter().map(|s| s.text.clone()).collect()
    }

    /// The kernel's per-CPU `entries`, in CPU order.
    pub fn entries(&self) -> Vec<u64> {
        self.stats.iter().map(|s| s.entries).collect()
    }
}

/// Reads every page currently in `per_cpu/cpuN/trace_pipe_raw` (nonblocking) into `dst`.
pub fn drain_cpu(inst: &Instance, cpu: usize, page_size: usize, dst: &Path) -> u64 {
    let mut src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
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

/// A workload that produces sched events and about `n` markers per CPU.
pub fn workload(inst: &Instance, n: usize) {
    let cpus = tracefs::cpu_count(inst).unwrap();
    for cpu in 0..cpus {
        markers_on_cpu(inst, cpu, n + cpu * 7);
    }
    let st = Command::new("/bin/sleep")
        .arg("0.01")
        .status()
        .expect("run sleep");
    assert!(st.success());
}

/// Two recordings for a file with a named buffer: `top` of sched_switch and 20
/// markers per CPU, `guest` of 50 markers on CPU 0 only (the other CPUs empty);
/// and the top instance's metadata.
pub fn top_and_guest(dir: &Path) -> (Recording, Recording, tracecmd_rs::output::Metadata) {
    let top = instance("nbtop");
    let guest = instance("nbguest");
    let rec_top = record(&top, &["sched:sched_switch"], dir, "top", |i| {
        workload(i, 20)
    });
    let rec_guest = record(&guest, &[], dir, "guest", |i| markers_on_cpu(i, 0, 50));
    assert_eq!(rec_guest.stats[0].entries, 50);
    assert!(rec_guest.stats[1..].iter().all(|s| s.entries == 0));
    let meta = tracecmd_rs::output::Metadata::from_tracefs(&top, &rec_top.events).unwrap();
    (rec_top, rec_guest, meta)
}

/// Runs `report` on `file` and checks, per buffer in file order (`expected`: name
/// and the kernel's per-CPU entries), that our reader's counts (`ours(i)` for buffer
/// number i) and report's counts both equal the kernel's, and that report printed
/// nothing else. Returns the report.
pub fn assert_counts(
    file: &Path,
    expected: &[(&str, Vec<u64>)],
    ours: impl Fn(usize) -> Vec<u64>,
) -> Report {
    let rep = report(file);
    for (i, (name, want)) in expected.iter().enumerate() {
        assert!(
            want.iter().sum::<u64>() > 0,
            "the workload recorded nothing"
        );
        let mut mine = ours(i);
        mine.resize(want.len().max(mine.len()), 0);
        assert_eq!(mine, *want, "reader vs kernel entries, buffer {name:?}");
        let theirs = rep.per_cpu(name, want.len());
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
    rep
}

/// Runs Debian's `trace-cmd record` (in the ftrace sandbox) of sched_switch and
/// sched_wakeup for `sleep 0.1` with the extra arguments `args`, into `file`, and
/// puts back the top-level settings it changed. The caller holds the top-buffer lock.
pub fn debian_record(file: &Path, args: &[&str]) {
    let sandbox = sandbox();
    let top = Instance::top().unwrap();
    let before = Settings::read(&top);
    let out = Command::new(sandbox)
        .args([TRACE_CMD, "record"])
        .args(args)
        .args(["-e", "sched:sched_switch", "-e", "sched:sched_wakeup", "-o"])
        .arg(file)
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
}
