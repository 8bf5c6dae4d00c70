//! What the listener reads back from the metadata a client streamed into its
//! file, through the one trace.dat metadata parser ([`crate::output::metadata`]):
//! the initial header (version and page size, before CPU data is attached) and,
//! for V3 clients with v6 metadata, the TRACECLOCK option, so that the trailing
//! clock after the flyrecord table names the client's clock: 3.x listeners write
//! their own there, which gives wrong timestamps when the two machines' clocks
//! differ (doc §6.8, P6).

use super::ListenError;
use crate::output::metadata::{trace_clock_of, InitialHeader};
use crate::output::reader::DatError;
use crate::output::ReadAt;

/// Largest page size accepted from a client's metadata header.
const MAX_PAGE_SIZE: u32 = 1 << 20;

/// Version (`"6"` or `"7"`) and page size of the metadata at the start of `dat`.
pub(crate) fn file_header(dat: &(impl ReadAt + ?Sized)) -> Result<(String, u32), ListenError> {
    let h = InitialHeader::parse(dat).map_err(|e| match e {
        DatError::Version(v) => {
            ListenError::Unsupported(format!("trace.dat version {v:?} metadata"))
        }
        DatError::BadMagic => ListenError::MetadataIncomplete(
            "the metadata header does not start with the trace.dat magic".into(),
        ),
        e => ListenError::MetadataIncomplete(format!("the metadata header is unreadable: {e}")),
    })?;
    if h.big_endian {
        return Err(ListenError::Unsupported(
            "big-endian metadata (this listener appends little-endian data)".into(),
        ));
    }
    if h.page_size == 0 || h.page_size > MAX_PAGE_SIZE {
        return Err(ListenError::MetadataIncomplete(format!(
            "the metadata header gives page size {}",
            h.page_size
        )));
    }
    Ok((h.version.to_string(), h.page_size))
}

/// The clock named by the TRACECLOCK option of v6 metadata that runs through
/// the options block; `None` when there is no such option or the metadata is not
/// laid out as expected.
pub(crate) fn client_clock(src: &(impl ReadAt + ?Sized)) -> Option<String> {
    trace_clock_of(src)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{write_options_block, DatOption, Metadata};

    fn meta(options: &[DatOption]) -> Vec<u8> {
        let mut m = Metadata {
            page_size: 4096,
            long_size: 8,
            header_page: b"hp".to_vec(),
            header_event: b"he".to_vec(),
            ftrace_formats: vec![b"f1".to_vec()],
            systems: vec![("sched".into(), vec![b"e1".to_vec(), b"e2".to_vec()])],
            kallsyms: b"k".to_vec(),
            printk_formats: vec![],
            cmdlines: b"1 init\n".to_vec(),
        }
        .to_bytes()
        .unwrap();
        write_options_block(&mut m, 2, options).unwrap();
        m
    }

    #[test]
    fn finds_the_clients_clock() {
        let m = meta(&[
            DatOption::uname("Linux x 6 x86_64"),
            DatOption::trace_clock("local global [mono] x86-tsc\n"),
        ]);
        assert_eq!(client_clock(&m[..]).as_deref(), Some("mono"));
        assert_eq!(client_clock(&meta(&[])[..]), None);
    }

    #[test]
    fn never_panics_on_cut_or_mutated_metadata() {
        let good = meta(&[DatOption::trace_clock("[local] global\n")]);
        for cut in 0..good.len() {
            let _ = client_clock(&good[..cut]);
        }
        let mut x = 0x0123_4567_89ab_cdefu64;
        for _ in 0..20000 {
            let mut b = good.clone();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % b.len() as u64) as usize;
            b[i] = (x >> 32) as u8;
            let _ = client_clock(&b[..]);
        }
    }
}
