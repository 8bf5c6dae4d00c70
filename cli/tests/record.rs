//! `trace-cmd record` end to end on the real kernel (root): every file it writes
//! is read by Debian's `trace-cmd report`, whose per-CPU event counts must equal
//! what the kernel says was recorded; and the bad-input cases of issue 4 item 5.
//! Each test records into its own private instance (`-B`), created and removed by
//! the test, so tracefs is left as found.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use testkit::debian::report;
use testkit::tracefs::markers_on_cpu;
use testkit::{instance_name, Settings, TempDir};
use tracecmd_rs::output::reader::TraceDat;
use tracecmd_rs::tracefs::{self, Instance};

const BIN: &str = env!("CARGO_BIN_EXE_trace-cmd");

/// A private instance in a known state.
fn fresh(tag: &str) -> Instance {
    let inst = testkit::instance(tag);
    inst.set_buffer_size_kb(1024).unwrap();
    inst.set_trace_clock("local").unwrap();
    inst.set_tracing_on(false).unwrap();
    inst
}

fn record(inst: &Instance, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("record")
        .arg("-B")
        .arg(instance_name(inst))
        .args(args)
        .output()
        .expect("run trace-cmd record")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Events the kernel handed to readers, per CPU (the instance is fresh and record
/// clears it first, so this is everything recorded); asserts nothing was lost.
fn kernel_recorded(inst: &Instance) -> Vec<u64> {
    let cpus = tracefs::cpu_count(inst).unwrap();
    (0..cpus)
        .map(|c| {
            let s = inst.cpu_stats(c).unwrap();
            assert_eq!(s.overrun + s.dropped_events, 0, "events lost on CPU {c}");
            s.entries + s.read_events
        })
        .collect()
}

/// entries + read events per CPU from the CPUSTAT options of the file.
fn cpustat_recorded(file: &Path) -> Vec<u64> {
    let bytes = std::fs::read(file).unwrap();
    let dat = TraceDat::parse(&bytes).unwrap();
    dat.options_with(&bytes, tracecmd_rs::output::option_id::CPUSTAT)
        .filter_map(|o| {
            let text = String::from_utf8_lossy(o);
            let body = text.strip_prefix("CPU: ")?.split_once('\n')?.1.to_string();
            let s = tracefs::CpuStats::parse(body.trim_end_matches('\0')).unwrap();
            assert_eq!(s.overrun + s.dropped_events, 0, "events lost");
            Some(s.entries + s.read_events)
        })
        .collect()
}

/// report must read the file cleanly and print, per CPU of the named buffer,
/// exactly `want` events; our reader must agree.
fn check(file: &Path, buffer: &str, want: &[u64]) {
    let rep = report(file);
    assert_eq!(rep.per_cpu(buffer, want.len()), want, "report vs kernel");
    let bytes = std::fs::read(file).unwrap();
    let dat = TraceDat::parse(&bytes).unwrap();
    let idx = dat.buffers.iter().position(|b| b.name == buffer).unwrap();
    assert_eq!(
        dat.count_events(&bytes, idx).unwrap(),
        want,
        "reader vs kernel"
    );
    assert!(want.iter().sum::<u64>() > 0, "nothing was recorded");
}

fn wait_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("trace-cmd record did not end within {limit:?} after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sigint(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
}

#[test]
fn record_sched_with_a_command() {
    let inst = fresh("cmd");
    inst.set_tracing_on(true).unwrap();
    // An event enabled beforehand is off during the recording and on again after.
    let timer = inst.resolve_events(&["timer:hrtimer_start"]).unwrap();
    inst.set_event_enabled(&timer[0], true).unwrap();
    let before = Settings::read(&inst);
    let dir = TempDir::new("cmd");
    let file = dir.path().join("t.dat");
    let out = record(
        &inst,
        &[
            "-e",
            "sched",
            "-b",
            "2048",
            "-C",
            "global",
            "-o",
            file.to_str().unwrap(),
            "/bin/sleep",
            "0.2",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("CPU0 data recorded at offset=0x"),
        "{stdout}"
    );
    assert!(
        stdout.contains("entries: ") && stdout.contains("commit overrun: "),
        "{stdout}"
    );
    assert_eq!(Settings::read(&inst), before, "tracefs not restored");
    // Restoring the clock reset the instance's counters, so take the kernel's
    // stats as record stored them (CPUSTAT options, read when recording ended).
    check(&file, &instance_name(&inst), &cpustat_recorded(&file));
    let rep = report(&file);
    assert!(
        rep.stdout.contains("sleep"),
        "the command's events are missing"
    );
    assert!(
        !rep.stdout.contains("hrtimer_start"),
        "an event not asked for was recorded"
    );
    // The per-CPU files are gone.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "leftover files: {left:?}");
}

/// The version and compression the header of `file` names.
fn format_of(file: &Path) -> (u32, String) {
    let bytes = std::fs::read(file).unwrap();
    let dat = TraceDat::parse(&bytes).unwrap();
    let comp = dat.compression.map(|(n, _)| n).unwrap_or_default();
    (dat.version, comp)
}

#[test]
fn file_version_and_compression() {
    // (options, version and compression the file must have)
    let cases: [(&[&str], u32, &str); 4] = [
        (&[], 7, "zstd"),
        (&["--compression", "none"], 7, "none"),
        (&["--compression", "any"], 7, "zstd"),
        (&["--file-version", "6"], 6, ""),
    ];
    for (i, (opts, version, comp)) in cases.into_iter().enumerate() {
        let inst = fresh(&format!("ver{i}"));
        let dir = TempDir::new("ver");
        let file = dir.path().join("t.dat");
        let script = format!(
            "i=0; while [ $i -lt 3000 ]; do echo tcrs-ver-$i > {}; i=$((i+1)); done",
            inst.path().join("trace_marker").display()
        );
        let mut args = opts.to_vec();
        let f = file.to_str().unwrap();
        args.extend(["-q", "-e", "sched", "-o", f, "/bin/sh", "-c", &script]);
        let out = record(&inst, &args);
        assert!(out.status.success(), "{opts:?}: {}", stderr(&out));
        assert_eq!(format_of(&file), (version, comp.to_string()), "{opts:?}");
        check(&file, &instance_name(&inst), &kernel_recorded(&inst));
        assert!(report(&file).stdout.contains("tcrs-ver-2999"), "{opts:?}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "{opts:?}: leftover files: {left:?}");
    }
    let inst = fresh("verbad");
    for bad in [&["--file-version", "5"][..], &["--compression", "lz4"]] {
        let out = record(&inst, &[bad, &["-e", "sched", "true"]].concat());
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(
            stderr(&out).contains(bad[0]) || stderr(&out).contains(bad[1]),
            "{bad:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn record_does_not_poll_for_the_command() {
    // record's own main thread: each check for the command's end is a waitid(), which
    // the kernel reports as sched_process_wait. Checking every 20 ms gave about 50 a
    // second; the command's exit now wakes it (pidfd), and the checks are 250 ms apart.
    let inst = fresh("nopoll");
    let dir = TempDir::new("nopoll");
    let file = dir.path().join("t.dat");
    // The event names the pid waited for; other tests' processes run beside this one
    // and wait for their own children, so only waits for this command's pid count.
    let pidfile = dir.path().join("pid");
    let script = format!("echo $$ > {}; exec /bin/sleep 1", pidfile.display());
    let out = record(
        &inst,
        &[
            "-e",
            "sched:sched_process_wait",
            "-o",
            file.to_str().unwrap(),
            "/bin/sh",
            "-c",
            &script,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let waited_for = format!(" pid={} ", pid.trim());
    let rep = report(&file);
    let ours = rep
        .stdout
        .lines()
        .filter(|l| l.contains("sched_process_wait:") && l.contains(&waited_for))
        .count();
    assert!(
        ours >= 1,
        "no wait for pid {} was recorded:\n{}",
        pid.trim(),
        rep.stdout
    );
    assert!(
        ours <= 12,
        "record checked for its command {ours} times in 1 s:\n{}",
        rep.stdout
    );
}

#[test]
fn record_max_kb_keeps_the_newest_data() {
    let inst = fresh("maxkb");
    let dir = TempDir::new("maxkb");
    let file = dir.path().join("t.dat");
    let marker = inst.path().join("trace_marker");
    let script = format!(
        "i=0; while [ $i -lt 4000 ]; do echo tcrs-maxkb-$i > {}; i=$((i+1)); done",
        marker.display()
    );
    let out = record(
        &inst,
        &[
            "-q",
            // A rare event: the markers must be the newest data, whatever the
            // rest of the machine does between the command's end and the stop.
            "-e",
            "sched:sched_kthread_stop",
            "-m",
            "16",
            "-o",
            file.to_str().unwrap(),
            "/bin/sh",
            "-c",
            &script,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let bytes = std::fs::read(&file).unwrap();
    let dat = TraceDat::parse(&bytes).unwrap();
    let idx = dat
        .buffers
        .iter()
        .position(|b| b.name == instance_name(&inst))
        .unwrap();
    for &(_, size) in &dat.buffers[idx].cpu_data {
        assert!(size <= 16 * 1024, "a CPU kept {size} bytes with -m 16");
    }
    let ours = dat.count_events(&bytes, idx).unwrap();
    let rep = report(&file);
    assert_eq!(rep.per_cpu(&instance_name(&inst), ours.len()), ours);
    let kernel: u64 = kernel_recorded(&inst).iter().sum();
    assert!(ours.iter().sum::<u64>() < kernel, "-m dropped nothing");
    assert!(
        rep.stdout.contains("tcrs-maxkb-3999"),
        "the newest marker must be kept"
    );
}

#[test]
fn not_root_is_a_clear_error() {
    // The binary must be reachable for an unprivileged user: copy it to /tmp.
    let dir = TempDir::new("noroot");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let bin = dir.path().join("trace-cmd");
    std::fs::copy(BIN, &bin).unwrap();
    let out = Command::new(&bin)
        .args(["record", "-e", "sched", "-o", "/tmp/never.dat", "/bin/true"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("needs root"), "{}", stderr(&out));
}

#[test]
fn no_tracefs_names_the_mount_command() {
    let out = Command::new(BIN)
        .env("TRACEFS_DIR", "/nonexistent/tracing")
        .args(["record", "-e", "sched", "-o", "/tmp/never.dat", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("mount -t tracefs nodev /sys/kernel/tracing"),
        "{}",
        stderr(&out)
    );
}

/// A small tmpfs, unmounted on drop.
struct SmallFs {
    mount: PathBuf,
    _dir: TempDir,
}

impl SmallFs {
    fn new(tag: &str, size: &str) -> SmallFs {
        let dir = TempDir::new(tag);
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tcrs-test"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(st.success(), "cannot mount a tmpfs (needs root)");
        SmallFs {
            mount: dir.path().to_path_buf(),
            _dir: dir,
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

fn check_disk_full(size: &str, markers: usize, extra: &[&str]) {
    let inst = fresh("full");
    let before = Settings::read(&inst);
    let fs = SmallFs::new("full", size);
    let file = fs.mount.join("t.dat");
    let script = format!(
        "i=0; while [ $i -lt {markers} ]; do echo tcrs-full-$i > {}; i=$((i+1)); done; {}",
        inst.path().join("trace_marker").display(),
        if markers > 1000 {
            "exec sleep 60"
        } else {
            "true"
        }
    );
    let f = file.to_str().unwrap();
    let args = [
        extra,
        &["-q", "-e", "sched", "-o", f, "/bin/sh", "-c", &script],
    ]
    .concat();
    let out = record(&inst, &args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(Settings::read(&inst), before);
    // Either no file at all (said so) or a valid one.
    let left: Vec<_> = std::fs::read_dir(&fs.mount)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    if file.exists() {
        report(&file);
    } else {
        assert!(
            err.contains("removed") || err.contains("nothing was written"),
            "{err}"
        );
    }
    assert!(
        left.iter().all(|p| p == &file),
        "per-CPU files left behind: {left:?}"
    );
}

#[test]
fn disk_full_while_recording() {
    // The command writes markers, then would sleep for a minute: record must end
    // it when the recording fails instead of waiting for it.
    let start = Instant::now();
    check_disk_full("32k", 20000, &[]);
    check_disk_full("32k", 20000, &["--file-version", "6"]);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "record waited for the command"
    );
}

/// With its compressor slowed (the test-only `output::SLOW_COMPRESSOR_ENV`) record
/// keeps draining the ring buffer, spilling what the compressor has not taken yet to
/// disk, and the v7 file it finishes holds every event the kernel recorded. Without
/// the spill path the recorder would wait for the compressor: 32 MiB at about 20 MB/s
/// against a compressor held to 5 MB/s overruns the 4 MiB ring within a second, and
/// the spill message would be missing.
#[test]
fn a_slow_compressor_spills_and_loses_nothing() {
    let inst = fresh("slowz");
    let dir = TempDir::new("slowz");
    let file = dir.path().join("t.dat");
    // 256 KiB of marker text; each write of it becomes 4 KiB markers.
    let src = dir.path().join("markers.txt");
    let text: String = (0..16384).map(|i| format!("tcrs-slow {i:05}\n")).collect();
    std::fs::write(&src, &text[..256 << 10]).unwrap();
    let script = format!(
        "i=0; while [ $i -lt 128 ]; do cat {} > {}; sleep 0.01; i=$((i+1)); done",
        src.display(),
        inst.path().join("trace_marker").display()
    );
    let out = Command::new(BIN)
        .env(tracecmd_rs::output::SLOW_COMPRESSOR_ENV, "100")
        .args([
            "record",
            "-B",
            &instance_name(&inst),
            "-b",
            "4096",
            "-q",
            "-v",
        ])
        .args([
            "-e",
            "sched:sched_kthread_stop",
            "-o",
            file.to_str().unwrap(),
        ])
        .args(["/bin/sh", "-c", &script])
        .output()
        .expect("run trace-cmd record");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(format_of(&file), (7, "zstd".to_string()));
    check(&file, &instance_name(&inst), &kernel_recorded(&inst));
    assert!(err.contains("waited in a spill file"), "no spill: {err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 2, "leftover files: {left:?}");
}

#[test]
fn disk_full_while_writing_trace_dat() {
    // The per-CPU data fits; the 5 MB of kallsyms in the metadata does not, nor
    // (v7) about 1 MB of it compressed.
    check_disk_full("1m", 50, &["--file-version", "6"]);
    check_disk_full("256k", 50, &[]);
}

#[test]
fn ctrl_c_at_any_moment_leaves_tracefs_as_found() {
    for (i, delay_ms) in [0u64, 2, 10, 30, 80, 200].into_iter().enumerate() {
        let inst = fresh(&format!("anytime{i}"));
        let before = Settings::read(&inst);
        let dir = TempDir::new("anytime");
        let file = dir.path().join("t.dat");
        let mut child = Command::new(BIN)
            .args([
                "record",
                "-q",
                "-B",
                &instance_name(&inst),
                "-e",
                "sched",
                "-o",
            ])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        sigint(&child);
        let st = wait_timeout(&mut child, Duration::from_secs(20));
        let out = child.wait_with_output().unwrap();
        // Success, a clean "interrupted" error, or killed before setup began.
        assert!(
            st.success() || st.code() == Some(1) || st.code().is_none(),
            "delay {delay_ms}: {st} {}",
            stderr(&out)
        );
        assert_eq!(
            Settings::read(&inst),
            before,
            "delay {delay_ms}ms: tracefs not restored"
        );
        if file.exists() {
            report(&file);
        }
    }
}

#[test]
fn live_line_on_a_terminal_and_debug_logging() {
    let inst = fresh("live");
    let dir = TempDir::new("live");
    let file = dir.path().join("t.dat");
    // `script` gives the command a pseudo-terminal as stdout and stderr.
    assert!(
        Path::new("/usr/bin/script").exists(),
        "/usr/bin/script (util-linux) is needed to test the terminal live line"
    );
    let cmd = format!(
        "{BIN} record --debug -B {} -e sched:sched_switch -o {} /bin/sleep 1.3",
        instance_name(&inst),
        file.display()
    );
    let out = Command::new("/usr/bin/script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("KiB recorded"), "no live line: {text}");
    assert!(text.contains("trace-cmd: debug: "), "no debug log: {text}");
    assert!(
        text.contains("sched_switch/enable"),
        "debug log lacks the tracefs writes: {text}"
    );
    // Without a terminal there is no live line.
    let plain = record(
        &inst,
        &[
            "-e",
            "sched:sched_switch",
            "-o",
            file.to_str().unwrap(),
            "/bin/sleep",
            "1.3",
        ],
    );
    assert!(plain.status.success());
    assert!(
        !stderr(&plain).contains("KiB recorded"),
        "{}",
        stderr(&plain)
    );
}

#[test]
fn record_all_events() {
    let inst = fresh("all");
    let before = Settings::read(&inst);
    let dir = TempDir::new("all");
    let file = dir.path().join("t.dat");
    let out = record(
        &inst,
        &["-q", "-e", "all", "-o", file.to_str().unwrap(), "/bin/true"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(Settings::read(&inst), before, "tracefs not restored");
    let bytes = std::fs::read(&file).unwrap();
    let dat = TraceDat::parse(&bytes).unwrap();
    // v7 keeps the formats in a compressed section: ask report's dump.
    let dump = Command::new("trace-cmd")
        .args(["dump", "--summary", "-i"])
        .arg(&file)
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    let systems: usize = dump
        .lines()
        .find_map(|l| l.trim().strip_prefix("[Events format, "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no event formats in the dump: {dump}"));
    assert!(systems > 20, "formats of all systems must be saved");
    let idx = dat
        .buffers
        .iter()
        .position(|b| b.name == instance_name(&inst))
        .unwrap();
    let ours = dat.count_events(&bytes, idx).unwrap();
    let rep = report(&file);
    assert_eq!(rep.per_cpu(&instance_name(&inst), ours.len()), ours);
    assert!(
        !rep.stdout.contains("UNKNOWN EVENT"),
        "an event without its format"
    );
}

/// Runs `record -B <fresh instance> ARGS -o FILE` expecting a refusal: exit 1,
/// every needle in the error, the instance unchanged and no file written.
fn assert_refused(tag: &str, args: &[&str], needles: &[&str]) {
    let inst = fresh(tag);
    let before = Settings::read(&inst);
    let dir = TempDir::new(tag);
    let file = dir.path().join("t.dat");
    let mut all: Vec<&str> = vec!["-o", file.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = record(&inst, &all);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    for n in needles {
        assert!(err.contains(n), "error lacks {n:?}: {err}");
    }
    assert_eq!(Settings::read(&inst), before, "tracefs changed");
    assert!(!file.exists(), "a file was written");
}

#[test]
fn unknown_event_lists_matches_and_changes_nothing() {
    assert_refused(
        "unknown",
        &["-e", "sched:sched_switch", "-e", "sched:sched_swich"],
        &["sched:sched_swich", "did you mean", "sched:sched_switch"],
    );
}

#[test]
fn function_tracer_is_refused_cleanly() {
    // The error names the file and the errno.
    assert_refused(
        "func",
        &["-p", "function", "-e", "sched"],
        &["current_tracer", "os error"],
    );
}

#[test]
fn missing_command_is_an_error_before_anything_changes() {
    assert_refused(
        "nocmd",
        &["-e", "sched", "no-such-program-tcrs"],
        &["no-such-program-tcrs"],
    );
}

/// Starts `record -q -B <inst> ARGS -o FILE [COMMAND]` and waits until it records.
fn spawn_recording(inst: &Instance, args: &[&str], file: &Path, command: &[&str]) -> Child {
    let child = Command::new(BIN)
        .args(["record", "-q", "-B", &instance_name(inst)])
        .args(args)
        .arg("-o")
        .arg(file)
        .args(command)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !inst.tracing_on().unwrap() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "recording never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// Sends SIGINT and expects a clean exit, tracefs as before and a file whose
/// per-CPU counts match the kernel's.
fn interrupt_and_check(inst: &Instance, mut child: Child, file: &Path, before: &Settings) {
    sigint(&child);
    let st = wait_timeout(&mut child, Duration::from_secs(20));
    assert!(
        st.success(),
        "{}",
        stderr(&child.wait_with_output().unwrap())
    );
    assert_eq!(&Settings::read(inst), before, "tracefs not restored");
    check(file, &instance_name(inst), &kernel_recorded(inst));
}

#[test]
fn record_until_ctrl_c_several_systems() {
    let inst = fresh("ctrlc");
    let before = Settings::read(&inst);
    let dir = TempDir::new("ctrlc");
    let file = dir.path().join("t.dat");
    let events = ["-e", "sched:sched_switch", "-e", "timer", "-e", "irq"];
    let child = spawn_recording(&inst, &events, &file, &[]);
    for cpu in 0..tracefs::cpu_count(&inst).unwrap() {
        markers_on_cpu(&inst, cpu, 200);
    }
    std::thread::sleep(Duration::from_millis(100));
    interrupt_and_check(&inst, child, &file, &before);
    let rep = report(&file);
    assert!(
        rep.stdout.contains("tcrs marker 199 on cpu 1"),
        "markers missing"
    );
    assert!(rep.stdout.contains("sched_switch"));
}

#[test]
fn ctrl_c_ends_the_command_and_the_recording() {
    let inst = fresh("cmdint");
    let before = Settings::read(&inst);
    let dir = TempDir::new("cmdint");
    let file = dir.path().join("t.dat");
    let child = spawn_recording(&inst, &["-e", "sched"], &file, &["/bin/sleep", "60"]);
    let start = Instant::now();
    interrupt_and_check(&inst, child, &file, &before);
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "record waited for the command"
    );
}

#[test]
fn record_raises_its_file_limit_but_not_the_commands() {
    // Recorders hold pipes (more while a file is behind): record raises its soft
    // open-file limit to the hard one, and gives the command the limit it had.
    let inst = fresh("nofile");
    let dir = TempDir::new("nofile");
    let file = dir.path().join("t.dat");
    let seen = dir.path().join("ulimit");
    let script = format!(
        "ulimit -Sn 512 && exec {BIN} record -B {} -e sched:sched_switch -o {} \
         /bin/sh -c 'ulimit -Sn > {}; sleep 1'",
        instance_name(&inst),
        file.display(),
        seen.display()
    );
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The shell execs trace-cmd: same pid. Look at its limit while it records.
    let limits = format!("/proc/{}/limits", child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut soft = None;
    while Instant::now() < deadline && soft.is_none() {
        std::thread::sleep(Duration::from_millis(50));
        let exe = std::fs::read_link(format!("/proc/{}/exe", child.id())).unwrap_or_default();
        if !exe.ends_with("trace-cmd") {
            continue;
        }
        let text = std::fs::read_to_string(&limits).unwrap_or_default();
        soft = text
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .map(str::to_string);
    }
    let status = wait_timeout(&mut child, Duration::from_secs(30));
    assert!(status.success(), "record failed");
    let hard = String::from_utf8(
        Command::new("/bin/sh")
            .args(["-c", "ulimit -Hn"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(soft.as_deref(), Some(hard.trim()), "record's soft limit");
    let cmd_soft = std::fs::read_to_string(&seen).unwrap();
    assert_eq!(cmd_soft.trim(), "512", "the command's soft limit");
}
