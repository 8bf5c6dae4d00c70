//! The one interface through which a recording produces its trace.dat
//! ([`TraceWriter`]), and the version 6 implementation ([`V6FileWriter`]).
//!
//! The engine asks the writer, per buffer and CPU, for the [`Output`] the recorder
//! writes to before recording starts; at the end it hands over everything else the
//! file holds ([`Assembly`]: metadata, options, buffer names and clocks) and the
//! writer puts the file together. Dropping a writer without [`TraceWriter::finish`]
//! is the abort path: it removes whatever it created.
//!
//! The version 7 writer, [`V7FileWriter`](super::V7FileWriter), fits the same
//! calls: its `cpu_output` returns the write end of a pipe read by a compressing
//! thread per CPU, so the recorders stay as they are.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::tsync::{shift_file, Correction};
use super::{BoxError, RecordError};
use crate::output::merge::{rewrite_guest_file, GuestRewrite};
use crate::output::{write_trace_dat, BufferData, CpuRange, DatOption, Metadata};
use crate::recorder::{Output, RecorderError};

/// Which recorded buffer a per-CPU stream belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BufferKey {
    /// The host's ring buffer (the top-level one, or the instance recorded).
    Host,
    /// A guest's, by its name.
    Guest(String),
}

/// One buffer of the file: its name, trailing clock, and which recorded stream
/// holds its CPU data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileBuffer {
    /// `""` for the top buffer, else the name `report` shows.
    pub name: String,
    /// The clock field after the CPU table (v6), e.g. `"[local]"`.
    pub trailing_clock: Option<Vec<u8>>,
    /// The recorded data; `None` for a buffer without data.
    pub data: Option<BufferKey>,
}

/// Everything of the file besides the CPU data, known once the recording ended.
#[derive(Debug, Clone)]
pub struct Assembly {
    /// Header … saved cmdlines (the formats of every buffer, merged).
    pub meta: Metadata,
    /// CPU count of the file (every buffer's table has this many entries).
    pub cpus: u32,
    /// Options in v6 file order (TRACECLOCK, UNAME, VERSION, CPUSTAT…, a named
    /// buffer's CPUSTATs after its `buffer_stat_header`); the writer adds what points
    /// into the file itself (BUFFER options). A v7 writer places them in its sections.
    pub options: Vec<DatOption>,
    /// The top buffer (first in the file).
    pub top: FileBuffer,
    /// The named buffers in file order.
    pub named: Vec<FileBuffer>,
}

/// Where a recording's trace.dat comes from. See the module documentation.
///
/// Contract for implementations: dropping the writer before [`TraceWriter::finish`]
/// succeeded removes everything it created, and no file at [`TraceWriter::path`]
/// may look complete unless `finish` returned `Ok`.
pub trait TraceWriter: Send + std::fmt::Debug {
    /// The file being written (for messages).
    fn path(&self) -> &Path;

    /// The output for the recorder of `buffer`'s CPU `cpu`, asked for once per buffer
    /// and CPU before recording starts. `max_kb > 0`: keep about the newest `max_kb`
    /// KiB (the recorder's max-kb ring).
    fn cpu_output(
        &mut self,
        buffer: &BufferKey,
        cpu: usize,
        max_kb: u32,
    ) -> Result<Output, RecorderError>;

    /// The host buffer's name in the file (`""` for the top buffer) and its page
    /// (sub-buffer) size, told before its first [`TraceWriter::cpu_output`]. A
    /// writer that compresses page by page while recording needs both then.
    fn host_buffer(&mut self, _name: &str, _page_size: u32) {}

    /// Bytes recorded so far into `buffer` (all CPUs): the live line, and the
    /// engine's test whether a guest's data has stopped coming.
    fn recorded_bytes(&self, buffer: &BufferKey) -> u64;

    /// Rewrites `buffer`'s recorded pages as `map` says (a guest's events moved to
    /// free IDs and its kernel addresses moved into its symbol window, see
    /// `output::merge::merge_guest`); `layout` is that buffer's own metadata (page
    /// size and headers). Called after its recorders finished. Returns the records
    /// changed.
    fn remap_event_ids(
        &mut self,
        buffer: &BufferKey,
        layout: &Metadata,
        map: &GuestRewrite,
    ) -> Result<u64, BoxError>;

    /// Moves `buffer`'s recorded timestamps onto the host's clock with `c` (clock
    /// sync of `record -A`); `layout` as for [`TraceWriter::remap_event_ids`].
    /// Returns the pages left as they were (unreadable). A writer that cannot
    /// rewrite its pages says so, and the guest is reported.
    fn shift_timestamps(
        &mut self,
        buffer: &BufferKey,
        layout: &Metadata,
        c: &Correction,
    ) -> Result<u64, BoxError> {
        let _ = (buffer, layout, c);
        Err("this trace.dat writer cannot move guest timestamps".into())
    }

    /// Gives up the file because the recording failed with `cause` before
    /// [`TraceWriter::finish`]; removes everything, as dropping does, and returns the
    /// error to tell: the writer's own if it explains the failure better (a v7 writer
    /// whose compressing thread found the disk full closed the recorder's pipe, so
    /// the recorder saw only EPIPE). Called once every recorder has finished.
    fn abandon(self: Box<Self>, cause: RecordError) -> RecordError {
        cause
    }

    /// Writes the file and removes the temporary data. Returns where each CPU's data
    /// landed, top buffer first, then the named ones. On an error the partial file
    /// is removed ([`RecordError::Incomplete`]).
    fn finish(self: Box<Self>, assembly: &Assembly) -> Result<Vec<Vec<CpuRange>>, RecordError>;
}

/// trace.dat version 6: each recorder writes a temporary file next to the output
/// (`<output>.cpuN` for the host, `<output>.<guest>.cpuN` for a guest), and `finish`
/// copies them into the file (`output::write_trace_dat`). The temporary files are
/// removed when the writer is dropped, whatever happened.
#[derive(Debug)]
pub struct V6FileWriter {
    path: PathBuf,
    files: HashMap<BufferKey, Vec<PathBuf>>,
}

impl V6FileWriter {
    /// A writer of `path` (nothing is created before the first `cpu_output`).
    pub fn new(path: &Path) -> V6FileWriter {
        V6FileWriter {
            path: path.to_path_buf(),
            files: HashMap::new(),
        }
    }

    /// Runs a page rewrite (file, page size, header_page, header_event) over each
    /// of `buffer`'s files; sums what it counts.
    fn rewrite_pages(
        &self,
        buffer: &BufferKey,
        layout: &Metadata,
        f: impl Fn(&Path, usize, &[u8], &[u8]) -> Result<u64, BoxError>,
    ) -> Result<u64, BoxError> {
        let mut n = 0;
        for p in self.files_of(buffer) {
            n += f(
                p,
                layout.page_size as usize,
                &layout.header_page,
                &layout.header_event,
            )?;
        }
        Ok(n)
    }

    fn temp_path(&self, buffer: &BufferKey, cpu: usize) -> PathBuf {
        let mut p = self.path.as_os_str().to_owned();
        match buffer {
            BufferKey::Host => p.push(format!(".cpu{cpu}")),
            BufferKey::Guest(name) => p.push(format!(".{name}.cpu{cpu}")),
        }
        PathBuf::from(p)
    }

    pub(super) fn files_of(&self, buffer: &BufferKey) -> &[PathBuf] {
        self.files.get(buffer).map_or(&[], Vec::as_slice)
    }

    fn buffer_data(&self, b: &FileBuffer) -> BufferData {
        BufferData {
            name: b.name.clone(),
            trailing_clock: b.trailing_clock.clone(),
            cpu_files: b.data.as_ref().map_or_else(Vec::new, |k| {
                self.files_of(k).iter().cloned().map(Some).collect()
            }),
        }
    }
}

impl TraceWriter for V6FileWriter {
    fn path(&self) -> &Path {
        &self.path
    }

    fn cpu_output(
        &mut self,
        buffer: &BufferKey,
        cpu: usize,
        max_kb: u32,
    ) -> Result<Output, RecorderError> {
        let path = self.temp_path(buffer, cpu);
        let files = self.files.entry(buffer.clone()).or_default();
        if files.len() != cpu {
            return Err(RecorderError::Invalid(format!(
                "CPU outputs are made in CPU order; asked for CPU {cpu} after {}",
                files.len()
            )));
        }
        // Remembered before it exists, so that a half-made ring is removed too.
        files.push(path.clone());
        Output::create_ring(&path, max_kb)
    }

    fn recorded_bytes(&self, buffer: &BufferKey) -> u64 {
        self.files_of(buffer)
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    fn remap_event_ids(
        &mut self,
        buffer: &BufferKey,
        layout: &Metadata,
        map: &GuestRewrite,
    ) -> Result<u64, BoxError> {
        self.rewrite_pages(buffer, layout, |f, ps, hp, he| {
            Ok(rewrite_guest_file(f, ps, hp, he, map)?)
        })
    }

    fn shift_timestamps(
        &mut self,
        buffer: &BufferKey,
        layout: &Metadata,
        c: &Correction,
    ) -> Result<u64, BoxError> {
        self.rewrite_pages(buffer, layout, |f, ps, hp, he| {
            Ok(shift_file(f, ps, hp, he, c)?)
        })
    }

    fn finish(self: Box<Self>, a: &Assembly) -> Result<Vec<Vec<CpuRange>>, RecordError> {
        let top = self.buffer_data(&a.top);
        let named: Vec<BufferData> = a.named.iter().map(|b| self.buffer_data(b)).collect();
        write_trace_dat(&self.path, &a.meta, a.cpus, &a.options, &top, &named).map_err(|source| {
            let _ = std::fs::remove_file(&self.path);
            RecordError::Incomplete {
                source,
                path: self.path.clone(),
            }
        })
        // `self` drops here: the temporary files go.
    }
}

impl Drop for V6FileWriter {
    fn drop(&mut self) {
        for p in self.files.values().flatten() {
            if let Err(e) = std::fs::remove_file(p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("could not remove {}: {e}", p.display());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use crate::testutil::TempDir;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn write(out: Output, bytes: &[u8]) {
        let Output::Stream(fd) = out else {
            panic!("a plain file was asked for")
        };
        std::fs::File::from(fd).write_all(bytes).unwrap();
    }

    fn assembly(named: Vec<FileBuffer>) -> Assembly {
        Assembly {
            meta: Metadata {
                page_size: 4096,
                long_size: 8,
                ..Metadata::default()
            },
            cpus: 2,
            options: vec![],
            top: FileBuffer {
                name: String::new(),
                trailing_clock: None,
                data: Some(BufferKey::Host),
            },
            named,
        }
    }

    #[test]
    fn temporary_files_per_buffer_and_cpu_go_with_the_writer() {
        let dir = TempDir::new("v6w-files");
        let mut w = V6FileWriter::new(&dir.join("t.dat"));
        let vm = BufferKey::Guest("vm".into());
        for cpu in 0..2 {
            write(w.cpu_output(&BufferKey::Host, cpu, 0).unwrap(), &[1; 4096]);
        }
        write(w.cpu_output(&vm, 0, 0).unwrap(), &[2; 8192]);
        assert!(w.cpu_output(&vm, 5, 0).is_err(), "CPUs come in order");
        assert_eq!(w.recorded_bytes(&BufferKey::Host), 8192);
        assert_eq!(w.recorded_bytes(&vm), 8192);
        assert_eq!(names(&dir), ["t.dat.cpu0", "t.dat.cpu1", "t.dat.vm.cpu0"]);
        drop(w);
        assert!(names(&dir).is_empty(), "an abandoned writer leaves nothing");
    }

    #[test]
    fn finish_writes_the_file_and_removes_the_temporary_ones() {
        let dir = TempDir::new("v6w-finish");
        let file = dir.join("t.dat");
        let mut w = V6FileWriter::new(&file);
        let vm = BufferKey::Guest("vm".into());
        write(w.cpu_output(&BufferKey::Host, 0, 0).unwrap(), &[1; 4096]);
        write(w.cpu_output(&vm, 0, 0).unwrap(), &[2; 8192]);
        write(w.cpu_output(&vm, 1, 0).unwrap(), &[3; 4096]);
        let named = vec![FileBuffer {
            name: "vm".into(),
            trailing_clock: None,
            data: Some(vm),
        }];
        let ranges = Box::new(w).finish(&assembly(named)).unwrap();
        assert_eq!(names(&dir), ["t.dat"]);
        let sizes: Vec<Vec<u64>> = ranges
            .iter()
            .map(|b| b.iter().map(|r| r.size).collect())
            .collect();
        assert_eq!(sizes, [vec![4096, 0], vec![8192, 4096]]);
        let bytes = std::fs::read(&file).unwrap();
        assert!(bytes.starts_with(crate::output::MAGIC));
        let at = ranges[1][0].offset as usize;
        assert_eq!(&bytes[at..at + 8192], &[2; 8192][..]);
    }

    #[test]
    fn a_failed_finish_leaves_no_file() {
        let dir = TempDir::new("v6w-fail");
        let file = dir.join("t.dat");
        let mut w = V6FileWriter::new(&file);
        write(w.cpu_output(&BufferKey::Host, 0, 0).unwrap(), &[1; 4096]);
        // A buffer name the format cannot store: the writing fails half-way.
        let named = vec![FileBuffer {
            name: "a\0b".into(),
            trailing_clock: None,
            data: None,
        }];
        let e = Box::new(w).finish(&assembly(named)).unwrap_err();
        assert!(matches!(e, RecordError::Incomplete { .. }), "{e}");
        assert!(e.to_string().contains("removed the incomplete"), "{e}");
        assert!(names(&dir).is_empty(), "{:?}", names(&dir));
    }
}
