//! Write-behind for ring-buffer recordings into regular files.
//!
//! A file write can stall for a long time (page-cache writeback, journal commits,
//! memory reclaim). A recorder that writes from the thread that drains the ring buffer
//! cannot drain while it is stalled, and the kernel overwrites the oldest events. Here
//! the recording thread only splices ring-buffer pages into pipes (no copy: the kernel
//! hands the pages over) and queues them; one writer thread per recorder splices the
//! queued pipes into the output, in order. A stall then costs pipe slots instead of
//! events: up to [`MAX_PIPES`] pipes of up to 1 MiB each are held per recorder.
//!
//! Why a pool of pipes rather than one big pipe: splicing from a pipe into a file holds
//! that pipe's lock for the whole file write, so a recording thread refilling the same
//! pipe would stall with the writer. Each pipe is also only ever filled while empty,
//! because the ring-buffer splice drops pages that do not fit into the pipe.
//!
//! Pipes are made on demand: a recorder whose writer keeps up uses one or two.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::SpliceFFlags;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};

use super::error::{sys, RecorderError};
use super::pipe::new_pipe;
use super::sink::Sink;
use super::step::Step;
use super::uncached::Uncached;

/// Most pipes one recorder holds; with 1 MiB pipes, 16 MiB of backlog per CPU.
pub(super) const MAX_PIPES: usize = 16;
/// Queued bytes that wake the writer: it writes in batches, so that a recorder costs
/// one thread wake-up per this many bytes rather than one per ring-buffer wake-up.
const BATCH: usize = 2 << 20;
/// Data that has waited this long is written out even if less than [`BATCH`].
const KICK_AFTER: Duration = Duration::from_millis(500);
/// Most bytes one write of the writer thread moves. The copy into the page cache runs
/// in the kernel, where a kernel without forced preemption does not switch threads; a
/// splice of a whole 1 MiB pipe kept a recording thread that shared the CPU waiting
/// for 4 ms. Returning to user space every 32 pages bounds that wait.
const WRITE_CHUNK: usize = 128 << 10;
/// Most bytes one direct write moves (the thread sleeps while the device writes, so
/// larger writes cost nobody a CPU).
const UNCACHED_CHUNK: usize = 1 << 20;

/// One pipe of the pool and its capacity in bytes.
#[derive(Debug)]
struct Pipe {
    read_end: OwnedFd,
    write_end: OwnedFd,
    capacity: usize,
}

impl Pipe {
    fn new(unit: usize) -> Result<Pipe, RecorderError> {
        let (read_end, write_end, capacity) = new_pipe(unit)?;
        Ok(Pipe {
            read_end,
            write_end,
            capacity,
        })
    }
}

/// What the two threads share.
#[derive(Debug, Default)]
struct State {
    /// Empty pipes the recording thread may fill.
    idle: Vec<Pipe>,
    /// Filled pipes and how many bytes each holds, oldest first.
    queued: VecDeque<(Pipe, usize)>,
    /// Bytes in `queued`.
    queued_bytes: usize,
    /// Write out everything queued now, whatever its size.
    kick: bool,
    /// The writer is writing out a pipe it has taken off `queued`.
    busy: bool,
    /// No more pipes will be queued: the writer exits once `queued` is empty.
    closing: bool,
    /// The output failed; the writer has stopped.
    failed: Option<RecorderError>,
    /// Bytes the writer has written past the page cache (see `uncached.rs`).
    uncached_bytes: u64,
}

impl State {
    /// Whether the writer has work to start (or go on with).
    fn writable(&self) -> bool {
        !self.queued.is_empty() && (self.kick || self.closing || self.queued_bytes >= BATCH)
    }
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when the writer may have work.
    to_writer: Condvar,
    /// Signalled when the writer has given a pipe back or failed.
    to_recorder: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; recover the data if one ever did.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The recording thread's side of the write-behind.
#[derive(Debug)]
pub(super) struct WriteBehind {
    shared: Arc<Shared>,
    /// The writer thread; it hands the output back when it ends.
    thread: Option<JoinHandle<Sink>>,
    /// Ring-buffer page size: pipes are filled in whole pages.
    unit: usize,
    /// Most bytes a pipe is filled with: what one device request takes when the
    /// writer writes directly (see [`Uncached::request_pages`]), else no limit.
    fill_limit: usize,
    /// Pipes made so far (idle, queued, being written, or `current`).
    made: usize,
    /// The pipe being filled and its bytes, not queued yet: the newest data.
    current: Option<(Pipe, usize)>,
    /// When the oldest byte the writer has not been asked to write came in.
    unkicked_since: Option<Instant>,
    /// Bytes taken in since the start, for the flush padding.
    pushed: u64,
}

impl WriteBehind {
    /// Starts the writer thread on `sink`.
    pub(super) fn start(sink: Sink, unit: usize) -> Result<WriteBehind, RecorderError> {
        let fill_limit = Uncached::request_pages(sink.fd()).map_or(usize::MAX, |n| n * unit);
        let shared = Arc::new(Shared::default());
        let first = Pipe::new(unit)?;
        let for_thread = Arc::clone(&shared);
        // The writer must not take the caller's signals: C callers expect their
        // SIGINT handlers to run in their own threads, as with the C recorder.
        let mut old = SigSet::empty();
        pthread_sigmask(
            SigmaskHow::SIG_SETMASK,
            Some(&SigSet::all()),
            Some(&mut old),
        )
        .map_err(|e| RecorderError::Pipe(sys(e)))?;
        let spawned = std::thread::Builder::new()
            .name("tracecmd-write".into())
            .spawn(move || write_queued(&for_thread, sink));
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
        let thread = spawned.map_err(RecorderError::Pipe)?;
        Ok(WriteBehind {
            shared,
            thread: Some(thread),
            unit,
            fill_limit,
            made: 1,
            current: Some((first, 0)),
            unkicked_since: None,
            pushed: 0,
        })
    }

    /// Bytes the writer has written past the page cache so far.
    pub(super) fn uncached_bytes(&self) -> u64 {
        self.shared.lock().uncached_bytes
    }

    /// Bytes taken in so far.
    pub(super) fn pushed(&self) -> u64 {
        self.pushed
    }

    /// An empty pipe: an idle one, or a new one while fewer than [`MAX_PIPES`]
    /// exist. `None` when all are queued (the output is behind): then the writer is
    /// asked to write what it has.
    fn take_pipe(&mut self) -> Result<Option<Pipe>, RecorderError> {
        {
            let mut st = self.shared.lock();
            if let Some(e) = st.failed.take() {
                return Err(e);
            }
            if let Some(p) = st.idle.pop() {
                return Ok(Some(p));
            }
        }
        if self.made < MAX_PIPES {
            match Pipe::new(self.unit) {
                Ok(p) => {
                    self.made += 1;
                    log::debug!("recorder write-behind: {} pipes", self.made);
                    return Ok(Some(p));
                }
                // Out of file descriptors or memory: make do with the pipes there are.
                Err(e) => {
                    log::debug!("recorder write-behind stays at {} pipes: {e}", self.made);
                    self.made = MAX_PIPES;
                }
            }
        }
        self.kick();
        Ok(None)
    }

    /// Queues the current pipe if it holds anything.
    fn queue_current(&mut self) {
        if let Some((pipe, fill)) = self.current.take() {
            if fill == 0 {
                self.current = Some((pipe, 0));
                return;
            }
            let mut st = self.shared.lock();
            st.queued.push_back((pipe, fill));
            let before = st.queued_bytes;
            st.queued_bytes += fill;
            let wake = before < BATCH && st.queued_bytes >= BATCH;
            drop(st);
            if wake {
                self.unkicked_since = None;
                self.shared.to_writer.notify_one();
            }
        }
    }

    /// Asks the writer to write out everything queued, whatever its size.
    fn kick(&mut self) {
        self.unkicked_since = None;
        let mut st = self.shared.lock();
        if !st.queued.is_empty() && !st.kick {
            st.kick = true;
            drop(st);
            self.shared.to_writer.notify_one();
        }
    }

    /// Splices the whole pages the ring buffer has into the current pipe (as many as
    /// fit: the ring-buffer splice drops pages that do not). A pipe that is mostly
    /// full is queued; the writer is woken once [`BATCH`] bytes are queued, when the
    /// recorder runs out of pipes, and for data older than [`KICK_AFTER`].
    pub(super) fn pull(&mut self, input: BorrowedFd<'_>) -> Result<Step, RecorderError> {
        let (pipe, fill) = match self.current.take() {
            Some(cur) => cur,
            None => match self.take_pipe()? {
                Some(p) => (p, 0),
                None => return Ok(Step::Full),
            },
        };
        let capacity = pipe.capacity.min(self.fill_limit);
        let free = capacity.saturating_sub(fill) / self.unit * self.unit;
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        let res = nix::fcntl::splice(input, None, &pipe.write_end, None, free, flags);
        let moved: usize = res.unwrap_or_default();
        self.current = Some((pipe, fill + moved));
        if moved > 0 {
            self.pushed += moved as u64;
            self.unkicked_since.get_or_insert_with(Instant::now);
            if capacity - (fill + moved) < self.unit.max(capacity / 4) {
                self.queue_current();
            }
        }
        // A slow trickle never fills a batch: write out what has waited long enough.
        if self
            .unkicked_since
            .is_some_and(|t| t.elapsed() >= KICK_AFTER)
        {
            self.queue_current();
            self.kick();
        }
        if moved > 0 {
            // Less than half of what fitted: the ring buffer had no more full pages,
            // and asking again at once would only bring a few more.
            return Ok(if moved < free / 2 {
                Step::MovedAll(moved)
            } else {
                Step::Moved(moved)
            });
        }
        match res {
            Ok(_) | Err(Errno::EAGAIN) => Ok(Step::Idle),
            Err(Errno::EINTR) => Ok(Step::Retry),
            Err(Errno::EINVAL) => Err(RecorderError::Input(io::Error::new(
                io::ErrorKind::Unsupported,
                "the input refuses splice",
            ))),
            Err(e) => Err(RecorderError::Input(sys(e))),
        }
    }

    /// Queues `data` (the flush's last partial page and padding) after everything
    /// taken in before; waits for room when all pipes are queued.
    pub(super) fn push_bytes(&mut self, mut data: &[u8]) -> Result<(), RecorderError> {
        self.queue_current();
        while !data.is_empty() {
            let pipe = match self.current.take() {
                Some((p, _)) => p,
                None => match self.take_pipe()? {
                    Some(p) => p,
                    None => {
                        self.wait_room(Duration::from_millis(10))?;
                        continue;
                    }
                },
            };
            // The pipe is empty, so a write of at most its capacity is taken whole.
            let len = data.len().min(pipe.capacity);
            match nix::unistd::write(&pipe.write_end, &data[..len]) {
                Ok(n) if n > 0 => {
                    data = &data[n..];
                    self.pushed += n as u64;
                    self.current = Some((pipe, n));
                    self.queue_current();
                }
                Ok(_) | Err(Errno::EINTR) | Err(Errno::EAGAIN) => self.current = Some((pipe, 0)),
                Err(e) => return Err(RecorderError::Pipe(sys(e))),
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for a pipe to come back from the writer.
    pub(super) fn wait_room(&self, timeout: Duration) -> Result<(), RecorderError> {
        let mut st = self.shared.lock();
        if st.idle.is_empty() && st.failed.is_none() {
            st = self
                .shared
                .to_recorder
                .wait_timeout(st, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        match st.failed.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Has everything taken in so far written out, and waits for it.
    pub(super) fn wait_written(&mut self) -> Result<(), RecorderError> {
        self.queue_current();
        self.kick();
        let mut st = self.shared.lock();
        loop {
            if let Some(e) = st.failed.take() {
                return Err(e);
            }
            if st.queued.is_empty() && !st.busy {
                return Ok(());
            }
            st = self
                .shared
                .to_recorder
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Lets the writer finish everything taken in and returns the output, with the
    /// first error the writer met (if the caller has not seen it yet).
    pub(super) fn close(mut self) -> (Sink, Result<(), RecorderError>) {
        let sink = match self.end_writer() {
            Some(Ok(sink)) => sink,
            _ => {
                let e = io::Error::other("the recorder's writer thread died");
                return (Sink::placeholder(), Err(RecorderError::Output(e)));
            }
        };
        match self.shared.lock().failed.take() {
            Some(e) => (sink, Err(e)),
            None => (sink, Ok(())),
        }
    }
}

impl WriteBehind {
    /// Queues what the recording thread still holds, lets the writer write it all
    /// and joins it; `None` once it has been joined.
    fn end_writer(&mut self) -> Option<std::thread::Result<Sink>> {
        let thread = self.thread.take()?;
        self.queue_current();
        self.shared.lock().closing = true;
        self.shared.to_writer.notify_one();
        Some(thread.join())
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        let _ = self.end_writer();
    }
}

/// The writer thread: writes queued pipes out in order until closed or failed.
fn write_queued(shared: &Shared, mut sink: Sink) -> Sink {
    let mut copy_buf: Option<Vec<u8>> = None;
    let mut uncached = Uncached::new();
    loop {
        let (pipe, bytes) = {
            let mut st = shared.lock();
            loop {
                // Once started, go on until the queue is empty.
                if st.writable() || (st.busy && !st.queued.is_empty()) {
                    let job = st.queued.pop_front().expect("queue checked above");
                    st.queued_bytes -= job.1;
                    st.busy = true;
                    break job;
                }
                if st.busy {
                    st.busy = false;
                    st.kick = false;
                    shared.to_recorder.notify_all();
                }
                if st.closing {
                    return sink;
                }
                st = shared.to_writer.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        };
        let res = write_pipe(&pipe, bytes, &mut sink, &mut copy_buf, &mut uncached);
        let mut st = shared.lock();
        st.uncached_bytes = uncached.bytes;
        match res {
            Ok(()) => st.idle.push(pipe),
            Err(e) => {
                st.failed = Some(e);
                st.busy = false;
                st.queued.clear();
                st.queued_bytes = 0;
                drop(st);
                shared.to_recorder.notify_all();
                return sink;
            }
        }
        // A recorder out of pipes waits for this one.
        if st.idle.len() == 1 {
            drop(st);
            shared.to_recorder.notify_all();
        }
    }
}

/// Moves `bytes` from `pipe` to the output, switching ring halves at their size:
/// directly where it can, else through the page cache; falls back to read/write for
/// good when the output refuses splice.
fn write_pipe(
    pipe: &Pipe,
    mut bytes: usize,
    sink: &mut Sink,
    copy_buf: &mut Option<Vec<u8>>,
    uncached: &mut Uncached,
) -> Result<(), RecorderError> {
    while bytes > 0 {
        let len = bytes.min(sink.room());
        let res = match copy_buf {
            Some(buf) => {
                let want = len.min(WRITE_CHUNK).min(buf.len());
                copy_out(pipe.read_end.as_fd(), sink.fd(), &mut buf[..want])
            }
            None => match uncached.write(pipe.read_end.as_fd(), sink.fd(), len.min(UNCACHED_CHUNK))
            {
                Some(res) => res,
                None => nix::fcntl::splice(
                    &pipe.read_end,
                    None,
                    sink.fd(),
                    None,
                    len.min(WRITE_CHUNK),
                    SpliceFFlags::SPLICE_F_MOVE,
                ),
            },
        };
        match res {
            Ok(0) => {
                return Err(RecorderError::Output(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the output took no bytes",
                )))
            }
            Ok(n) => {
                bytes -= n;
                sink.advance(n)?;
            }
            Err(Errno::EINTR) => {}
            // Only an output that is itself a pipe or socket says this (a file never
            // does): wait until it takes data again.
            Err(Errno::EAGAIN) => {
                let mut fds = [PollFd::new(sink.fd(), PollFlags::POLLOUT)];
                let _ = poll(&mut fds, PollTimeout::from(100u16));
            }
            Err(Errno::EINVAL) if copy_buf.is_none() => {
                log::info!("output refuses splice; writing with read/write");
                *copy_buf = Some(vec![0; 64 * 1024]);
            }
            Err(e) => return Err(RecorderError::Output(sys(e))),
        }
    }
    Ok(())
}

/// Reads up to `buf.len()` bytes from the pipe and writes them all to `out`.
fn copy_out(pipe: BorrowedFd<'_>, out: BorrowedFd<'_>, buf: &mut [u8]) -> nix::Result<usize> {
    let n = nix::unistd::read(pipe.as_raw_fd(), buf)?;
    let mut done = 0;
    while done < n {
        match nix::unistd::write(out, &buf[done..n]) {
            Ok(0) => return Err(Errno::EIO),
            Ok(k) => done += k,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;
    use std::fs::File;
    use std::io::Read;

    const CHUNK: usize = 64 * 1024;

    fn page() -> usize {
        crate::recorder::buffer::system_page_size()
    }

    fn sink_to(fd: OwnedFd) -> Sink {
        Sink::stream(File::from(fd))
    }

    fn input_pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap()
    }

    /// Bytes of chunk `i`: every chunk differs, so a reordering shows.
    fn chunk(i: usize) -> Vec<u8> {
        (0..CHUNK).map(|k| ((k * 7 + i * 13) % 251) as u8).collect()
    }

    /// Writes chunks `0..n` into the input, pulling each (waiting for room when the
    /// pool is full), and appends them to `sent`.
    fn send_chunks(
        wb: &mut WriteBehind,
        in_r: &OwnedFd,
        in_w: &OwnedFd,
        n: usize,
        sent: &mut Vec<u8>,
    ) {
        for i in 0..n {
            let data = chunk(i);
            nix::unistd::write(in_w, &data).unwrap();
            sent.extend_from_slice(&data);
            loop {
                match wb.pull(in_r.as_fd()).unwrap() {
                    Step::Moved(_) | Step::MovedAll(_) => break,
                    Step::Full => wb.wait_room(Duration::from_millis(10)).unwrap(),
                    other => panic!("unexpected step {other:?}"),
                }
            }
        }
    }

    /// Reads `out` to its end in a thread.
    fn drain(out: OwnedFd) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut all = Vec::new();
            File::from(out).read_to_end(&mut all).unwrap();
            all
        })
    }

    #[test]
    fn a_stalled_output_does_not_stop_the_input_from_being_drained() {
        let (in_r, in_w) = input_pipe();
        // The output: a pipe nobody reads yet (blocking, so the writer stalls in it).
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let mut wb = WriteBehind::start(sink_to(out_w), page()).unwrap();
        let mut sent = Vec::new();
        let mut pulled = 0usize;
        let mut full = false;
        for i in 0..(MAX_PIPES << 20) / CHUNK + 16 {
            let data = chunk(i);
            assert_eq!(nix::unistd::write(&in_w, &data).unwrap(), CHUNK);
            sent.extend_from_slice(&data);
            match wb.pull(in_r.as_fd()).unwrap() {
                Step::Moved(n) | Step::MovedAll(n) => pulled += n,
                Step::Full => {
                    full = true;
                    break;
                }
                other => panic!("unexpected step {other:?}"),
            }
        }
        assert!(full, "the pool never filled up");
        // The output took at most its own 64 KiB; the rest was still taken from the
        // input, into the pool (pipes of up to 1 MiB each).
        let pool = (MAX_PIPES - 1) * Pipe::new(page()).unwrap().capacity;
        assert!(
            pulled >= pool.min(8 << 20),
            "only {pulled} bytes drained while the output was stalled"
        );
        assert_eq!(wb.pushed(), pulled as u64);
        let reader = drain(out_r);
        wb.wait_written().unwrap();
        let (sink, res) = wb.close();
        res.unwrap();
        drop(sink);
        let got = reader.join().unwrap();
        assert_eq!(got.len(), pulled);
        assert!(
            got == sent[..pulled],
            "the output is not the input in order"
        );
    }

    #[test]
    fn pushed_bytes_follow_the_pulled_ones() {
        let (in_r, in_w) = input_pipe();
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let reader = drain(out_r);
        let mut wb = WriteBehind::start(sink_to(out_w), page()).unwrap();
        let mut want = Vec::new();
        send_chunks(&mut wb, &in_r, &in_w, 5, &mut want);
        // Nothing more in the input: a pull says so and keeps its pipe.
        assert!(matches!(wb.pull(in_r.as_fd()).unwrap(), Step::Idle));
        let tail = vec![0xabu8; 3 * page() + 5];
        wb.push_bytes(&tail).unwrap();
        want.extend_from_slice(&tail);
        assert_eq!(wb.pushed(), want.len() as u64);
        wb.wait_written().unwrap();
        let (sink, res) = wb.close();
        res.unwrap();
        drop(sink);
        assert!(reader.join().unwrap() == want);
    }

    /// A new file in the temporary directory holding `prefix`, open for writing at
    /// its end (`append`: opened with O_APPEND).
    fn file_sink(tag: &str, prefix: &[u8], append: bool) -> (Sink, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("tcrs-wb-{tag}-{}", std::process::id()));
        std::fs::write(&path, prefix).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .append(append)
            .open(&path)
            .unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)).unwrap();
        (sink_to(OwnedFd::from(f)), path)
    }

    /// Pulls `chunks` chunks and pushes an unaligned tail through a write-behind into
    /// `sink`; returns the bytes sent, the output's offset at the end and the bytes
    /// written past the page cache.
    fn through_file(sink: Sink, chunks: usize) -> (Vec<u8>, u64, u64) {
        let (in_r, in_w) = input_pipe();
        let mut wb = WriteBehind::start(sink, page()).unwrap();
        let mut sent = Vec::new();
        send_chunks(&mut wb, &in_r, &in_w, chunks, &mut sent);
        // A flush's partial page and its padding, as the recorder pushes them.
        let tail = vec![0x5au8; 100];
        wb.push_bytes(&tail).unwrap();
        wb.push_bytes(&vec![0u8; page() - 100]).unwrap();
        sent.extend_from_slice(&tail);
        sent.resize(sent.len() + page() - 100, 0);
        wb.wait_written().unwrap();
        let uncached = wb.uncached_bytes();
        let (sink, res) = wb.close();
        res.unwrap();
        let mut f = sink.into_first().unwrap();
        let end = std::io::Seek::stream_position(&mut f).unwrap();
        (sent, end, uncached)
    }

    #[test]
    fn pipes_are_filled_to_one_device_request_at_most() {
        let (in_r, in_w) = input_pipe();
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let reader = drain(out_r);
        let mut wb = WriteBehind::start(sink_to(out_w), page()).unwrap();
        // A pipe output has no block queue: no limit of its own.
        assert_eq!(wb.fill_limit, usize::MAX);
        wb.fill_limit = 5 * page();
        let data = chunk(3); // 16 pages of 4 KiB
        nix::unistd::write(&in_w, &data).unwrap();
        let mut moves = Vec::new();
        loop {
            match wb.pull(in_r.as_fd()).unwrap() {
                Step::Moved(n) | Step::MovedAll(n) => moves.push(n),
                Step::Full => wb.wait_room(Duration::from_millis(10)).unwrap(),
                Step::Idle => break,
                other => panic!("unexpected step {other:?}"),
            }
        }
        assert!(
            moves.iter().all(|&n| n <= 5 * page()),
            "a pipe got more than 5 pages: {moves:?}"
        );
        assert_eq!(moves.iter().sum::<usize>(), data.len());
        let (sink, res) = wb.close();
        res.unwrap();
        drop(sink);
        assert!(
            reader.join().unwrap() == data,
            "the output is not the input"
        );
    }

    #[test]
    fn aligned_file_output_is_written_past_the_page_cache() {
        let (sink, path) = file_sink("direct", &[], false);
        let (sent, end, uncached) = through_file(sink, 40);
        let got = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(got == sent, "the file is not what was sent");
        assert_eq!(
            end,
            sent.len() as u64,
            "the output's offset is not at its end"
        );
        // Everything but the last (unaligned) pieces goes with O_DIRECT.
        assert!(
            uncached >= (40 * CHUNK) as u64,
            "only {uncached} of {} bytes written directly",
            40 * CHUNK
        );
        assert!(uncached <= sent.len() as u64);
    }

    #[test]
    fn an_unaligned_or_appending_output_goes_through_the_page_cache() {
        let prefix = b"header not a page long";
        for append in [false, true] {
            let (sink, path) = file_sink("cached", prefix, append);
            let (sent, end, uncached) = through_file(sink, 8);
            let got = std::fs::read(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            assert_eq!(&got[..prefix.len()], prefix);
            assert!(
                got[prefix.len()..] == sent[..],
                "append {append}: wrong content"
            );
            assert_eq!(end, got.len() as u64);
            assert_eq!(
                uncached, 0,
                "append {append}: O_DIRECT at an unaligned offset"
            );
        }
        // Aligned but opened for appending: the page cache too.
        let (sink, path) = file_sink("append", &vec![1u8; page()], true);
        let (_, _, uncached) = through_file(sink, 8);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(uncached, 0, "O_DIRECT on an O_APPEND output");
    }

    #[test]
    fn no_direct_writes_when_turned_off() {
        let (sink, path) = file_sink("off", &[], false);
        let (in_r, in_w) = input_pipe();
        nix::unistd::write(&in_w, &chunk(0)).unwrap();
        let pipe = Pipe::new(page()).unwrap();
        let n = nix::fcntl::splice(
            &in_r,
            None,
            &pipe.write_end,
            None,
            CHUNK,
            SpliceFFlags::empty(),
        )
        .unwrap();
        assert_eq!(n, CHUNK);
        let mut off = Uncached::unless(true);
        assert!(off.write(pipe.read_end.as_fd(), sink.fd(), CHUNK).is_none());
        let mut on = Uncached::unless(false);
        assert!(
            matches!(on.write(pipe.read_end.as_fd(), sink.fd(), CHUNK), Some(Ok(n)) if n == CHUNK)
        );
        assert_eq!(on.bytes, CHUNK as u64);
        drop(sink);
        assert!(std::fs::read(&path).unwrap() == chunk(0));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_trickle_reaches_the_output_without_a_flush() {
        // Far below a batch: the writer must still be asked within KICK_AFTER or so.
        let (in_r, in_w) = input_pipe();
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut f = File::from(out_r);
            let mut buf = vec![0u8; 65536];
            loop {
                match f.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => tx.send(n).unwrap(),
                }
            }
        });
        let mut wb = WriteBehind::start(sink_to(out_w), page()).unwrap();
        let start = Instant::now();
        // A page before every pull: each pull moves something, for 3 × KICK_AFTER.
        let mut sent = 0;
        while start.elapsed() < KICK_AFTER * 3 {
            nix::unistd::write(&in_w, &vec![7u8; page()]).unwrap();
            sent += page();
            assert!(matches!(
                wb.pull(in_r.as_fd()).unwrap(),
                Step::Moved(_) | Step::MovedAll(_)
            ));
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut got = 0;
        while let Ok(n) = rx.try_recv() {
            got += n;
        }
        // Written out at about KICK_AFTER and 2 × KICK_AFTER: two thirds of it.
        assert!(
            got >= sent / 3,
            "only {got} of {sent} bytes reached the output"
        );
        let (sink, res) = wb.close();
        res.unwrap();
        drop(sink);
        reader.join().unwrap();
    }

    #[test]
    fn an_output_error_reaches_the_recording_side() {
        let (in_r, in_w) = input_pipe();
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        drop(out_r); // writes fail with EPIPE (the writer thread blocks SIGPIPE)
        let mut wb = WriteBehind::start(sink_to(out_w), page()).unwrap();
        nix::unistd::write(&in_w, &chunk(0)).unwrap();
        assert!(matches!(
            wb.pull(in_r.as_fd()).unwrap(),
            Step::Moved(_) | Step::MovedAll(_)
        ));
        match wb.wait_written() {
            Err(RecorderError::Output(e)) => {
                assert_eq!(e.raw_os_error(), Some(libc::EPIPE), "{e}")
            }
            other => panic!("expected an output error, got {other:?}"),
        }
        // The error is reported once; closing still hands the output back.
        let (_sink, res) = wb.close();
        res.unwrap();
    }

    #[test]
    fn the_writer_thread_blocks_the_callers_signals() {
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let reader = drain(out_r);
        let wb = WriteBehind::start(sink_to(out_w), page()).unwrap();
        // The writer names itself when it starts; find it by that name.
        let mut status = None;
        for _ in 0..100 {
            for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
                let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                if comm.trim() == "tracecmd-write" {
                    status = std::fs::read_to_string(e.path().join("status")).ok();
                }
            }
            if status.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = status.expect("no tracecmd-write thread found");
        let blocked = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1, libc::SIGPIPE] {
            assert_ne!(blocked & (1 << (sig - 1)), 0, "signal {sig} not blocked");
        }
        let (sink, res) = wb.close();
        res.unwrap();
        drop(sink);
        assert!(reader.join().unwrap().is_empty());
    }
}
