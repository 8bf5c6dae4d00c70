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

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket;

use crate::msg::MsgError;
use crate::output::OutputError;

/// Sessions served at once unless configured otherwise.
pub const DEFAULT_MAX_CLIENTS: usize = 1024;

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
    /// Most sessions served at once; further clients wait in the kernel's
    /// accept queue until a session ends.
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
            max_clients: DEFAULT_MAX_CLIENTS,
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
    /// The session ended early (the client vanished after its metadata and
    /// before CLOSE, the listener was stopped, or data was still coming at the
    /// drain limit): the file holds what arrived.
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
    shared: Arc<Shared>,
}

/// What the accept loop, the sessions and [`StopHandle`]s share.
struct Shared {
    cfg: ListenConfig,
    stopping: AtomicBool,
    sessions: Mutex<Sessions>,
    /// Written (one byte, never blocking) when a session ends or a stop is asked
    /// for; the accept loop polls the read end beside the listening socket.
    wake_r: OwnedFd,
    wake_w: OwnedFd,
}

#[derive(Default)]
struct Sessions {
    next_id: u64,
    live: HashMap<u64, Live>,
}

/// A running session as a stop sees it.
struct Live {
    /// Its control connection.
    fd: RawFd,
    /// In its last phase, where only the end of the session is awaited: a stop
    /// may shut the connection there without cutting a message in two.
    waiting: bool,
    /// A stop ended it.
    stopped: bool,
}

impl Shared {
    fn wake(&self) {
        let _ = nix::unistd::write(&self.wake_w, &[1]);
    }

    fn running(&self) -> usize {
        self.lock().live.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Asks a running [`Listener`] to stop, from any thread (a signal-waiting thread,
/// a test): it stops accepting, ends every session in progress as if its client
/// had closed (each gets the file of what arrived, reported as partial), and
/// `serve` returns once they are all written.
#[derive(Clone)]
pub struct StopHandle(Arc<Shared>);

impl StopHandle {
    pub fn stop(&self) {
        self.0.stopping.store(true, Ordering::SeqCst);
        self.0.wake();
    }
}

/// One running session's entry in [`Sessions`]; ending it removes the entry
/// before the control socket is closed, so a stop never shuts down a reused fd.
pub(crate) struct Ticket {
    id: u64,
    shared: Arc<Shared>,
}

impl Ticket {
    /// Whether the listener's stop ended this session.
    pub(crate) fn stopped(&self) -> bool {
        self.shared
            .lock()
            .live
            .get(&self.id)
            .is_some_and(|e| e.stopped)
    }

    /// The session now only waits for its end (CLOSE, or EOF for V1). Returns
    /// true when the listener is already stopping: the session ends at once.
    pub(crate) fn enter_wait(&self) -> bool {
        let mut s = self.shared.lock();
        let stopping = self.shared.stopping.load(Ordering::SeqCst);
        match s.live.get_mut(&self.id) {
            Some(e) => {
                e.waiting = true;
                e.stopped |= stopping;
                e.stopped
            }
            None => stopping,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.shared.lock().live.remove(&self.id);
        self.shared.wake();
    }
}

/// File descriptors one session holds at most for a client with `cpus` CPUs:
/// the control connection, the file being built and the data threads' stop
/// pipe (3), and per CPU its data socket, its temporary file, for TCP the two
/// ends of the splice pipe, and (for every data thread after the first, at most
/// one per CPU) a copy of the stop pipe's read end.
pub fn fds_per_session(cpus: u32) -> u64 {
    let cpus = u64::from(cpus);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    5 + 4 * cpus + threads.min(cpus).saturating_sub(1)
}

/// The kernel's limit on accept queues (`net.core.somaxconn`).
pub fn somaxconn() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(libc::SOMAXCONN as u32)
}

impl Listener {
    /// Binds the control port on every address (IPv6 dual stack, else IPv4) with
    /// the largest accept queue the system allows, and checks that the output
    /// directory exists.
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
        // std listens with 128. A connection the kernel completes while the queue
        // is full (a SYN cookie) is never accepted, and since the server speaks
        // first its client would wait for the banner in vain. Listening again
        // resizes the queue; -1 asks for net.core.somaxconn.
        let io = |what: &str| {
            let what = what.to_string();
            move |e: nix::Error| ListenError::Io {
                what,
                source: e.into(),
            }
        };
        socket::listen(&sock, socket::Backlog::MAXALLOWABLE)
            .map_err(io("enlarging the accept queue"))?;
        sock.set_nonblocking(true)
            .map_err(|source| ListenError::Io {
                what: "a non-blocking listening socket".into(),
                source,
            })?;
        let (wake_r, wake_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .map_err(io("creating the wake-up pipe"))?;
        log::debug!(
            "accept queue of {} connections, at most {} sessions at once",
            somaxconn(),
            cfg.max_clients
        );
        Ok(Listener {
            sock,
            shared: Arc::new(Shared {
                cfg,
                stopping: AtomicBool::new(false),
                sessions: Mutex::new(Sessions::default()),
                wake_r,
                wake_w,
            }),
        })
    }

    /// The TCP port clients connect to.
    pub fn port(&self) -> u16 {
        self.sock.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// A handle that stops [`Listener::serve`] (and `serve_to`, `serve_n`).
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Arc::clone(&self.shared))
    }

    /// Serves clients until stopped ([`StopHandle::stop`]) or accepting fails for
    /// good. Each session runs on its own thread; its outcome is logged.
    pub fn serve(&self) -> Result<(), ListenError> {
        self.accept_loop(None, usize::MAX)
    }

    /// Serves clients until stopped, sending each session's report to `tx` as
    /// the session ends (reports of sessions that outlive a dropped receiver are
    /// only logged).
    pub fn serve_to(&self, tx: mpsc::Sender<SessionReport>) -> Result<(), ListenError> {
        self.accept_loop(Some(tx), usize::MAX)
    }

    /// Serves exactly `n` connections (concurrently) and returns their reports in
    /// the order the sessions ended. For tests and tools.
    pub fn serve_n(&self, n: usize) -> Result<Vec<SessionReport>, ListenError> {
        let (tx, rx) = mpsc::channel();
        self.accept_loop(Some(tx), n)?;
        Ok(rx.iter().collect())
    }

    /// Accepts up to `n` connections while fewer than `max_clients` sessions
    /// run (the rest wait in the kernel's accept queue), then waits for the
    /// sessions to end. A stop ends the sessions in progress first.
    fn accept_loop(
        &self,
        tx: Option<mpsc::Sender<SessionReport>>,
        n: usize,
    ) -> Result<(), ListenError> {
        let sh = &*self.shared;
        let mut accepted = 0usize;
        let mut result = Ok(());
        while !sh.stopping.load(Ordering::SeqCst) {
            let room = accepted < n && sh.running() < sh.cfg.max_clients.max(1);
            if accepted >= n && sh.running() == 0 {
                break;
            }
            let mut fds = vec![PollFd::new(sh.wake_r.as_fd(), PollFlags::POLLIN)];
            if room {
                fds.push(PollFd::new(self.sock.as_fd(), PollFlags::POLLIN));
            }
            match nix::poll::poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => {
                    result = Err(io_error("waiting for clients", e.into()));
                    break;
                }
            }
            drop(fds);
            self.drain_wake();
            if !room || sh.stopping.load(Ordering::SeqCst) {
                continue;
            }
            // Take every connection that is ready, up to the limits, so that a
            // burst leaves the queue as fast as it came.
            while accepted < n && sh.running() < sh.cfg.max_clients.max(1) {
                match self.sock.accept() {
                    Ok((stream, peer)) => {
                        accepted += 1;
                        self.start_session(stream, peer, tx.clone());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if is_transient(&e) => {
                        log::warn!("accepting a client failed: {e}; going on");
                        if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        break;
                    }
                    Err(source) => {
                        result = Err(io_error("accepting clients", source));
                        break;
                    }
                }
            }
            if result.is_err() {
                break;
            }
        }
        if sh.stopping.load(Ordering::SeqCst) {
            self.stop_sessions();
        }
        drop(tx);
        result
    }

    fn drain_wake(&self) {
        let mut b = [0u8; 256];
        while matches!(nix::unistd::read(self.shared.wake_r.as_raw_fd(), &mut b), Ok(n) if n > 0) {}
    }

    /// Refuses new connections and ends every session in progress by shutting
    /// its control connection for reading (the session takes that as the end and
    /// writes its file); returns when all sessions are done.
    fn stop_sessions(&self) {
        let sh = &*self.shared;
        // On Linux this also resets the connections still in the accept queue.
        let _ = socket::shutdown(self.sock.as_raw_fd(), socket::Shutdown::Read);
        // Sessions still in their handshake or metadata go on (each message is
        // bounded by the timeout) and end as soon as they reach their wait
        // ([`Ticket::enter_wait`]); the waiting ones end now.
        let n = {
            let mut s = sh.lock();
            for e in s.live.values_mut().filter(|e| e.waiting) {
                e.stopped = true;
                let _ = socket::shutdown(e.fd, socket::Shutdown::Read);
            }
            s.live.len()
        };
        if n > 0 {
            log::info!("stopping: ending {n} session(s) in progress with what has arrived");
        }
        // A session that does not reach its wait (a client silent in the
        // handshake under `--timeout 0`) is shut down after a grace period.
        let grace = std::time::Instant::now()
            + sh.cfg.timeout.unwrap_or(Duration::ZERO)
            + Duration::from_secs(5);
        let mut forced = false;
        while sh.running() > 0 {
            if !forced && std::time::Instant::now() >= grace {
                forced = true;
                for e in sh.lock().live.values_mut() {
                    e.stopped = true;
                    let _ = socket::shutdown(e.fd, socket::Shutdown::Read);
                }
            }
            let mut fds = [PollFd::new(sh.wake_r.as_fd(), PollFlags::POLLIN)];
            let _ = nix::poll::poll(&mut fds, PollTimeout::from(200u16));
            self.drain_wake();
        }
    }

    fn start_session(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        tx: Option<mpsc::Sender<SessionReport>>,
    ) {
        // Accepted sockets do not inherit O_NONBLOCK on Linux; make sure anyway.
        let _ = stream.set_nonblocking(false);
        let ticket = {
            let mut s = self.shared.lock();
            let id = s.next_id;
            s.next_id += 1;
            s.live.insert(
                id,
                Live {
                    fd: stream.as_raw_fd(),
                    waiting: false,
                    stopped: false,
                },
            );
            Ticket {
                id,
                shared: Arc::clone(&self.shared),
            }
        };
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name(format!("client {peer}"))
            .stack_size(SESSION_STACK)
            .spawn(move || {
                let report = session::run(&stream, peer, &shared.cfg, &ticket);
                log_report(&report);
                if let Some(tx) = tx {
                    let _ = tx.send(report);
                }
                // Only now may a stopping listener return (and its process exit);
                // the entry goes before the socket closes.
                drop(ticket);
                drop(stream);
            });
        if let Err(e) = spawned {
            log::error!("{peer}: cannot start a session thread: {e}; connection closed");
        }
    }
}

/// Stack of a session thread (and of its data thread): they keep their buffers
/// on the heap, so the 2 MiB default would only reserve address space.
pub(crate) const SESSION_STACK: usize = 512 << 10;

fn io_error(what: &str, source: std::io::Error) -> ListenError {
    ListenError::Io {
        what: what.into(),
        source,
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
        Ok(Outcome::Complete) => {
            log::info!("{}: session complete: {file} ({total} data bytes)", r.peer)
        }
        Ok(Outcome::Partial) => log::warn!(
            "{}: session ended early: {file} is partial ({total} data bytes that arrived)",
            r.peer
        ),
        Err(e) => log::warn!("{}: session failed: {e} ({file})", r.peer),
    }
}
