//! The listener's session from the first byte: one real listener (output in a
//! temporary directory, short timeouts and small limits), and each input is a
//! client's whole byte stream over TCP, ending when the client closes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tracecmd_rs::listen::{ListenConfig, Listener, SessionReport};

#[path = "../common.rs"]
#[allow(dead_code)]
mod common;

struct Server {
    port: u16,
    dir: std::path::PathBuf,
    reports: Mutex<Receiver<SessionReport>>,
}

fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        common::ignore_sigpipe();
        let dir = std::env::temp_dir().join(format!("tracecmd-fuzz-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let cfg = ListenConfig {
            dir: dir.clone(),
            timeout: Some(Duration::from_millis(200)),
            first_data_port: 20000 + (std::process::id() % 20000) as u16,
            max_cpus: 8,
            max_page_size: 1 << 16,
            max_metadata: 1 << 20,
            max_clients: 4,
            drain_quiet: Duration::from_millis(20),
            ..ListenConfig::default()
        };
        let l = Listener::bind(cfg).expect("bind the listener");
        let port = l.port();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || l.serve_to(tx));
        Server {
            port,
            dir,
            reports: Mutex::new(rx),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = server();
    let reports = s.reports.lock().unwrap();
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    let mut r = c.try_clone().unwrap();
    let drain = std::thread::spawn(move || {
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    });
    let _ = c.write_all(data);
    let _ = c.shutdown(Shutdown::Write);
    let report = reports
        .recv_timeout(Duration::from_secs(10))
        .expect("the session ends within 10 s of the client's last byte");
    let _ = c.shutdown(Shutdown::Both);
    drain.join().unwrap();
    // Whatever the session wrote stays in its directory; remove it so the
    // disk does not fill.
    if let Some(out) = &report.output {
        assert!(out.starts_with(&s.dir), "output {out:?} outside {:?}", s.dir);
        let _ = std::fs::remove_file(out);
    }
    for e in std::fs::read_dir(&s.dir).into_iter().flatten().flatten() {
        let _ = std::fs::remove_file(e.path());
    }
    let mut buf = [0u8; 1];
    let _ = (&c).read(&mut buf);
});
