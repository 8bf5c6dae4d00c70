//! The recorder against the real kernel: pages and markers per CPU, max-kb bounds,
//! stop from another thread and before start. Needs root and tracefs.

use std::path::Path;
use std::time::{Duration, Instant};

use testkit::ring::*;
use testkit::TempDir;
use tracecmd_rs::recorder::{CpuRecorder, RecordFlags};

const MARKERS: usize = 3000;

fn markers_per_cpu(tag: &'static str, flags: RecordFlags) {
    let inst = tracing_instance(tag, 1024);
    let cpus = testkit::tracefs::usable_cpus(&inst);
    let dir = TempDir::new(tag);
    let mut handles = Vec::new();
    let mut stops = Vec::new();
    for &cpu in &cpus {
        let input = buffer_input(&inst, cpu);
        let mut rec = CpuRecorder::to_file(input, &dir.join(format!("cpu{cpu}")), 0, flags)
            .expect("create recorder");
        stops.push(rec.stop_handle());
        handles.push(std::thread::spawn(move || {
            rec.record(Duration::from_millis(1)).expect("record");
            (rec.page_size(), rec.uncached_bytes())
        }));
    }
    let writers: Vec<_> = cpus
        .iter()
        .map(|&cpu| {
            let d = inst.path().to_path_buf();
            std::thread::spawn(move || write_markers(&d, tag, cpu, MARKERS))
        })
        .collect();
    for w in writers {
        w.join().expect("marker writer");
    }
    for s in &stops {
        s.stop();
    }
    let results: Vec<(usize, u64)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (&cpu, &(page_size, uncached)) in cpus.iter().zip(&results) {
        let data = std::fs::read(dir.join(format!("cpu{cpu}"))).unwrap();
        // Spliced pages go past the page cache (O_DIRECT, the file is on the test
        // machine's ext4); the read/write path never does.
        if flags.nosplice {
            assert_eq!(uncached, 0, "CPU {cpu}: NOSPLICE wrote with O_DIRECT");
        } else {
            assert!(uncached > 0, "CPU {cpu}: no O_DIRECT write");
            assert!(uncached <= data.len() as u64);
        }
        let pages = parse_all(&data, page_size);
        assert!(!pages.is_empty(), "CPU {cpu}: nothing recorded");
        let found = markers_in(&pages, tag);
        for i in 0..MARKERS {
            let m = marker(tag, cpu, i);
            assert!(found.contains(&m), "CPU {cpu}: marker {m} missing");
        }
        for &other in cpus.iter().filter(|&&c| c != cpu) {
            assert!(
                !found.contains(&marker(tag, other, 0)),
                "CPU {cpu} holds a marker of CPU {other}"
            );
        }
        let stats = inst.read(&format!("per_cpu/cpu{cpu}/stats")).unwrap();
        assert!(
            stats.contains("overrun: 0"),
            "CPU {cpu} lost events: {stats}"
        );
    }
    drop(inst);
}

#[test]
fn splice_records_every_marker_in_whole_pages() {
    markers_per_cpu("splice", RecordFlags::default());
}

#[test]
fn nosplice_records_every_marker_in_whole_pages() {
    markers_per_cpu(
        "nosplice",
        RecordFlags {
            nosplice: true,
            ..Default::default()
        },
    );
}

fn max_kb_keeps_bounds(tag: &'static str, flags: RecordFlags) {
    let (inst, cpu, dir) = setup(tag, 2048);
    let file = dir.join("ring");
    let page = 4096;
    let max_kb = 64; // 8 pages per half
    let input = buffer_input(&inst, cpu);
    let mut rec = CpuRecorder::to_file(input, &file, max_kb, flags).expect("create recorder");
    assert!(!Path::new(&format!("{}.1", file.display())).exists());
    let stop = rec.stop_handle();
    let t = std::thread::spawn(move || {
        rec.record(Duration::from_millis(1)).expect("record");
        let uncached = rec.uncached_bytes();
        rec.finish().expect("finish");
        uncached
    });
    // ~ 20000 * 64 bytes = 300 pages: many times the ring.
    let d = inst.path().to_path_buf();
    std::thread::spawn(move || write_markers(&d, tag, cpu, 20000))
        .join()
        .unwrap();
    stop.stop();
    let uncached = t.join().unwrap();
    if flags.nosplice {
        assert_eq!(uncached, 0);
    } else {
        assert!(
            uncached > 0,
            "the ring halves were not written with O_DIRECT"
        );
    }
    let data = std::fs::read(&file).unwrap();
    let pages = parse_all(&data, page);
    let half = (max_kb as usize / 4) / 2;
    assert!(
        (half..=2 * half).contains(&pages.len()),
        "{} pages kept, want {half}..={}",
        pages.len(),
        2 * half
    );
    for w in pages.windows(2) {
        assert!(
            w[0].timestamp <= w[1].timestamp,
            "page timestamps go back: {} then {}",
            w[0].timestamp,
            w[1].timestamp
        );
    }
    // The newest marker survived, the oldest did not.
    let found = markers_in(&pages, tag);
    assert!(found.contains(&marker(tag, cpu, 19999)));
    assert!(!found.contains(&marker(tag, cpu, 0)));
    drop(inst);
}

#[test]
fn max_kb_ring_stays_within_bounds_splice() {
    max_kb_keeps_bounds("maxkb-s", RecordFlags::default());
}

#[test]
fn max_kb_ring_stays_within_bounds_nosplice() {
    max_kb_keeps_bounds(
        "maxkb-n",
        RecordFlags {
            nosplice: true,
            ..Default::default()
        },
    );
}

#[test]
fn stop_from_another_thread_ends_an_idle_recording() {
    let (inst, cpu, dir) = setup("xstop", 64);
    let mut rec = recorder(&inst, cpu, &dir.join("out"));
    let stop = rec.stop_handle();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        // A long sleep must not delay the stop.
        rec.record(Duration::from_secs(5)).expect("record");
        tx.send(Instant::now()).unwrap();
    });
    std::thread::sleep(Duration::from_millis(100));
    let sent = Instant::now();
    stop.stop();
    let done = rx
        .recv_timeout(Duration::from_secs(2))
        .expect("record() did not return within 2 s of stop()");
    assert!(done.duration_since(sent) < Duration::from_millis(500));
    t.join().unwrap();
    drop(inst);
}

#[test]
fn stop_before_start_is_not_lost() {
    let (inst, cpu, dir) = setup("early", 256);
    let mut rec = recorder(&inst, cpu, &dir.join("out"));
    let d = inst.path().to_path_buf();
    std::thread::spawn(move || write_markers(&d, "early", cpu, 10))
        .join()
        .unwrap();
    rec.stop();
    let t0 = Instant::now();
    rec.record(Duration::from_secs(5)).expect("record");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "stop before start was lost"
    );
    let page_size = rec.page_size();
    rec.finish().unwrap();
    let data = std::fs::read(dir.join("out")).unwrap();
    let pages = parse_all(&data, page_size);
    let found = markers_in(&pages, "early");
    assert_eq!(found.len(), 10, "flush at start-after-stop lost markers");
    drop(inst);
}

#[test]
fn snapshot_flag_reads_snapshot_raw() {
    let (inst, cpu, dir) = setup("snap", 256);
    let flags = RecordFlags {
        snapshot: true,
        ..Default::default()
    };
    let input = buffer_input(&inst, cpu);
    let raw = inst.path().join(format!("per_cpu/cpu{cpu}/snapshot_raw"));
    let res = CpuRecorder::to_file(input, &dir.join("out"), 0, flags);
    if !raw.exists() {
        // This kernel has no snapshot support: the error must name the file.
        let err = res.expect_err("snapshot_raw does not exist");
        assert_eq!(err.errno(), libc::ENOENT);
        assert!(err.to_string().contains("snapshot_raw"), "{err}");
        assert!(!dir.join("out").exists(), "failed recorder left its file");
    } else {
        let mut rec = res.expect("create snapshot recorder");
        let d = inst.path().to_path_buf();
        std::thread::spawn(move || write_markers(&d, "snap", cpu, 50))
            .join()
            .unwrap();
        inst.write("snapshot", "1").expect("take a snapshot");
        rec.stop();
        rec.record(Duration::ZERO).expect("record");
        let page_size = rec.page_size();
        rec.finish().unwrap();
        let data = std::fs::read(dir.join("out")).unwrap();
        let found = markers_in(&parse_all(&data, page_size), "snap");
        assert_eq!(found.len(), 50, "markers missing from the snapshot");
    }
    drop(inst);
}

#[test]
fn flush_ends_while_a_writer_never_pauses() {
    let (inst, cpu, dir) = setup("busy", 256);
    for flags in [
        RecordFlags::default(),
        RecordFlags {
            nosplice: true,
            ..Default::default()
        },
    ] {
        let mut rec = CpuRecorder::to_file(buffer_input(&inst, cpu), &dir.join("out"), 0, flags)
            .expect("create recorder");
        let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let load = {
            let busy = busy.clone();
            let d = inst.path().to_path_buf();
            std::thread::spawn(move || {
                while busy.load(std::sync::atomic::Ordering::SeqCst) {
                    write_markers(&d, "busy", cpu, 100);
                }
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let n = rec.flush().expect("flush");
            tx.send(n).unwrap();
            rec
        });
        let res = rx.recv_timeout(Duration::from_secs(5));
        busy.store(false, std::sync::atomic::Ordering::SeqCst);
        load.join().unwrap();
        let n = res.expect("flush did not end within 5 s under a constant writer");
        assert!(n > 0, "flush moved nothing although markers were written");
        let rec = t.join().unwrap();
        let page_size = rec.page_size();
        rec.finish().unwrap();
        let data = std::fs::read(dir.join("out")).unwrap();
        assert!(!markers_in(&parse_all(&data, page_size), "busy").is_empty());
    }
    drop(inst);
}

/// A ring buffer into a socket (the splice path of `record -N`): after a splice that
/// found the buffer drained the recorder waits for the buffer instead of going round
/// again; bursts into a small buffer, with pauses between them, must still all arrive.
#[test]
fn bursts_into_a_small_buffer_all_reach_a_socket() {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use tracecmd_rs::recorder::Output;
    const BURSTS: [&str; 4] = ["sock-b0", "sock-b1", "sock-b2", "sock-b3"];
    const PER_BURST: usize = 400;
    let inst = tracing_instance("sock-burst", 64);
    let cpu = testkit::tracefs::usable_cpus(&inst)[0];
    let (tx, mut rx) = UnixStream::pair().unwrap();
    let mut rec = CpuRecorder::new(
        buffer_input(&inst, cpu),
        Output::Stream(tx.into()),
        RecordFlags::default(),
    )
    .expect("create recorder");
    assert!(rec.uses_splice());
    let page_size = rec.page_size();
    let stop = rec.stop_handle();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        rx.read_to_end(&mut all).unwrap();
        all
    });
    let t = std::thread::spawn(move || rec.record(Duration::from_millis(1)).expect("record"));
    for tag in BURSTS {
        write_markers(inst.path(), tag, cpu, PER_BURST);
        std::thread::sleep(Duration::from_millis(30));
    }
    stop.stop();
    t.join().unwrap();
    let data = reader.join().unwrap();
    assert_eq!(data.len() % page_size, 0, "not whole pages");
    let pages = parse_all(&data, page_size);
    for tag in BURSTS {
        let found = markers_in(&pages, tag);
        for i in 0..PER_BURST {
            let m = marker(tag, cpu, i);
            assert!(found.contains(&m), "marker {m} missing");
        }
    }
    let stats = inst.read(&format!("per_cpu/cpu{cpu}/stats")).unwrap();
    assert!(stats.contains("overrun: 0"), "lost events: {stats}");
}
