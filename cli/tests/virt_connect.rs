//! `trace-cmd connect` reports what the listener did, with our listener and with
//! one that behaves like the virt-server C listener (issue 15 item 3), and our
//! listener takes the C `connect`'s early close calmly (item 4).
//!
//! The C listener (spec §3.4) serves manager connections one after the other.
//! On CONNECT it answers ACK, reads the strings, and then either refuses the
//! guest by closing the socket (a duplicate, missing FIFOs), or registers it and
//! forks a bridge that inherits the socket and holds it open without a word. Its
//! GLIST lists the registered guests; with none, it may close without FINISH.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::TempDir;
use tracecmd_rs::msg::session::{self, ManagerRequest};
use tracecmd_rs::msg::v2::{self, Msg};
use tracecmd_rs::msg::{Channel, Wait};

const BIN: &str = env!("CARGO_BIN_EXE_trace-cmd");

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tc(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("TRACE_CMD_RUN_DIR", dir.join("run"))
        .env("TRACE_CMD_VIRT_DIR", dir.join("virt"));
    c
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `trace-cmd connect -f -c 2 DOMAIN`.
fn connect(dir: &Path, domain: &str) -> Output {
    tc(dir)
        .args(["connect", "-f", "-c", "2", "-g", "root", domain])
        .output()
        .unwrap()
}

fn assert_registered(o: &Output, domain: &str) {
    assert!(
        o.status.success() && text(&o.stdout).contains(&format!("guest {domain} registered")),
        "connect {domain}: status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
}

fn assert_already_registered(o: &Output, domain: &str) {
    assert!(
        !o.status.success() && text(&o.stderr).contains("already registered"),
        "second connect {domain}: status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// A manager socket served like the virt-server C listener does it.
struct CLikeListener {
    /// Registered guests and their CPU counts.
    guests: Arc<Mutex<BTreeMap<Vec<u8>, u32>>>,
    /// The sockets the "forked bridges" hold open.
    _bridges: Arc<Mutex<Vec<OwnedFd>>>,
}

impl CLikeListener {
    fn start(dir: &Path) -> CLikeListener {
        std::fs::create_dir_all(dir.join("run")).unwrap();
        let l = UnixListener::bind(dir.join("run/manager-ctl-path")).unwrap();
        let guests: Arc<Mutex<BTreeMap<Vec<u8>, u32>>> = Arc::default();
        let bridges: Arc<Mutex<Vec<OwnedFd>>> = Arc::default();
        let (g, b) = (guests.clone(), bridges.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { break };
                let fd = OwnedFd::from(s);
                let ch = Channel::new(fd.as_fd());
                match session::read_manager(&ch) {
                    Ok(ManagerRequest::Connect { cpus }) => {
                        let Ok(req) = session::get_connect(&ch, cpus) else {
                            continue;
                        };
                        let mut guests = g.lock().unwrap();
                        if guests.contains_key(&req.domain) {
                            continue; // refused: the socket closes here
                        }
                        guests.insert(req.domain, req.cpus.len() as u32);
                        b.lock().unwrap().push(fd);
                    }
                    Ok(ManagerRequest::GuestList) => {
                        let guests = g.lock().unwrap();
                        for (name, cpus) in guests.iter() {
                            session::send_domain(&ch, name, *cpus).unwrap();
                        }
                        // With nothing to list, `ret` is uninitialised and FINISH
                        // may not come (spec §5.2 item 22): the worse case.
                        if !guests.is_empty() {
                            session::send_finish(&ch).unwrap();
                        }
                    }
                    _ => {}
                }
            }
        });
        CLikeListener {
            guests,
            _bridges: bridges,
        }
    }
}

#[test]
fn connect_to_a_c_like_listener_reports_what_it_did() {
    let dir = TempDir::new("vconnect-c");
    let listener = CLikeListener::start(dir.path());
    let o = tc(dir.path()).args(["list", "-G"]).output().unwrap();
    assert_eq!(
        text(&o.stdout),
        "No guests registered\n",
        "{}",
        text(&o.stderr)
    );
    let o = connect(dir.path(), "vm");
    assert_registered(&o, "vm");
    assert_eq!(
        listener.guests.lock().unwrap().get(b"vm".as_slice()),
        Some(&2)
    );
    // The duplicate is refused by closing; connect must say so.
    let o = connect(dir.path(), "vm");
    assert_already_registered(&o, "vm");
    // A second guest still registers, with one listed already.
    assert_registered(&connect(dir.path(), "vm2"), "vm2");
    assert_eq!(listener.guests.lock().unwrap().len(), 2);
    let o = tc(dir.path()).args(["list", "-G"]).output().unwrap();
    assert_eq!(text(&o.stdout), "vm with 2 cpus\nvm2 with 2 cpus\n");
}

/// Our `listen --virt`, logging to `listener.log` in `dir`.
fn our_listener(dir: &Path) -> Killed {
    let mut c = tc(dir);
    c.args([
        "listen", "--virt", "--debug", "-g", "root", "--dom", "vm", "-c", "2",
    ])
    .stderr(File::create(dir.join("listener.log")).unwrap());
    let l = Killed(c.spawn().expect("start the listener"));
    let sock = dir.join("run/manager-ctl-path");
    wait_until("listener socket", Duration::from_secs(10), || sock.exists());
    l
}

#[test]
fn connect_to_our_listener_reports_what_it_did() {
    let dir = TempDir::new("vconnect-rs");
    let _l = our_listener(dir.path());
    assert_registered(&connect(dir.path(), "vm"), "vm");
    assert_already_registered(&connect(dir.path(), "vm"), "vm");
    let o = tc(dir.path()).args(["list", "-G"]).output().unwrap();
    assert_eq!(text(&o.stdout), "vm with 2 cpus\n");
}

/// What the virt-server C `connect` does: CONNECT, ACK, the strings, close,
/// never reading an answer. Its close races with the listener's answer; shutting
/// the reading side before the strings makes the listener's answer meet a peer
/// that is gone every time, as it does when the close wins.
fn c_connect(dir: &Path, domain: &str) {
    let virt = dir.join("virt").join(domain);
    let path = |n: &str| virt.join(n).into_os_string().into_encoded_bytes();
    let s = std::os::unix::net::UnixStream::connect(dir.join("run/manager-ctl-path")).unwrap();
    let ch = Channel::new(s.as_fd());
    v2::send(&ch, &Msg::Connect { cpus: 2 }).unwrap();
    assert!(matches!(v2::recv(&ch, Wait::Timed), Ok(Msg::Ack)));
    s.shutdown(std::net::Shutdown::Read).unwrap();
    session::send_string(&ch, domain.as_bytes()).unwrap();
    for p in ["agent-ctl-path", "trace-path-cpu0", "trace-path-cpu1"] {
        session::send_string(&ch, &path(p)).unwrap();
    }
}

#[test]
fn a_c_connect_is_no_warning() {
    let dir = TempDir::new("vconnect-quiet");
    let mut l = our_listener(dir.path());
    c_connect(dir.path(), "vm");
    wait_until("vm listed", Duration::from_secs(10), || {
        let o = tc(dir.path()).args(["list", "-G"]).output().unwrap();
        text(&o.stdout).contains("vm with 2 cpus")
    });
    // A refused duplicate closes early too: its refusal is the only warning.
    c_connect(dir.path(), "vm");
    wait_until("refusal logged", Duration::from_secs(10), || {
        std::fs::read_to_string(dir.path().join("listener.log"))
            .unwrap()
            .contains("refused a connect")
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(l.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let _ = l.0.wait();
    let log = std::fs::read_to_string(dir.path().join("listener.log")).unwrap();
    assert!(log.contains("guest \"vm\" registered"), "{log}");
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(": warn:") || l.contains(": error:"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "only the refusal may warn; the log:\n{log}"
    );
    assert!(warnings[0].contains("already registered"), "{log}");
    assert!(!log.contains("could not send"), "{log}");
}
