//! Private tracefs instances, CPU pinning, trace_marker writers, the settings a
//! recording may change, and the lock on the top-level buffer.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use tracecmd_rs::tracefs::{self, BufferSize, EventName, Instance};

/// A private instance with a unique name, removed when dropped (so tracefs is
/// left as found); panics with the reason when this machine cannot make one.
pub fn instance(tag: &str) -> Instance {
    if tracefs::tracing_dir().is_err() {
        panic!(
            "tracefs is not mounted: these tests need root and a mounted tracefs (.ci/install-deps mounts it)"
        );
    }
    let name = crate::unique_name(tag);
    Instance::create(&name)
        .unwrap_or_else(|e| panic!("cannot create tracing instance {name} (needs root): {e}"))
}

/// The name of an instance, as `trace-cmd record -B` takes it.
pub fn instance_name(inst: &Instance) -> String {
    inst.path()
        .file_name()
        .expect("an instance directory has a name")
        .to_string_lossy()
        .into_owned()
}

/// CPUs of the instance that this process may run on.
pub fn usable_cpus(inst: &Instance) -> Vec<usize> {
    let n = tracefs::cpu_count(inst).expect("count CPUs");
    let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    let cpus: Vec<usize> = (0..n)
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .collect();
    assert!(!cpus.is_empty(), "no CPU of the tracing instance is usable");
    cpus
}

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).expect("cpu index");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .unwrap_or_else(|e| panic!("cannot pin to CPU {cpu}: {e}"));
}

/// Pins the calling thread to `cpu` and writes each of `texts` into the
/// `trace_marker` of the instance at `inst_dir`, one write() each.
pub fn write_markers(inst_dir: &Path, cpu: usize, texts: impl IntoIterator<Item = String>) {
    pin_to_cpu(cpu);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(inst_dir.join("trace_marker"))
        .expect("open trace_marker");
    for t in texts {
        f.write_all(t.as_bytes()).expect("write trace_marker");
    }
}

/// The settings of an instance that a recording may change, to compare before and
/// after, or to put back after a program that does not restore them.
#[derive(Debug, PartialEq)]
pub struct Settings {
    pub events: Vec<EventName>,
    pub tracing_on: bool,
    pub buffer_kb: u64,
    pub clock: String,
    pub tracer: String,
}

impl Settings {
    pub fn read(inst: &Instance) -> Settings {
        Settings {
            events: inst.enabled_events().unwrap(),
            tracing_on: inst.tracing_on().unwrap(),
            buffer_kb: inst.buffer_size_kb().unwrap(),
            clock: inst.trace_clock().unwrap().0,
            tracer: inst.current_tracer().unwrap(),
        }
    }

    /// Puts back what differs.
    pub fn restore(&self, inst: &Instance) {
        let now = Settings::read(inst);
        for ev in &now.events {
            if !self.events.contains(ev) {
                inst.set_event_enabled(ev, false).unwrap();
            }
        }
        for ev in &self.events {
            if !now.events.contains(ev) {
                inst.set_event_enabled(ev, true).unwrap();
            }
        }
        if now.clock != self.clock {
            inst.set_trace_clock(&self.clock).unwrap();
        }
        if now.tracer != self.tracer {
            inst.set_current_tracer(&self.tracer).unwrap();
        }
        if now.buffer_kb != self.buffer_kb {
            inst.set_buffer_size_kb(self.buffer_kb).unwrap();
        }
        if now.tracing_on != self.tracing_on {
            inst.set_tracing_on(self.tracing_on).unwrap();
        }
    }
}

/// Path of the lock file every test program that records on the top-level buffer
/// takes (other programs take it too: keep the path).
pub const TOP_LOCK: &str = "/tmp/tracecmd-rs-top-buffer.lock";

/// Held while a test records on the top-level buffer; released on drop.
pub struct TopBufferLock {
    _guard: std::sync::MutexGuard<'static, ()>,
    _file: nix::fcntl::Flock<std::fs::File>,
}

/// Serialises tests that record on the top-level buffer, across test threads
/// (a mutex) and across test programs (an flock on [`TOP_LOCK`]).
pub fn lock_top_buffer() -> TopBufferLock {
    static TOP: Mutex<()> = Mutex::new(());
    let guard = TOP.lock().unwrap_or_else(|p| p.into_inner());
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(TOP_LOCK)
        .expect("open the top-buffer lock file");
    let file = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock the top buffer");
    expand_top_buffer();
    TopBufferLock {
        _guard: guard,
        _file: file,
    }
}

/// A top buffer fresh from boot reads `7 (expanded: 1408)` and grows for good at
/// its first use, after which it reads the kernel's rounding of 1408 (1410): a
/// test that compares settings before and after its first recording would see a
/// change no program can undo. Expanding it first (what any recording does) makes
/// "before" the state that lasts.
fn expand_top_buffer() {
    let top = Instance::top().expect("tracefs top instance");
    let text = top.read("buffer_size_kb").expect("read buffer_size_kb");
    if let Some(BufferSize::Uniform {
        kb,
        expands_to: Some(to),
    }) = BufferSize::parse(&text)
    {
        top.set_buffer_size_kb(kb.max(to))
            .expect("expand the top-level buffer");
    }
}

/// Writes `n` markers "tcrs marker I on cpu CPU" into the instance's trace_marker
/// from a thread pinned to `cpu`, and waits for it.
pub fn markers_on_cpu(inst: &Instance, cpu: usize, n: usize) {
    std::thread::scope(|s| {
        s.spawn(|| {
            write_markers(
                inst.path(),
                cpu,
                (0..n).map(|i| format!("tcrs marker {i} on cpu {cpu}")),
            )
        });
    });
}
