//! Test helpers written once for the whole workspace: the root crate's tests
//! (`tests/*.rs`) and the CLI's (`cli/tests/*.rs`) both use this crate as a
//! dev-dependency, so there is one private-instance helper, one temporary
//! directory, one PRNG, one free port, one top-buffer lock and one runner of
//! Debian's `trace-cmd report`.

pub mod dat;
pub mod debian;
pub mod kernel;
pub mod listen;
pub mod msg;
pub mod replay;
pub mod ring;
mod rng;
mod tmp;
pub mod tracefs;
pub mod vsock;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use rng::Rng;
pub use tmp::TempDir;
pub use tracefs::{instance, instance_name, lock_top_buffer, Settings};

/// `tcrs-<tag>-<pid>-<n>`: unique within this test program (the counter) and
/// across programs running at the same time (the pid).
pub fn unique_name(tag: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "tcrs-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A TCP port nothing listens on right now (bound on `[::]:0`, then let go).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, 0))
        .expect("bind a free port")
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 20 ms until it is true; panics naming `what` after `within`.
pub fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !f() {
        assert!(
            Instant::now() < end,
            "{what} did not happen within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens `p` for reading and writing (a FIFO opened so never blocks on the open).
pub fn open_rw(p: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("open {} read-write: {e}", p.display()))
}

/// `n` UDP sockets bound on loopback (a listener's per-CPU data ports), and
/// their port numbers as the protocol sends them.
pub fn udp_ports(n: usize) -> (Vec<std::net::UdpSocket>, Vec<u32>) {
    let socks: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port"))
        .collect();
    let ports = socks
        .iter()
        .map(|s| u32::from(s.local_addr().unwrap().port()))
        .collect();
    (socks, ports)
}

/// A child process of the test, killed (by its pid) and reaped when dropped, so
/// a failing test leaves no program running.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether a TCP socket of this network namespace listens on `port` (read from
/// /proc/net/tcp{,6}, without connecting: a probe connection would be a host to a
/// one-host-at-a-time agent).
pub fn tcp_listening(port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                // Columns: sl, local_address, rem_address, st (0A: LISTEN).
                cols.len() > 3 && cols[1].ends_with(&want) && cols[3] == "0A"
            })
        })
    })
}
