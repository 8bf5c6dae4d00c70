//! One CPU's data compressed while it is recorded ([`CpuStream`]), without the
//! compressor ever holding up the recorder.
//!
//! The recorder reads its data straight into blocks of one chunk ([`BlockSink`]) and
//! queues them; the *compressor* thread takes them in order and writes
//! [`ChunkWriter`] output into an anonymous temporary file. When the compressor falls
//! behind (a loaded machine, a burst) the queue grows up to [`BACKLOG_BYTES`] of
//! memory; past that, the recorder appends blocks to a raw spill file next to the
//! output and queues only where they are, and the compressor reads them back when it
//! gets to them (at the latest at the end). So the recorder keeps draining the
//! kernel's ring buffer however slow compression is; the cost of a compressor that
//! cannot keep up is disk space and a longer wait at the end, not lost events.
//!
//! (An earlier version had a pipe and a second thread between the recorder and the
//! queue: one more copy of every byte, pipe-lock contention and a thread hand-off
//! per block, about a tenth of the recording's CPU on a marker flood.)
//!
//! The spill file is emptied whenever the compressor has caught up with it. Only if it
//! cannot be written (a full disk) does the recorder wait for the compressor; that is
//! said in a warning.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::chunks::{anonymous_file, werr, ChunkWriter, Compression, CpuChunks};
use super::v7::pages_in_chunk;
use super::OutputError;

/// Most raw bytes a [`CpuStream`] queues in memory for a compressor that is behind;
/// past that they are spilled to a file.
pub const BACKLOG_BYTES: usize = 2 << 20;

/// Free blocks kept for reuse beyond the memory limit: one being filled by the
/// recorder and one in the compressor is the steady state.
const SPARE_BLOCKS: usize = 2;

/// Spilled bytes after which the compressor frees the part of the spill file it has
/// read (FALLOC_FL_PUNCH_HOLE), so a long catch-up does not hold all of it on disk.
const PUNCH_EVERY: u64 = 4 << 20;

/// Test-only: milliseconds the compressor sleeps before each block, so that tests
/// of the whole CLI can make it fall behind and spill (cli/tests/record.rs). Unset
/// in any real use; an unparsable value is ignored.
pub const SLOW_COMPRESSOR_ENV: &str = "TRACECMD_RS_TEST_SLOW_COMPRESSOR_MS";

/// The delay [`SLOW_COMPRESSOR_ENV`] asks for, if any.
fn test_delay() -> Option<std::time::Duration> {
    let ms: u64 = std::env::var(SLOW_COMPRESSOR_ENV)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    log::warn!(
        "{SLOW_COMPRESSOR_ENV}={ms}: the compressor waits {ms} ms per block (a test setting)"
    );
    Some(std::time::Duration::from_millis(ms))
}

/// Raw data waiting for the compressor, in recording order.
enum Held {
    /// A block in memory (one chunk, the last one may be shorter).
    Mem(Vec<u8>),
    /// `len` bytes at offset `at` of the spill file.
    Spilled { at: u64, len: u64 },
}

/// The queue between the recorder and the compressor.
#[derive(Default)]
struct Backlog {
    items: VecDeque<Held>,
    /// Bytes in `Mem` items.
    mem: usize,
    /// Spilled bytes the compressor has not finished with (queued or being read).
    spill_left: u64,
    /// Where the next spilled block goes.
    spill_end: u64,
    /// The recorder has queued everything (its sink was closed).
    eof: bool,
    /// The compressor gave up: take nothing more.
    stopped: bool,
    /// Tests hold the compressor to make it fall behind.
    held: bool,
    /// Blocks the compressor is done with, for the recorder to reuse.
    spare: Vec<Vec<u8>>,
}

struct Shared {
    backlog: Mutex<Backlog>,
    /// Signalled on every change of `backlog`.
    changed: Condvar,
    /// Raw bytes the recorder put in (the live line's count).
    bytes_in: AtomicU64,
    /// Raw bytes that went through the spill file.
    spilled: AtomicU64,
    /// Most bytes the in-memory queue ever held.
    peak_mem: AtomicU64,
    /// Where the spill file goes; made at the first spill.
    temp_dir: PathBuf,
    spill: std::sync::OnceLock<File>,
    memory_cap: usize,
    label: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Backlog> {
        // A panicking thread is reported by its join; the queue itself stays usable.
        self.backlog.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, Backlog>) -> MutexGuard<'a, Backlog> {
        self.changed.wait(g).unwrap_or_else(|e| e.into_inner())
    }

    fn spill_file(&self) -> Result<&File, OutputError> {
        if let Some(f) = self.spill.get() {
            return Ok(f);
        }
        let f = anonymous_file(&self.temp_dir)?;
        Ok(self.spill.get_or_init(|| f))
    }

    /// Queues `block` in memory and wakes the compressor.
    fn push_mem(&self, g: &mut Backlog, block: Vec<u8>) {
        g.mem += block.len();
        self.peak_mem.fetch_max(g.mem as u64, Ordering::Relaxed);
        g.items.push_back(Held::Mem(block));
        self.changed.notify_all();
    }

    /// Queues one block (the recorder's side). Returns false
    /// once the compressor has stopped: nothing more is wanted.
    fn push(&self, block: Vec<u8>, spill_broken: &mut bool) -> bool {
        let len = block.len();
        let mut g = self.lock();
        if g.stopped {
            return false;
        }
        if g.mem + len <= self.memory_cap || g.mem == 0 {
            self.push_mem(&mut g, block);
            return true;
        }
        if !*spill_broken {
            // Caught up with everything spilled before: start the file again.
            let restart = g.spill_left == 0 && g.spill_end > 0;
            if g.spill_left == 0 {
                g.spill_end = 0;
            }
            let at = g.spill_end;
            // The compressor reads only spilled ranges already queued, all below `at`.
            drop(g);
            match self.spill_write(at, &block, restart) {
                Ok(()) => {
                    let mut g = self.lock();
                    g.spill_end = at + len as u64;
                    g.spill_left += len as u64;
                    match g.items.back_mut() {
                        Some(Held::Spilled { at: a, len: l }) if *a + *l == at => *l += len as u64,
                        _ => g.items.push_back(Held::Spilled {
                            at,
                            len: len as u64,
                        }),
                    }
                    if g.spare.len() < SPARE_BLOCKS {
                        g.spare.push(block);
                    }
                    self.spilled.fetch_add(len as u64, Ordering::Relaxed);
                    self.changed.notify_all();
                    return true;
                }
                Err(e) => {
                    log::warn!(
                        "{}: compression is behind and the backlog cannot be spilled ({e}); \
                         recording now waits for the compressor, so the ring buffer may overrun",
                        self.label
                    );
                    *spill_broken = true;
                }
            }
            g = self.lock();
        }
        // No spill file: wait for room (the ring buffer may overrun meanwhile).
        while !g.stopped && g.mem + len > self.memory_cap && g.mem > 0 {
            g = self.wait(g);
        }
        if g.stopped {
            return false;
        }
        self.push_mem(&mut g, block);
        true
    }

    fn spill_write(&self, at: u64, block: &[u8], restart: bool) -> Result<(), OutputError> {
        let f = self.spill_file()?;
        let what = || werr(format!("the spill file of {}", self.label));
        if restart {
            f.set_len(0).map_err(what())?;
        }
        f.write_all_at(block, at).map_err(what())
    }

    /// The next item for the compressor, or None at the end (or once stopped).
    fn pop(&self) -> Option<Held> {
        let mut g = self.lock();
        loop {
            if g.stopped {
                return None;
            }
            if !g.held {
                if let Some(item) = g.items.pop_front() {
                    return Some(item);
                }
                if g.eof {
                    return None;
                }
            }
            g = self.wait(g);
        }
    }

    /// The compressor is done with a block in memory.
    fn done_mem(&self, block: Vec<u8>) {
        let mut g = self.lock();
        g.mem -= block.len();
        // Keep it while the queue and the spares together stay within the memory
        // limit (plus SPARE_BLOCKS): a freed block would come back as a fresh
        // allocation, page faults and zeroing included, for the next read.
        let kept = (g.spare.len() + 1) * block.capacity();
        if g.spare.len() < SPARE_BLOCKS || g.mem + kept <= self.memory_cap {
            g.spare.push(block);
        }
        self.changed.notify_all();
    }

    /// The compressor is done with `len` spilled bytes.
    fn done_spilled(&self, len: u64) {
        let mut g = self.lock();
        g.spill_left -= len;
        self.changed.notify_all();
    }

    fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
    }
}

/// One CPU's data being compressed while it is recorded (see the module
/// documentation): the recorder fills blocks through a [`BlockSink`], and once the
/// sink is closed and the compressor has caught up, [`CpuStream::finish`] hands over
/// the temporary file of chunks.
///
/// Memory per CPU: the queue for a compressor that is behind (at most
/// [`BACKLOG_BYTES`], 2 MiB, plus one block; only the block being compressed while it
/// keeps up), the block being filled and two spare ones (blocks of one chunk,
/// 512 KiB) and the [`ChunkWriter`]'s buffers and zstd context (about 1.8 MiB): at
/// most about 6 MiB, however long the recording and however slow the compressor. What
/// does not fit goes into the spill file on disk.
///
/// If writing the output fails (e.g. the disk is full) the compressor stops and the
/// sink's next full block fails with `BrokenPipe` instead of waiting; the error itself
/// comes back from [`CpuStream::finish`].
pub struct CpuStream {
    compressor: JoinHandle<Result<(File, CpuChunks), OutputError>>,
    shared: Arc<Shared>,
}

impl CpuStream {
    /// Starts the compressor; returns the recorder's end and the stream. `label`
    /// names the CPU in errors; temporary files go into `temp_dir`.
    pub fn spawn(
        temp_dir: &Path,
        page_size: u32,
        compression: Compression,
        label: String,
    ) -> Result<(BlockSink, CpuStream), OutputError> {
        Self::spawn_with(
            temp_dir,
            page_size,
            compression,
            label,
            BACKLOG_BYTES,
            false,
        )
    }

    /// [`CpuStream::spawn`] with another memory limit, and for tests a compressor
    /// that starts held ([`CpuStream::release`]).
    fn spawn_with(
        temp_dir: &Path,
        page_size: u32,
        compression: Compression,
        label: String,
        memory_cap: usize,
        held: bool,
    ) -> Result<(BlockSink, CpuStream), OutputError> {
        let file = anonymous_file(temp_dir)?;
        let writer = ChunkWriter::new(file, page_size, compression)?;
        let shared = Arc::new(Shared {
            backlog: Mutex::new(Backlog {
                held,
                ..Backlog::default()
            }),
            changed: Condvar::new(),
            bytes_in: AtomicU64::new(0),
            spilled: AtomicU64::new(0),
            peak_mem: AtomicU64::new(0),
            temp_dir: temp_dir.to_path_buf(),
            spill: std::sync::OnceLock::new(),
            memory_cap,
            label: label.clone(),
        });
        let block = pages_in_chunk(page_size as usize) * page_size as usize;
        let s = Arc::clone(&shared);
        let delay = test_delay();
        let compressor = std::thread::Builder::new()
            .name(format!("v7 {label}"))
            .spawn(move || {
                let r = compress(&s, writer, block, delay);
                // Whatever happened, the recorder must not wait for it any more.
                s.stop();
                r.map_err(|e| in_cpu(&s.label, e))
            })
            .map_err(werr(format!("the compressing thread for {label}")))?;
        let sink = BlockSink {
            shared: Arc::clone(&shared),
            cur: Vec::new(),
            filled: 0,
            block,
            spill_broken: false,
            closed: false,
        };
        Ok((sink, CpuStream { compressor, shared }))
    }

    /// Raw bytes the recorder has put into the stream.
    pub fn bytes_in(&self) -> u64 {
        self.shared.bytes_in.load(Ordering::Relaxed)
    }

    /// Raw bytes that had to go through the spill file so far.
    pub fn spilled_bytes(&self) -> u64 {
        self.shared.spilled.load(Ordering::Relaxed)
    }

    /// Lets a compressor started held run.
    #[cfg(test)]
    fn release(&self) {
        self.shared.lock().held = false;
        self.shared.changed.notify_all();
    }

    /// Waits for the recorder to have closed its sink and for the last chunk; returns
    /// the temporary file (chunks from offset 0) and what it holds.
    pub fn finish(self) -> Result<(File, CpuChunks), OutputError> {
        let CpuStream { compressor, shared } = self;
        let label = &shared.label;
        let compressed = compressor.join().map_err(|_| {
            OutputError::Invalid(format!("the compressing thread for {label} panicked"))
        })?;
        let spilled = shared.spilled.load(Ordering::Relaxed);
        if spilled > 0 {
            log::info!("{label}: compression fell behind; {spilled} bytes waited in a spill file");
        }
        compressed
    }
}

/// The recorder's end of a [`CpuStream`]: the recorder reads its data straight into
/// the current block, and full blocks go onto the compressor's queue (or into the
/// spill file). Closing it (or dropping it) queues the last, shorter block and ends the
/// stream.
pub struct BlockSink {
    shared: Arc<Shared>,
    /// The block being filled (`block` bytes long once started; `filled` of them
    /// hold data).
    cur: Vec<u8>,
    filled: usize,
    block: usize,
    spill_broken: bool,
    closed: bool,
}

impl std::fmt::Debug for BlockSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockSink")
            .field("label", &self.shared.label)
            .field("filled", &self.filled)
            .finish()
    }
}

impl BlockSink {
    /// Room left in the current block, started from a spare block if need be.
    fn room(&mut self) -> &mut [u8] {
        if self.cur.len() < self.block {
            if self.cur.capacity() == 0 {
                self.cur = self.shared.lock().spare.pop().unwrap_or_default();
            }
            // Reused blocks are full-length already; only a new one is zeroed here.
            self.cur.resize(self.block, 0);
        }
        &mut self.cur[self.filled..]
    }

    /// Reads at most `max` bytes from `fd` (one read() call) into the stream.
    /// Returns what read() returned; queueing errors come back as `BrokenPipe`.
    pub fn read_from(&mut self, fd: BorrowedFd<'_>, max: usize) -> std::io::Result<usize> {
        let room = self.room();
        let want = room.len().min(max);
        let n = nix::unistd::read(fd.as_raw_fd(), &mut room[..want])
            .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
        self.took(n)?;
        Ok(n)
    }

    /// Copies all of `data` into the stream.
    pub fn write_all(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let room = self.room();
            let n = room.len().min(data.len());
            room[..n].copy_from_slice(&data[..n]);
            data = &data[n..];
            self.took(n)?;
        }
        Ok(())
    }

    /// Bytes taken so far.
    pub fn bytes(&self) -> u64 {
        self.shared.bytes_in.load(Ordering::Relaxed)
    }

    /// Counts `n` bytes just put into the block; queues the block once it is full.
    fn took(&mut self, n: usize) -> std::io::Result<()> {
        self.filled += n;
        self.shared.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        if self.filled == self.block {
            self.queue()?;
        }
        Ok(())
    }

    fn queue(&mut self) -> std::io::Result<()> {
        let mut b = std::mem::take(&mut self.cur);
        b.truncate(self.filled);
        self.filled = 0;
        if self.shared.push(b, &mut self.spill_broken) {
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                format!("the compressor of {} stopped", self.shared.label),
            ))
        }
    }

    /// Queues what the current block holds and ends the stream.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        if self.filled > 0 {
            // A stopped compressor has its own error, which finish() reports.
            let _ = self.queue();
        }
        self.shared.lock().eof = true;
        self.shared.changed.notify_all();
    }
}

impl Drop for BlockSink {
    fn drop(&mut self) {
        self.close();
    }
}

/// The compressor thread: turns queued blocks, in order, into chunks.
fn compress(
    s: &Shared,
    mut w: ChunkWriter<File>,
    block: usize,
    delay: Option<std::time::Duration>,
) -> Result<(File, CpuChunks), OutputError> {
    let mut buf = Vec::new();
    while let Some(item) = s.pop() {
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        match item {
            Held::Mem(b) => {
                w.write_pages(&b)?;
                s.done_mem(b);
            }
            Held::Spilled { at, len } => {
                let f = s.spill.get().ok_or_else(|| {
                    OutputError::Invalid("spilled data without a spill file".into())
                })?;
                buf.resize(block, 0);
                let (mut pos, end) = (at, at + len);
                let mut punched = at;
                while pos < end {
                    let n = block.min((end - pos) as usize);
                    f.read_exact_at(&mut buf[..n], pos)
                        .map_err(werr("per-CPU data (reading it back from the spill file)"))?;
                    w.write_pages(&buf[..n])?;
                    pos += n as u64;
                    if pos - punched >= PUNCH_EVERY {
                        punch(f, punched, pos - punched);
                        punched = pos;
                    }
                }
                s.done_spilled(len);
            }
        }
    }
    w.finish()
}

/// Frees a range of the spill file that has been read (best effort).
fn punch(f: &File, at: u64, len: u64) {
    use nix::fcntl::FallocateFlags as F;
    let _ = nix::fcntl::fallocate(
        f.as_raw_fd(),
        F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE,
        at as libc::off_t,
        len as libc::off_t,
    );
}

/// Names the CPU in a write error.
fn in_cpu(label: &str, e: OutputError) -> OutputError {
    match e {
        OutputError::Write { what, source } => OutputError::Write {
            what: format!("{what} of {label}"),
            source,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::chunks::tests::{pages, unchunk};
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;

    fn read_back(f: &mut File) -> Vec<u8> {
        let mut b = Vec::new();
        f.rewind().unwrap();
        f.read_to_end(&mut b).unwrap();
        b
    }

    #[test]
    fn stream_compresses_what_the_sink_takes() {
        let dir = crate::testutil::TempDir::new("stream");
        let (mut sink, s) =
            CpuStream::spawn(&dir, 4096, Compression::Zstd, "CPU 0".into()).unwrap();
        let data = pages(3 * pages_in_chunk(4096) + 1, 3);
        for p in data.chunks(4096) {
            sink.write_all(p).unwrap();
        }
        drop(sink);
        let (mut f, st) = s.finish().unwrap();
        assert_eq!(st.chunks, 4);
        let b = read_back(&mut f);
        assert_eq!(b.len() as u64, st.size);
        assert_eq!(unchunk(&b).concat(), data);
    }

    /// Feeds `data` into `sink` on another thread, half through `read_from` (as the
    /// recorder reads its pipe) and half by `write_all` (as its flush writes); fails
    /// if that does not end, i.e. if the sink waited for a held compressor.
    fn feed_never_waiting(mut sink: BlockSink, data: &[u8]) -> BlockSink {
        let (tx, rx) = std::sync::mpsc::channel();
        let feed = data.to_vec();
        let t = std::thread::spawn(move || {
            let half = feed.len() / 2;
            let (r, w) = nix::unistd::pipe().unwrap();
            let mut w = File::from(w);
            let before = sink.bytes();
            for p in feed[..half].chunks(16 * 4096) {
                w.write_all(p).unwrap();
                let mut left = p.len();
                while left > 0 {
                    left -= sink.read_from(r.as_fd(), left).unwrap();
                }
            }
            for p in feed[half..].chunks(4096) {
                sink.write_all(p).unwrap();
            }
            assert_eq!(sink.bytes() - before, feed.len() as u64);
            tx.send(()).unwrap();
            sink
        });
        // A deadlock detector, not a timing: the feeder has only copies to do.
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("the block sink waited for the held compressor");
        t.join().unwrap()
    }

    #[test]
    fn a_held_compressor_never_stalls_the_recorder_and_loses_nothing() {
        let dir = crate::testutil::TempDir::new("stream-held");
        for c in [Compression::Zstd, Compression::None] {
            // 64 KiB of memory: the 8 MiB written mostly spill, twice (the second
            // round reuses the emptied spill file).
            let cap = 64 << 10;
            let (sink, s) =
                CpuStream::spawn_with(&dir, 4096, c, "CPU 1".into(), cap, true).unwrap();
            let first = pages(1024, 1);
            let second = pages(1024, 2);
            let sink = feed_never_waiting(sink, &first);
            // Let the compressor catch up before the second round.
            s.release();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while s.shared.lock().spill_left > 0 || !s.shared.lock().items.is_empty() {
                assert!(std::time::Instant::now() < deadline, "no progress");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            s.shared.lock().held = true;
            let sink = feed_never_waiting(sink, &second);
            s.release();
            drop(sink);
            let spilled = s.spilled_bytes();
            let peak = s.shared.peak_mem.load(Ordering::Relaxed) as usize;
            let shared = Arc::clone(&s.shared);
            let (mut f, st) = s.finish().unwrap();
            let spill_end = shared.lock().spill_end;
            assert!(
                spill_end <= first.len() as u64,
                "the spill file was not started again once caught up: {spill_end} bytes"
            );
            // Per round, all but what fits in memory and the block being filled.
            let block = 4096 * pages_in_chunk(4096);
            assert!(
                spilled >= 2 * (first.len() - cap - 2 * block) as u64,
                "only {spilled} bytes spilled"
            );
            assert!(peak <= cap + block, "{peak} bytes queued in memory");
            let all = [first.clone(), second.clone()].concat();
            assert_eq!(st.raw, all.len() as u64);
            let b = read_back(&mut f);
            assert_eq!(b.len() as u64, st.size);
            let got = match c {
                Compression::Zstd => unchunk(&b).concat(),
                Compression::None => b,
            };
            assert!(got == all, "{c:?}: the data differs from what was written");
        }
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }

    #[test]
    fn without_a_spill_file_the_recorder_waits_and_nothing_is_lost() {
        let dir = crate::testutil::TempDir::new("stream-nospill");
        let tmp = dir.join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let (mut sink, s) =
            CpuStream::spawn_with(&tmp, 4096, Compression::Zstd, "CPU 3".into(), 8192, false)
                .unwrap();
        // The output file is open already; the spill file cannot be made any more.
        std::fs::remove_dir(&tmp).unwrap();
        let data = pages(600, 4);
        sink.write_all(&data).unwrap();
        drop(sink);
        assert_eq!(s.spilled_bytes(), 0);
        let (mut f, st) = s.finish().unwrap();
        assert_eq!(st.raw, data.len() as u64);
        assert!(
            unchunk(&read_back(&mut f)).concat() == data,
            "the data differs"
        );
    }

    #[test]
    fn a_missing_temporary_directory_is_a_clear_error() {
        let dir = crate::testutil::TempDir::new("stream-gone");
        let gone = dir.join("missing");
        let e = CpuStream::spawn(&gone, 4096, Compression::Zstd, "CPU 2".into())
            .map(|_| ())
            .unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
