//! `trace-cmd listen` as a program: daemon mode with a pid file and a log file
//! serving a client, and clear errors for a busy port or a missing directory.

#[path = "../../tests/dat_common/mod.rs"]
mod dat_common;
#[path = "../../tests/listen_common/mod.rs"]
mod listen_common;

use std::net::{Ipv6Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dat_common::TempDir;
use listen_common::{metadata, PAGE};
use tracecmd_rs::msg::handshake::{self, Negotiated};
use tracecmd_rs::msg::{session as msess, Channel};
use tracecmd_rs::output::reader::TraceDat;

const BIN: &str = env!("CARGO_BIN_EXE_trace-cmd");

fn free_port() -> u16 {
    TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !f() {
        assert!(
            Instant::now() < end,
            "{what} did not happen within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

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
    wait_for("the pid file", Duration::from_secs(5), || {
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

    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the daemon");
    let ch = Channel::new(s.as_fd()).with_timeout(Some(Duration::from_secs(10)));
    assert_eq!(handshake::client_negotiate(&ch).unwrap(), Negotiated::V2);
    let r = msess::send_init(&ch, 1, PAGE as u32, false).unwrap();
    msess::send_metadata(&ch, &metadata()).unwrap();
    msess::finish_metadata(&ch).unwrap();
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.connect(("127.0.0.1", r.ports[0] as u16)).unwrap();
    u.send(&vec![7u8; PAGE]).unwrap();
    msess::send_close(&ch).unwrap();
    drop(s);

    wait_for("the session's log line", Duration::from_secs(10), || {
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

/// Where Debian's `record` runs (function-tracer files are refused outside it).
fn debian_sandbox() -> std::path::PathBuf {
    let p = [
        "../../shared/tools/ftrace-sandbox",
        "/work/shared/tools/ftrace-sandbox",
    ]
    .into_iter()
    .map(|p| Path::new(env!("CARGO_MANIFEST_DIR")).join(p))
    .find(|p| p.exists())
    .expect("shared/tools/ftrace-sandbox is missing; it runs Debian's trace-cmd here");
    std::fs::canonicalize(p).unwrap()
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

/// A `listen -p` with SIGINT ignored from the start (as in a script's background
/// job) gets `sig` while a TCP session is sending data: it must exit 0 and leave
/// one finished `.dat` that Debian's report reads, with the events that arrived,
/// and say that it is partial.
fn stop_with_session_in_progress(sig: nix::sys::signal::Signal, client: Client) {
    use dat_common::{report, TopState, TRACE_CMD};
    use std::process::Stdio;
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test records on tracefs and needs root"
    );
    let top = tracecmd_rs::tracefs::Instance::top().expect("tracefs is mounted");
    let _lock = listen_common::lock_top_buffer();
    let before = TopState::read(&top);
    let dir = TempDir::new("listen-stop");
    let port = free_port();
    let log = dir.path().join("listen.log");
    let mut listener = Command::new("sh")
        .arg("-c")
        .arg("trap '' INT; exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(["listen", "-p", &port.to_string(), "-d"])
        .arg(dir.path())
        .arg("-l")
        .arg(&log)
        .spawn()
        .expect("start trace-cmd listen");
    wait_for("the listener's port", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    // A stray connection from the readiness probe ends as a failed handshake.
    let busy = "end=$(($(date +%s)+5)); while [ $(date +%s) -lt $end ]; do /bin/true; done";
    let target = format!("localhost:{port}");
    let mut cmd = match client {
        Client::Ours => Command::new(BIN),
        Client::Debian => {
            let mut c = Command::new(debian_sandbox());
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
    wait_for(
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
    stop_with_session_in_progress(nix::sys::signal::Signal::SIGINT, Client::Ours);
}

#[test]
fn sigterm_stops_listen_and_keeps_debians_clients_data() {
    stop_with_session_in_progress(nix::sys::signal::Signal::SIGTERM, Client::Debian);
}
