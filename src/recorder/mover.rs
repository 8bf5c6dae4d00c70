//! The per-CPU recorder ([`CpuRecorder`]): picks how data moves from its input to its
//! output (splice through a pipe, splice straight from a FIFO, write-behind, or
//! read/write; the [`recorder`](super) documentation says why) and runs the record
//! and flush loops that move it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag, SpliceFFlags};
use nix::poll::PollFlags;

use super::behind::WriteBehind;
use super::buffer::{buffer_bytes, subbuf_size, system_page_size};
use super::error::{sys, RecorderError, STALL_LIMIT};
use super::pipe::{grow_pipe, new_pipe};
use super::request::{Input, Output, RecordFlags};
use super::sched;
use super::sink::Sink;
use super::step::Step;
use super::stop::{StopHandle, StopState};
use super::wake::{WakeWatch, WAIT_SLICE};
use crate::output::BlockSink;

/// Below this many bytes per move from a non-ring input, the recorder pauses to batch
/// (for a FIFO: an eighth of its capacity; this value for sockets and files)...
const FIFO_BATCH: usize = 128 * 1024;
/// ... for this long: a 1 MiB FIFO takes 1 ms to fill even at 1 GB/s, so a writer
/// does not wait for the recorder, and a trickle is still moved in batches.
const FIFO_PAUSE: Duration = Duration::from_micros(250);
/// Bytes asked for per splice on the direct FIFO → file path.
const DIRECT_CHUNK: usize = 1 << 20;
/// Flush budget base when the input's size is unknown (sockets, regular files).
const FLUSH_FALLBACK_BUDGET: u64 = 256 << 20;
/// Pages per read/write batch on the copy (NOSPLICE) path.
const COPY_BATCH_PAGES: usize = 64;
/// Longest wait for the write-behind to return a pipe before looking at stops again.
const BEHIND_WAIT: Duration = Duration::from_millis(10);

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

/// A per-CPU recorder (spec §4). See the [module documentation](super) for how it
/// works.
#[derive(Debug)]
pub struct CpuRecorder {
    input: OwnedFd,
    /// The input is a ring buffer (`trace_pipe_raw`/`snapshot_raw`), whose partial last
    /// page only a read() returns (splice hands out full pages only).
    ring_buffer_input: bool,
    /// The CPU of that ring buffer (the recording thread stays on it while it records).
    ring_cpu: Option<usize>,
    sink: Sink,
    /// The output when it is a compressing stream's queue (`sink` is then a
    /// placeholder).
    blocks: Option<BlockSink>,
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

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let fl = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(sys)?;
    let fl = OFlag::from_bits_retain(fl) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(fl)).map_err(sys)?;
    Ok(())
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
        let ring_cpu = match &input {
            Input::Buffer { cpu, .. } => Some(*cpu),
            Input::Fd(_) => None,
        };
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
        let mut blocks = None;
        let sink = match output {
            Output::Stream(fd) => Sink::stream(File::from(fd)),
            Output::Blocks(b) => {
                blocks = Some(b);
                Sink::placeholder()
            }
            Output::Ring {
                first,
                second,
                max_kb: 0,
            } => {
                drop(second);
                Sink::stream(File::from(first))
            }
            Output::Ring {
                first,
                second,
                max_kb,
            } => {
                // Half of the limit, in whole pages, at least one (spec §4.1 `max`).
                let half_pages = ((max_kb as usize / (page_size / 1024).max(1)) / 2).max(1);
                let half_bytes = (half_pages * page_size) as u64;
                Sink::ring(File::from(first), File::from(second), half_bytes)
            }
        };
        let is = |fd: i32, kind: libc::mode_t| {
            nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == kind)
        };
        let to_files = blocks.is_none() && sink.files().all(|f| is(f.as_raw_fd(), libc::S_IFREG));
        let direct = !ring_buffer_input && is(input.as_raw_fd(), libc::S_IFIFO) && to_files;
        // Ring-buffer pages into files: write behind, so that a stalled file write does
        // not keep the ring buffer from being drained. Only where a page is one pipe
        // slot (sub-buffers larger than a page are left on the one-thread path).
        let write_behind = ring_buffer_input && to_files && page_size == page;
        // A datagram socket (UDP to a listener) must get exactly one page per write:
        // the listener reads one datagram per page (shared doc §9 P1). Splice would
        // cut datagrams at pipe-buffer boundaries, so such outputs always copy.
        let datagram = sink.files().any(|f| is_datagram_socket(f.as_fd()));
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
            let (read_end, write_end, capacity) = new_pipe(page_size)?;
            log::debug!("recorder splice pipe holds {capacity} bytes");
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
            ring_cpu,
            sink,
            blocks,
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
        StopHandle::of(&self.stop)
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
    /// priority while it records where it may, else asks for a short time slice, and
    /// stays on the buffer's CPU (see `sched.rs`); it gets its own scheduling and CPU
    /// mask back on return.
    pub fn record(&mut self, sleep: Duration) -> Result<(), RecorderError> {
        let mut input_was_ready = false;
        let _sched = self.ring_buffer_input.then(sched::RecordingSched::request);
        let _pin = self.ring_cpu.map(sched::RecordingAffinity::request);
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
        let written = match (&self.mover, &self.blocks) {
            (Mover::Behind(Some(wb)), _) => wb.pushed(),
            (_, Some(b)) => b.bytes(),
            _ => self.sink.cur_bytes(),
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
        if let Some(b) = self.blocks.as_mut() {
            b.close();
        }
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
                // A ring buffer that filled less than half the pipe had no more whole
                // pages: going round again at once would move a few pages per splice
                // (and, into a socket, send them in small pieces). Wait for the buffer
                // instead, as the write-behind does.
                let mut drained = false;
                if *pending == 0 {
                    let len = (*capacity / self.page_size).max(1) * self.page_size;
                    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
                    match nix::fcntl::splice(&self.input, None, &*write_end, None, len, flags) {
                        Ok(0) => return Ok(self.at_end()),
                        Err(Errno::EAGAIN) => return Ok(Step::Idle),
                        Ok(n) => {
                            *pending = n;
                            drained = self.ring_buffer_input && n < len / 2;
                        }
                        Err(Errno::EINTR) => return Ok(Step::Retry),
                        Err(Errno::EINVAL) => {
                            log::info!("input refuses splice; recording with read/write");
                            self.fall_back_to_copy(stopping)?;
                            return Ok(Step::Retry);
                        }
                        Err(e) => return Err(RecorderError::Input(sys(e))),
                    }
                }
                match self.drain_pipe(stopping)? {
                    Step::Moved(n) if drained => Ok(Step::MovedAll(n)),
                    step => Ok(step),
                }
            }
            Mover::Direct => self.splice_direct(),
            Mover::Behind(wb) => {
                if wb.is_none() {
                    // Started by the recording thread, the writer shares its CPU
                    // (see `sched.rs`).
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
            if let Some(b) = self.blocks.as_mut() {
                // The pipe holds `pending` bytes, so this read does not block.
                match b.read_from(read_end.as_fd(), *pending) {
                    Ok(0) => {
                        return Err(RecorderError::Input(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the recorder's pipe came up short",
                        )))
                    }
                    Ok(n) => {
                        *pending -= n;
                        moved += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // BrokenPipe: the stream's compressor stopped (its own error
                    // says why); anything else failed reading the recorder's pipe.
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                        return Err(RecorderError::Output(e))
                    }
                    Err(e) => return Err(RecorderError::Input(e)),
                }
                continue;
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
        if let Some(b) = self.blocks.as_mut() {
            return b.write_all(data).map_err(RecorderError::Output);
        }
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
    use crate::testutil::tmp;
    use std::io::Write;
    use std::path::PathBuf;

    fn pipe() -> (OwnedFd, File) {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        (r, File::from(w))
    }

    /// Page `i` of a fake ring: its first 8 bytes hold `i`, the rest a pattern.
    fn fake_page(i: u64, page: usize) -> Vec<u8> {
        let mut p = vec![(i % 251) as u8; page];
        p[..8].copy_from_slice(&i.to_le_bytes());
        p
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
