//! What a caller asks a recorder for: where it reads ([`Input`]), where it writes
//! ([`Output`], including the files of a max-kb ring) and how ([`RecordFlags`]).

use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::error::RecorderError;
use crate::tracefs;

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
    /// Straight into the queue of a compressing stream (a v7 file written while
    /// recording): the recorder reads its pipe into the stream's blocks.
    Blocks(crate::output::BlockSink),
    /// The max-kb ring (spec §4.6): writes alternate between `first` and `second`
    /// every `max_kb / 2` KiB; [`CpuRecorder::finish`](super::CpuRecorder::finish) merges both into `first` in
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
