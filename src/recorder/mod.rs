//! The per-CPU recorder (spec §4): moves ring-buffer pages from `trace_pipe_raw` (or
//! `snapshot_raw`, or a caller's fd such as a guest's FIFO) to a file, socket or pipe.
//!
//! Shape of the hot path: the input is always non-blocking and waited on with `poll()`
//! together with a self-pipe that [`StopHandle::stop`] writes to, so a stop ends the
//! wait at once, whether it comes from a signal handler in the recording thread or from
//! another thread. Data goes `input → pipe → output` with `splice()`, as many pages per
//! call as the pipe holds; the pipe is grown towards 1 MiB (`PIPE_TARGET`) and its real
//! capacity is used (spec §5.2 item 25). The pipe is only refilled once it is empty:
//! the kernel's ring-buffer splice drops pages that do not fit into a partly full pipe.
//! A FIFO input (a guest's per-CPU channel) recorded into a file is spliced straight
//! to the file: it is a pipe already.
//!
//! A ring buffer recorded into regular files is written behind (`behind.rs`): the
//! calling thread only splices ring-buffer pages into a pool of pipes, and a writer
//! thread of the recorder splices them into the file. A file write that stalls
//! (writeback, journal commits) then no longer keeps the ring buffer from being
//! drained; the pool holds up to 16 MiB per recorder while the file is behind.
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
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::time::TimeSpec;

use crate::tracefs;

mod behind;
use behind::WriteBehind;
mod sched;
mod uncached;

/// Longest single wait (input or output) before the loop looks around again. A stop
/// ends a wait at once (self-pipe); this only bounds waits nothing else ends.
const WAIT_SLICE: Duration = Duration::from_millis(100);
/// Below this many bytes per move from a non-ring input, the recorder pauses to batch
/// (for a FIFO: an eighth of its capacity; this value for sockets and files)...
const FIFO_BATCH: usize = 128 * 1024;
/// ... for this long: a 1 MiB FIFO takes 1 ms to fill even at 1 GB/s, so a writer
/// does not wait for the recorder, and a trickle is still moved in batches.
const FIFO_PAUSE: Duration = Duration::from_micros(250);
/// Bytes asked for per splice on the direct FIFO → file path.
const DIRECT_CHUNK: usize = 1 << 20;
/// Size the splice pipe is grown to when the system allows (pipe-max-size caps it).
const PIPE_TARGET: usize = 1 << 20;
/// Flush budget base when the input's size is unknown (sockets, regular files).
const FLUSH_FALLBACK_BUDGET: u64 = 256 << 20;
/// Pages per read/write batch on the copy (NOSPLICE) path.
const COPY_BATCH_PAGES: usize = 64;
/// Longest wait for the write-behind to return a pipe before looking at stops again.
const BEHIND_WAIT: Duration = Duration::from_millis(10);
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
    /// While stopping, the output accepted nothing for 2 s (`STALL_LIMIT`).
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
    /// Blocking output side of splice (otherwise SPLICE_F_NONBLOCK): a full output
    /// pipe or socket then holds the recorder in splice until its reader takes data
    /// (a signal without SA_RESTART interrupts it); a stopping recorder never blocks.
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
        let bit = |on: bool, bit: u32| if on { bit } else { 0 };
        bit(self.nosplice, Self::NOSPLICE)
            | bit(self.snapshot, Self::SNAPSHOT)
            | bit(self.block, Self::BLOCK)
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
/// [`StopHandle::stop`] stores to an atomic and writes one byte to a non-blocking
/// self-pipe: async-signal-safe (no lock, no allocation), callable from a signal
/// handler in the recording thread or from any other thread, and it wakes a recorder
/// waiting in `poll()` at once. A stop is never lost: one that arrives before or while
/// [`CpuRecorder::record`] starts makes that call flush and return.
#[derive(Clone, Debug)]
pub struct StopHandle(Arc<StopState>);

impl StopHandle {
    /// Asks the recorder to flush and return from [`CpuRecorder::record`].
    pub fn stop(&self) {
        self.0.request();
    }
}

/// The stop flag (the truth) and the self-pipe that wakes waits (a hint).
#[derive(Debug)]
struct StopState {
    requested: AtomicBool,
    wake_read: OwnedFd,
    wake_write: OwnedFd,
}

impl StopState {
    fn new() -> Result<StopState, RecorderError> {
        let (wake_read, wake_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .map_err(|e| RecorderError::Pipe(sys(e)))?;
        Ok(StopState {
            requested: AtomicBool::new(false),
            wake_read,
            wake_write,
        })
    }

    /// Async-signal-safe: an atomic store and a write(2).
    fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        // A full pipe (EAGAIN) already wakes the waits.
        let _ = nix::unistd::write(&self.wake_write, &[1]);
    }

    fn pending(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Consumes a pending stop.
    fn take(&self) -> bool {
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
    fn wait(
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
    /// Stands in while the real output is with a write-behind thread.
    fn placeholder() -> Sink {
        Sink {
            files: [None, None],
            cur: 0,
            half_bytes: 0,
            cur_bytes: 0,
            merged: true,
        }
    }

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
    /// A pipe input spliced straight into a regular file (no intermediate pipe).
    Direct,
    /// A ring buffer into regular files: spliced into pipes that a writer thread
    /// writes out (`behind.rs`). Started at the first move, so that a recorder made
    /// before a fork runs its thread in the process that records.
    Behind(Option<WriteBehind>),
    /// read() into `buf`, write() out.
    Copy { buf: Vec<u8> },
}

/// Result of one attempt to move data.
#[derive(Debug)]
enum Step {
    /// Bytes went from the input to the output.
    Moved(usize),
    /// Bytes went, and the input has probably nothing more for now.
    MovedAll(usize),
    /// The input has nothing (more) right now.
    Idle,
    /// A FIFO, socket or file input is at its end (no writer): nothing will come
    /// soon, so the recorder waits a whole slice instead of polling a hang-up.
    Ended,
    /// Interrupted, or the mover changed: just go round again.
    Retry,
    /// The write-behind holds all the pipes it may: wait for the writer.
    Full,
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
    /// Moves from a FIFO shorter than this are followed by a short pause: an eighth of
    /// the FIFO's capacity.
    batch: usize,
    /// Most bytes one flush moves, so that a writer that never pauses cannot keep a
    /// stopping recorder busy for ever.
    flush_budget: u64,
    flags: RecordFlags,
    stop: Arc<StopState>,
    /// For a ring buffer woken at `buffer_percent`: when to drain without the wake-up.
    watch: Option<WakeWatch>,
}

/// Whether `fd` is a `SOCK_DGRAM` socket.
fn is_datagram_socket(fd: BorrowedFd<'_>) -> bool {
    nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SockType)
        .is_ok_and(|t| t == nix::sys::socket::SockType::Datagram)
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
    parse_subbuf_kb(&text, page).unwrap_or_else(|| {
        log::warn!(
            "ignoring unexpected buffer_subbuf_size_kb {:?} in {}",
            text.trim(),
            dir.display()
        );
        page
    })
}

/// `buffer_subbuf_size_kb` text → bytes (a power of two up to 1 MiB, at least `page`).
fn parse_subbuf_kb(text: &str, page: usize) -> Option<usize> {
    match text.trim().parse::<usize>() {
        Ok(kb) if kb > 0 && kb <= 1024 && (kb * 1024).is_power_of_two() => {
            Some((kb * 1024).max(page))
        }
        _ => None,
    }
}

/// The per-CPU ring-buffer size of a buffer directory in bytes (`buffer_size_kb`,
/// which may read "7 (expanded: 1408)"), if it can be read.
fn buffer_bytes(dir: &Path, cpu: usize) -> Option<u64> {
    let per_cpu = dir.join(format!("per_cpu/cpu{cpu}/buffer_size_kb"));
    let text = std::fs::read_to_string(per_cpu)
        .or_else(|_| std::fs::read_to_string(dir.join("buffer_size_kb")))
        .ok()?;
    parse_size_kb(&text)
}

/// `buffer_size_kb` text ("1027" or "7 (expanded: 1408)", the larger one) → bytes.
fn parse_size_kb(text: &str) -> Option<u64> {
    let expanded = text.split("expanded:").nth(1).unwrap_or(text);
    let digits: String = expanded
        .trim()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let kb: u64 = digits.parse().ok()?;
    Some(kb.saturating_mul(1024))
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let fl = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(sys)?;
    let fl = OFlag::from_bits_retain(fl) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(fl)).map_err(sys)?;
    Ok(())
}

/// Grows a pipe towards [`PIPE_TARGET`] (capped by pipe-max-size) and returns the
/// capacity the kernel really gave it (F_GETPIPE_SZ/F_SETPIPE_SZ return values).
fn grow_pipe(fd: BorrowedFd<'_>, unit: usize) -> usize {
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

/// The intermediate pipe between input and output, grown; returns its capacity.
fn splice_pipe(unit: usize) -> Result<(OwnedFd, OwnedFd, usize), RecorderError> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| RecorderError::Pipe(sys(e)))?;
    let capacity = grow_pipe(r.as_fd(), unit);
    log::debug!("recorder splice pipe holds {capacity} bytes");
    Ok((r, w, capacity))
}

/// How long the recorder waits for the kernel at most. The kernel wakes a recorder
/// waiting in `poll()` when its buffer reaches `buffer_percent` (50 by default); what
/// is left of the buffer must then outlast any delay before the thread runs. perf
/// sched on the benchmark showed such delays of up to 4 ms (kernel threads that do not
/// yield on this kernel without forced preemption), and about one wake-up in a hundred
/// coming when the buffer was nearly full (14 ms after the last drain at 500k events/s
/// per CPU, where 50% takes 7 ms). So the recorder measures the rate at which it
/// drains and waits at most until a third of the buffer has filled at that rate (or,
/// for a `buffer_percent` below 25, until a third more than `buffer_percent`), which
/// leaves two thirds of the buffer for delays instead of a half. On the benchmark that
/// cost no measurable CPU (0.67 and 0.69 CPU-s/GiB against 0.67 and 0.71 when waiting
/// for `buffer_percent`, two 6-round runs each at 700k), while draining at a quarter cost
/// 10% more. A round that moved nothing counts as a rate of nothing, so an idle buffer
/// is soon waited on with the usual slice again.
#[derive(Debug)]
struct WakeWatch {
    /// Bytes after which to drain without the kernel's wake-up.
    wake_bytes: f64,
    /// Bytes per second, smoothed; 0 until measured.
    rate: f64,
    /// When the current round began (the end of the last wait) and what it has moved.
    since: Instant,
    moved: u64,
}

impl WakeWatch {
    /// For a buffer of `size` bytes in `dir`, whose `buffer_percent` is read now.
    /// None when either is unknown, or the kernel wakes at once (0) anyway.
    fn new(size: Option<u64>, dir: &Path) -> Option<WakeWatch> {
        let text = std::fs::read_to_string(dir.join("buffer_percent")).ok()?;
        let percent: u64 = text.trim().parse().ok().filter(|p| (1..=100).contains(p))?;
        Some(WakeWatch {
            wake_bytes: size? as f64 * (1.0 / 3.0f64).min(percent as f64 / 100.0 * 4.0 / 3.0),
            rate: 0.0,
            since: Instant::now(),
            moved: 0,
        })
    }

    /// Counts bytes moved in this round.
    fn moved(&mut self, n: usize) {
        self.moved += n as u64;
    }

    /// Called before waiting for the input: ends the round, and returns how long to
    /// wait at most.
    fn before_wait(&mut self) -> Duration {
        let now = Instant::now();
        let took = now.duration_since(self.since).as_secs_f64();
        // A round that moved nothing counts too: a rate that fell to nothing lengthens
        // the wait by a third each round, up to the usual slice.
        if took > 0.0 {
            let sample = self.moved as f64 / took;
            self.rate = if self.rate == 0.0 {
                sample
            } else {
                0.75 * self.rate + 0.25 * sample
            };
        }
        self.since = now;
        self.moved = 0;
        if self.rate <= 0.0 {
            return WAIT_SLICE;
        }
        let fill = self.wake_bytes / self.rate;
        Duration::from_secs_f64(fill.clamp(0.002, WAIT_SLICE.as_secs_f64()))
    }
}

impl CpuRecorder {
    /// Opens the input (non-blocking) and builds a recorder writing to `output`.
    pub fn new(
        input: Input,
        output: Output,
        flags: RecordFlags,
    ) -> Result<CpuRecorder, RecorderError> {
        let page = system_page_size();
        let mut watch = None;
        let (input, ring_buffer_input, page_size, input_bytes) = match input {
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
                let size = buffer_bytes(&dir, cpu);
                if !flags.snapshot {
                    watch = WakeWatch::new(size, &dir);
                }
                (OwnedFd::from(file), true, subbuf_size(&dir, page), size)
            }
            Input::Fd(fd) => {
                set_nonblocking(fd.as_fd()).map_err(RecorderError::Input)?;
                (fd, false, page, None)
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
        let is = |fd: i32, kind: libc::mode_t| {
            nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == kind)
        };
        let to_files = sink
            .files
            .iter()
            .flatten()
            .all(|f| is(f.as_raw_fd(), libc::S_IFREG));
        let direct = !ring_buffer_input && is(input.as_raw_fd(), libc::S_IFIFO) && to_files;
        // Ring-buffer pages into files: write behind, so that a stalled file write does
        // not keep the ring buffer from being drained. Only where a page is one pipe
        // slot (sub-buffers larger than a page are left on the one-thread path).
        let write_behind = ring_buffer_input && to_files && page_size == page;
        // A datagram socket (UDP to a listener) must get exactly one page per write:
        // the listener reads one datagram per page (shared doc §9 P1). Splice would
        // cut datagrams at pipe-buffer boundaries, so such outputs always copy.
        let datagram = sink
            .files
            .iter()
            .flatten()
            .any(|f| is_datagram_socket(f.as_fd()));
        let mover = if datagram {
            Mover::Copy {
                buf: vec![0; page_size],
            }
        } else if flags.nosplice {
            Mover::Copy {
                buf: vec![0; COPY_BATCH_PAGES * page_size],
            }
        } else if write_behind {
            Mover::Behind(None)
        } else if direct {
            // A bigger FIFO lets the writer run ahead and each splice move more.
            grow_pipe(input.as_fd(), page_size);
            Mover::Direct
        } else {
            let (read_end, write_end, capacity) = splice_pipe(page_size)?;
            Mover::Splice {
                read_end,
                write_end,
                capacity,
                pending: 0,
            }
        };
        // What one flush may move: what the input can hold at most, twice for slack.
        let held = input_bytes
            .or_else(|| {
                fcntl(input.as_raw_fd(), FcntlArg::F_GETPIPE_SZ)
                    .ok()
                    .map(|n| n as u64)
            })
            .unwrap_or(FLUSH_FALLBACK_BUDGET);
        let in_pipe = match &mover {
            Mover::Splice { capacity, .. } => *capacity as u64,
            _ => 0,
        };
        let batch = fcntl(input.as_raw_fd(), FcntlArg::F_GETPIPE_SZ)
            .map(|n| n as usize / 8)
            .unwrap_or(FIFO_BATCH);
        Ok(CpuRecorder {
            batch,
            flush_budget: 2 * held + in_pipe + page_size as u64,
            input,
            ring_buffer_input,
            sink,
            mover,
            page_size,
            flags,
            stop: Arc::new(StopState::new()?),
            watch,
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
        self.stop.request();
    }

    /// The unit of reads, padding and the max-kb ring: the ring buffer's page size.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// The recording flags.
    pub fn flags(&self) -> RecordFlags {
        self.flags
    }

    /// Bytes written to the output with `O_DIRECT`, past the page cache (only a
    /// ring buffer recorded into a regular file does that; see `uncached.rs`).
    pub fn uncached_bytes(&self) -> u64 {
        match &self.mover {
            Mover::Behind(Some(wb)) => wb.uncached_bytes(),
            _ => 0,
        }
    }

    /// Whether data moves with splice (false after a fallback to read/write).
    pub fn uses_splice(&self) -> bool {
        !matches!(self.mover, Mover::Copy { .. })
    }

    /// Records until stopped, then flushes (spec §4.3). Between batches the recorder
    /// waits in `poll()` for the kernel to wake it (for `trace_pipe_raw`: at the
    /// buffer's `buffer_percent`). `sleep` (capped at 100 ms) is the back-off after a
    /// round in which the input said it was readable but gave nothing (no whole page
    /// yet, or a FIFO without writer); with a FIFO input and a non-zero `sleep`, a
    /// short move is also followed by a 250 µs pause so that data is moved in batches.
    /// A stop ends any wait at once. The stop that ends this call is consumed, so the
    /// next call records again; a stop that came before the call makes it flush and
    /// return. For a ring buffer, the calling thread runs at the lowest real-time
    /// priority while it records where it may, else asks for a short time slice (see
    /// `sched.rs`), and gets its own scheduling back on return.
    pub fn record(&mut self, sleep: Duration) -> Result<(), RecorderError> {
        let mut input_was_ready = false;
        let _sched = self.ring_buffer_input.then(sched::RecordingSched::request);
        loop {
            if self.stop.take() {
                break;
            }
            let step = self.step(false)?;
            if let (Some(w), Step::Moved(n) | Step::MovedAll(n)) = (&mut self.watch, &step) {
                w.moved(*n);
            }
            match step {
                Step::Moved(n) => {
                    input_was_ready = false;
                    if !self.ring_buffer_input && n < self.batch && !sleep.is_zero() {
                        // A FIFO trickles in a page at a time; a short pause lets a
                        // batch build up instead of spending a splice on every page.
                        self.stop.wait(None, PollFlags::empty(), FIFO_PAUSE, true);
                    }
                }
                Step::Retry => {}
                Step::Full => self.wait_behind()?,
                Step::Ended => {
                    self.stop.wait(None, PollFlags::empty(), WAIT_SLICE, true);
                    input_was_ready = false;
                }
                Step::Idle if input_was_ready => {
                    // Readable but nothing came (no whole page yet, or end of file):
                    // back off instead of spinning.
                    let pause = sleep.clamp(Duration::from_millis(1), WAIT_SLICE);
                    self.stop.wait(None, PollFlags::empty(), pause, true);
                    input_was_ready = false;
                }
                // Nothing more now (or, after MovedAll, probably nothing): wait for
                // the input.
                Step::Idle | Step::MovedAll(_) => {
                    let most = self
                        .watch
                        .as_mut()
                        .map_or(WAIT_SLICE, WakeWatch::before_wait);
                    input_was_ready =
                        self.stop
                            .wait(Some(self.input.as_fd()), PollFlags::POLLIN, most, true)
                }
            }
        }
        self.flush().map(|_| ())
    }

    /// Moves everything the input has now, then (for a ring buffer) its last partial
    /// page, and pads the output with zeros to a whole page (spec §4.4). Returns the
    /// bytes written, padding included.
    pub fn flush(&mut self) -> Result<u64, RecorderError> {
        let mut total = 0u64;
        while total < self.flush_budget {
            match self.step(true)? {
                Step::Moved(n) | Step::MovedAll(n) => total += n as u64,
                Step::Retry => {}
                Step::Full => self.wait_behind()?,
                Step::Idle | Step::Ended => break,
            }
        }
        if self.ring_buffer_input {
            // Splice hands out full pages only; read() also returns the partial one.
            let mut page = vec![0u8; self.page_size];
            while total < self.flush_budget {
                match nix::unistd::read(self.input.as_raw_fd(), &mut page) {
                    Ok(0) | Err(Errno::EAGAIN) => break,
                    Ok(n) => {
                        self.emit(&page[..n])?;
                        total += n as u64;
                    }
                    Err(Errno::EINTR) => {}
                    Err(e) => return Err(RecorderError::Input(sys(e))),
                }
            }
        }
        if total >= self.flush_budget {
            log::warn!("flush ended after {total} bytes: the input kept producing data");
        }
        let written = match &self.mover {
            Mover::Behind(Some(wb)) => wb.pushed(),
            _ => self.sink.cur_bytes,
        };
        let partial = (written % self.page_size as u64) as usize;
        if partial != 0 {
            let zeros = vec![0u8; self.page_size - partial];
            self.emit(&zeros)?;
            total += zeros.len() as u64;
        }
        if let Mover::Behind(Some(wb)) = &mut self.mover {
            wb.wait_written()?;
        }
        Ok(total)
    }

    /// Writes flush data after everything moved before it: through the write-behind
    /// when there is one, else straight to the output.
    fn emit(&mut self, data: &[u8]) -> Result<(), RecorderError> {
        match &mut self.mover {
            Mover::Behind(Some(wb)) => wb.push_bytes(data),
            _ => self.write_out(data, true),
        }
    }

    /// Waits a little for the write-behind to give a pipe back.
    fn wait_behind(&self) -> Result<(), RecorderError> {
        match &self.mover {
            Mover::Behind(Some(wb)) => wb.wait_room(BEHIND_WAIT),
            _ => Ok(()),
        }
    }

    /// Ends a write-behind: its thread writes out what is queued and hands the output
    /// back.
    fn settle(&mut self) -> Result<(), RecorderError> {
        if let Mover::Behind(wb) = &mut self.mover {
            if let Some(wb) = wb.take() {
                let (sink, res) = wb.close();
                self.sink = sink;
                return res;
            }
        }
        Ok(())
    }

    /// Merges the max-kb ring into the named file and closes everything (spec §4.6).
    pub fn finish(mut self) -> Result<(), RecorderError> {
        let settled = self.settle();
        let merged = self.sink.merge();
        settled.and(merged)
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
                        Ok(0) => return Ok(self.at_end()),
                        Err(Errno::EAGAIN) => return Ok(Step::Idle),
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
            Mover::Direct => self.splice_direct(),
            Mover::Behind(wb) => {
                if wb.is_none() {
                    let sink = std::mem::replace(&mut self.sink, Sink::placeholder());
                    *wb = Some(WriteBehind::start(sink, self.page_size)?);
                }
                wb.as_mut().expect("started above").pull(self.input.as_fd())
            }
            Mover::Copy { buf } => {
                let mut data = std::mem::take(buf);
                let res = self.copy_batch(&mut data, stopping);
                self.mover = Mover::Copy { buf: data };
                res
            }
        }
    }

    /// A pipe input straight into a regular file (which never says EAGAIN).
    fn splice_direct(&mut self) -> Result<Step, RecorderError> {
        let len = DIRECT_CHUNK.min(self.sink.room());
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        match nix::fcntl::splice(&self.input, None, self.sink.fd(), None, len, flags) {
            Ok(0) => Ok(self.at_end()),
            Err(Errno::EAGAIN) => Ok(Step::Idle),
            Ok(n) => {
                self.sink.advance(n)?;
                Ok(Step::Moved(n))
            }
            Err(Errno::EINTR) => Ok(Step::Retry),
            Err(Errno::EINVAL) => {
                log::info!("splice refused; recording with read/write");
                self.mover = Mover::Copy {
                    buf: vec![0; COPY_BATCH_PAGES * self.page_size],
                };
                Ok(Step::Retry)
            }
            Err(e) => Err(RecorderError::Output(sys(e))),
        }
    }

    /// What a zero-byte read means: the end of a FIFO/socket/file, but only "no data"
    /// for a ring buffer, which must keep being polled.
    fn at_end(&self) -> Step {
        if self.ring_buffer_input {
            Step::Idle
        } else {
            Step::Ended
        }
    }

    /// The read/write path: fills `buf` from the input as far as it has data, then
    /// writes it out.
    fn copy_batch(&mut self, buf: &mut [u8], stopping: bool) -> Result<Step, RecorderError> {
        let mut filled = 0;
        let mut idle = None;
        while filled < buf.len() {
            match nix::unistd::read(self.input.as_raw_fd(), &mut buf[filled..]) {
                Ok(0) => {
                    idle = Some(self.at_end());
                    break;
                }
                Err(Errno::EAGAIN) => {
                    idle = Some(Step::Idle);
                    break;
                }
                Ok(n) => filled += n,
                Err(Errno::EINTR) => break,
                Err(e) => return Err(RecorderError::Input(sys(e))),
            }
        }
        if filled == 0 {
            return Ok(idle.unwrap_or(Step::Retry));
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
        if (stopping || self.stop.pending()) && since.elapsed() > STALL_LIMIT {
            return Err(RecorderError::OutputStalled);
        }
        // Once a stop is pending its byte would end every wait at once: do not watch it.
        let watch_stop = !self.stop.pending();
        self.stop.wait(
            Some(self.sink.fd()),
            PollFlags::POLLOUT,
            WAIT_SLICE,
            watch_stop,
        );
        Ok(())
    }
}

impl Drop for CpuRecorder {
    fn drop(&mut self) {
        if let Err(e) = self.settle() {
            log::error!("{e}");
        }
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

    /// A path in a per-test temporary directory, removed with the directory on drop.
    struct TmpPath(PathBuf);

    impl std::ops::Deref for TmpPath {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl AsRef<Path> for TmpPath {
        fn as_ref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TmpPath {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn tmp(name: &str) -> TmpPath {
        let dir = std::env::temp_dir().join(format!("tcrs-rec-unit-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TmpPath(dir.join(name))
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
    fn output_refusing_splice_gets_the_piped_data_by_write() {
        // A socket input takes the pipe path; the O_APPEND output refuses the second
        // splice, so what already sits in the pipe must go out by read/write.
        use std::os::unix::net::UnixStream;
        let path = tmp("append-pipe");
        std::fs::write(&path, b"").unwrap();
        let out = OpenOptions::new().append(true).open(&path).unwrap();
        let (mut tx, rx) = UnixStream::pair().unwrap();
        let mut rec = CpuRecorder::new(
            Input::Fd(rx.into()),
            Output::Stream(out.into()),
            Default::default(),
        )
        .unwrap();
        assert!(matches!(rec.mover, Mover::Splice { .. }));
        let page = system_page_size();
        let data: Vec<u8> = (0..5 * page + 17).map(|i| (i * 13 % 256) as u8).collect();
        tx.write_all(&data).unwrap();
        rec.stop();
        rec.record(Duration::ZERO).unwrap();
        assert!(!rec.uses_splice());
        rec.finish().unwrap();
        let mut want = data.clone();
        want.resize(6 * page, 0);
        assert!(std::fs::read(&path).unwrap() == want);
    }

    #[test]
    fn buffer_size_is_read_in_both_kernel_formats() {
        let dir = tmp("bufsize");
        std::fs::create_dir_all(dir.join("per_cpu/cpu1")).unwrap();
        std::fs::write(dir.join("buffer_size_kb"), "7 (expanded: 1408)\n").unwrap();
        assert_eq!(buffer_bytes(&dir, 0), Some(1408 * 1024));
        std::fs::write(dir.join("per_cpu/cpu1/buffer_size_kb"), "1027\n").unwrap();
        assert_eq!(buffer_bytes(&dir, 1), Some(1027 * 1024));
        std::fs::write(dir.join("buffer_size_kb"), "garbage").unwrap();
        assert_eq!(buffer_bytes(&dir, 0), None);
        assert_eq!(buffer_bytes(Path::new("/nonexistent"), 0), None);
    }

    #[test]
    fn wake_watch_drains_at_a_third_of_the_buffer_at_the_measured_rate() {
        let dir = tmp("watch");
        std::fs::create_dir_all(&dir).unwrap();
        // No buffer_percent, 0 (the kernel wakes at once) or garbage: no watch.
        assert!(WakeWatch::new(Some(1 << 20), &dir).is_none());
        for bad in ["0\n", "101\n", "x\n"] {
            std::fs::write(dir.join("buffer_percent"), bad).unwrap();
            assert!(WakeWatch::new(Some(1 << 20), &dir).is_none(), "{bad:?}");
        }
        std::fs::write(dir.join("buffer_percent"), "50\n").unwrap();
        assert!(WakeWatch::new(None, &dir).is_none());
        let mut w = WakeWatch::new(Some(1 << 20), &dir).unwrap();
        // Nothing measured yet: the usual slice.
        assert_eq!(w.before_wait(), WAIT_SLICE);
        // 512 KiB in 10 ms: a third of 1 MiB takes 6.7 ms at that rate.
        w.since = Instant::now() - Duration::from_millis(10);
        w.moved(512 << 10);
        let first = w.before_wait();
        assert!(
            first >= Duration::from_micros(6_400) && first <= Duration::from_micros(7_000),
            "{first:?}"
        );
        // The rate falls to nothing: each empty round waits longer, up to the slice.
        let mut last = first;
        for _ in 0..40 {
            w.since = Instant::now() - last;
            let next = w.before_wait();
            assert!(next >= last, "{next:?} after {last:?}");
            last = next;
        }
        assert_eq!(last, WAIT_SLICE);
        // A very fast rate: never below 2 ms.
        w.since = Instant::now() - Duration::from_millis(1);
        w.moved(1 << 30);
        assert_eq!(w.before_wait(), Duration::from_millis(2));
        // buffer_percent 15: a third more than it (20%), not a third of the buffer.
        std::fs::write(dir.join("buffer_percent"), "15\n").unwrap();
        let mut w = WakeWatch::new(Some(1 << 20), &dir).unwrap();
        w.before_wait();
        w.since = Instant::now() - Duration::from_millis(10);
        w.moved(512 << 10);
        let low = w.before_wait();
        assert!(
            low >= Duration::from_micros(3_800) && low <= Duration::from_micros(4_300),
            "{low:?}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn stalled_output_ends_a_stopping_recorder_with_an_error() {
        // Nobody reads the output pipe: the recorder must not hang once stopped.
        let (r, mut w) = pipe();
        let (_out_r, out_w) = pipe();
        let mut rec = CpuRecorder::new(
            Input::Fd(r),
            Output::Stream(out_w.into()),
            Default::default(),
        )
        .unwrap();
        let stop = rec.stop_handle();
        let t = std::thread::spawn(move || {
            let res = rec.record(Duration::from_millis(1));
            (res, Instant::now())
        });
        // 256 KiB, more than the output pipe holds. Once the output is full the
        // recorder stops taking input, so this writer may block until the recorder
        // ends and closes the input (then it gets EPIPE, which is fine).
        let (wrote_tx, wrote_rx) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || {
            let chunk = vec![7u8; 4096];
            let mut wrote = 0;
            while wrote < 256 * 1024 && w.write_all(&chunk).is_ok() {
                wrote += chunk.len();
                let _ = wrote_tx.send(wrote);
            }
        });
        // Wait until more than the output pipe's 64 KiB went in.
        let deadline = Instant::now() + Duration::from_secs(10);
        while wrote_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("writer stuck")
            <= 80 * 1024
        {
            assert!(Instant::now() < deadline, "recorder took no input");
        }
        let stopped = Instant::now();
        stop.stop();
        let (res, done) = t.join().unwrap();
        assert!(matches!(res, Err(RecorderError::OutputStalled)), "{res:?}");
        assert!(done.duration_since(stopped) < STALL_LIMIT * 3);
        writer.join().unwrap();
    }

    #[test]
    fn size_parsers_never_panic_on_random_text() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"0123456789 ()expanded:\n\t-+kKx\xff";
        for round in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 24) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| alphabet[((x >> (i % 50)) as usize + i * 7 + round) % alphabet.len()])
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            if let Some(b) = parse_subbuf_kb(&text, 4096) {
                assert!(
                    b.is_power_of_two() && (4096..=1 << 20).contains(&b),
                    "{text:?}"
                );
            }
            let _ = parse_size_kb(&text);
        }
        assert_eq!(parse_subbuf_kb("8\n", 4096), Some(8192));
        assert_eq!(parse_subbuf_kb("3\n", 4096), None);
        assert_eq!(parse_subbuf_kb("99999999999999999999999", 4096), None);
        assert_eq!(parse_size_kb("99999999999999999999"), None);
        assert_eq!(parse_size_kb("18446744073709551615"), Some(u64::MAX));
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
