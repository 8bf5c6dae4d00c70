//! `trace-cmd listen` as a program: daemon mode with a pid file and a log file
//! serving a client, and clear errors for a busy port or a missing directory.

use std::net::{Ipv6Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::dat::PAGE;
use testkit::listen::v2_client;
use testkit::replay;
use testkit::{free_port, lock_top_buffer, wait_until, TempDir};
use tracecmd_rs::output::reader::TraceDat;

const BIN: &str = env!("CARGO_BIN_EXE_trace-cmd");

/// Kills the daemon (by its pid, which this test started) when dropped.
struct Daemon(i32);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

#[test]
fn daemon_serves_a_v2_client_and_logs_to_the_file() {
    let dir = TempDir::new("listen-cli");
    let port = free_port();
    let log = dir.path().join("listen.log");
    let out = Command::new(BIN)
        .args(["listen", "-D", "-p", &port.to_string(), "-d"])
        .arg(dir.path())
        .arg("-l")
        .arg(&log)
        .output()
        .expect("run trace-cmd listen -D");
    assert!(
        out.status.success(),
        "listen -D failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid_file = dir.path().join("trace-cmd-net.pid");
    wait_until("the pid file", Duration::from_secs(5), || {
        std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
    });
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _daemon = Daemon(pid);
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "daemon {pid} is not running"
    );

    let (s, _) = v2_client(port, 1, true);
    drop(s);

    wait_until("the session's log line", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("session complete"))
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let dat = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "dat"))
        .unwrap_or_else(|| panic!("no .dat file; log:\n{text}"));
    let bytes = std::fs::read(&dat).unwrap();
    let parsed = TraceDat::parse(&bytes).unwrap();
    assert_eq!(parsed.buffers[0].cpu_data[0].1, PAGE as u64);
}

#[test]
fn busy_port_and_missing_directory_are_reported() {
    let held = TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0)).unwrap();
    let port = held.local_addr().unwrap().port();
    let out = Command::new(BIN)
        .args(["listen", "-p", &port.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on TCP port {port}")),
        "{err}"
    );

    let out = Command::new(BIN)
        .args(["listen", "-p", "0", "-d", "/nonexistent/tcrs-dir"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/tcrs-dir"), "{err}");
}

enum Client {
    Ours,
    Debian,
}

fn names_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// A `listen -p` (or, with `virt`, `listen --virt -p`) with SIGINT ignored from
/// the start (as in a script's background job) gets `sig` while a TCP session is
/// sending data: it must exit 0 and leave one finished `.dat` that Debian's report
/// reads, with the events that arrived, and say that it is partial.
fn stop_with_session_in_progress(sig: nix::sys::signal::Signal, client: Client, virt: bool) {
    use std::process::Stdio;
    use testkit::debian::{report, TRACE_CMD};
    use testkit::Settings as TopState;
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test records on tracefs and needs root"
    );
    let top = tracecmd_rs::tracefs::Instance::top().expect("tracefs is mounted");
    let _lock = lock_top_buffer();
    let before = TopState::read(&top);
    let dir = TempDir::new("listen-stop");
    let port = free_port();
    let log = dir.path().join("listen.log");
    let virt_dirs = TempDir::new("listen-stop-virt");
    let mut listener = Command::new("sh");
    listener
        .arg("-c")
        .arg("trap '' INT; exec \"$0\" \"$@\"")
        .arg(BIN)
        .arg("listen");
    if virt {
        // The virt listener logs to stderr: the log file is its stderr.
        listener
            .args(["--virt", "-v", "--run-dir"])
            .arg(virt_dirs.path())
            .arg("--virt-dir")
            .arg(virt_dirs.path())
            .stderr(std::fs::File::create(&log).unwrap());
    } else {
        listener.arg("-l").arg(&log);
    }
    let mut listener = listener
        .args(["-p", &port.to_string(), "-d"])
        .arg(dir.path())
        .spawn()
        .expect("start trace-cmd listen");
    wait_until("the listener's port", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    // A stray connection from the readiness probe ends as a failed handshake.
    let busy = "end=$(($(date +%s)+5)); while [ $(date +%s) -lt $end ]; do /bin/true; done";
    let target = format!("localhost:{port}");
    let mut cmd = match client {
        Client::Ours => Command::new(BIN),
        Client::Debian => {
            let mut c = Command::new(testkit::debian::sandbox());
            c.arg(TRACE_CMD);
            c
        }
    };
    let mut rec = cmd
        .args(["record", "-N", &target, "-t", "-b", "64", "-e", "sched"])
        .args(["/bin/sh", "-c", busy])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start record -N");
    let cpu_bytes = || -> u64 {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().contains(".cpu"))
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .sum()
    };
    wait_until(
        "per-CPU data at the listener",
        Duration::from_secs(20),
        || cpu_bytes() > 0,
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(listener.id() as i32), sig).unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = listener.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = listener.kill();
            panic!("the listener did not stop within 60 s of {sig}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The client's fate is not the point (its data sockets met a closed port);
    // it ends with its command and restores tracefs itself, checked below.
    let _ = rec.wait();
    before.restore(&top);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "listen ended with {status}; log:\n{text}");
    let names = names_in(dir.path());
    let dats: Vec<&String> = names.iter().filter(|n| n.ends_with(".dat")).collect();
    assert_eq!(dats.len(), 1, "files: {names:?}; log:\n{text}");
    assert!(
        !names
            .iter()
            .any(|n| n.contains(".cpu") || n.ends_with(".partial")),
        "temporary files left: {names:?}"
    );
    assert!(
        text.contains("is partial"),
        "not logged as partial:\n{text}\nfiles {names:?}"
    );
    let rep = report(&dir.path().join(dats[0]));
    let events = rep.stdout.lines().filter(|l| l.contains(" sched_")).count();
    assert!(events > 0, "no sched events in the file; log:\n{text}");
}

#[test]
fn sigint_ignored_at_start_still_stops_listen_and_keeps_our_clients_data() {
    stop_with_session_in_progress(nix::sys::signal::Signal::SIGINT, Client::Ours, false);
}

#[test]
fn sigterm_stops_listen_virt_p_and_keeps_our_clients_data() {
    stop_with_session_in_progress(nix::sys::signal::Signal::SIGTERM, Client::Ours, true);
}

#[test]
fn sigterm_stops_listen_and_keeps_debians_clients_data() {
    stop_with_session_in_progress(nix::sys::signal::Signal::SIGTERM, Client::Debian, false);
}

/// Captures one real session: our `record -N --proto 1 -t` against an
/// in-process listener; returns the finished file's bytes.
fn capture_session(dir: &Path) -> Vec<u8> {
    record_into(&testkit::listen::Running::start(
        tracecmd_rs::listen::ListenConfig {
            dir: dir.to_path_buf(),
            ..Default::default()
        },
    ))
}

/// One real session (our `record -N --proto 1 -t`) into the running listener
/// `l`, whose other sessions' reports have all been taken; returns the file.
fn record_into(l: &testkit::listen::Running) -> Vec<u8> {
    use testkit::Settings as TopState;
    use tracecmd_rs::listen::Outcome;
    let top = tracecmd_rs::tracefs::Instance::top().expect("tracefs is mounted");
    let _lock = lock_top_buffer();
    let before = TopState::read(&top);
    let out = Command::new(BIN)
        .args([
            "record",
            "-N",
            &format!("127.0.0.1:{}", l.port),
            "--proto",
            "1",
        ])
        .args(["-t", "-q", "-e", "sched:sched_switch", "sleep", "0.5"])
        .output()
        .expect("run record -N");
    before.restore(&top);
    assert!(
        out.status.success(),
        "record -N failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = l.any_report(Duration::from_secs(30));
    assert!(matches!(r.result, Ok(Outcome::Complete)), "{:?}", r.result);
    std::fs::read(r.output.unwrap()).unwrap()
}

/// Issue 18: 256 clients replaying a captured real session (half V1, half V3)
/// released at once against one listener. Every client completes, every file
/// reads back in Debian's report with the captured event count, and the
/// listener then serves one more real client.
#[test]
fn a_fleet_of_256_replayed_clients_all_get_complete_files() {
    use std::sync::Arc;
    use tracecmd_rs::listen::{ListenConfig, Outcome};
    use tracecmd_rs::netrecord::Proto;
    const CLIENTS: usize = 256;
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test records on tracefs and needs root"
    );
    let cap_dir = TempDir::new("listen-capture");
    let captured = cap_dir.path().join("capture.dat");
    std::fs::write(&captured, capture_session(cap_dir.path())).unwrap();
    let cap = replay::Capture::from_dat(&std::fs::read(&captured).unwrap()).unwrap();
    let cpus = cap.cpu_data.len();
    // Debian's count of the captured file is the reference.
    let want = testkit::debian::report(&captured).per_cpu("", cpus);
    assert!(
        want.iter().sum::<u64>() > 0,
        "the captured session has no events"
    );
    let cap = Arc::new(cap);

    let dir = TempDir::new("listen-fleet");
    // The clients share this machine's 2 CPUs with the listener (and with the
    // other tests): a client thread can wait longer for a CPU than the 5 s
    // message timeout meant for clients on their own machines.
    let l = testkit::listen::Running::start(ListenConfig {
        dir: dir.path().to_path_buf(),
        timeout: Some(Duration::from_secs(60)),
        ..ListenConfig::default()
    });
    let protos: Vec<Proto> = (0..CLIENTS)
        .map(|i| if i % 2 == 0 { Proto::V1 } else { Proto::V3 })
        .collect();
    let target = format!("127.0.0.1:{}", l.port);
    let results = replay::replay_many(Arc::clone(&cap), &target, &protos, Duration::from_secs(30));
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if !failed.is_empty() {
        let mut errs = std::collections::BTreeMap::new();
        for _ in 0..CLIENTS {
            let r = l.any_report(Duration::from_secs(30));
            if let Err(e) = &r.result {
                *errs.entry(e.to_string()).or_insert(0) += 1;
            }
        }
        eprintln!("listener errors: {errs:#?}");
    }
    assert!(
        failed.is_empty(),
        "{} clients failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let files: Vec<std::path::PathBuf> = results
        .iter()
        .map(|r| {
            let port = r.as_ref().unwrap().local_port;
            let rep = l.report_for(port, Duration::from_secs(60));
            assert!(
                matches!(rep.result, Ok(Outcome::Complete)),
                "client {port}: {:?}",
                rep.result
            );
            rep.output.expect("a file")
        })
        .collect();
    // Debian's report on every file, on two threads.
    std::thread::scope(|s| {
        for half in files.chunks(CLIENTS / 2) {
            let want = &want;
            s.spawn(move || {
                for f in half {
                    let got = testkit::debian::report(f).per_cpu("", cpus);
                    assert_eq!(&got, want, "{} is short of events", f.display());
                    std::fs::remove_file(f).unwrap();
                }
            });
        }
    });
    // One more real client of the same listener after the fleet.
    let after = record_into(&l);
    let parsed = TraceDat::parse(&after).unwrap();
    assert!(parsed.count_events(&after, 0).unwrap().iter().sum::<u64>() > 0);
}
