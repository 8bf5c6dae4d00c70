//! Helpers shared by the tests that record on the real kernel and check the
//! files with Debian's `trace-cmd report`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use tracecmd_rs::tracefs::{self, CpuStats, EventName, Instance, TracefsState};

pub const TRACE_CMD: &str = "/usr/bin/trace-cmd";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique(tag: &str) -> String {
    format!(
        "tcrs-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A private tracefs instance; panics with the reason when that is impossible.
pub fn instance(tag: &str) -> Instance {
    if tracefs::tracing_dir().is_err() {
        panic!("tracefs is not mounted: these tests need root and a mounted tracefs");
    }
    Instance::create(&unique(tag))
        .unwrap_or_else(|e| panic!("cannot create a tracefs instance (run as root): {e}"))
}

/// A directory under /tmp removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // TCRS_KEEP_TMP=1 keeps the files for a look after a failure.
        if std::env::var_os("TCRS_KEEP_TMP").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).expect("cpu index");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("sched_setaffinity");
}

/// Writes `n` markers into the instance's trace_marker from a thread pinned to `cpu`.
pub fn markers_on_cpu(inst: &Instance, cpu: usize, n: usize) {
    let path = inst.path().join("trace_marker");
    std::thread::scope(|s| {
        s.spawn(|| {
            pin_to_cpu(cpu);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open trace_marker");
            for i in 0..n {
                use std::io::Write;
                f.write_all(format!("tcrs marker {i} on cpu {cpu}").as_bytes())
                    .expect("write marker");
            }
        });
    });
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

/// Per-(buffer, cpu) event counts printed by `trace-cmd report`, and its stdout.
pub struct Report {
    pub counts: BTreeMap<(String, usize), u64>,
    pub stdout: String,
}

/// Runs Debian's `trace-cmd report -i file`, asserts exit 0 and an empty stderr.
pub fn report(file: &Path) -> Report {
    assert!(
        Path::new(TRACE_CMD).exists(),
        "{TRACE_CMD} is missing: install Debian's trace-cmd (apt-get install trace-cmd)"
    );
    let out = Command::new(TRACE_CMD)
        .arg("report")
        .arg("-i")
        .arg(file)
        .output()
        .expect("run trace-cmd report");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "trace-cmd report failed ({}): {stderr}",
        out.status
    );
    assert!(
        stderr.trim().is_empty(),
        "trace-cmd report warned on {}:\n{stderr}",
        file.display()
    );
    let mut counts = BTreeMap::new();
    for line in stdout.lines() {
        if let Some((buffer, cpu)) = parse_event_line(line) {
            *counts.entry((buffer, cpu)).or_insert(0) += 1;
        }
    }
    Report { counts, stdout }
}

/// `[name:]  comm-pid [CPU] ts: event: ...` → (buffer name, CPU).
fn parse_event_line(line: &str) -> Option<(String, usize)> {
    // The CPU field is the first " [N]" followed by a timestamp: a comm may
    // contain " [" too (threads named "client [::ffff:…" exist on this machine).
    let (open, cpu) = line.match_indices(" [").find_map(|(open, _)| {
        let rest = &line[open + 2..];
        let close = rest.find(']')?;
        let cpu: usize = rest[..close].parse().ok()?;
        let ts = rest[close + 1..].trim_start();
        let ts = ts.split(':').next()?;
        let is_ts = !ts.is_empty() && ts.chars().all(|c| c.is_ascii_digit() || c == '.');
        is_ts.then_some((open, cpu))
    })?;
    // Named-buffer lines start with "name: ", the names right-aligned to the
    // longest; top-buffer lines with the comm.
    let head = line[..open].trim_start();
    let buffer = match head.split_once(": ") {
        Some((name, _)) if !name.starts_with(' ') && !name.contains(' ') => name.to_string(),
        _ => String::new(),
    };
    Some((buffer, cpu))
}

#[test]
fn event_lines_with_brackets_in_the_comm() {
    let l = "        client [::ffff:-27978 [001]  7259.756723: sched_stat_runtime: comm=x";
    assert_eq!(parse_event_line(l), Some((String::new(), 1)));
    let l = "guest:            <...>-28013 [001]  7259.921787: print: tracing_mark_write: x";
    assert_eq!(parse_event_line(l), Some(("guest".into(), 1)));
    let l = "      vm:     sh-20456 [001] 10077.403641: print: tracing_mark_write: x";
    assert_eq!(parse_event_line(l), Some(("vm".into(), 1)));
    assert_eq!(parse_event_line("CPU 1 is empty"), None);
    assert_eq!(parse_event_line("cpus=2"), None);
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
        let theirs = per_cpu(&rep, name, want.len());
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

/// Counts for one buffer as a per-CPU vector of length `cpus`.
pub fn per_cpu(r: &Report, buffer: &str, cpus: usize) -> Vec<u64> {
    (0..cpus)
        .map(|c| *r.counts.get(&(buffer.to_string(), c)).unwrap_or(&0))
        .collect()
}

/// Runs Debian's `trace-cmd record` (in the ftrace sandbox) of sched_switch and
/// sched_wakeup for `sleep 0.1` with the extra arguments `args`, into `file`, and
/// puts back the top-level settings it changed. The caller holds the top-buffer lock.
pub fn debian_record(file: &Path, args: &[&str]) {
    assert!(
        Path::new(TRACE_CMD).exists(),
        "{TRACE_CMD} is missing: install Debian's trace-cmd"
    );
    let sandbox = "/work/shared/tools/ftrace-sandbox";
    assert!(Path::new(sandbox).exists(), "{sandbox} is missing");
    let top = Instance::top().unwrap();
    let before = TopState::read(&top);
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

/// The top-level settings a stock `trace-cmd record` may change.
pub struct TopState {
    events: Vec<EventName>,
    clock: String,
    tracing_on: bool,
    buffer_size_kb: String,
}

impl TopState {
    pub fn read(top: &Instance) -> TopState {
        TopState {
            events: top.enabled_events().unwrap(),
            clock: top.trace_clock().unwrap().0,
            tracing_on: top.tracing_on().unwrap(),
            buffer_size_kb: top.read("buffer_size_kb").unwrap(),
        }
    }

    /// Puts back what differs (a not yet expanded buffer size cannot be restored
    /// exactly; its number is written back).
    pub fn restore(&self, top: &Instance) {
        let now = TopState::read(top);
        for ev in &now.events {
            if !self.events.contains(ev) {
                top.set_event_enabled(ev, false).unwrap();
            }
        }
        for ev in &self.events {
            if !now.events.contains(ev) {
                top.set_event_enabled(ev, true).unwrap();
            }
        }
        if now.clock != self.clock {
            top.set_trace_clock(&self.clock).unwrap();
        }
        if now.tracing_on != self.tracing_on {
            top.set_tracing_on(self.tracing_on).unwrap();
        }
        if now.buffer_size_kb != self.buffer_size_kb {
            let kb = tracefs::parse_buffer_size_kb(&self.buffer_size_kb).unwrap();
            if tracefs::parse_buffer_size_kb(&now.buffer_size_kb) != Some(kb) {
                top.set_buffer_size_kb(kb).unwrap();
            }
        }
    }
}
