//! Copies a CPU's data from its temporary file into the trace file.
//!
//! `copy_file_range` on a file system without shared extents (ext4) copies every
//! byte from the source's page cache into the destination's: on a saturated
//! `listen` that copy was most of the listener's CPU time (cli/bench/README.md).
//! Here the source pages are spliced into a pipe (no copy: the pipe refers to the
//! page cache) and written with `O_DIRECT` from there (the recorder's
//! [`Uncached`] writes), so the pages go to the device as they are. What cannot
//! go that way (an unaligned tail, a file system that refuses `O_DIRECT` or
//! splice) is written as before.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::fcntl::{OFlag, SpliceFFlags};

use crate::recorder::{grow_pipe, Uncached};

/// Copies `src` from its position to its end into `out` at `out`'s position, and
/// leaves `out` positioned after it. Returns the bytes copied.
pub(crate) fn copy_cpu_data(src: &mut File, out: &mut File) -> io::Result<u64> {
    let start = src.stream_position()?;
    let mut direct = Uncached::new();
    let (pr, pw) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    let cap = grow_pipe(pr.as_fd(), 4096);
    let mut off = start as i64;
    loop {
        let n = match nix::fcntl::splice(
            src.as_fd(),
            Some(&mut off),
            pw.as_fd(),
            None,
            cap,
            SpliceFFlags::SPLICE_F_MOVE,
        ) {
            Ok(0) => break,
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            // No splice from this file: copy the rest (nothing is in the pipe).
            Err(Errno::EINVAL) => {
                src.seek(SeekFrom::Start(off as u64))?;
                io::copy(src, out)?;
                break;
            }
            Err(e) => return Err(e.into()),
        };
        let mut left = n;
        while left > 0 {
            let k = match direct.write(pr.as_fd(), out.as_fd(), left) {
                Some(r) => r,
                None => nix::fcntl::splice(
                    pr.as_fd(),
                    None,
                    out.as_fd(),
                    None,
                    left,
                    SpliceFFlags::SPLICE_F_MOVE,
                ),
            };
            match k {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => left -= k,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let end = src.stream_position()?.max(off as u64);
    src.seek(SeekFrom::Start(end))?;
    Ok(end - start)
}
