//! The per-CPU recorder threads of one buffer (the host's or a guest's): one thread
//! per CPU, stopped and joined together, and never left running (Drop).

use std::thread::JoinHandle;
use std::time::Duration;

use super::RecordError;
use crate::recorder::{CpuRecorder, RecorderError, StopHandle};

type RecorderThread = JoinHandle<(CpuRecorder, Result<(), RecorderError>)>;

/// Why one CPU's recording failed.
#[derive(Debug, thiserror::Error)]
pub enum CpuFailure {
    /// The recorder returned an error (e.g. the disk is full).
    #[error("recording CPU {cpu} failed: {source}")]
    Failed {
        /// The CPU.
        cpu: usize,
        /// The recorder's error.
        source: RecorderError,
    },
    /// The recorder's thread panicked.
    #[error("the CPU {cpu} recorder thread panicked")]
    Panicked {
        /// The CPU.
        cpu: usize,
    },
}

/// Running recorder threads, one per CPU; dropping the set stops and joins them.
#[derive(Debug)]
pub struct CpuRecorderSet {
    /// Thread names are `<prefix>-cpuN`.
    prefix: String,
    stops: Vec<StopHandle>,
    threads: Vec<(usize, RecorderThread)>,
}

impl CpuRecorderSet {
    /// An empty set whose threads will be named `<prefix>-cpuN`.
    pub fn new(prefix: &str) -> CpuRecorderSet {
        CpuRecorderSet {
            prefix: prefix.to_string(),
            stops: Vec::new(),
            threads: Vec::new(),
        }
    }

    /// Starts `rec` (CPU `cpu`) in its own thread, recording until stopped.
    pub fn start(
        &mut self,
        cpu: usize,
        mut rec: CpuRecorder,
        sleep: Duration,
    ) -> Result<(), RecordError> {
        self.stops.push(rec.stop_handle());
        let t = std::thread::Builder::new()
            .name(format!("{}-cpu{cpu}", self.prefix))
            .spawn(move || {
                let res = rec.record(sleep);
                (rec, res)
            })
            .map_err(RecordError::Thread)?;
        self.threads.push((cpu, t));
        Ok(())
    }

    /// How many recorders run.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Whether no recorder runs.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Whether a recorder has ended without being stopped: only an error does that
    /// (e.g. disk full), so the recording should end.
    pub fn finished_early(&self) -> bool {
        self.threads.iter().any(|(_, t)| t.is_finished())
    }

    /// Asks every recorder to stop (they flush first); [`CpuRecorderSet::finish`] waits.
    pub fn stop(&self) {
        for s in &self.stops {
            s.stop();
        }
    }

    /// Stops every recorder, waits for its final flush and merges max-kb rings.
    /// Returns the first failure; every recorder is finished either way.
    pub fn finish(mut self) -> Result<(), CpuFailure> {
        self.stop();
        let mut first = None;
        for (cpu, t) in std::mem::take(&mut self.threads) {
            let res = match t.join() {
                Ok((rec, res)) => res.and_then(|()| rec.finish()),
                Err(_) => {
                    first.get_or_insert(CpuFailure::Panicked { cpu });
                    continue;
                }
            };
            if let Err(source) = res {
                first.get_or_insert(CpuFailure::Failed { cpu, source });
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for CpuRecorderSet {
    fn drop(&mut self) {
        self.stop();
        for (_, t) in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
