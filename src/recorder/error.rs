//! What can go wrong in a recorder ([`RecorderError`]) and the errno each error
//! carries to the C layer.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use nix::errno::Errno;

use crate::tracefs;

/// How long a stopping recorder waits for an output that accepts nothing.
pub(super) const STALL_LIMIT: Duration = Duration::from_secs(2);

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

/// An errno from nix as an `io::Error`.
pub(super) fn sys(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}
