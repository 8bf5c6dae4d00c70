//! Stop from a SIGINT handler in the recording thread (its own test binary: the
//! handler is process-wide). Needs root and tracefs.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use testkit::ring::*;
use tracecmd_rs::recorder::StopHandle;

static STOP: OnceLock<StopHandle> = OnceLock::new();

extern "C" fn on_sigint(_: libc::c_int) {
    if let Some(s) = STOP.get() {
        s.stop();
    }
}

#[test]
fn sigint_handler_stops_a_busy_recording_within_100ms() {
    let (inst, cpu, dir) = setup("sigint", 1024);
    let mut rec = recorder(&inst, cpu, &dir.join("out"));
    let stop = rec.stop_handle();
    STOP.set(stop.clone()).unwrap();
    // SA_RESTART as glibc's signal() sets it: the stop must get through regardless.
    let action = SigAction::new(
        SigHandler::Handler(on_sigint),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only does an atomic store (through the StopHandle).
    let old = unsafe { sigaction(Signal::SIGINT, &action) }.expect("install SIGINT handler");

    // A load on the recorded CPU while the recorder runs.
    let busy = Arc::new(AtomicBool::new(true));
    let load = {
        let busy = Arc::clone(&busy);
        let d = inst.path().to_path_buf();
        std::thread::spawn(move || {
            while busy.load(Ordering::SeqCst) {
                write_markers(&d, "sigint", cpu, 200);
            }
        })
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let recorder = std::thread::spawn(move || {
        let res = rec.record(Duration::from_secs(5));
        tx.send(Instant::now()).unwrap();
        res.expect("record");
        rec.finish().expect("finish");
    });
    std::thread::sleep(Duration::from_millis(200));
    let sent = Instant::now();
    // SAFETY: the thread is alive (it only ends after a stop) and has a handler.
    let rc = unsafe { libc::pthread_kill(recorder.as_pthread_t(), libc::SIGINT) };
    assert_eq!(rc, 0, "pthread_kill failed");
    let done = rx.recv_timeout(Duration::from_secs(2));
    if done.is_err() {
        stop.stop(); // do not leave the thread running
    }
    busy.store(false, Ordering::SeqCst);
    load.join().unwrap();
    recorder.join().unwrap();
    // SAFETY: restores the previous disposition.
    unsafe { sigaction(Signal::SIGINT, &old) }.unwrap();
    let done = done.expect("SIGINT did not end record() within 2 s");
    let took = done.duration_since(sent);
    assert!(
        took < Duration::from_millis(100),
        "record() returned {took:?} after SIGINT"
    );
    let data = std::fs::read(dir.join("out")).unwrap();
    let pages = parse_all(&data, 4096);
    assert!(
        !markers_in(&pages, "sigint").is_empty(),
        "nothing recorded under load"
    );
    drop(inst);
}
