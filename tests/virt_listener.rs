//! `listen --virt` in-process, with the test playing the C peers on the wire:
//! `connect` (its answer), `list -G/-A`, an agent speaking through the domain's
//! FIFOs the way QEMU relays it, a manager receiving the fds, the release of an
//! agent when its manager disappears, and the listener surviving bad peers.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use testkit::{open_rw, wait_until, TempDir};
use tracecmd_rs::msg::session;
use tracecmd_rs::msg::v2::{self, Msg};
use tracecmd_rs::msg::{Channel, MsgError, Wait};
use tracecmd_rs::transport::connect_unix;
use tracecmd_rs::virt::listener::{DomainSetup, VirtListener};
use tracecmd_rs::virt::{with_suffix, VirtPaths};

/// How long the listener gets to act on what a test did.
const WAIT: Duration = Duration::from_secs(10);

struct Running {
    paths: VirtPaths,
    stop: Box<dyn Fn() + Send + Sync>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        (self.stop)();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start(domains: &[(&str, u32)]) -> Running {
    let dir = TempDir::new("virtl");
    let paths = VirtPaths::new(Some(dir.join("run")), Some(dir.join("virt")));
    let doms: Vec<DomainSetup> = domains
        .iter()
        .map(|(n, c)| DomainSetup {
            name: n.to_string(),
            perms: 0o710,
            group: None,
            cpus: *c,
        })
        .collect();
    let l = VirtListener::bind(&paths, None, &doms).expect("bind the listener");
    let stop = Box::new(l.stop_flag());
    let thread = std::thread::spawn(move || l.run(&|| false).unwrap());
    Running {
        paths,
        stop,
        thread: Some(thread),
        _dir: dir,
    }
}

fn manager(r: &Running) -> OwnedFd {
    connect_unix(&r.paths.manager_socket()).unwrap()
}

/// `connect` as the Rust tool does it; returns the listener's answer.
fn register(r: &Running, dom: &str, agent: &Path, cpus: &[PathBuf]) -> Result<Msg, MsgError> {
    let s = manager(r);
    let ch = Channel::new(s.as_fd());
    let cb: Vec<Vec<u8>> = cpus
        .iter()
        .map(|p| p.as_os_str().as_encoded_bytes().to_vec())
        .collect();
    let refs: Vec<&[u8]> = cb.iter().map(Vec::as_slice).collect();
    session::connect_guest(
        &ch,
        dom.as_bytes(),
        agent.as_os_str().as_encoded_bytes(),
        &refs,
    )?;
    v2::recv(&ch, Wait::Timed)
}

fn register_dom(r: &Running, dom: &str, n: u32) -> Result<Msg, MsgError> {
    let cpus: Vec<PathBuf> = (0..n).map(|i| r.paths.cpu_fifo(dom, i)).collect();
    register(r, dom, &r.paths.agent_fifo(dom), &cpus)
}

fn list(r: &Running, guests: bool) -> Vec<(String, u32)> {
    let s = manager(r);
    let ch = Channel::new(s.as_fd());
    let mut v = Vec::new();
    let mut f = |n: &[u8], c: u32| v.push((String::from_utf8_lossy(n).into_owned(), c));
    if guests {
        session::list_guests(&ch, &mut f).unwrap();
    } else {
        session::list_agents(&ch, &mut f).unwrap();
    }
    v
}

/// The guest side of a domain's control FIFOs, as QEMU's pipe chardev relays it:
/// the guest writes `.out` and reads `.in`.
struct FakeAgent {
    to_host: File,
    from_host: File,
}

impl FakeAgent {
    fn new(r: &Running, dom: &str) -> FakeAgent {
        let base = r.paths.agent_fifo(dom);
        FakeAgent {
            to_host: open_rw(&with_suffix(&base, ".out")),
            from_host: open_rw(&with_suffix(&base, ".in")),
        }
    }
    fn ch(&self) -> Channel<'_> {
        Channel::new(self.from_host.as_fd())
    }
    fn send(&self, m: &Msg) {
        (&self.to_host).write_all(&m.encode().unwrap()).unwrap();
    }
    fn handshake(&self, cpus: u32) {
        self.send(&Msg::TConnect);
        assert_eq!(v2::recv(&self.ch(), Wait::Timed).unwrap(), Msg::rconnect());
        // The C agent's CINIT: cpus in its native (little-endian) order.
        (&self.to_host)
            .write_all(&[0, 0, 0, 12, 0, 0, 0, 13, cpus as u8, 0, 0, 0])
            .unwrap();
        assert_eq!(v2::recv(&self.ch(), Wait::Timed).unwrap(), Msg::CRInit);
    }
}

#[test]
fn connect_is_answered_and_listed() {
    let r = start(&[("g1", 2), ("g2", 1)]);
    assert!(list(&r, true).is_empty());
    assert_eq!(register_dom(&r, "g1", 2).unwrap(), Msg::Ack);
    assert_eq!(register_dom(&r, "g2", 1).unwrap(), Msg::Ack);
    // Refusals: duplicate, bad name, FIFOs that do not exist.
    assert_eq!(register_dom(&r, "g1", 2).unwrap(), Msg::Finish);
    let a = r.paths.agent_fifo("g1");
    assert_eq!(register(&r, "../x", &a, &[]).unwrap(), Msg::Finish);
    assert_eq!(register(&r, "a/b", &a, &[]).unwrap(), Msg::Finish);
    assert_eq!(register_dom(&r, "nofifos", 1).unwrap(), Msg::Finish);
    assert_eq!(
        list(&r, true),
        vec![("g1".to_string(), 2), ("g2".to_string(), 1)]
    );
    assert!(list(&r, false).is_empty());
}

#[test]
fn agent_is_handed_to_a_manager_and_released_when_it_disappears() {
    let r = start(&[("vm", 2)]);
    assert_eq!(register_dom(&r, "vm", 2).unwrap(), Msg::Ack);
    let agent = FakeAgent::new(&r, "vm");
    agent.handshake(2);
    wait_until("agent listed", WAIT, || {
        list(&r, false) == vec![("vm".into(), 2)]
    });

    for round in 0..3u8 {
        // After a release the agent is free again (within the listener's drain).
        let mut taken = None;
        wait_until("agent free", WAIT, || {
            let m = manager(&r);
            let ch = Channel::new(m.as_fd());
            match session::connect_agent(&ch, b"vm", 0) {
                Ok(n) => {
                    assert_eq!(n, 2);
                    taken = Some((session::get_fds(&ch).unwrap(), m));
                    true
                }
                Err(_) => false,
            }
        });
        let ((actl, fifos), m) = taken.unwrap();
        assert_eq!(fifos.len(), 2);
        // A second manager meanwhile is refused: the agent is in use.
        let m2 = manager(&r);
        let ch2 = Channel::new(m2.as_fd());
        assert!(session::connect_agent(&ch2, b"vm", 0).is_err());
        // Manager → agent through the passed channel.
        let ach = Channel::new(actl.as_fd());
        v2::send(&ach, &Msg::Connect { cpus: 1 }).unwrap();
        session::send_string(&ach, b"-e").unwrap();
        assert_eq!(
            v2::recv(&agent.ch(), Wait::Timed).unwrap(),
            Msg::Connect { cpus: 1 }
        );
        assert_eq!(
            session::agent_parameters(&agent.ch(), 1).unwrap(),
            vec![b"-e".to_vec()]
        );
        // Agent → manager, control and CPU data.
        agent.send(&Msg::Ack);
        assert_eq!(v2::recv(&ach, Wait::Timed).unwrap(), Msg::Ack);
        let mut cpu1 = open_rw(&with_suffix(&r.paths.cpu_fifo("vm", 1), ".out"));
        cpu1.write_all(&[round; 100]).unwrap();
        let mut got = [0u8; 100];
        let mut f = File::from(fifos.into_iter().nth(1).unwrap());
        wait_until("CPU data", WAIT, || matches!(f.read(&mut got), Ok(100)));
        assert_eq!(got, [round; 100]);
        // The manager dies without a word: the listener stops the agent (CLOSE)
        // and frees it for the next round.
        drop((m, actl, f));
        assert_eq!(v2::recv(&agent.ch(), Wait::Timed).unwrap(), Msg::Close);
        // The agent's confirmation goes to the listener, which drops it.
        agent.send(&Msg::Ack);
    }
}

#[test]
fn listener_survives_bad_and_stalled_peers() {
    let r = start(&[("g", 1)]);
    // A peer that sends half a message and then hangs, on each socket.
    let mut hung_m = UnixStream::connect(r.paths.manager_socket()).unwrap();
    hung_m.write_all(&[0, 0, 0]).unwrap();
    let mut hung_a = UnixStream::connect(r.paths.agent_socket()).unwrap();
    hung_a.write_all(&[0, 0]).unwrap();
    // Garbage: an oversized header with cmd 0 (spec §5.2 item 14), random bytes,
    // connections closed at once, an unknown command.
    for bytes in [
        vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0],
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
        vec![],
        vec![0, 0, 0, 8, 0, 0, 0, 99],
    ] {
        for sock in [r.paths.agent_socket(), r.paths.manager_socket()] {
            let mut s = UnixStream::connect(&sock).unwrap();
            let _ = s.write_all(&bytes);
        }
    }
    // TRACE for nobody, TRACE with a pid, a manager that vanishes mid-request.
    let m = manager(&r);
    assert!(session::connect_agent(&Channel::new(m.as_fd()), b"nobody", 0).is_err());
    let m = manager(&r);
    assert!(session::connect_agent(&Channel::new(m.as_fd()), b"", 42).is_err());
    let m = manager(&r);
    v2::send(&Channel::new(m.as_fd()), &Msg::Connect { cpus: 3 }).unwrap();
    drop(m);
    // Everything still answers, at once, while the hung peers stay connected.
    let t = Instant::now();
    assert_eq!(register_dom(&r, "g", 1).unwrap(), Msg::Ack);
    assert_eq!(list(&r, true), vec![("g".into(), 1)]);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    drop((hung_m, hung_a));
}

#[test]
fn random_and_truncated_streams_never_stop_the_listener() {
    let r = start(&[("g", 1)]);
    assert_eq!(register_dom(&r, "g", 1).unwrap(), Msg::Ack);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // Valid requests cut short, and random bytes after a valid header.
    let valid: Vec<Vec<u8>> = vec![
        Msg::Connect { cpus: 2 }.encode().unwrap(),
        Msg::Trace { pid: 0 }.encode().unwrap(),
        Msg::GList.encode().unwrap(),
        Msg::TConnect.encode().unwrap(),
        Msg::CInit { cpus: 1 }.encode().unwrap(),
    ];
    for i in 0..300 {
        let mut bytes = valid[i % valid.len()].clone();
        if next() % 2 == 0 {
            bytes.truncate((next() % bytes.len() as u64) as usize);
        } else {
            bytes.extend((0..next() % 64).map(|_| next() as u8));
        }
        let sock = if i % 3 == 0 {
            r.paths.agent_socket()
        } else {
            r.paths.manager_socket()
        };
        let mut s = UnixStream::connect(&sock).unwrap();
        let _ = s.write_all(&bytes);
        // Random bytes into the guest's FIFO as well, as a broken guest would send.
        if i % 50 == 0 {
            let out = open_rw(&with_suffix(&r.paths.agent_fifo("g"), ".out"));
            let junk: Vec<u8> = (0..next() % 100).map(|_| next() as u8).collect();
            (&out).write_all(&junk).unwrap();
        }
    }
    let t = Instant::now();
    assert_eq!(list(&r, true), vec![("g".into(), 1)]);
    // The guest's channel is usable again after the garbage: a real agent
    // handshake registers it.
    std::thread::sleep(Duration::from_millis(500));
    let agent = FakeAgent::new(&r, "g");
    agent.handshake(1);
    wait_until("agent listed", WAIT, || {
        list(&r, false) == vec![("g".into(), 1)]
    });
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn a_manager_never_reads_the_agent_channel_with_the_idle_listener() {
    // While no manager holds it, the listener reads what the agent says. A manager
    // asking for the agent in the middle of such a read must wait for its end: two
    // readers on one channel would split messages (seen: a manager reading guest
    // metadata text as a message header).
    let r = start(&[("vm", 1)]);
    assert_eq!(register_dom(&r, "vm", 1).unwrap(), Msg::Ack);
    let agent = FakeAgent::new(&r, "vm");
    agent.handshake(1);
    wait_until("agent listed", WAIT, || {
        list(&r, false) == vec![("vm".into(), 1)]
    });
    // Half of a stray ACK: the listener starts reading it and waits for the rest.
    let ack = Msg::Ack.encode().unwrap();
    (&agent.to_host).write_all(&ack[..4]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let paths = r.paths.clone();
    let taker = std::thread::spawn(move || {
        let m = connect_unix(&paths.manager_socket()).unwrap();
        let ch = Channel::new(m.as_fd());
        let n = session::connect_agent(&ch, b"vm", 0).unwrap();
        let fds = session::get_fds(&ch).unwrap();
        (Instant::now(), n, fds, m)
    });
    std::thread::sleep(Duration::from_millis(700));
    let rest_sent = Instant::now();
    (&agent.to_host).write_all(&ack[4..]).unwrap();
    let (taken, n, (actl, _fifos), _m) = taker.join().unwrap();
    assert_eq!(n, 1);
    assert!(
        taken >= rest_sent,
        "the agent was handed over while the listener was still reading from it"
    );
    // From here the manager alone reads: the agent's answer arrives whole.
    let ach = Channel::new(actl.as_fd());
    v2::send(&ach, &Msg::Connect { cpus: 0 }).unwrap();
    assert_eq!(
        v2::recv(&agent.ch(), Wait::Timed).unwrap(),
        Msg::Connect { cpus: 0 }
    );
    agent.send(&Msg::Ack);
    assert_eq!(v2::recv(&ach, Wait::Timed).unwrap(), Msg::Ack);
}

/// Found by the `agent` fuzz target: a host that answers TCONNECT with the
/// wrong bytes made the agent's handshake retry forever (every 500 ms) instead
/// of reporting the broken host. Only an absent host is waited for.
#[test]
fn agent_handshake_fails_on_a_wrong_answer_instead_of_retrying() {
    let (agent_end, host_end) = UnixStream::pair().unwrap();
    let tconnects = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = tconnects.clone();
    let host = std::thread::spawn(move || {
        let ch = Channel::new(host_end.as_fd());
        // The fuzzer's input: an RCONNECT that is not "tracecmd".
        while let Ok(m) = v2::recv(&ch, Wait::Timed) {
            if m == Msg::TConnect {
                seen.fetch_add(1, Ordering::SeqCst);
                ch.send_all(&Msg::RConnect(b"tracecmX\0".to_vec()).encode().unwrap())
                    .unwrap();
            }
        }
    });
    let ch = Channel::new(agent_end.as_fd());
    // A second TCONNECT means the agent retried: stop it there.
    let stopped = || tconnects.load(Ordering::SeqCst) > 1;
    let r = tracecmd_rs::virt::agent::handshake(&ch, 2, &stopped);
    assert!(
        matches!(
            r,
            Err(tracecmd_rs::virt::VirtError::Msg(MsgError::NotTraceCmd(_)))
        ),
        "{r:?}"
    );
    assert_eq!(tconnects.load(Ordering::SeqCst), 1);
    drop(agent_end);
    host.join().unwrap();
}
