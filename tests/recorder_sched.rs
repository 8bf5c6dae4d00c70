//! The scheduling of the thread that records a ring buffer: real-time priority (or a
//! short slice) while recording, its own settings back afterwards. Its own test
//! binary, because it sets an environment variable the recorder reads. Needs root
//! and tracefs.

use std::time::{Duration, Instant};

use testkit::ring::*;

const SCHED_FIFO: u64 = 1;

/// (policy, slice in ns; 0 for a real-time thread) of thread `tid` of this process,
/// from `/proc`.
fn sched_of(tid: i32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/sched")).unwrap();
    let field = |name: &str| -> Option<u64> {
        let line = text
            .lines()
            .find(|l| l.split(':').next().unwrap().trim() == name)?;
        Some(line.rsplit(':').next().unwrap().trim().parse().unwrap())
    };
    let policy = field("policy").expect("no policy in /proc/self/task/TID/sched");
    // A real-time thread shows no fair-class slice.
    (policy, field("se.slice").unwrap_or(0))
}

/// Whether the kernel takes a per-thread slice (Linux 6.12 and later).
fn kernel_takes_custom_slices() -> bool {
    let release = nix::sys::utsname::uname().unwrap();
    let release = release.release().to_string_lossy().into_owned();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().unwrap().parse().unwrap();
    let minor: u32 = parts.next().unwrap().parse().unwrap();
    (major, minor) >= (6, 12)
}

/// Gives the calling thread a slice of its own (as a caller of the library might).
fn set_own_slice(ns: u64) {
    // SAFETY: sched_attr is plain data; the kernel reads `size` bytes of it.
    let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
    attr.size = std::mem::size_of::<libc::sched_attr>() as u32;
    attr.sched_policy = libc::SCHED_OTHER as u32;
    attr.sched_runtime = ns;
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const _, 0) };
    assert_eq!(rc, 0, "sched_setattr: {}", std::io::Error::last_os_error());
}

/// A recording thread that is stopped and joined however the test ends, so that a
/// failed assertion does not leave it holding the instance (which then could not be
/// removed).
struct StopOnDrop(
    tracecmd_rs::recorder::StopHandle,
    Option<std::thread::JoinHandle<(u64, u64)>>,
);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.1.take() {
            self.0.stop();
            let _ = t.join();
        }
    }
}

/// Records a ring buffer in a thread (with a slice of its own first, if `own`) and
/// returns the thread's (policy, slice) before, once it differs while recording (or
/// after 5 s), and after.
fn watch_recording(tag: &str, own: Option<u64>) -> [(u64, u64); 3] {
    let (inst, cpu, dir) = setup(tag, 64);
    let mut rec = recorder(&inst, cpu, &dir.join("out"));
    let stop = rec.stop_handle();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut recording = StopOnDrop(stop, None);
    recording.1 = Some(std::thread::spawn(move || {
        if let Some(ns) = own {
            set_own_slice(ns);
        }
        let tid = nix::unistd::gettid().as_raw();
        tx.send((tid, sched_of(tid))).unwrap();
        rec.record(Duration::from_millis(1)).expect("record");
        sched_of(tid)
    }));
    let (tid, before) = rx.recv().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut during = sched_of(tid);
    while during == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        during = sched_of(tid);
    }
    recording.0.stop();
    let after = recording.1.take().unwrap().join().unwrap();
    drop(inst);
    [before, during, after]
}

#[test]
fn recording_thread_runs_first_and_gets_its_scheduling_back() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root (tracefs, and SCHED_FIFO for the recording thread)"
    );
    let custom = kernel_takes_custom_slices();
    if !custom {
        eprintln!("kernel before 6.12: no per-thread slice; only the policy is checked");
    }
    for own in [None, Some(3_000_000)] {
        // Root may: SCHED_FIFO while recording.
        let [before, during, after] = watch_recording("rt", own);
        assert_eq!(before.0, 0, "the test thread is not SCHED_OTHER");
        if let Some(ns) = own.filter(|_| custom) {
            assert_eq!(before.1, ns, "the test could not set its own slice");
        }
        assert_eq!(during.0, SCHED_FIFO, "policy while recording ({own:?})");
        assert_eq!(after, before, "scheduling after recording ({own:?})");

        // Turned off: a normal thread with the 0.1 ms slice while recording.
        std::env::set_var("TRACECMD_RS_NO_RT", "1");
        let [before, during, after] = watch_recording("slice", own);
        std::env::remove_var("TRACECMD_RS_NO_RT");
        assert_eq!(
            during.0, 0,
            "TRACECMD_RS_NO_RT=1 still made the thread real-time"
        );
        if custom {
            assert_eq!(during.1, 100_000, "slice while recording ({own:?})");
        }
        assert_eq!(after, before, "scheduling after recording ({own:?})");
    }
}

/// `Cpus_allowed_list` of thread `tid` of this process.
fn allowed_of(tid: i32) -> String {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("no Cpus_allowed_list in /proc/self/task/TID/status")
        .trim()
        .to_string()
}

/// Threads of this process named `name`.
fn threads_named(name: &str) -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|tid: &i32| {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                .is_ok_and(|c| c.trim() == name)
        })
        .collect()
}

/// Records the buffer of `cpu` (into a file, so with a write-behind thread) in a
/// thread that first limits itself to `own` CPUs if given; returns the thread's CPU
/// list before, once it differs while recording (or after `wait`), after, and the
/// write-behind thread's list while recording.
fn watch_mask(tag: &str, own: Option<usize>, wait: Duration) -> (usize, [String; 4]) {
    let (inst, cpu, dir) = setup(tag, 64);
    let mut rec = recorder(&inst, cpu, &dir.join("out"));
    let stop = rec.stop_handle();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut recording = StopOnDrop(stop, None);
    let before_writers = threads_named("tracecmd-write");
    let (tx2, rx2) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        if let Some(c) = own {
            let mut only = nix::sched::CpuSet::new();
            only.set(c).unwrap();
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &only).unwrap();
        }
        let tid = nix::unistd::gettid().as_raw();
        tx.send((tid, allowed_of(tid))).unwrap();
        rec.record(Duration::from_millis(1)).expect("record");
        tx2.send(allowed_of(tid)).unwrap();
        (0, 0)
    });
    recording.1 = Some(t);
    let (tid, before) = rx.recv().unwrap();
    let deadline = Instant::now() + wait;
    let mut during = allowed_of(tid);
    while during == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        during = allowed_of(tid);
    }
    // The write-behind thread this recording started.
    let mut writer = String::new();
    while Instant::now() < deadline + Duration::from_secs(5) {
        let new: Vec<_> = threads_named("tracecmd-write")
            .into_iter()
            .filter(|t| !before_writers.contains(t))
            .collect();
        if let Some(w) = new.first() {
            writer = allowed_of(*w);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    recording.0.stop();
    recording.1.take().unwrap().join().unwrap();
    let after = rx2.recv().unwrap();
    drop(inst);
    (cpu, [before, during, after, writer])
}

#[test]
fn recording_thread_stays_on_its_cpu_and_gets_its_mask_back() {
    assert!(nix::unistd::geteuid().is_root(), "needs root (tracefs)");
    let all = allowed_of(nix::unistd::gettid().as_raw());
    let cpus = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    let allowed: Vec<usize> = (0..nix::sched::CpuSet::count())
        .filter(|&c| cpus.is_set(c) == Ok(true))
        .collect();
    assert!(
        allowed.len() >= 2,
        "this test needs at least 2 CPUs it may run on, has {all}"
    );

    let (cpu, [before, during, after, writer]) = watch_mask("pin", None, Duration::from_secs(5));
    assert_eq!(before, all);
    assert_eq!(
        during,
        cpu.to_string(),
        "CPU list while recording CPU {cpu}'s buffer"
    );
    assert_eq!(after, before, "CPU list after recording");
    assert_eq!(
        writer,
        cpu.to_string(),
        "the write-behind thread's CPU list"
    );

    // Turned off: never pinned while recording.
    std::env::set_var("TRACECMD_RS_NO_PIN", "1");
    let (_, [before, during, after, _]) = watch_mask("nopin", None, Duration::from_millis(500));
    std::env::remove_var("TRACECMD_RS_NO_PIN");
    assert_eq!(
        during, before,
        "TRACECMD_RS_NO_PIN=1 still pinned the thread"
    );
    assert_eq!(after, before);

    // A thread limited to another CPU (as under taskset) is left where it is.
    let other = *allowed.iter().find(|&&c| c != cpu).unwrap();
    let (_, [before, during, after, _]) =
        watch_mask("pinother", Some(other), Duration::from_millis(500));
    assert_eq!(before, other.to_string());
    assert_eq!(
        during, before,
        "a thread kept off CPU {cpu} was moved onto it"
    );
    assert_eq!(after, before);
}
