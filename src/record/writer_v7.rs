//! trace.dat version 7 from a recording ([`V7FileWriter`]): the host's CPU data is
//! compressed while it is recorded, through `output::V7Writer`, the same writer the
//! listener uses.

use std::path::{Path, PathBuf};

use super::tsync::Correction;
use super::writer::{Assembly, BufferKey, FileBuffer, TraceWriter, V6FileWriter};
use super::{BoxError, RecordError};
use crate::output::merge::GuestRewrite;
use crate::output::{clock_of_trailing, Compression, CpuRange, Metadata, V7Writer};
use crate::recorder::{Output, RecorderError};

/// trace.dat version 7 (zstd or uncompressed).
///
/// * The host buffer's CPUs go through [`V7Writer::cpu_sink`]: the recorder reads
///   straight into a queue per CPU whose compressing thread writes chunks into an
///   unnamed temporary file, so the file is complete soon after the recording ends. A compressor that falls behind never
///   holds up the recorder: its backlog is queued, then spilled to disk (at most
///   about 6 MiB of memory per CPU; see [`crate::output::CpuStream`]).
/// * Guests are recorded into raw per-CPU files (as for v6) and compressed only at
///   [`TraceWriter::finish`]: their event IDs may have to be rewritten
///   ([`TraceWriter::remap_event_ids`]), and the map is known only once the guest
///   has stopped, while compressed pages can no longer be rewritten.
/// * A host recorded with `-m` (keep the newest data) goes into raw ring files too:
///   a ring cannot be kept in a stream.
///
/// The file itself appears under its name only once it is complete (see
/// [`V7Writer::finish`]); dropping the writer leaves nothing behind.
#[derive(Debug)]
pub struct V7FileWriter {
    path: PathBuf,
    compression: Compression,
    /// The host buffer's name in the file, once told.
    host_name: Option<String>,
    host_page_size: Option<u32>,
    /// Made at the first host sink (its page size is the file's), or at `finish`
    /// for a recording of guests only.
    v7: Option<V7Writer>,
    /// Raw per-CPU files: guests, and a host recorded with a max-kb ring.
    raw: V6FileWriter,
}

impl V7FileWriter {
    /// A writer of `path` (nothing is created before the first `cpu_output`).
    pub fn new(path: &Path, compression: Compression) -> V7FileWriter {
        V7FileWriter {
            path: path.to_path_buf(),
            compression,
            host_name: None,
            host_page_size: None,
            v7: None,
            raw: V6FileWriter::new(path),
        }
    }

    fn v7(&mut self, page_size: u32) -> Result<&mut V7Writer, crate::output::OutputError> {
        if self.v7.is_none() {
            self.v7 = Some(V7Writer::new(&self.path, page_size, self.compression)?);
        }
        Ok(self.v7.as_mut().expect("made above"))
    }

    fn host_name(&self) -> &str {
        self.host_name.as_deref().unwrap_or("")
    }

    /// Hands the raw files of `b` to the v7 writer.
    fn hand_over(&mut self, b: &FileBuffer, w: &mut V7Writer) -> Result<(), RecordError> {
        let Some(key) = &b.data else {
            return Ok(());
        };
        for (cpu, f) in self.raw.files_of(key).iter().enumerate() {
            w.cpu_file(&b.name, cpu, f)
                .map_err(|source| self.incomplete(source))?;
        }
        Ok(())
    }

    fn incomplete(&self, source: crate::output::OutputError) -> RecordError {
        RecordError::Incomplete {
            source,
            path: self.path.clone(),
        }
    }
}

impl TraceWriter for V7FileWriter {
    fn path(&self) -> &Path {
        &self.path
    }

    fn host_buffer(&mut self, name: &str, page_size: u32) {
        self.host_name = Some(name.to_string());
        self.host_page_size = Some(page_size);
    }

    fn cpu_output(
        &mut self,
        buffer: &BufferKey,
        cpu: usize,
        max_kb: u32,
    ) -> Result<Output, RecorderError> {
        if *buffer != BufferKey::Host || max_kb > 0 {
            return self.raw.cpu_output(buffer, cpu, max_kb);
        }
        let page = self
            .host_page_size
            .unwrap_or_else(|| crate::output::page_size_of(b""));
        let name = self.host_name().to_string();
        let output_err = |e: crate::output::OutputError| {
            let kind = std::io::Error::from_raw_os_error(e.errno()).kind();
            RecorderError::Output(std::io::Error::new(kind, e.to_string()))
        };
        let sink = self
            .v7(page)
            .and_then(|w| w.cpu_sink(&name, cpu))
            .map_err(output_err)?;
        Ok(Output::Blocks(sink))
    }

    fn recorded_bytes(&self, buffer: &BufferKey) -> u64 {
        let streamed = match (buffer, &self.v7) {
            (BufferKey::Host, Some(w)) => w.streamed_bytes(self.host_name()),
            _ => 0,
        };
        streamed + self.raw.recorded_bytes(buffer)
    }

    fn remap_event_ids(
        &mut self,
        buffer: &BufferKey,
        layout: &Metadata,
        map: &GuestRewrite,
    ) -> Result<u64, BoxError> {
        if *buffer == BufferKey::Host && self.raw.files_of(buffer).is_empty() {
            return Err("the host's pages are compressed while recorded; their event IDs cannot be rewritten".into());
        }
        self.raw.remap_event_ids(buffer, layout, map)
    }

    /// Guests are kept as raw files until the end (see the type's doc), so their
    /// timestamps are moved there, before compression.
    fn shift_timestamps(
        &mut self,
        buffer: &BufferKey,
        layout: &Metadata,
        c: &Correction,
    ) -> Result<u64, BoxError> {
        if *buffer == BufferKey::Host && self.raw.files_of(buffer).is_empty() {
            return Err(
                "the host's pages are compressed while recorded; their timestamps cannot be moved"
                    .into(),
            );
        }
        self.raw.shift_timestamps(buffer, layout, c)
    }

    fn abandon(mut self: Box<Self>, cause: RecordError) -> RecordError {
        match self.v7.take().and_then(V7Writer::abandon) {
            Some(source) => RecordError::Output(source),
            None => cause,
        }
    }

    fn finish(mut self: Box<Self>, a: &Assembly) -> Result<Vec<Vec<CpuRange>>, RecordError> {
        let mut w = match self.v7.take() {
            Some(w) => w,
            None => V7Writer::new(&self.path, a.meta.page_size, self.compression)
                .map_err(|e| self.incomplete(e))?,
        };
        let buffers: Vec<&FileBuffer> = std::iter::once(&a.top).chain(&a.named).collect();
        // Only buffers with data go into the file, as trace-cmd 3.x writes them.
        for b in buffers.iter().filter(|b| b.data.is_some()) {
            if let Some(clock) = b.trailing_clock.as_deref().and_then(clock_of_trailing) {
                w.set_buffer_clock(&b.name, &clock);
            }
            self.hand_over(b, &mut w)?;
        }
        let written = w
            .finish(&a.meta, a.cpus, &a.options)
            .map_err(|e| self.incomplete(e))?;
        // `self` drops here: the raw files go.
        Ok(buffers
            .iter()
            .map(|b| {
                let found = b.data.as_ref().and_then(|_| {
                    written
                        .iter()
                        .find(|(name, _)| *name == b.name)
                        .map(|(_, r)| r.clone())
                });
                found.unwrap_or_default()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::reader::TraceDat;
    use crate::output::v7read;
    use std::io::Write;

    fn write(out: Output, bytes: &[u8]) {
        match out {
            Output::Stream(fd) => std::fs::File::from(fd).write_all(bytes).unwrap(),
            Output::Blocks(mut b) => b.write_all(bytes).unwrap(),
            Output::Ring { .. } => panic!("a plain file or a stream was asked for"),
        }
    }

    fn buffer(name: &str, data: Option<BufferKey>) -> FileBuffer {
        FileBuffer {
            name: name.into(),
            trailing_clock: Some(b"[local]".to_vec()),
            data,
        }
    }

    #[test]
    fn host_streamed_and_guest_from_files_in_one_file() {
        let dir = crate::testutil::TempDir::new("v7fw");
        let file = dir.join("t.dat");
        let mut w = V7FileWriter::new(&file, Compression::parse("zstd").unwrap());
        let vm = BufferKey::Guest("vm".into());
        w.host_buffer("inst", 4096);
        write(w.cpu_output(&BufferKey::Host, 0, 0).unwrap(), &[1; 8192]);
        write(w.cpu_output(&BufferKey::Host, 1, 0).unwrap(), &[]);
        write(w.cpu_output(&vm, 0, 0).unwrap(), &[2; 4096]);
        write(w.cpu_output(&vm, 1, 0).unwrap(), &[3; 12288]);
        // The compressing thread counts what it has taken from the pipe.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while w.recorded_bytes(&BufferKey::Host) < 8192 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(w.recorded_bytes(&BufferKey::Host), 8192);
        assert_eq!(w.recorded_bytes(&vm), 16384);
        let meta = Metadata {
            page_size: 4096,
            long_size: 8,
            ..Metadata::default()
        };
        let map = GuestRewrite::default();
        assert!(
            w.remap_event_ids(&BufferKey::Host, &meta, &map).is_err(),
            "compressed pages cannot be rewritten"
        );
        let a = Assembly {
            meta,
            cpus: 2,
            options: vec![],
            top: buffer("", None),
            named: vec![
                buffer("inst", Some(BufferKey::Host)),
                buffer("vm", Some(vm)),
            ],
        };
        let ranges = Box::new(w).finish(&a).unwrap();
        assert_eq!(ranges.len(), 3);
        assert!(ranges[0].is_empty(), "the top buffer has no data");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "temporary files left: {left:?}");
        let bytes = std::fs::read(&file).unwrap();
        let dat = TraceDat::parse(&bytes).unwrap();
        assert_eq!(dat.version, 7);
        let names: Vec<&str> = dat.buffers.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["inst", "vm"]);
        let host = v7read::cpu_data(&bytes, &dat, 0).unwrap();
        assert_eq!(host[0], vec![1; 8192]);
        assert!(host.get(1).is_none_or(Vec::is_empty));
        let guest = v7read::cpu_data(&bytes, &dat, 1).unwrap();
        assert_eq!(guest, vec![vec![2; 4096], vec![3; 12288]]);
    }
}
