//! `trace-cmd listen`: one TCP port for record clients of every generation (spec
//! §3.1, §3.2, §6.1–6.3; doc §6, §7).
//!
//! The client's first string decides the protocol: a CPU count is V1, "-1V2" is
//! V2, "-1V3" is V3 ([`crate::msg::negotiate::server_negotiate_any`]). Each
//! connection runs on its own thread with per-message timeouts, so a slow, silent
//! or hostile client delays nobody else, and no client can end the listener
//! (bad input is an error of that session only; sockets are written with
//! `MSG_NOSIGNAL`). Per-CPU data arrives over UDP or TCP on ports from
//! [`ListenConfig::first_data_port`] upward into temporary files, and the session
//! ends with `<prefix>.<host>:<port>.dat` in the output directory:
//!
//! * V1/V2 clients send v6 metadata through the cmdlines: the listener adds the
//!   CPU count, an empty options block, flyrecord and the data (spec §3.2);
//! * V3 clients with v6 metadata sent everything through the options: flyrecord
//!   and data are appended;
//! * V3 clients with v7 metadata: a BUFFER section (zstd chunks when the file is
//!   compressed), a new options section and STRINGS ([`crate::output::v7`]).
//!
//! A client that disconnects after its metadata but before CLOSE still gets a
//! file with the data that arrived; the session report and a log line call it
//! partial.

mod data;
pub(crate) mod meta6;
pub mod name;
mod session;

use std::net::{Ipv6Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::msg::MsgError;
use crate::output::OutputError;

/// Everything a listener needs to know.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    /// TCP port for the control connections; 0 picks a free one (tests).
    pub port: u16,
    /// Where the output files go (`-d`).
    pub dir: PathBuf,
    /// First part of the output names (`-o`, default "trace").
    pub prefix: String,
    /// Timeout of the handshake, of TINIT and of each metadata message; `None`
    /// waits forever (the C original's debug mode).
    pub timeout: Option<Duration>,
    /// First port tried for per-CPU data sockets (upstream: 1500).
    pub first_data_port: u16,
    /// Largest CPU count a client may announce.
    pub max_cpus: u32,
    /// Largest page size a client may announce.
    pub max_page_size: u32,
    /// Largest metadata a client may send.
    pub max_metadata: u64,
    /// Most sessions served at once; more connections are closed at once.
    pub max_clients: usize,
    /// How long data may go quiet after the session ended before the per-CPU
    /// files are closed (UDP datagrams still in flight, TCP streams still open).
    pub drain_quiet: Duration,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            port: 0,
            dir: PathBuf::from("."),
            prefix: "trace".into(),
            timeout: Some(Duration::from_secs(5)),
            first_data_port: 1500,
            max_cpus: 1024,
            max_page_size: 1 << 20,
            max_metadata: 1 << 30,
            max_clients: 256,
            drain_quiet: Duration::from_millis(300),
        }
    }
}

/// Why a listener or one of its sessions failed.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on TCP port {port}: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error("no free data port from {0} to 65535; free some ports or start higher")]
    NoPorts(u16),
    #[error("{what} failed: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the client broke the protocol: {0}")]
    Protocol(#[from] MsgError),
    #[error("the client asked for {0}, which this listener does not offer")]
    Unsupported(String),
    #[error("the client's {what} of {value} exceeds this listener's limit of {max}")]
    Limit {
        what: &'static str,
        value: u64,
        max: u64,
    },
    #[error("the metadata ended before it was complete ({0})")]
    MetadataIncomplete(String),
    #[error("cannot build the trace file: {0}")]
    Output(#[from] OutputError),
}

impl ListenError {
    /// The errno the C layer would report.
    pub fn errno(&self) -> i32 {
        match self {
            ListenError::Bind { source, .. } | ListenError::Io { source, .. } => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            ListenError::NoPorts(_) => libc::EADDRINUSE,
            ListenError::Protocol(e) => e.errno(),
            ListenError::Unsupported(_) => libc::EPROTONOSUPPORT,
            ListenError::Limit { .. } => libc::E2BIG,
            ListenError::MetadataIncomplete(_) => libc::ENODATA,
            ListenError::Output(e) => e.errno(),
        }
    }
}

/// The protocol a session spoke (the one protocol enum, at its earlier name).
pub use crate::msg::negotiate::Proto as Protocol;

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// CLOSE (V2/V3) or end of stream (V1) after complete metadata.
    Complete,
    /// The client vanished after its metadata and before CLOSE: the file holds
    /// what arrived.
    Partial,
}

/// What one session did.
#[derive(Debug)]
pub struct SessionReport {
    /// The client's control connection.
    pub peer: SocketAddr,
    /// The protocol, once negotiated.
    pub protocol: Option<Protocol>,
    /// The trace file, once created.
    pub output: Option<PathBuf>,
    /// Data bytes received per CPU.
    pub cpu_bytes: Vec<u64>,
    /// Whether a file was built, and how complete it is.
    pub result: Result<Outcome, ListenError>,
}

/// A bound listener.
pub struct Listener {
    sock: TcpListener,
    cfg: Arc<ListenConfig>,
    active: Arc<AtomicUsize>,
}

impl Listener {
    /// Binds the control port on every address (IPv6 dual stack, else IPv4) and
    /// checks that the output directory exists.
    pub fn bind(cfg: ListenConfig) -> Result<Listener, ListenError> {
        if !cfg.dir.is_dir() {
            return Err(ListenError::Io {
                what: format!("using output directory {}", cfg.dir.display()),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        let bind = |a: SocketAddr| TcpListener::bind(a);
        let sock = bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, cfg.port)))
            .or_else(|_| bind(SocketAddr::from(([0, 0, 0, 0], cfg.port))))
            .map_err(|source| ListenError::Bind {
                port: cfg.port,
                source,
            })?;
        Ok(Listener {
            sock,
            cfg: Arc::new(cfg),
            active: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The TCP port clients connect to.
    pub fn port(&self) -> u16 {
        self.sock.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves clients until accepting fails for good. Each session runs on its own
    /// thread; its outcome is logged.
    pub fn serve(&self) -> Result<(), ListenError> {
        loop {
            self.accept_one(None)?;
        }
    }

    /// Serves clients forever, sending each session's report to `tx` as the
    /// session ends (reports of sessions that outlive a dropped receiver are
    /// only logged).
    pub fn serve_to(&self, tx: mpsc::Sender<SessionReport>) -> Result<(), ListenError> {
        loop {
            self.accept_one(Some(tx.clone()))?;
        }
    }

    /// Serves exactly `n` connections (concurrently) and returns their reports in
    /// the order the sessions ended. For tests and tools.
    pub fn serve_n(&self, n: usize) -> Result<Vec<SessionReport>, ListenError> {
        let (tx, rx) = mpsc::channel();
        for _ in 0..n {
            self.accept_one(Some(tx.clone()))?;
        }
        drop(tx);
        Ok(rx.iter().collect())
    }

    fn accept_one(&self, tx: Option<mpsc::Sender<SessionReport>>) -> Result<(), ListenError> {
        let (stream, peer) = loop {
            match self.sock.accept() {
                Ok(c) => break c,
                Err(e) if is_transient(&e) => {
                    log::warn!("accepting a client failed: {e}; going on");
                    if e.raw_os_error() == Some(libc::EMFILE)
                        || e.raw_os_error() == Some(libc::ENFILE)
                    {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                Err(source) => {
                    return Err(ListenError::Io {
                        what: "accepting clients".into(),
                        source,
                    })
                }
            }
        };
        if self.active.load(Ordering::SeqCst) >= self.cfg.max_clients {
            log::warn!(
                "{peer}: {} sessions already running; connection closed",
                self.cfg.max_clients
            );
            if let Some(tx) = tx {
                let _ = tx.send(SessionReport {
                    peer,
                    protocol: None,
                    output: None,
                    cpu_bytes: vec![],
                    result: Err(ListenError::Limit {
                        what: "number of concurrent sessions",
                        value: self.cfg.max_clients as u64 + 1,
                        max: self.cfg.max_clients as u64,
                    }),
                });
            }
            return Ok(());
        }
        self.active.fetch_add(1, Ordering::SeqCst);
        let cfg = Arc::clone(&self.cfg);
        let active = Arc::clone(&self.active);
        let spawned = std::thread::Builder::new()
            .name(format!("client {peer}"))
            .spawn(move || {
                let report = session::run(stream, peer, &cfg);
                active.fetch_sub(1, Ordering::SeqCst);
                log_report(&report);
                if let Some(tx) = tx {
                    let _ = tx.send(report);
                }
            });
        if let Err(e) = spawned {
            self.active.fetch_sub(1, Ordering::SeqCst);
            log::error!("{peer}: cannot start a session thread: {e}; connection closed");
        }
        Ok(())
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EINTR
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EPROTO
                | libc::EPERM
        )
    )
}

fn log_report(r: &SessionReport) {
    let file = r
        .output
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "no file".into());
    let total: u64 = r.cpu_bytes.iter().sum();
    match &r.result {
        Ok(Outcome::Complete) => log::info!("{}: session complete: {file} ({total} data bytes)", r.peer),
        Ok(Outcome::Partial) => log::warn!(
            "{}: client disconnected before CLOSE; {file} is partial ({total} data bytes that arrived)",
            r.peer
        ),
        Err(e) => log::warn!("{}: session failed: {e} ({file})", r.peer),
    }
}
