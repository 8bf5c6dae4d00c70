//! Helpers of the listener tests: a listener on a background thread whose
//! session reports can be awaited per client port.
#![allow(dead_code)]

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use std::net::{TcpStream, UdpSocket};
use std::os::fd::AsFd;

use tracecmd_rs::listen::{ListenConfig, Listener, SessionReport};
use tracecmd_rs::msg::handshake::{self, Negotiated};
use tracecmd_rs::msg::{session as msess, Channel};
use tracecmd_rs::output::Metadata;

/// Page size of the scripted clients.
pub const PAGE: usize = 4096;

/// A listener serving on its own thread; a collector thread files each session
/// report under the client's port.
pub struct Running {
    pub port: u16,
    reports: Arc<(Mutex<Vec<SessionReport>>, Condvar)>,
}

impl Running {
    pub fn start(cfg: ListenConfig) -> Arc<Running> {
        let l = Listener::bind(cfg).expect("bind the listener");
        let port = l.port();
        let (tx, rx) = mpsc::channel::<SessionReport>();
        std::thread::spawn(move || {
            let r = l.serve_to(tx);
            panic!("the listener stopped serving: {r:?}");
        });
        let reports = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let sink = Arc::clone(&reports);
        std::thread::spawn(move || {
            for r in rx {
                sink.0.lock().unwrap().push(r);
                sink.1.notify_all();
            }
        });
        Arc::new(Running { port, reports })
    }

    fn take(&self, within: Duration, pick: impl Fn(&SessionReport) -> bool) -> SessionReport {
        let end = Instant::now() + within;
        let (lock, cv) = &*self.reports;
        let mut v = lock.lock().unwrap();
        loop {
            if let Some(i) = v.iter().position(&pick) {
                return v.swap_remove(i);
            }
            let left = end.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no session report within {within:?}");
            v = cv.wait_timeout(v, left).unwrap().0;
        }
    }

    /// The report of the session whose client used local port `client_port`.
    pub fn report_for(&self, client_port: u16, within: Duration) -> SessionReport {
        self.take(within, |r| r.peer.port() == client_port)
    }

    /// The next report of any session.
    pub fn any_report(&self, within: Duration) -> SessionReport {
        self.take(within, |_| true)
    }
}

/// Serialises tests that make Debian's trace-cmd record on the top-level buffer,
/// across test threads and (through an flock) across test programs.
pub struct TopBufferLock {
    _guard: std::sync::MutexGuard<'static, ()>,
    _file: nix::fcntl::Flock<std::fs::File>,
}

static TOP: Mutex<()> = Mutex::new(());

/// Path of the lock file every test program that records on the top buffer takes.
pub const TOP_LOCK: &str = "/tmp/tracecmd-rs-top-buffer.lock";

pub fn lock_top_buffer() -> TopBufferLock {
    let guard = TOP.lock().unwrap_or_else(|p| p.into_inner());
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(TOP_LOCK)
        .expect("open the top-buffer lock file");
    let file = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock the top buffer");
    TopBufferLock {
        _guard: guard,
        _file: file,
    }
}

/// A small but well-formed v6 metadata prefix (header … cmdlines).
pub fn metadata() -> Vec<u8> {
    let header_page = b"\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;\n\
\tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;\n\
\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;\n\
\tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;\n";
    Metadata {
        page_size: PAGE as u32,
        long_size: 8,
        header_page: header_page.to_vec(),
        header_event: b"# compressed entry header\n\ttype_len    :    5 bits\n\ttime_delta  :   27 bits\n\tarray       :   32 bits\n\n\tpadding     : type == 29\n\ttime_extend : type == 30\n\ttime_stamp : type == 31\n\tdata max type_len  == 28\n".to_vec(),
        ftrace_formats: vec![],
        systems: vec![],
        kallsyms: vec![],
        printk_formats: vec![],
        cmdlines: b"1 init\n".to_vec(),
    }
    .to_bytes()
    .unwrap()
}

/// A V2 client up to its metadata and `pages` pages of CPU 0 over UDP; CLOSE
/// only when `close`.
pub fn v2_client(port: u16, pages: usize, close: bool) -> (TcpStream, u16) {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let local = s.local_addr().unwrap().port();
    let ch = Channel::new(s.as_fd()).with_timeout(Some(Duration::from_secs(20)));
    assert_eq!(handshake::client_negotiate(&ch).unwrap(), Negotiated::V2);
    let r = msess::send_init(&ch, 1, PAGE as u32, false).unwrap();
    msess::send_metadata(&ch, &metadata()).unwrap();
    msess::finish_metadata(&ch).unwrap();
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.connect(("127.0.0.1", r.ports[0] as u16)).unwrap();
    for i in 0..pages {
        u.send(&vec![i as u8 + 1; PAGE]).unwrap();
    }
    if close {
        msess::send_close(&ch).unwrap();
    }
    (s, local)
}
