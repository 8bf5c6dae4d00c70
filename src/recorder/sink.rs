//! The output side of a recorder ([`Sink`]): one fd, or the two files of the max-kb
//! ring (spec §4.6) that take turns every half of the limit and are merged, oldest
//! data first, at the end.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;

use super::error::{sys, RecorderError};

/// The output side: one fd, or the two files of the max-kb ring.
#[derive(Debug)]
pub(super) struct Sink {
    files: [Option<File>; 2],
    /// Index of the file being written.
    cur: usize,
    /// Bytes per ring half (0 = unlimited).
    half_bytes: u64,
    /// Bytes written to the current file since it was (re)started.
    cur_bytes: u64,
    /// Whether the two halves have been merged (or there is nothing to merge).
    merged: bool,
}

impl Sink {
    /// One output, no size limit.
    pub(super) fn stream(file: File) -> Sink {
        Sink {
            files: [Some(file), None],
            cur: 0,
            half_bytes: 0,
            cur_bytes: 0,
            merged: true,
        }
    }

    /// A max-kb ring: `first` holds the result, the files take turns every
    /// `half_bytes` (more than 0) bytes.
    pub(super) fn ring(first: File, second: File, half_bytes: u64) -> Sink {
        debug_assert!(half_bytes > 0);
        Sink {
            files: [Some(first), Some(second)],
            cur: 0,
            half_bytes,
            cur_bytes: 0,
            merged: false,
        }
    }

    /// Stands in while the real output is with a write-behind thread.
    pub(super) fn placeholder() -> Sink {
        Sink {
            files: [None, None],
            cur: 0,
            half_bytes: 0,
            cur_bytes: 0,
            merged: true,
        }
    }

    #[inline]
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.files[self.cur]
            .as_ref()
            .expect("the current output file is always open")
            .as_fd()
    }

    /// Bytes that still fit into the current ring half.
    #[inline]
    pub(super) fn room(&self) -> usize {
        if self.half_bytes == 0 {
            usize::MAX
        } else {
            (self.half_bytes - self.cur_bytes) as usize
        }
    }

    /// The open output files.
    pub(super) fn files(&self) -> impl Iterator<Item = &File> {
        self.files.iter().flatten()
    }

    /// Bytes written to the current file since it was (re)started: a whole number of
    /// pages after every whole page written, since ring halves are whole pages.
    #[inline]
    pub(super) fn cur_bytes(&self) -> u64 {
        self.cur_bytes
    }

    /// The file that holds the result (tests look at what was written).
    #[cfg(test)]
    pub(super) fn into_first(mut self) -> Option<File> {
        self.files[0].take()
    }

    /// Accounts `n` written bytes; moves to the other half when this one is full.
    #[inline]
    pub(super) fn advance(&mut self, n: usize) -> Result<(), RecorderError> {
        self.cur_bytes += n as u64;
        if self.half_bytes != 0 && self.cur_bytes >= self.half_bytes {
            let next = 1 - self.cur;
            let file = self.files[next].as_mut().expect("ring has two files");
            file.seek(SeekFrom::Start(0))
                .and_then(|_| file.set_len(0))
                .map_err(RecorderError::Output)?;
            self.cur = next;
            self.cur_bytes = 0;
        }
        Ok(())
    }

    /// Puts the ring back together in `files[0]`, oldest data first (spec §4.6).
    pub(super) fn merge(&mut self) -> Result<(), RecorderError> {
        if self.merged {
            return Ok(());
        }
        self.merged = true;
        let (Some(first), Some(second)) = (&self.files[0], &self.files[1]) else {
            return Ok(());
        };
        let len = |f: &File| f.metadata().map(|m| m.len()).map_err(RecorderError::Merge);
        let (len1, len2) = (len(first)?, len(second)?);
        if self.cur == 1 {
            // first holds the older, full half: append the newer one.
            copy_range(second, 0, first, len1, len2)
        } else if len2 > 0 {
            // first holds the newest data, second the older half: second ++ first,
            // built in second and copied back over first.
            copy_range(first, 0, second, len2, len1)?;
            copy_range(second, 0, first, 0, len1 + len2)
        } else {
            Ok(())
        }
    }
}

/// Copies `len` bytes from `src` at `src_off` to `dst` at `dst_off`.
fn copy_range(
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: u64,
    len: u64,
) -> Result<(), RecorderError> {
    let (mut src_off, mut dst_off, mut left) = (src_off as i64, dst_off as i64, len);
    while left > 0 {
        let chunk = left.min(1 << 30) as usize;
        match nix::fcntl::copy_file_range(src, Some(&mut src_off), dst, Some(&mut dst_off), chunk) {
            Ok(0) => break,
            Ok(n) => left -= n as u64,
            Err(Errno::EINTR) => {}
            Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => break,
            Err(e) => return Err(RecorderError::Merge(sys(e))),
        }
    }
    // What copy_file_range could not do, a plain copy does.
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = src
            .read_at(&mut buf[..want], src_off as u64)
            .map_err(RecorderError::Merge)?;
        if n == 0 {
            return Err(RecorderError::Merge(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a ring file is shorter than its size said",
            )));
        }
        dst.write_all_at(&buf[..n], dst_off as u64)
            .map_err(RecorderError::Merge)?;
        src_off += n as i64;
        dst_off += n as i64;
        left -= n as u64;
    }
    Ok(())
}
