//! Scheduling of the thread that drains the ring buffer while it records.
//!
//! The kernel wakes a recorder when its buffer reaches `buffer_percent`; what is left
//! of the buffer then has to last until the thread gets a CPU. perf sched on the
//! recorder benchmark showed the woken thread waiting 2–4 ms behind threads the
//! scheduler had picked (kernel threads, the traced program's threads), and at 800k
//! events/s per CPU a 1 MiB buffer at 50% has about 4 ms left: such waits are what
//! lost events. The draining thread does little per wake-up (it moves page references
//! into pipes; the file is written by another thread), so it is the thread to run
//! first.
//!
//! While recording, a thread of the normal or batch class therefore becomes
//! `SCHED_FIFO` priority 1, the lowest real-time priority, when it may (root,
//! `CAP_SYS_NICE` or `RLIMIT_RTPRIO`), with reset-on-fork so that nothing it starts
//! inherits it; `perf record --realtime` does the same on request. On the benchmark
//! the longest such wait fell to under 1 ms. `TRACECMD_RS_NO_RT=1` turns that off.
//! Otherwise (or when refused) the thread asks for a 0.1 ms time slice: since Linux
//! 6.12 the EEVDF scheduler gives a thread with a shorter slice an earlier deadline,
//! so it is picked sooner once woken, without more CPU time (no privilege needed;
//! older kernels ignore it). Either way the thread's own settings come back when
//! recording ends. Threads that already have a real-time or other policy are left
//! alone.
//!
//! A thread that drains one CPU's ring buffer also stays on that CPU while it records
//! ([`RecordingAffinity`]). The page swap in the kernel (`ring_buffer_read_page`,
//! interrupts off) was 2.8 times the C recorder's samples for the same pages when our
//! thread ran where the scheduler put it; pinned (`bench -P`, 2026-12-03), the
//! recorder benchmark's CPU per GiB fell by 15–21% at 300k and 500k markers/s per CPU,
//! and the `max` step lost fewer events. The write-behind thread, which the recording
//! thread starts at its first move, inherits the pin and so runs on the same CPU, as
//! it did in those runs (A/B against a writer left free: the same or less CPU).
//! Only when the CPU is one the thread may already run on and not its only one: a
//! recording started under `taskset`, or a CPU kept out of the default mask
//! (`isolcpus`), is left as it is. `TRACECMD_RS_NO_PIN=1` turns it off. The recording
//! thread's mask comes back when recording ends.

use std::io;
use std::mem::size_of;

/// The slice asked for while recording without real-time priority: the shortest the
/// kernel takes.
const RECORDING_SLICE_NS: u64 = 100_000;
/// The environment variable that keeps the recording thread out of `SCHED_FIFO`.
const NO_RT_ENV: &str = "TRACECMD_RS_NO_RT";
/// The environment variable that keeps the recording thread off its CPU's pin.
const NO_PIN_ENV: &str = "TRACECMD_RS_NO_PIN";

/// The recording thread kept on the CPU whose buffer it drains; dropping it puts the
/// thread's CPU mask back.
#[derive(Debug)]
pub(super) struct RecordingAffinity {
    restore: Option<nix::sched::CpuSet>,
}

impl RecordingAffinity {
    /// Pins the calling thread to `cpu` if it may run there and elsewhere too, unless
    /// [`NO_PIN_ENV`] is set. Failing changes nothing.
    pub(super) fn request(cpu: usize) -> RecordingAffinity {
        let none = RecordingAffinity { restore: None };
        if std::env::var_os(NO_PIN_ENV).is_some() {
            return none;
        }
        let me = nix::unistd::Pid::from_raw(0);
        let Ok(before) = nix::sched::sched_getaffinity(me) else {
            return none;
        };
        let allowed = (0..nix::sched::CpuSet::count()).filter(|&c| before.is_set(c) == Ok(true));
        if before.is_set(cpu) != Ok(true) || allowed.count() < 2 {
            return none;
        }
        let mut only = nix::sched::CpuSet::new();
        if only.set(cpu).is_err() || nix::sched::sched_setaffinity(me, &only).is_err() {
            return none;
        }
        log::debug!("recording thread kept on CPU {cpu}");
        RecordingAffinity {
            restore: Some(before),
        }
    }
}

impl Drop for RecordingAffinity {
    fn drop(&mut self) {
        if let Some(before) = self.restore.take() {
            let me = nix::unistd::Pid::from_raw(0);
            if let Err(e) = nix::sched::sched_setaffinity(me, &before) {
                log::warn!("could not restore the recording thread's CPU mask: {e}");
            }
        }
    }
}

/// The calling thread's scheduling attributes.
fn get() -> io::Result<libc::sched_attr> {
    // SAFETY: sched_attr is plain old data, and all zeros is a valid value of it.
    let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most `size` bytes into `attr`, which has that size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut libc::sched_attr,
            size_of::<libc::sched_attr>() as libc::c_uint,
            0,
        )
    };
    if rc == 0 {
        Ok(attr)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the calling thread's policy, nice value (normal and batch), real-time
/// priority (FIFO), slice (normal and batch; 0: the kernel's default) and
/// reset-on-fork flag.
fn set(
    policy: u32,
    nice: i32,
    priority: u32,
    slice_ns: u64,
    reset_on_fork: bool,
) -> io::Result<()> {
    // SAFETY: as in get().
    let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
    attr.size = size_of::<libc::sched_attr>() as u32;
    attr.sched_policy = policy;
    attr.sched_nice = nice;
    attr.sched_priority = priority;
    attr.sched_runtime = slice_ns;
    if reset_on_fork {
        attr.sched_flags = libc::SCHED_FLAG_RESET_ON_FORK as u64;
    }
    // SAFETY: the kernel reads `attr.size` bytes from a valid, initialised sched_attr.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0,
            &attr as *const libc::sched_attr,
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn reset_on_fork(attr: &libc::sched_attr) -> bool {
    attr.sched_flags & libc::SCHED_FLAG_RESET_ON_FORK as u64 != 0
}

/// The recording thread's scheduling; dropping it puts back what the thread had.
#[derive(Debug)]
pub(super) struct RecordingSched {
    /// The attributes before, to put back.
    restore: Option<libc::sched_attr>,
}

impl RecordingSched {
    /// Real-time priority unless [`NO_RT_ENV`] is set or it is refused, else the short
    /// slice; for threads of the normal or batch class only. Failing both changes
    /// nothing (some sandboxes refuse the system calls). The thread goes straight to
    /// its recording settings, with no step in between that another thread could see.
    pub(super) fn request() -> RecordingSched {
        let rt = std::env::var_os(NO_RT_ENV).is_none();
        match Self::apply(rt) {
            Ok(Some((before, got))) => {
                log::debug!("recording thread scheduling: {got}");
                RecordingSched {
                    restore: Some(before),
                }
            }
            Ok(None) => RecordingSched { restore: None },
            Err(e) => {
                log::debug!("recording thread keeps its scheduling: {e}");
                RecordingSched { restore: None }
            }
        }
    }

    fn apply(rt: bool) -> io::Result<Option<(libc::sched_attr, &'static str)>> {
        let before = get()?;
        let policy = before.sched_policy as libc::c_int;
        if policy != libc::SCHED_OTHER && policy != libc::SCHED_BATCH {
            return Ok(None);
        }
        if rt && set(libc::SCHED_FIFO as u32, 0, 1, 0, true).is_ok() {
            return Ok(Some((before, "SCHED_FIFO 1")));
        }
        set(
            before.sched_policy,
            before.sched_nice,
            0,
            RECORDING_SLICE_NS,
            reset_on_fork(&before),
        )?;
        Ok(Some((before, "0.1 ms slice")))
    }

    /// Puts `before` back. The kernel reports the slice in use whether it is the
    /// default or one the thread asked for, so the thread first goes back to the
    /// default (slice 0, which follows later changes of the default) and asks for its
    /// old slice again only if that differs.
    fn put_back(before: &libc::sched_attr) -> io::Result<()> {
        let (policy, nice, fork) = (
            before.sched_policy,
            before.sched_nice,
            reset_on_fork(before),
        );
        set(policy, nice, 0, 0, fork)?;
        if get()?.sched_runtime != before.sched_runtime {
            set(policy, nice, 0, before.sched_runtime, fork)?;
        }
        Ok(())
    }
}

impl Drop for RecordingSched {
    fn drop(&mut self) {
        if let Some(before) = self.restore.take() {
            if let Err(e) = Self::put_back(&before) {
                log::warn!("could not restore the recording thread's scheduling: {e}");
            }
        }
    }
}
