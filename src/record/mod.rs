//! The recording engine: what `trace-cmd record`, `record -N` and `record -A` do
//! between parsing their options and printing the summary.
//!
//! A [`RecordSession`] owns everything a recording holds while it runs:
//!
//! * the host's per-CPU recorders ([`CpuRecorderSet`], one thread per CPU) on the
//!   top-level buffer or an instance, with the tracefs settings it changed
//!   ([`TracefsState`](crate::tracefs::TracefsState), put back at the end or on drop);
//! * each guest's session with its agent and the recorders of its CPU FIFOs
//!   ([`GuestRecording`]), stopped with CLOSE and drained until their data is quiet;
//! * the sink: a [`TraceWriter`] ([`V7FileWriter`] or [`V6FileWriter`]) that hands out the per-CPU
//!   outputs and assembles the trace.dat at the end, or a listener
//!   ([`NetSession`](crate::netrecord::NetSession)) for `record -N`.
//!
//! Who calls whom: the CLI opens the instance and resolves the events, then calls
//! [`RecordSession::start_guests`] and [`RecordSession::start_host`], starts the traced
//! command, polls [`RecordSession::finished_early`], [`RecordSession::peer_gone`] and
//! [`RecordSession::recorded_bytes`] while it waits, and ends with
//! [`RecordSession::finish`]. Dropping a session at any point stops every recorder,
//! restores tracefs and removes the temporary per-CPU data, and no output file that
//! looks complete is left behind.

pub mod agent3;
mod cpus;
pub mod guest;
pub mod remote;
mod session;
pub mod tsync;
mod writer;
mod writer_v7;

pub use cpus::{CpuFailure, CpuRecorderSet};
pub use guest::{
    split_guest_args, GuestArgsError, GuestLink, GuestRecording, GuestSession, GuestSpec,
};
pub use session::{HostSetup, NetTarget, RecordSession, Recorded};
pub use writer::{Assembly, BufferKey, FileBuffer, TraceWriter, V6FileWriter};
pub use writer_v7::V7FileWriter;

use std::path::PathBuf;

use crate::netrecord::NetError;
use crate::output::OutputError;
use crate::recorder::RecorderError;
use crate::tracefs::TracefsError;
use crate::virt::VirtError;

/// An error from an outside library whose type may change (metadata parsing).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong with a guest, after its recording started.
#[derive(Debug, thiserror::Error)]
pub enum GuestProblem {
    /// No ACK for CLOSE in time.
    #[error("the agent did not confirm the stop ({0}); it may have died")]
    NoStopConfirmation(VirtError),
    /// One of its CPU recorders failed.
    #[error("{}", guest_cpu_text(.0))]
    Cpu(CpuFailure),
    /// Its metadata could not be read.
    #[error("{0}")]
    Metadata(BoxError),
    /// Its pages have another size than the file's.
    #[error("its page size {guest} differs from {file}; its data is left out")]
    PageSize {
        /// The guest's page size.
        guest: u32,
        /// The file's page size.
        file: u32,
    },
    /// Its event IDs could not be rewritten.
    #[error("{0}")]
    Remap(BoxError),
    /// Its timestamps could not be moved onto the host's clock.
    #[error("its timestamps could not be moved onto the host's clock: {0}")]
    ClockShift(BoxError),
}

fn guest_cpu_text(f: &CpuFailure) -> String {
    match f {
        CpuFailure::Failed { cpu, source } => format!("recording its CPU {cpu} failed: {source}"),
        CpuFailure::Panicked { cpu } => format!("its CPU {cpu} recorder panicked"),
    }
}

/// One guest's problem, named.
#[derive(Debug, thiserror::Error)]
#[error("guest {guest}: {problem}")]
pub struct GuestIssue {
    /// The guest (its buffer name).
    pub guest: String,
    /// What went wrong.
    pub problem: GuestProblem,
}

fn join_issues(issues: &[GuestIssue]) -> String {
    let v: Vec<String> = issues.iter().map(ToString::to_string).collect();
    v.join("; ")
}

/// Errors of the recording engine; each is a sentence for the user.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Ctrl-C came while tracefs was being prepared.
    #[error("interrupted before recording started; tracefs was restored")]
    Interrupted,
    /// Reading or changing tracefs failed.
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    /// The CPUs of the buffer could not be counted.
    #[error("cannot count CPUs: {0}")]
    CpuCount(std::io::Error),
    /// A host CPU's recorder could not be made.
    #[error("cannot start the CPU {cpu} recorder: {source}")]
    StartRecorder {
        /// The CPU.
        cpu: usize,
        /// Why.
        source: RecorderError,
    },
    /// No thread for a recorder.
    #[error("cannot start a recorder thread: {0}")]
    Thread(std::io::Error),
    /// A host CPU's recording failed.
    #[error(transparent)]
    Cpu(#[from] CpuFailure),
    /// Assembling the output failed (the metadata, or the file itself).
    #[error(transparent)]
    Output(#[from] OutputError),
    /// The host recording failed; nothing was written.
    #[error("{cause}; removed the per-CPU files, nothing was written to {}", output.display())]
    NotRecorded {
        /// Why.
        cause: Box<RecordError>,
        /// The output that was not written.
        output: PathBuf,
    },
    /// The recording worked, tracefs could not be put back.
    #[error("recording done, but restoring tracefs failed: {0}")]
    Restore(TracefsError),
    /// Writing the trace.dat failed; the partial file was removed.
    #[error("{source}; removed the incomplete {}", path.display())]
    Incomplete {
        /// Why.
        source: OutputError,
        /// The file.
        path: PathBuf,
    },
    /// The guest could not be started.
    #[error("guest {guest}: {source}")]
    Guest {
        /// The guest.
        guest: String,
        /// Why.
        source: VirtError,
    },
    /// A guest CPU's recorder could not be made.
    #[error("guest {guest}: cannot record CPU {cpu}: {source}")]
    GuestCpu {
        /// The guest.
        guest: String,
        /// The CPU.
        cpu: usize,
        /// Why.
        source: RecorderError,
    },
    /// Guests are recorded into files only.
    #[error("guests (-A) cannot be recorded to a listener (-N)")]
    GuestsOverNetwork,
    /// The file was written, but some guest data is missing.
    #[error("{} was written with the host data and the guest data received so far, but: {}", path.display(), join_issues(issues))]
    GuestsIncomplete {
        /// The file.
        path: PathBuf,
        /// What went wrong, per guest.
        issues: Vec<GuestIssue>,
    },
    /// Neither host nor guest data.
    #[error("nothing was recorded")]
    NothingRecorded,
    /// Only guests were recorded, and none of them gave usable metadata.
    #[error("nothing was written: no guest gave metadata a file can be made from: {}", join_issues(.0))]
    NoUsableGuest(Vec<GuestIssue>),
    /// More CPUs than a trace.dat can describe.
    #[error("too many CPUs")]
    TooManyCpus,
    /// The listener of `record -N`.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The listener went away during the recording.
    #[error("the listener at {0} closed the connection during the recording; its file holds only what arrived before")]
    ListenerGone(String),
    /// The caller's part of the recording (e.g. starting the traced command) failed.
    #[error("{0}")]
    Caller(String),
}
