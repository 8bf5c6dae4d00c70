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
//!
//! One file per job: `request.rs` (what to record, from where, to where), `error.rs`,
//! `stop.rs` (the stop flag and its self-pipe), `mover.rs` (the recorder and its
//! loops), `step.rs` (what one move came to), `pipe.rs` (pipe sizing), `wake.rs`
//! (how long to wait for the input), `buffer.rs` (what tracefs says about the ring
//! buffer), `sink.rs` (the output and the max-kb ring), `behind.rs` and
//! `uncached.rs` (the write-behind thread and its direct writes), `sched.rs` (the
//! recording thread's scheduling).

mod behind;
mod buffer;
mod error;
mod mover;
mod pipe;
mod request;
mod sched;
mod sink;
mod step;
mod stop;
mod uncached;
mod wake;

// Also used to copy CPU data into trace files without a copy through the CPU.
pub(crate) use pipe::grow_pipe;
pub(crate) use uncached::Uncached;

pub use error::RecorderError;
pub use mover::CpuRecorder;
pub use request::{Input, Output, RecordFlags};
pub use stop::StopHandle;
