//! Stopping a recording: [`StopHandle`], an async-signal-safe stop flag with a
//! self-pipe, and the waits of the recorder that such a stop ends at once.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::time::TimeSpec;

use super::error::{sys, RecorderError};

/// Stops a recording; cloneable and usable from anywhere.
///
/// [`StopHandle::stop`] stores to an atomic and writes one byte to a non-blocking
/// self-pipe: async-signal-safe (no lock, no allocation), callable from a signal
/// handler in the recording thread or from any other thread, and it wakes a recorder
/// waiting in `poll()` at once. A stop is never lost: one that arrives before or while
/// [`CpuRecorder::record`](super::CpuRecorder::record) starts makes that call flush and return.
#[derive(Clone, Debug)]
pub struct StopHandle(Arc<StopState>);

impl StopHandle {
    /// A handle on `state`.
    pub(super) fn of(state: &Arc<StopState>) -> StopHandle {
        StopHandle(Arc::clone(state))
    }

    /// Asks the recorder to flush and return from [`CpuRecorder::record`](super::CpuRecorder::record).
    pub fn stop(&self) {
        self.0.request();
    }
}

/// The stop flag (the truth) and the self-pipe that wakes waits (a hint).
#[derive(Debug)]
pub(super) struct StopState {
    requested: AtomicBool,
    wake_read: OwnedFd,
    wake_write: OwnedFd,
}

impl StopState {
    pub(super) fn new() -> Result<StopState, RecorderError> {
        let (wake_read, wake_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .map_err(|e| RecorderError::Pipe(sys(e)))?;
        Ok(StopState {
            requested: AtomicBool::new(false),
            wake_read,
            wake_write,
        })
    }

    /// Async-signal-safe: an atomic store and a write(2).
    #[inline]
    pub(super) fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        // A full pipe (EAGAIN) already wakes the waits.
        let _ = nix::unistd::write(&self.wake_write, &[1]);
    }

    #[inline]
    pub(super) fn pending(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Consumes a pending stop.
    #[inline]
    pub(super) fn take(&self) -> bool {
        let taken = self.requested.swap(false, Ordering::SeqCst);
        if taken {
            self.drain();
        }
        taken
    }

    /// Empties the wake pipe (the flag, not the pipe, says whether a stop is pending).
    fn drain(&self) {
        let mut buf = [0u8; 64];
        while let Ok(64) = nix::unistd::read(self.wake_read.as_raw_fd(), &mut buf) {}
    }

    /// Waits up to `timeout` for `events` on `fd` (if any) or, with `watch_stop`, a stop;
    /// true if `fd` reported anything. A signal ends the wait early too (poll is never
    /// restarted). Without `watch_stop` a pending stop's byte cannot end the wait, so a
    /// caller that already knows about the stop does not spin.
    pub(super) fn wait(
        &self,
        fd: Option<BorrowedFd<'_>>,
        events: PollFlags,
        timeout: Duration,
        watch_stop: bool,
    ) -> bool {
        let wake = self.wake_read.as_fd();
        let mut fds = [
            PollFd::new(fd.unwrap_or(wake), events),
            PollFd::new(wake, PollFlags::POLLIN),
        ];
        let (from, to) = match (fd.is_some(), watch_stop) {
            (true, true) => (0, 2),
            (true, false) => (0, 1),
            (false, true) => (1, 2),
            (false, false) => (0, 0),
        };
        let timeout = Some(TimeSpec::from_duration(timeout));
        if !matches!(ppoll(&mut fds[from..to], timeout, None), Ok(k) if k > 0) {
            return false;
        }
        let fired = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
        if watch_stop && fired(&fds[1]) && !self.pending() {
            // A byte left over from a stop that was already taken.
            self.drain();
        }
        fd.is_some() && fired(&fds[0])
    }
}
