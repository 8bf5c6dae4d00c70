//! Random-access input for the trace.dat readers: the file a listener is
//! assembling is read in place, tests and tools read bytes in memory, and both go
//! through the same parser.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Random-access bytes: a file or a slice (for tests).
pub trait ReadAt {
    /// Total length.
    fn len_bytes(&self) -> u64;
    /// Fills `buf` from `offset`; fails past the end.
    fn read_at_exact(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

impl ReadAt for [u8] {
    fn len_bytes(&self) -> u64 {
        self.len() as u64
    }
    fn read_at_exact(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
        {
            Some(s) => {
                buf.copy_from_slice(s);
                Ok(())
            }
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

impl ReadAt for File {
    fn len_bytes(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_at_exact(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.read_exact_at(buf, offset)
    }
}
