//! A short scheduler time slice for the thread that drains the ring buffer.
//!
//! The kernel wakes a recorder when its buffer reaches `buffer_percent`; what is left
//! of the buffer then has to last until the thread gets a CPU. On a busy machine the
//! thread was seen waiting 2–4 ms behind threads that had just been picked, and at
//! 600k events/s per CPU a 1 MiB buffer at 50% has about 6 ms left. Since Linux 6.12 a
//! thread of the normal scheduling class can ask for a shorter slice
//! (`sched_attr.sched_runtime`, at least 0.1 ms, no privilege needed); the EEVDF
//! scheduler then gives it an earlier deadline, so it is picked sooner once woken. It
//! does not get more CPU time. Older kernels ignore the field.
//!
//! Only a thread of the normal or batch class is changed, and its settings come back
//! when recording ends.

use std::io;
use std::mem::size_of;

/// The slice asked for while recording: the shortest the kernel takes.
pub(super) const RECORDING_SLICE_NS: u64 = 100_000;

/// The calling thread's scheduling attributes.
pub(super) fn get() -> io::Result<libc::sched_attr> {
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

/// Sets the calling thread's slice, keeping its policy, nice value and
/// reset-on-fork flag. 0 means the kernel's default slice.
fn set_slice(like: &libc::sched_attr, slice_ns: u64) -> io::Result<()> {
    // SAFETY: as in get().
    let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
    attr.size = size_of::<libc::sched_attr>() as u32;
    attr.sched_policy = like.sched_policy;
    attr.sched_flags = like.sched_flags & libc::SCHED_FLAG_RESET_ON_FORK as u64;
    attr.sched_nice = like.sched_nice;
    attr.sched_runtime = slice_ns;
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

/// The recording slice of the calling thread; dropping it puts back what the thread had.
#[derive(Debug)]
pub(super) struct ShortSlice {
    /// What to put back: the attributes before, and the slice to ask for (0: the default).
    restore: Option<(libc::sched_attr, u64)>,
}

impl ShortSlice {
    /// Asks for [`RECORDING_SLICE_NS`] when the thread is in the normal or batch class.
    /// Failing that changes nothing (some sandboxes refuse the system call).
    pub(super) fn request() -> ShortSlice {
        ShortSlice {
            restore: Self::apply()
                .map_err(|e| log::debug!("no short scheduler slice for the recorder: {e}"))
                .ok()
                .flatten(),
        }
    }

    fn apply() -> io::Result<Option<(libc::sched_attr, u64)>> {
        let before = get()?;
        let policy = before.sched_policy as libc::c_int;
        if policy != libc::SCHED_OTHER && policy != libc::SCHED_BATCH {
            return Ok(None);
        }
        // Whether the thread had the default slice or one of its own: the kernel reports
        // the slice in use either way, so compare with the default.
        set_slice(&before, 0)?;
        let default = get()?.sched_runtime;
        let own = if before.sched_runtime == default {
            0
        } else {
            before.sched_runtime
        };
        if let Err(e) = set_slice(&before, RECORDING_SLICE_NS) {
            let _ = set_slice(&before, own);
            return Err(e);
        }
        Ok(Some((before, own)))
    }
}

impl Drop for ShortSlice {
    fn drop(&mut self) {
        if let Some((before, own)) = self.restore.take() {
            // Keep whatever else changed meanwhile (a renice from outside).
            let now = get().unwrap_or(before);
            if let Err(e) = set_slice(&now, own) {
                log::warn!("could not restore the recording thread's scheduler slice: {e}");
            }
        }
    }
}
