//! A connection with a receive deadline (spec §1.9).
//!
//! [`Channel`] borrows a file descriptor (socket, FIFO or virtio port) and reads from
//! it with `poll` before every `read`, so a deadline that started at the first byte
//! of a message covers the whole message. The default timeout is 5 s, the value of
//! the C original; `TRACECMD_MSG_TIMEOUT_MS` (milliseconds, negative or `inf` for no
//! timeout) overrides it at first use, and [`set_default_timeout`] at any time.

use super::{MsgError, Result};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::MsgFlags;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// The C original's `MSG_WAIT_MSEC`.
const DEFAULT_TIMEOUT_MS: i64 = 5000;
const UNSET: i64 = i64::MIN;
const INFINITE: i64 = -1;

static TIMEOUT_MS: AtomicI64 = AtomicI64::new(UNSET);

/// Parses a `TRACECMD_MSG_TIMEOUT_MS` value: milliseconds, or a negative number or
/// `inf` for no timeout (`Some(None)`). `None` if the text is neither.
pub fn parse_timeout(v: &str) -> Option<Option<Duration>> {
    let v = v.trim();
    if v.eq_ignore_ascii_case("inf") || v.eq_ignore_ascii_case("infinite") {
        return Some(None);
    }
    let ms = v.parse::<i64>().ok()?;
    Some((ms >= 0).then(|| Duration::from_millis(ms as u64)))
}

fn to_ms(timeout: Option<Duration>) -> i64 {
    match timeout {
        Some(d) => d.as_millis().min(i64::MAX as u128) as i64,
        None => INFINITE,
    }
}

fn timeout_from_env() -> i64 {
    let Ok(v) = std::env::var("TRACECMD_MSG_TIMEOUT_MS") else {
        return DEFAULT_TIMEOUT_MS;
    };
    match parse_timeout(&v) {
        Some(t) => to_ms(t),
        None => {
            log::warn!("TRACECMD_MSG_TIMEOUT_MS={v:?} is not a number of milliseconds or \"inf\"; using {DEFAULT_TIMEOUT_MS} ms");
            DEFAULT_TIMEOUT_MS
        }
    }
}

/// The receive timeout new channels get: `None` means wait forever.
pub fn default_timeout() -> Option<Duration> {
    let mut ms = TIMEOUT_MS.load(Ordering::Relaxed);
    if ms == UNSET {
        let env = timeout_from_env();
        ms = match TIMEOUT_MS.compare_exchange(UNSET, env, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => env,
            Err(current) => current,
        };
    }
    (ms >= 0).then(|| Duration::from_millis(ms as u64))
}

/// Sets the receive timeout of channels created from now on (`None` = infinite).
pub fn set_default_timeout(timeout: Option<Duration>) {
    TIMEOUT_MS.store(to_ms(timeout), Ordering::Relaxed);
}

/// How a receive waits for its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The channel's timeout, for the whole message.
    Timed,
    /// No timeout (where the C original blocks), but a signal interrupts the wait
    /// with [`MsgError::Interrupted`].
    Blocking,
}

/// The deadline of one message, started when the receive starts.
#[derive(Debug)]
pub(crate) struct Deadline {
    at: Option<Instant>,
    ms: u64,
    blocking: bool,
    got_any: bool,
}

/// A borrowed connection plus the receive timeout to use on it.
#[derive(Debug, Clone, Copy)]
pub struct Channel<'fd> {
    fd: BorrowedFd<'fd>,
    timeout: Option<Duration>,
}

impl<'fd> Channel<'fd> {
    /// A channel on `fd` with the [`default_timeout`].
    pub fn new(fd: BorrowedFd<'fd>) -> Self {
        Channel {
            fd,
            timeout: default_timeout(),
        }
    }

    /// The same channel with another timeout (`None` = infinite).
    pub fn with_timeout(self, timeout: Option<Duration>) -> Self {
        Channel { timeout, ..self }
    }

    /// The underlying descriptor.
    pub fn fd(&self) -> BorrowedFd<'fd> {
        self.fd
    }

    /// The receive timeout of this channel.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    pub(crate) fn deadline(&self, wait: Wait) -> Deadline {
        let (at, ms) = match (wait, self.timeout) {
            (Wait::Timed, Some(t)) => (Some(Instant::now() + t), t.as_millis() as u64),
            _ => (None, 0),
        };
        Deadline {
            at,
            ms,
            blocking: wait == Wait::Blocking,
            got_any: false,
        }
    }

    /// Waits until the fd is readable or the deadline passes.
    pub(crate) fn wait_for_input(&self, dl: &mut Deadline) -> Result<()> {
        loop {
            let timeout = match dl.at {
                None => PollTimeout::NONE,
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        // A thread that waited for a CPU past its deadline still
                        // takes what has arrived (hundreds of sessions on 2 CPUs).
                        let mut fds = [PollFd::new(self.fd, PollFlags::POLLIN)];
                        if matches!(nix::poll::poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0) {
                            return Ok(());
                        }
                        return Err(MsgError::TimedOut(dl.ms));
                    }
                    // Round up so that a sub-millisecond rest does not spin.
                    let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as u32;
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [PollFd::new(self.fd, PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, timeout) {
                Ok(0) => {
                    if dl.at.is_some() {
                        continue; // re-check the clock; times out above
                    }
                }
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => {
                    // Before the first byte (as the C original's poll) or in a
                    // blocking wait, a signal ends the call; mid-message with a
                    // deadline, keep going so the stream stays in sync.
                    if dl.blocking || !dl.got_any || dl.at.is_none() {
                        return Err(MsgError::Interrupted);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads exactly `buf.len()` bytes within the deadline `dl`.
    pub(crate) fn read_exact(&self, buf: &mut [u8], dl: &mut Deadline) -> Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            self.wait_for_input(dl)?;
            match nix::unistd::read(self.fd.as_raw_fd(), &mut buf[filled..]) {
                Ok(0) => return Err(MsgError::Closed),
                Ok(n) => {
                    filled += n;
                    dl.got_any = true;
                }
                Err(Errno::EAGAIN) => continue,
                Err(Errno::EINTR) => {
                    if dl.blocking || !dl.got_any || dl.at.is_none() {
                        return Err(MsgError::Interrupted);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes; the deadline covers all of them.
    pub fn recv_exact(&self, buf: &mut [u8], wait: Wait) -> Result<()> {
        let mut dl = self.deadline(wait);
        self.read_exact(buf, &mut dl)
    }

    /// Reads whatever is available (at least one byte), or 0 at end of stream.
    pub fn recv_some(&self, buf: &mut [u8], wait: Wait) -> Result<usize> {
        let mut dl = self.deadline(wait);
        loop {
            self.wait_for_input(&mut dl)?;
            match nix::unistd::read(self.fd.as_raw_fd(), buf) {
                Ok(n) => return Ok(n),
                Err(Errno::EAGAIN) => continue,
                Err(Errno::EINTR) => return Err(MsgError::Interrupted),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Writes all of `buf`, looping over short writes. Sockets are written with
    /// `MSG_NOSIGNAL`, so a vanished peer is an error and not a SIGPIPE.
    pub fn send_all(&self, mut buf: &[u8]) -> Result<()> {
        let mut socket = true;
        while !buf.is_empty() {
            let r = if socket {
                nix::sys::socket::send(self.fd.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL)
            } else {
                nix::unistd::write(self.fd.as_fd(), buf)
            };
            match r {
                Ok(0) => {
                    return Err(MsgError::Send(std::io::Error::from(
                        std::io::ErrorKind::WriteZero,
                    )))
                }
                Ok(n) => buf = &buf[n..],
                Err(Errno::ENOTSOCK) if socket => socket = false,
                Err(Errno::EINTR) => continue,
                // Only a send timeout (SO_SNDTIMEO) makes a blocking socket say this.
                Err(Errno::EAGAIN) => {
                    return Err(MsgError::Send(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the peer took no data within the send timeout; it stopped reading",
                    )))
                }
                Err(e) => return Err(MsgError::Send(std::io::Error::from_raw_os_error(e as i32))),
            }
        }
        Ok(())
    }
}
