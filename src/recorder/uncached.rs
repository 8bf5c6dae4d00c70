//! Writes of the write-behind thread that bypass the page cache.
//!
//! Splicing ring-buffer pages into a file through the page cache copies every page
//! and then has the file system track it as dirty data; on the recorder benchmark that
//! was most of the writer thread's CPU time. With `O_DIRECT` the pages go from the
//! pipe to the device as they are. The recorder's output stays what it was: a second
//! open file description of the same file, opened with `O_DIRECT`, writes at the
//! output's offset, and the output's offset is moved past what was written, so the
//! caller's fd ends where it would have ended.
//!
//! Only whole, aligned blocks go this way: a piece at an unaligned offset or of
//! unaligned length (the partial last page of a flush) is written through the output
//! as before. A file system that refuses `O_DIRECT` (at open or at the first write)
//! turns it off for the recorder; so does `TRACECMD_RS_NO_DIRECT` in the environment
//! (for a slow disk, where the page cache absorbs bursts that 16 MiB of pipes cannot).

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag, SpliceFFlags};
use nix::unistd::{lseek, Whence};

/// Offsets and lengths of direct writes are multiples of this (the largest logical
/// block size of common devices; ring-buffer pages are whole multiples of it).
const ALIGN: usize = 4096;
/// The environment variable that turns direct writes off.
const NO_DIRECT_ENV: &str = "TRACECMD_RS_NO_DIRECT";

/// The direct (page-cache bypassing) side of one output.
#[derive(Debug)]
pub(crate) struct Uncached {
    /// The `O_DIRECT` description and the raw fd of the output file it belongs to.
    file: Option<(File, i32)>,
    /// Off for good.
    off: bool,
    /// A direct write has worked (a later refusal is about that one piece only).
    worked: bool,
    /// Bytes written directly.
    pub(super) bytes: u64,
}

impl Uncached {
    /// Direct writes unless [`NO_DIRECT_ENV`] is set.
    pub(crate) fn new() -> Uncached {
        Self::unless(std::env::var_os(NO_DIRECT_ENV).is_some())
    }

    /// Direct writes unless `off`.
    pub(super) fn unless(off: bool) -> Uncached {
        if off {
            log::info!("{NO_DIRECT_ENV} is set: the recorder writes through the page cache");
        }
        Uncached {
            file: None,
            off,
            worked: false,
            bytes: 0,
        }
    }

    /// Most whole pages one direct write to `out` can send as a single device request,
    /// when that is known and direct writes are not turned off. A pipe's pages are
    /// scattered in memory, so each is a segment of its own: the block layer splits a
    /// write of more pages than the device's `max_segments` (254 for virtio-blk) into
    /// two requests, and a full 1 MiB pipe (256 pages) cost two. Filling pipes to this
    /// many pages made it one (1.9 to 1.15 write requests per MiB on the recorder
    /// benchmark).
    pub(super) fn request_pages(out: BorrowedFd<'_>) -> Option<usize> {
        if std::env::var_os(NO_DIRECT_ENV).is_some() {
            return None;
        }
        let st = nix::sys::stat::fstat(out.as_raw_fd()).ok()?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return None;
        }
        let dev = format!(
            "/sys/dev/block/{}:{}",
            libc::major(st.st_dev),
            libc::minor(st.st_dev)
        );
        // A partition has no queue of its own: its disk's is one level up.
        let queue = [format!("{dev}/queue"), format!("{dev}/../queue")]
            .into_iter()
            .find(|q| Path::new(q).is_dir())?;
        let read = |name: &str| -> Option<usize> {
            std::fs::read_to_string(format!("{queue}/{name}"))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let mut pages = read("max_segments")?;
        if let Some(kb) = read("max_sectors_kb") {
            pages = pages.min(kb * 1024 / ALIGN);
        }
        // Nonsense or tiny limits: better no limit than pipes of a few pages.
        (pages >= 16).then_some(pages)
    }

    /// Opens the direct description of `out` unless there is one; false when `out`
    /// cannot have one (not a regular file, opened for appending, or the file system
    /// refuses), which turns direct writes off.
    fn open_for(&mut self, out: BorrowedFd<'_>) -> bool {
        let raw = out.as_raw_fd();
        if matches!(&self.file, Some((_, fd)) if *fd == raw) {
            return true;
        }
        self.file = None;
        let usable = nix::sys::stat::fstat(raw)
            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
            && fcntl(raw, FcntlArg::F_GETFL)
                .is_ok_and(|fl| !OFlag::from_bits_truncate(fl).contains(OFlag::O_APPEND));
        if !usable {
            self.off = true;
            return false;
        }
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(format!("/proc/self/fd/{raw}"))
        {
            Ok(f) => {
                self.file = Some((f, raw));
                true
            }
            Err(e) => {
                log::info!("no direct writes to the output ({e}): writing through the page cache");
                self.off = true;
                false
            }
        }
    }

    /// Moves up to `len` bytes from `pipe` to `out` directly when that is possible for
    /// this piece: `None` means the caller writes it through `out` instead.
    pub(crate) fn write(
        &mut self,
        pipe: BorrowedFd<'_>,
        out: BorrowedFd<'_>,
        len: usize,
    ) -> Option<nix::Result<usize>> {
        if self.off || len < ALIGN || !self.open_for(out) {
            return None;
        }
        let pos = match lseek(out.as_raw_fd(), 0, Whence::SeekCur) {
            Ok(p) if p as usize % ALIGN == 0 => p,
            _ => return None,
        };
        let (file, _) = self.file.as_ref()?;
        let mut at = pos;
        let res = nix::fcntl::splice(
            pipe,
            None,
            file.as_fd(),
            Some(&mut at),
            len / ALIGN * ALIGN,
            SpliceFFlags::SPLICE_F_MOVE,
        );
        match res {
            Ok(n) => {
                if let Err(e) = lseek(out.as_raw_fd(), pos + n as i64, Whence::SeekSet) {
                    return Some(Err(e));
                }
                self.worked = true;
                self.bytes += n as u64;
                Some(Ok(n))
            }
            // Refused before anything was written: the file system does not take it
            // (then never again), or this piece's memory is not aligned.
            Err(Errno::EINVAL) => {
                if !self.worked {
                    log::info!("the output refuses direct writes: writing through the page cache");
                    self.off = true;
                    self.file = None;
                }
                None
            }
            Err(e) => Some(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn request_pages_come_from_the_files_block_queue() {
        // A pipe, and a file on a file system without a block device: no limit.
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert_eq!(Uncached::request_pages(r.as_fd()), None);
        if Path::new("/dev/shm").is_dir() {
            let path = format!("/dev/shm/tcrs-unit-{}-req", std::process::id());
            let f = File::create(&path).unwrap();
            let got = Uncached::request_pages(f.as_fd());
            std::fs::remove_file(&path).unwrap();
            assert_eq!(got, None, "tmpfs has no block queue");
        }
        // A file on a block device: the smaller of max_segments pages and
        // max_sectors_kb, as the disk's queue says.
        let dir = TempDir::new("blk-req");
        let f = File::create(dir.join("out")).unwrap();
        let st = nix::sys::stat::fstat(f.as_raw_fd()).unwrap();
        let (maj, min) = (libc::major(st.st_dev), libc::minor(st.st_dev));
        let dev = format!("/sys/dev/block/{maj}:{min}");
        if maj == 0 || !Path::new(&dev).exists() {
            // overlayfs, btrfs subvolumes and the like have an anonymous device.
            assert_eq!(Uncached::request_pages(f.as_fd()), None);
            return;
        }
        let queue = std::fs::canonicalize(&dev).unwrap();
        let queue = if queue.join("queue").is_dir() {
            queue.join("queue")
        } else {
            queue.parent().unwrap().join("queue")
        };
        let num = |n: &str| -> usize {
            std::fs::read_to_string(queue.join(n))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let want = num("max_segments").min(num("max_sectors_kb") / 4);
        assert_eq!(
            Uncached::request_pages(f.as_fd()),
            (want >= 16).then_some(want)
        );
    }
}
