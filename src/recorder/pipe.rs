//! The pipes that carry spliced pages: made non-blocking and close-on-exec, and
//! grown towards 1 MiB as far as the system allows (spec §5.2 item 25).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use super::error::{sys, RecorderError};

/// Size the splice pipe is grown to when the system allows (pipe-max-size caps it).
const PIPE_TARGET: usize = 1 << 20;

/// Grows a pipe towards [`PIPE_TARGET`] (capped by pipe-max-size) and returns the
/// capacity the kernel really gave it (F_GETPIPE_SZ/F_SETPIPE_SZ return values).
pub(crate) fn grow_pipe(fd: BorrowedFd<'_>, unit: usize) -> usize {
    let mut capacity = fcntl(fd.as_raw_fd(), FcntlArg::F_GETPIPE_SZ)
        .map(|n| n as usize)
        .unwrap_or(unit);
    let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(PIPE_TARGET);
    let mut want = PIPE_TARGET.min(max).max(unit);
    while want > capacity {
        match fcntl(fd.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(want as libc::c_int)) {
            Ok(n) => {
                capacity = n as usize;
                break;
            }
            // Over the unprivileged per-user limit or out of memory: try smaller.
            Err(_) => want /= 2,
        }
    }
    capacity
}

/// A new pipe, grown; returns its read end, write end and capacity.
pub(super) fn new_pipe(unit: usize) -> Result<(OwnedFd, OwnedFd, usize), RecorderError> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| RecorderError::Pipe(sys(e)))?;
    let capacity = grow_pipe(r.as_fd(), unit);
    Ok((r, w, capacity))
}
