//! A guest's metadata (the v6 header the agent sends as SENDMETA…FINMETA) read
//! back into an [`output::Metadata`](crate::output::Metadata), and merged with the
//! host's for one trace.dat. The trace.dat knowledge lives in
//! [`crate::output::metadata`] and [`crate::output::merge`]; this module gives
//! it the guest's errors. Rewriting a guest's pages is
//! [`crate::output::merge::remap_file_ids`].

use super::{Result, VirtError};
pub use crate::output::merge::{format_name_id, merge_remapped, IdMap};
use crate::output::Metadata;

/// Parses the v6 metadata (magic through saved cmdlines, little endian only).
pub fn parse_metadata(b: &[u8]) -> Result<Metadata> {
    Metadata::parse(b).map_err(|e| VirtError::BadMetadata(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::merge::tests::sample;

    #[test]
    fn round_trip() {
        let m = sample();
        assert_eq!(parse_metadata(&m.to_bytes().unwrap()).unwrap(), m);
    }

    #[test]
    fn truncated_and_random_input_never_panics() {
        let good = sample().to_bytes().unwrap();
        for n in 0..good.len() {
            assert!(parse_metadata(&good[..n]).is_err(), "prefix {n}");
        }
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let mut b = good.clone();
            for _ in 0..(next() % 8 + 1) {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            let _ = parse_metadata(&b);
            let len = (next() % 200) as usize;
            let r: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            assert!(parse_metadata(&r).is_err());
        }
    }
}
