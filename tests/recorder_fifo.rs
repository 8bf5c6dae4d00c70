//! The virt path: a guest's per-CPU FIFO as input. Splice and NOSPLICE must produce
//! the same bytes: the input, in order, padded with zeros to a whole page. No kernel
//! tracing needed.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use testkit::{Rng, TempDir};
use tracecmd_rs::recorder::{CpuRecorder, Input, RecordFlags};

const PAGE: usize = 4096;

fn open_fifo_reader(path: &Path) -> OwnedFd {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap()
        .into()
}

/// Pushes `data` through a FIFO in odd-sized writes while the recorder runs.
fn record_through_fifo(dir: &Path, name: &str, data: &[u8], flags: RecordFlags) -> Vec<u8> {
    let fifo = dir.join(format!("{name}.fifo"));
    let out = dir.join(format!("{name}.out"));
    let input = open_fifo_reader(&fifo);
    let mut rec = CpuRecorder::to_file(Input::Fd(input), &out, 0, flags).unwrap();
    let stop = rec.stop_handle();
    let t = std::thread::spawn(move || {
        rec.record(Duration::from_millis(1)).expect("record");
        assert_eq!(rec.uses_splice(), !flags.nosplice);
        rec.finish().unwrap();
    });
    let mut w = File::options().write(true).open(&fifo).unwrap();
    let mut rng = Rng::new(0x1234_5678);
    let mut off = 0;
    while off < data.len() {
        let n = ((rng.next() % 9000) as usize + 1).min(data.len() - off);
        w.write_all(&data[off..off + n]).unwrap();
        off += n;
    }
    drop(w);
    stop.stop();
    t.join().unwrap();
    std::fs::read(&out).unwrap()
}

fn expected(data: &[u8]) -> Vec<u8> {
    let mut e = data.to_vec();
    e.resize(data.len().div_ceil(PAGE) * PAGE, 0);
    e
}

#[test]
fn fifo_splice_and_nosplice_produce_identical_output() {
    let dir = TempDir::new("fifo");
    for (i, len) in [0usize, 1, PAGE, 300 * 1024 + 123, 3 * 1024 * 1024 + 7]
        .into_iter()
        .enumerate()
    {
        let data = Rng::new(0x9e37_79b9 + i as u64).bytes(len);
        let spliced = record_through_fifo(&dir, &format!("s{i}"), &data, RecordFlags::default());
        let copied = record_through_fifo(
            &dir,
            &format!("c{i}"),
            &data,
            RecordFlags {
                nosplice: true,
                ..Default::default()
            },
        );
        assert!(
            spliced == expected(&data),
            "splice output differs for {len} bytes"
        );
        assert!(copied == spliced, "NOSPLICE output differs for {len} bytes");
    }
}

#[test]
fn stop_before_start_on_a_fifo_flushes_what_is_queued() {
    let dir = TempDir::new("fifo-early");
    let fifo = dir.join("f");
    let out = dir.join("out");
    let input = open_fifo_reader(&fifo);
    let mut w = File::options().write(true).open(&fifo).unwrap();
    let data = Rng::new(77).bytes(10_000);
    w.write_all(&data).unwrap();
    let mut rec = CpuRecorder::to_file(Input::Fd(input), &out, 0, RecordFlags::default()).unwrap();
    rec.stop_handle().stop();
    rec.record(Duration::from_secs(10)).unwrap();
    // The stop was consumed: a second stop is needed for the next pass.
    w.write_all(&data).unwrap();
    rec.stop();
    rec.record(Duration::from_secs(10)).unwrap();
    rec.finish().unwrap();
    let got = std::fs::read(&out).unwrap();
    let mut want = expected(&data);
    want.extend_from_slice(&expected(&data));
    assert!(got == want, "got {} bytes, want {}", got.len(), want.len());
    drop(w);
}
