//! trace.dat files: a version 6 writer split the way the network roles need it,
//! and a reader good enough to check what was written (shared spec doc §1–§5).
//!
//! The writer has three pieces that can be used alone:
//!
//! 1. [`Metadata::write_to`]: initial header … saved cmdlines into any `Write`
//!    (what a V2/V3 network client streams, spec §3.2 "Metadata content");
//! 2. [`write_options_block`]: CPU count and the options block (streamable too);
//! 3. [`append_flyrecord`] / [`attach_cpu_data`]: the flyrecord table, the trailing
//!    clock and page-aligned per-CPU data copied from files into a seekable file
//!    (what a listener does, spec §3.2 "How the listener builds trace.dat").
//!
//! [`write_trace_dat`] does all of it in one go. Everything is written little-endian
//! (doc §1: the reader honours the endian byte, so LE is always correct).
//!
//! Version 7 (doc §4): [`V7Writer`] writes a whole file, compressed with zstd or
//! not, and compresses per-CPU data while it is recorded ([`V7Writer::cpu_sink`],
//! [`ChunkWriter`]); [`write_trace_dat_v7`] is the one-call form from per-CPU files.
//! [`v7`] finishes the v7 metadata a network client sent, through the same chunk
//! and section code; [`v7read`] reads the compressed parts back.
//!
//! Reading is here too, and only here: [`metadata`] is the one parser of v6
//! metadata (the [`reader`], `record -A` and the listener all call it), [`v7`]
//! reads a client's v7 metadata, and [`merge`] merges a guest's event formats
//! into the host's and rewrites the guest's pages to match.

mod chunks;
mod copy;
pub mod guestsym;
pub mod layout;
pub mod merge;
pub mod metadata;
pub mod read_at;
pub mod reader;
mod stream;
pub mod v7;
pub mod v7read;
mod v7writer;
mod writer;

pub use chunks::{ChunkWriter, Compression, CpuChunks};
pub use read_at::ReadAt;
pub use stream::{BlockSink, CpuStream, BACKLOG_BYTES, SLOW_COMPRESSOR_ENV};
pub use v7writer::{clock_of_trailing, write_trace_dat_v7, V7Writer};
pub use writer::*;

/// The first ten bytes of every trace.dat file (doc §2.1 rows 1–2).
pub const MAGIC: &[u8; 10] = b"\x17\x08\x44tracing";

/// Option ids (doc §3).
pub mod option_id {
    /// Ends the v6 options list (a bare u16, no size).
    pub const DONE: u16 = 0;
    /// `"0x<usecs>"`: wall-clock offset.
    pub const DATE: u16 = 1;
    /// `"CPU: N\n"` + per-CPU stats text + NUL.
    pub const CPUSTAT: u16 = 2;
    /// v6: u64 offset of the buffer's `flyrecord` + name NUL.
    pub const BUFFER: u16 = 3;
    /// The whole `trace_clock` file + NUL.
    pub const TRACECLOCK: u16 = 4;
    /// `"sysname nodename release machine"` + NUL.
    pub const UNAME: u16 = 5;
    /// Hook string + NUL.
    pub const HOOK: u16 = 6;
    /// Timestamp offset in ns, ASCII + NUL.
    pub const OFFSET: u16 = 7;
    /// u32 CPU count.
    pub const CPUCOUNT: u16 = 8;
    /// Version of the writing program + NUL.
    pub const VERSION: u16 = 9;
    /// u64 trace id.
    pub const TRACEID: u16 = 11;
}

/// Errors of the trace.dat writer.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Reading what the file needs from tracefs failed.
    #[error(transparent)]
    Tracefs(#[from] crate::tracefs::TracefsError),
    /// Writing (or copying into) the output failed, e.g. the disk is full.
    #[error("could not write {what} to the trace.dat output: {source}")]
    Write {
        /// Which part was being written.
        what: String,
        /// The error from the file system or socket.
        source: std::io::Error,
    },
    /// A per-CPU data file could not be opened or read.
    #[error("could not read per-CPU data file {}: {source}", path.display())]
    CpuFile {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A piece is larger than its size field in the file format allows.
    #[error("{what} is {len} bytes, more than trace.dat can store there ({max} bytes)")]
    TooLarge {
        /// Which piece.
        what: String,
        /// Its length.
        len: u64,
        /// The largest size the field can hold.
        max: u64,
    },
    /// The caller asked for something the format cannot express.
    #[error("invalid trace.dat request: {0}")]
    Invalid(String),
    /// Event IDs could not be rewritten in a file of recorded pages.
    #[error("could not rewrite event IDs in {}: {source}", path.display())]
    Rewrite {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl OutputError {
    /// The errno the C layer reports for this error.
    pub fn errno(&self) -> i32 {
        match self {
            OutputError::Tracefs(e) => e.errno(),
            OutputError::Write { source, .. }
            | OutputError::CpuFile { source, .. }
            | OutputError::Rewrite { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            OutputError::TooLarge { .. } => libc::EFBIG,
            OutputError::Invalid(_) => libc::EINVAL,
        }
    }
}
