//! A listener on a background thread whose session reports can be awaited per
//! client port.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tracecmd_rs::listen::{ListenConfig, Listener, SessionReport};

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

/// A V2 client up to its metadata and `pages` pages of CPU 0 over UDP; CLOSE
/// only when `close`. Returns the control connection and its local port.
pub fn v2_client(port: u16, pages: usize, close: bool) -> (std::net::TcpStream, u16) {
    use std::os::fd::AsFd;
    use tracecmd_rs::msg::negotiate::{self, Negotiated};
    use tracecmd_rs::msg::{session as msess, Channel};

    use crate::dat::{metadata_bytes, PAGE};

    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let local = s.local_addr().unwrap().port();
    let ch = Channel::new(s.as_fd()).with_timeout(Some(Duration::from_secs(20)));
    assert_eq!(negotiate::client_negotiate(&ch).unwrap(), Negotiated::V2);
    let r = msess::send_init(&ch, 1, PAGE as u32, false).unwrap();
    msess::send_metadata(&ch, &metadata_bytes()).unwrap();
    msess::finish_metadata(&ch).unwrap();
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    u.connect(("127.0.0.1", r.ports[0] as u16)).unwrap();
    for i in 0..pages {
        u.send(&vec![i as u8 + 1; PAGE]).unwrap();
    }
    if close {
        msess::send_close(&ch).unwrap();
    }
    (s, local)
}
