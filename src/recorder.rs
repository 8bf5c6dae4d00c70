//! The per-CPU recorder (spec §4): moves ring-buffer pages from `trace_pipe_raw` (or
//! `snapshot_raw`, or a caller's fd such as a guest's FIFO) to a file, socket or pipe.
//!
//! Shape of the hot path: the input is always non-blocking and waited on with `poll()`
//! in bounded slices, so a stop is seen promptly whether it comes from a signal handler
//! in the recording thread (the poll returns EINTR) or from another thread (the slice
//! ends). Data goes `input → pipe → output` with `splice()`, as many pages per call as
//! the pipe holds; the pipe is grown towards [`PIPE_TARGET`] and its real capacity is
//! used (spec §5.2 item 25). The pipe is only refilled once it is empty: the kernel's
//! ring-buffer splice drops pages that do not fit into a partly full pipe.
//!
//! With `nosplice`, or when the kernel refuses splice on either side (EINVAL), the
//! recorder reads into a buffer and writes it out instead.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag, SpliceFFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::tracefs;

/// Longest single wait (input or output) before the stop flag is looked at again.
/// Bounds how long a stop from another thread takes to end a recording.
const WAIT_SLICE_MS: u16 = 20;
/// Size the splice pipe is grown to when the system allows (pipe-max-size caps it).
const PIPE_TARGET: usize = 1 << 20;
/// Pages per read/write batch on the copy (NOSPLICE) path.
const COPY_BATCH_PAGES: usize = 64;
/// How long a stopping recorder waits for an output that accepts nothing.
const STALL_LIMIT: Duration = Duration::from_secs(2);

/// What can go wrong while creating or running a recorder. Each variant maps to an
/// errno value for the C layer ([`RecorderError::errno`]).
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// No tracing directory is mounted.
    #[error(transparent)]
    NotMounted(#[from] tracefs::NotMounted),
    /// A file the recorder needs could not be opened or created.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A caller's argument makes no sense (negative CPU, missing second ring file...).
    #[error("invalid recorder argument: {0}")]
    Invalid(String),
    /// The intermediate splice pipe could not be set up.
    #[error("cannot create the splice pipe (too many open files?): {0}")]
    Pipe(io::Error),
    /// Reading the trace input failed.
    #[error("reading trace data from the input failed: {0}")]
    Input(io::Error),
    /// Writing to the output failed (disk full, reader gone...).
    #[error("writing trace data to the output failed: {0}")]
    Output(io::Error),
    /// While stopping, the output accepted nothing for [`STALL_LIMIT`].
    #[error("the output accepted no data for {} s while the recording was stopping; is its reader still running?", STALL_LIMIT.as_secs())]
    OutputStalled,
    /// Putting the two max-kb ring files back together failed.
    #[error("merging the max-kb ring files into the output failed: {0}")]
    Merge(io::Error),
}

impl RecorderError {
    /// The errno value a C caller sees for this error.
    pub fn errno(&self) -> i32 {
        match self {
            RecorderError::NotMounted(_) => libc::ENODEV,
            RecorderError::Invalid(_) => libc::EINVAL,
            RecorderError::OutputStalled => libc::EAGAIN,
            RecorderError::Open { source: e, .. }
            | RecorderError::Pipe(e)
            | RecorderError::Input(e)
            | RecorderError::Output(e)
            | RecorderError::Merge(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

fn sys(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Recording options: the `TRACECMD_RECORD_*` flags of spec §1.2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordFlags {
    /// read()/write() instead of splice.
    pub nosplice: bool,
    /// Read `snapshot_raw` instead of `trace_pipe_raw`.
    pub snapshot: bool,
    /// Blocking output side of splice (otherwise SPLICE_F_NONBLOCK).
    pub block: bool,
}

impl RecordFlags {
    /// `TRACECMD_RECORD_NOSPLICE`.
    pub const NOSPLICE: u32 = 1;
    /// `TRACECMD_RECORD_SNAPSHOT`.
    pub const SNAPSHOT: u32 = 2;
    /// `TRACECMD_RECORD_BLOCK`.
    pub const BLOCK: u32 = 4;

    /// From the C flag word; unknown bits are ignored, as the original does.
    pub fn from_bits(bits: u32) -> RecordFlags {
        RecordFlags {
            nosplice: bits & Self::NOSPLICE != 0,
            snapshot: bits & Self::SNAPSHOT != 0,
            block: bits & Self::BLOCK != 0,
        }
    }

    /// The C flag word.
    pub fn bits(self) -> u32 {
        (self.nosplice as u32) * Self::NOSPLICE
            | (self.snapshot as u32) * Self::SNAPSHOT
            | (self.block as u32) * Self::BLOCK
    }
}

/// Where a recorder reads from.
#[derive(Debug)]
pub enum Input {
    /// `<dir>/per_cpu/cpu<cpu>/trace_pipe_raw` (or `snapshot_raw` with the SNAPSHOT
    /// flag); `dir` is the tracing directory or an `instances/<name>` directory.
    Buffer {
        /// The buffer (instance) directory.
        dir: PathBuf,
        /// The CPU.
        cpu: usize,
    },
    /// An fd the recorder takes over, e.g. a guest's per-CPU FIFO (the virt recorder).
    Fd(OwnedFd),
}

impl Input {
    /// The top-level buffer of the tracing directory (tracefs or debugfs).
    pub fn top(cpu: usize) -> Result<Input, RecorderError> {
        Ok(Input::Buffer {
            dir: tracefs::tracing_dir()?,
            cpu,
        })
    }
}

/// Where a recorder writes to.
#[derive(Debug)]
pub enum Output {
    /// One fd (file, socket, pipe, virtio port) the recorder takes over.
    Stream(OwnedFd),
    /// The max-kb ring (spec §4.6): writes alternate between `first` and `second`
    /// every `max_kb / 2` KiB; [`CpuRecorder::finish`] merges both into `first` in
    /// time order. `max_kb == 0` means no limit (only `first` is used).
    Ring {
        /// The file that holds the result.
        first: OwnedFd,
        /// The second half (usually an unlinked file).
        second: OwnedFd,
        /// Size limit in KiB.
        max_kb: u32,
    },
}

fn create_output_file(path: &Path, read_write: bool) -> Result<File, RecorderError> {
    OpenOptions::new()
        .read(read_write)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| RecorderError::Open {
            path: path.to_path_buf(),
            source,
        })
}

impl Output {
    /// Creates (truncates) `path` with mode 0644 as a plain output.
    pub fn create_file(path: &Path) -> Result<Output, RecorderError> {
        Ok(Output::Stream(create_output_file(path, false)?.into()))
    }

    /// Creates `path` and `path.1` for a max-kb ring and unlinks `path.1` at once, so
    /// only `path` remains once the recorder is finished. `max_kb == 0` is a plain file.
    pub fn create_ring(path: &Path, max_kb: u32) -> Result<Output, RecorderError> {
        if max_kb == 0 {
            return Self::create_file(path);
        }
        let mut second_path = path.as_os_str().to_owned();
        second_path.push(".1");
        let second_path = PathBuf::from(second_path);
        let first = create_output_file(path, true)?;
        let second = match create_output_file(&second_path, true) {
            Ok(f) => f,
            Err(e) => {
                drop(first);
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        };
        if let Err(e) = std::fs::remove_file(&second_path) {
            log::warn!("could not unlink {}: {e}", second_path.display());
        }
        Ok(Output::Ring {
            first: first.into(),
            second: second.into(),
            max_kb,
        })
    }
}

/// Stops a recording; cloneable and usable from anywhere.
///
/// [`StopHandle::stop`] only stores to an atomic: it is async-signal-safe (no lock, no
/// allocation) and may be called from a signal handler in the recording thread or
/// from any other thread. A stop is never lost: one that arrives before or while
/// [`CpuRecorder::record`] starts makes that call flush and return.
#[derive(Clone, Debug)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    /// Asks the recorder to flush and return from [`CpuRecorder::record`].
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The output side: one fd, or the two files of the max-kb ring.
#[derive(Debug)]
struct Sink {
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
    fn fd(&self) -> BorrowedFd<'_> {
        self.files[self.cur]
            .as_ref()
            .expect("the current output file is always open")
            .as_fd()
    }

    /// Bytes that still fit into the current ring half.
    fn room(&self) -> usize {
        if self.half_bytes == 0 {
            usize::MAX
        } else {
            (self.half_bytes - self.cur_bytes) as usize
        }
    }

    /// Accounts `n` written bytes; moves to the other half when this one is full.
    fn advance(&mut self, n: usize) -> Result<(), RecorderError> {
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
    fn merge(&mut self) -> Result<(), RecorderError> {
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

/// How data is moved.
#[derive(Debug)]
enum Mover {
    /// `input → pipe → output` with splice; `pending` bytes sit in the pipe.
    Splice {
        read_end: OwnedFd,
        write_end: OwnedFd,
        capacity: usize,
        pending: usize,
    },
    /// read() into `buf`, write() out.
    Copy { buf: Vec<u8> },
}

/// Result of one attempt to move data.
enum Step {
    /// Bytes went from the input to the output.
    Moved(usize),
    /// The input has nothing (more) right now.
    Idle,
    /// Interrupted, or the mover changed: just go round again.
    Retry,
}

/// A per-CPU recorder (spec §4). See the module documentation for how it works.
#[derive(Debug)]
pub struct CpuRecorder {
    input: OwnedFd,
    /// The input is a ring buffer (`trace_pipe_raw`/`snapshot_raw`), whose partial last
    /// page only a read() returns (splice hands out full pages only).
    ring_buffer_input: bool,
    sink: Sink,
    mover: Mover,
    /// Read, padding and merge unit: the ring buffer's sub-buffer (page) size.
    page_size: usize,
    flags: RecordFlags,
    stop: Arc<AtomicBool>,
}

fn system_page_size() -> usize {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as usize,
        _ => 4096,
    }
}

/// The ring buffer's sub-buffer size of a buffer directory (kernels ≥ 6.8 let it differ
/// from the page size); the page size when the file is missing or unreadable.
fn subbuf_size(dir: &Path, page: usize) -> usize {
    let Ok(text) = std::fs::read_to_string(dir.join("buffer_subbuf_size_kb")) else {
        return page;
    };
    match text.trim().parse::<usize>() {
        Ok(kb) if kb > 0 && kb <= 1024 && (kb * 1024).is_power_of_two() => (kb * 1024).max(page),
        _ => {
            log::warn!(
                "ignoring unexpected buffer_subbuf_size_kb {:?} in {}",
                text.trim(),
                dir.display()
            );
            page
        }
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let fl = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(sys)?;
    let fl = OFlag::from_bits_retain(fl) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(fl)).map_err(sys)?;
    Ok(())
}

/// The pipe between input and output, grown towards [`PIPE_TARGET`]; returns the
/// capacity the kernel really gave it (F_GETPIPE_SZ/F_SETPIPE_SZ return values).
fn splice_pipe(unit: usize) -> Result<(OwnedFd, OwnedFd, usize), RecorderError> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| RecorderError::Pipe(sys(e)))?;
    let mut capacity = fcntl(r.as_raw_fd(), FcntlArg::F_GETPIPE_SZ)
        .map(|n| n as usize)
        .unwrap_or(unit);
    let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(PIPE_TARGET);
    let mut want = PIPE_TARGET.min(max).max(unit);
    while want > capacity {
        match fcntl(r.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(want as libc::c_int)) {
            Ok(n) => {
                capacity = n as usize;
                break;
            }
            // Over the unprivileged per-user limit or out of memory: try smaller.
            Err(_) => want /= 2,
        }
    }
    log::debug!("recorder splice pipe holds {capacity} bytes");
    Ok((r, w, capacity))
}

impl CpuRecorder {
    /// Opens the input (non-blocking) and builds a recorder writing to `output`.
    pub fn new(
        input: Input,
        output: Output,
        flags: RecordFlags,
    ) -> Result<CpuRecorder, RecorderError> {
        let page = system_page_size();
        let (input, ring_buffer_input, page_size) = match input {
            Input::Buffer { dir, cpu } => {
                let name = if flags.snapshot {
                    "snapshot_raw"
                } else {
                    "trace_pipe_raw"
                };
                let path = dir.join(format!("per_cpu/cpu{cpu}/{name}"));
                let file = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                    .open(&path)
                    .map_err(|source| RecorderError::Open { path, source })?;
                (OwnedFd::from(file), true, subbuf_size(&dir, page))
            }
            Input::Fd(fd) => {
                set_nonblocking(fd.as_fd()).map_err(RecorderError::Input)?;
                (fd, false, page)
            }
        };
        let (files, max_kb) = match output {
            Output::Stream(fd) => ([Some(File::from(fd)), None], 0),
            Output::Ring {
                first,
                second,
                max_kb: 0,
            } => {
                drop(second);
                ([Some(File::from(first)), None], 0)
            }
            Output::Ring {
                first,
                second,
                max_kb,
            } => ([Some(File::from(first)), Some(File::from(second))], max_kb),
        };
        // Half of the limit, in whole pages, at least one (spec §4.1 `max`).
        let half_pages = if max_kb == 0 {
            0
        } else {
            ((max_kb as usize / (page_size / 1024).max(1)) / 2).max(1)
        };
        let sink = Sink {
            files,
            cur: 0,
            half_bytes: (half_pages * page_size) as u64,
            cur_bytes: 0,
            merged: max_kb == 0,
        };
        let mover = if flags.nosplice {
            Mover::Copy {
                buf: vec![0; COPY_BATCH_PAGES * page_size],
            }
        } else {
            let (read_end, write_end, capacity) = splice_pipe(page_size)?;
            Mover::Splice {
                read_end,
                write_end,
                capacity,
                pending: 0,
            }
        };
        Ok(CpuRecorder {
            input,
            ring_buffer_input,
            sink,
            mover,
            page_size,
            flags,
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Creates `path` (with `path.1` for a max-kb ring when `max_kb > 0`) and a recorder
    /// writing to it; if the recorder cannot be built, `path` is removed again.
    pub fn to_file(
        input: Input,
        path: &Path,
        max_kb: u32,
        flags: RecordFlags,
    ) -> Result<CpuRecorder, RecorderError> {
        let output = Output::create_ring(path, max_kb)?;
        CpuRecorder::new(input, output, flags).inspect_err(|_| {
            let _ = std::fs::remove_file(path);
        })
    }

    /// A handle that stops this recorder (see [`StopHandle`]).
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Arc::clone(&self.stop))
    }

    /// Same as `self.stop_handle().stop()`.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// The unit of reads, padding and the max-kb ring: the ring buffer's page size.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// The recording flags.
    pub fn flags(&self) -> RecordFlags {
        self.flags
    }

    /// Whether data moves with splice (false after a fallback to read/write).
    pub fn uses_splice(&self) -> bool {
        matches!(self.mover, Mover::Splice { .. })
    }

    /// Records until stopped, then flushes (spec §4.3). `sleep` is the back-off after a
    /// round in which the input said it was readable but gave nothing (no whole page
    /// yet); otherwise the recorder waits in `poll()` for the kernel to wake it.
    /// The stop that ends this call is consumed, so the next call records again.
    pub fn record(&mut self, sleep: Duration) -> Result<(), RecorderError> {
        let mut input_was_ready = false;
        loop {
            if self.stop.swap(false, Ordering::SeqCst) {
                break;
            }
            match self.step(false)? {
                Step::Moved(_) => input_was_ready = false,
                Step::Retry => {}
                Step::Idle if input_was_ready => {
                    pause(sleep.max(Duration::from_millis(1)));
                    input_was_ready = false;
                }
                Step::Idle => input_was_ready = wait_for(self.input.as_fd(), PollFlags::POLLIN),
            }
        }
        self.flush().map(|_| ())
    }

    /// Moves everything the input has now, then (for a ring buffer) its last partial
    /// page, and pads the output with zeros to a whole page (spec §4.4). Returns the
    /// bytes written, padding included.
    pub fn flush(&mut self) -> Result<u64, RecorderError> {
        let mut total = 0u64;
        loop {
            match self.step(true)? {
                Step::Moved(n) => total += n as u64,
                Step::Retry => {}
                Step::Idle => break,
            }
        }
        if self.ring_buffer_input {
            // Splice hands out full pages only; read() also returns the partial one.
            let mut page = vec![0u8; self.page_size];
            loop {
                match nix::unistd::read(self.input.as_raw_fd(), &mut page) {
                    Ok(0) | Err(Errno::EAGAIN) => break,
                    Ok(n) => {
                        self.write_out(&page[..n], true)?;
                        total += n as u64;
                    }
                    Err(Errno::EINTR) => {}
                    Err(e) => return Err(RecorderError::Input(sys(e))),
                }
            }
        }
        let partial = (self.sink.cur_bytes % self.page_size as u64) as usize;
        if partial != 0 {
            let zeros = vec![0u8; self.page_size - partial];
            self.write_out(&zeros, true)?;
            total += zeros.len() as u64;
        }
        Ok(total)
    }

    /// Merges the max-kb ring into the named file and closes everything (spec §4.6).
    pub fn finish(mut self) -> Result<(), RecorderError> {
        self.sink.merge()
    }

    /// One attempt to move data from the input to the output.
    fn step(&mut self, stopping: bool) -> Result<Step, RecorderError> {
        match &mut self.mover {
            Mover::Splice {
                write_end,
                capacity,
                pending,
                ..
            } => {
                if *pending == 0 {
                    let len = (*capacity / self.page_size).max(1) * self.page_size;
                    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
                    match nix::fcntl::splice(&self.input, None, &*write_end, None, len, flags) {
                        Ok(0) | Err(Errno::EAGAIN) => return Ok(Step::Idle),
                        Ok(n) => *pending = n,
                        Err(Errno::EINTR) => return Ok(Step::Retry),
                        Err(Errno::EINVAL) => {
                            log::info!("input refuses splice; recording with read/write");
                            self.fall_back_to_copy(stopping)?;
                            return Ok(Step::Retry);
                        }
                        Err(e) => return Err(RecorderError::Input(sys(e))),
                    }
                }
                self.drain_pipe(stopping)
            }
            Mover::Copy { buf } => {
                let mut data = std::mem::take(buf);
                let res = self.copy_batch(&mut data, stopping);
                self.mover = Mover::Copy { buf: data };
                res
            }
        }
    }

    /// The read/write path: fills `buf` from the input as far as it has data, then
    /// writes it out.
    fn copy_batch(&mut self, buf: &mut [u8], stopping: bool) -> Result<Step, RecorderError> {
        let mut filled = 0;
        let mut idle = false;
        while filled < buf.len() {
            match nix::unistd::read(self.input.as_raw_fd(), &mut buf[filled..]) {
                Ok(0) | Err(Errno::EAGAIN) => {
                    idle = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(Errno::EINTR) => break,
                Err(e) => return Err(RecorderError::Input(sys(e))),
            }
        }
        if filled == 0 {
            return Ok(if idle { Step::Idle } else { Step::Retry });
        }
        self.write_out(&buf[..filled], stopping)?;
        Ok(Step::Moved(filled))
    }

    /// Splices everything in the pipe to the output (the pipe must be empty before the
    /// next input splice), switching ring halves at their size.
    fn drain_pipe(&mut self, stopping: bool) -> Result<Step, RecorderError> {
        let mut moved = 0;
        let mut stalled = None;
        loop {
            let Mover::Splice {
                read_end, pending, ..
            } = &mut self.mover
            else {
                unreachable!("drain_pipe runs on the splice path only")
            };
            if *pending == 0 {
                return Ok(Step::Moved(moved));
            }
            let len = (*pending).min(self.sink.room());
            let mut flags = SpliceFFlags::SPLICE_F_MOVE;
            if stopping || !self.flags.block {
                flags |= SpliceFFlags::SPLICE_F_NONBLOCK;
            }
            match nix::fcntl::splice(&*read_end, None, self.sink.fd(), None, len, flags) {
                Ok(0) => {
                    return Err(RecorderError::Output(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the output took no bytes",
                    )))
                }
                Ok(n) => {
                    *pending -= n;
                    moved += n;
                    stalled = None;
                    self.sink.advance(n)?;
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => self.wait_output(&mut stalled, stopping)?,
                Err(Errno::EINVAL) => {
                    log::info!("output refuses splice; recording with read/write");
                    self.fall_back_to_copy(stopping)?;
                    return Ok(Step::Moved(moved));
                }
                Err(e) => return Err(RecorderError::Output(sys(e))),
            }
        }
    }

    /// Switches to read/write, writing out what is still in the pipe first.
    fn fall_back_to_copy(&mut self, stopping: bool) -> Result<(), RecorderError> {
        let mut buf = vec![0u8; COPY_BATCH_PAGES * self.page_size];
        let old = std::mem::replace(&mut self.mover, Mover::Copy { buf: Vec::new() });
        if let Mover::Splice {
            read_end, pending, ..
        } = old
        {
            let mut left = pending;
            while left > 0 {
                let want = left.min(buf.len());
                match nix::unistd::read(read_end.as_raw_fd(), &mut buf[..want]) {
                    Ok(0) | Err(Errno::EAGAIN) => break,
                    Ok(n) => {
                        self.write_out(&buf[..n], stopping)?;
                        left -= n;
                    }
                    Err(Errno::EINTR) => {}
                    Err(e) => return Err(RecorderError::Output(sys(e))),
                }
            }
        }
        self.mover = Mover::Copy { buf };
        Ok(())
    }

    /// Writes all of `data`, switching ring halves at their size.
    fn write_out(&mut self, mut data: &[u8], stopping: bool) -> Result<(), RecorderError> {
        let mut stalled = None;
        while !data.is_empty() {
            let len = data.len().min(self.sink.room());
            match nix::unistd::write(self.sink.fd(), &data[..len]) {
                Ok(0) => {
                    return Err(RecorderError::Output(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the output took no bytes",
                    )))
                }
                Ok(n) => {
                    data = &data[n..];
                    stalled = None;
                    self.sink.advance(n)?;
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => self.wait_output(&mut stalled, stopping)?,
                Err(e) => return Err(RecorderError::Output(sys(e))),
            }
        }
        Ok(())
    }

    /// Waits a slice for the output to take data; once the recorder is stopping, gives
    /// up after [`STALL_LIMIT`] without progress.
    fn wait_output(
        &self,
        stalled: &mut Option<Instant>,
        stopping: bool,
    ) -> Result<(), RecorderError> {
        let since = *stalled.get_or_insert_with(Instant::now);
        if (stopping || self.stop.load(Ordering::SeqCst)) && since.elapsed() > STALL_LIMIT {
            return Err(RecorderError::OutputStalled);
        }
        wait_for(self.sink.fd(), PollFlags::POLLOUT);
        Ok(())
    }
}

/// Waits up to one slice for `events` on `fd`; true if the fd reported anything.
/// A signal ends the wait early (poll is never restarted).
fn wait_for(fd: BorrowedFd<'_>, events: PollFlags) -> bool {
    let mut fds = [PollFd::new(fd, events)];
    matches!(poll(&mut fds, PollTimeout::from(WAIT_SLICE_MS)), Ok(n) if n > 0)
}

/// Sleeps for `d`, at most one slice; a signal ends it early.
fn pause(d: Duration) {
    let ms = d.as_millis().clamp(1, WAIT_SLICE_MS as u128) as u16;
    let _ = poll(&mut [], PollTimeout::from(ms));
}

impl Drop for CpuRecorder {
    fn drop(&mut self) {
        if let Err(e) = self.sink.merge() {
            log::error!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pipe() -> (OwnedFd, File) {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        (r, File::from(w))
    }

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tcrs-rec-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// Page `i` of a fake ring: its first 8 bytes hold `i`, the rest a pattern.
    fn fake_page(i: u64, page: usize) -> Vec<u8> {
        let mut p = vec![(i % 251) as u8; page];
        p[..8].copy_from_slice(&i.to_le_bytes());
        p
    }

    #[test]
    fn flags_round_trip() {
        for bits in 0..8 {
            assert_eq!(RecordFlags::from_bits(bits).bits(), bits);
        }
        assert!(RecordFlags::from_bits(1).nosplice);
        assert!(RecordFlags::from_bits(2).snapshot);
        assert!(RecordFlags::from_bits(4).block);
        assert_eq!(RecordFlags::from_bits(0xf0), RecordFlags::default());
    }

    fn ring_keeps_latest(flags: RecordFlags, total_pages: u64, name: &str) {
        let page = system_page_size();
        let path = tmp(name);
        let (r, mut w) = pipe();
        // 3 pages per half.
        let max_kb = (6 * page / 1024) as u32;
        let mut rec = CpuRecorder::to_file(Input::Fd(r), &path, max_kb, flags).unwrap();
        assert!(!Path::new(&format!("{}.1", path.display())).exists());
        let stop = rec.stop_handle();
        let writer = std::thread::spawn(move || {
            for i in 0..total_pages {
                w.write_all(&fake_page(i, page)).unwrap();
            }
        });
        let t = std::thread::spawn(move || {
            rec.record(Duration::from_millis(1)).unwrap();
            rec
        });
        writer.join().unwrap();
        // The writer is done; everything is in the pipe or recorded. Stop flushes it.
        stop.stop();
        let rec = t.join().unwrap();
        rec.finish().unwrap();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len() % page, 0);
        let pages = (data.len() / page) as u64;
        assert!((3..=6).contains(&pages), "{pages} pages kept");
        // The last `pages` pages, in order.
        for (k, chunk) in data.chunks(page).enumerate() {
            let want = total_pages - pages + k as u64;
            assert_eq!(chunk, &fake_page(want, page)[..], "page {k}");
        }
    }

    #[test]
    fn max_kb_ring_keeps_the_newest_pages_in_order_splice() {
        for total in [3, 4, 7, 9, 40] {
            ring_keeps_latest(RecordFlags::default(), total, &format!("ring-s-{total}"));
        }
    }

    #[test]
    fn max_kb_ring_keeps_the_newest_pages_in_order_copy() {
        let flags = RecordFlags {
            nosplice: true,
            ..Default::default()
        };
        for total in [3, 5, 8, 33] {
            ring_keeps_latest(flags, total, &format!("ring-c-{total}"));
        }
    }

    #[test]
    fn short_ring_is_left_alone() {
        let page = system_page_size();
        let path = tmp("ring-short");
        let (r, mut w) = pipe();
        let mut rec = CpuRecorder::to_file(Input::Fd(r), &path, 1024, Default::default()).unwrap();
        w.write_all(&fake_page(7, page)).unwrap();
        drop(w);
        rec.stop();
        rec.record(Duration::ZERO).unwrap();
        rec.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), fake_page(7, page));
    }

    #[test]
    fn stop_before_record_is_honoured_and_flush_pads() {
        let page = system_page_size();
        let (r, mut w) = pipe();
        let (out_r, out_w) = pipe();
        let mut rec = CpuRecorder::new(
            Input::Fd(r),
            Output::Stream(out_w.into()),
            Default::default(),
        )
        .unwrap();
        w.write_all(b"hello").unwrap();
        rec.stop_handle().stop();
        let t0 = Instant::now();
        rec.record(Duration::from_secs(1)).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(1));
        drop(rec);
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut File::from(out_r), &mut got).unwrap();
        assert_eq!(got.len(), page);
        assert_eq!(&got[..5], b"hello");
        assert!(got[5..].iter().all(|&b| b == 0));
    }

    #[test]
    fn append_mode_output_falls_back_to_write() {
        // splice() into an O_APPEND file is refused with EINVAL.
        let path = tmp("append");
        std::fs::write(&path, b"").unwrap();
        let out = OpenOptions::new().append(true).open(&path).unwrap();
        let (r, mut w) = pipe();
        let mut rec =
            CpuRecorder::new(Input::Fd(r), Output::Stream(out.into()), Default::default()).unwrap();
        let page = system_page_size();
        let data: Vec<u8> = (0..3 * page).map(|i| (i * 7 % 256) as u8).collect();
        w.write_all(&data).unwrap();
        rec.stop();
        rec.record(Duration::ZERO).unwrap();
        assert!(!rec.uses_splice());
        rec.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn missing_buffer_is_a_clear_error() {
        let err = CpuRecorder::new(
            Input::Buffer {
                dir: PathBuf::from("/nonexistent/tracing"),
                cpu: 0,
            },
            Output::Stream(File::open("/dev/null").unwrap().into()),
            Default::default(),
        )
        .unwrap_err();
        assert_eq!(err.errno(), libc::ENOENT);
        assert!(err.to_string().contains("trace_pipe_raw"), "{err}");
    }

    #[test]
    fn failed_file_recorder_removes_its_file() {
        let path = tmp("removed");
        let input = Input::Buffer {
            dir: PathBuf::from("/nonexistent/tracing"),
            cpu: 3,
        };
        assert!(CpuRecorder::to_file(input, &path, 0, Default::default()).is_err());
        assert!(!path.exists());
    }
}
