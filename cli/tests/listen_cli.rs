//! `trace-cmd listen` as a program: daemon mode with a pid file and a log file
//! serving a client, and clear errors for a busy port or a missing directory.

use std::net::{Ipv6Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testkit::dat::{metadata_bytes, PAGE};
use testkit::{free_port, wait_until, TempDir};
use tracecmd_rs::msg::handshake::{self, Negotiated};
use tracecmd_rs::msg::{session as msess, Channel};
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

    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the daemon");
    let ch = Channel::new(s.as_fd()).with_timeout(Some(Duration::from_secs(10)));
    assert_eq!(handshake::client_negotiate(&ch).unwrap(), Negotiated::V2);
    let r = msess::send_init(&ch, 1, PAGE as u32, false).unwrap();
    msess::send_metadata(&ch, &metadata_bytes()).unwrap();
    msess::finish_metadata(&ch).unwrap();
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.connect(("127.0.0.1", r.ports[0] as u16)).unwrap();
    u.send(&vec![7u8; PAGE]).unwrap();
    msess::send_close(&ch).unwrap();
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
