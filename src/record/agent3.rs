//! The 3.x guest agent (issue 14 item 1): `trace-cmd agent` without `--virt`.
//!
//! It listens on vsock ([`run_vsock`]) or, with `-N CLIENT`, on TCP for that client
//! only ([`run_tcp`]). One host at a time: it sends TRACE_REQ with the recording
//! options; the agent prepares tracefs, opens one data port per CPU (of the control
//! connection's kind), answers TRACE_RESP with those
//! ports, sends the metadata on the control connection (a v6 file through the
//! options block, as SEND_DATA chunks and FIN_DATA, the form a 3.x host's
//! `record -A` reads as it reads a listener's), records each CPU into its data
//! connection, and on CLOSE stops, puts tracefs back and answers CLOSE_RESP.
//! No clock synchronisation: TRACE_RESP names no protocol, which a 3.x host
//! accepts as "no sync" (as with `--tsync-interval -1`).
//!
//! Everything from the host is bounded: messages by [`crate::msg`]'s codec and
//! timeout, the argument list by [`parse_request`], the data connections by a
//! deadline and by the host's address (IP or vsock CID).

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::socket::{getpeername, getsockname, SockaddrStorage};

use super::tsync::{self, TsyncError};
use super::{CpuRecorderSet, RecordError};
use crate::msg::{ptp, v3, Channel, MsgError, Wait};
use crate::netrecord::send_v3_data;
use crate::output::{standard_options, write_options_block, Metadata};
use crate::recorder::{CpuRecorder, Input, Output, RecordFlags};
use crate::tracefs::{self, Instance, RecordingSetup, TracefsError, TracefsState};
use crate::transport;

/// Who a connection comes from: what the agent checks its data connections by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAddr {
    /// A TCP peer's address.
    Tcp(IpAddr),
    /// A vsock peer's context ID.
    Vsock(u32),
}

impl std::fmt::Display for HostAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostAddr::Tcp(ip) => write!(f, "{ip}"),
            HostAddr::Vsock(cid) => write!(f, "vsock CID {cid}"),
        }
    }
}

/// The peer of a connected TCP or vsock socket.
fn peer_of(fd: BorrowedFd<'_>) -> std::io::Result<HostAddr> {
    let a: SockaddrStorage = getpeername(fd.as_raw_fd())?;
    if let Some(v) = a.as_vsock_addr() {
        return Ok(HostAddr::Vsock(v.cid()));
    }
    Ok(HostAddr::Tcp(as_tcp(fd)?.peer_addr()?.ip()))
}

/// A TCP socket's view of `fd` (a duplicate: closing it leaves `fd` open).
fn as_tcp(fd: BorrowedFd<'_>) -> std::io::Result<std::net::TcpStream> {
    Ok(std::net::TcpStream::from(fd.try_clone_to_owned()?))
}

/// One listening data socket, of the control connection's kind, and its port.
fn data_listener(control: BorrowedFd<'_>) -> std::io::Result<(OwnedFd, u32)> {
    let local: SockaddrStorage = getsockname(control.as_raw_fd())?;
    if local.as_vsock_addr().is_some() {
        let l = transport::listen_vsock(transport::VSOCK_PORT_ANY)?;
        let port = transport::vsock_local_port(l.as_fd())?;
        return Ok((l, port));
    }
    // On the address the host reached us on.
    let ip = as_tcp(control)?.local_addr()?.ip();
    let l = TcpListener::bind(SocketAddr::new(ip, 0))?;
    let port = u32::from(l.local_addr()?.port());
    Ok((OwnedFd::from(l), port))
}

/// What went wrong serving one host.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("host {peer}: {source}")]
    Msg { peer: HostAddr, source: MsgError },
    #[error("host {peer} sent {got} where TRACE_REQ was expected")]
    NotTraceReq { peer: HostAddr, got: &'static str },
    #[error("host {peer} asked for a recording this agent cannot make: {reason}")]
    BadRequest { peer: HostAddr, reason: String },
    #[error("host {peer} did not open every data connection within {secs} s")]
    DataTimeout { peer: HostAddr, secs: u64 },
    #[error("cannot open a data port: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    /// The clock-sync exchange with the host failed.
    #[error("clock sync: {0}")]
    Tsync(#[from] TsyncError),
}

/// The recording a host asked for, from TRACE_REQ's arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentRequest {
    /// `-e` selectors, in order.
    pub events: Vec<String>,
    /// `-C`.
    pub clock: Option<String>,
    /// `-b`, KiB per CPU.
    pub buffer_kb: Option<u64>,
    /// `-B`: record this instance instead of the top-level buffer.
    pub instance: Option<String>,
}

/// Reads the options a 3.x host sends (`-e EV`, `-C CLOCK`, `-b KB`, `-B NAME`,
/// each with its value as the next argument, as `record` takes them). Anything
/// else is refused with its name, so the host's user learns what did not apply.
pub fn parse_request(argv: &[String]) -> Result<AgentRequest, String> {
    let mut req = AgentRequest::default();
    let mut it = argv.iter();
    while let Some(opt) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("option {opt:?} has no value"))
        };
        match opt.as_str() {
            "-e" => req.events.push(value()?),
            "-C" => req.clock = Some(value()?),
            "-b" => {
                let v = value()?;
                req.buffer_kb = Some(
                    v.parse()
                        .map_err(|_| format!("-b {v:?} is not a size in KiB"))?,
                )
            }
            "-B" => req.instance = Some(value()?),
            other => return Err(format!("option {other:?} is not supported by this agent")),
        }
    }
    if req.events.is_empty() {
        return Err("no events asked for (-e)".into());
    }
    Ok(req)
}

/// How the agent waits for a host.
#[derive(Debug, Clone, Copy)]
pub struct AgentParams {
    /// Longest wait for a message inside a step and for the data connections.
    pub timeout: Duration,
    /// Recorder poll interval.
    pub sleep: Duration,
}

impl Default for AgentParams {
    fn default() -> Self {
        AgentParams {
            timeout: Duration::from_secs(5),
            sleep: Duration::from_millis(100),
        }
    }
}

/// Serves one connected host (TCP or vsock), from TRACE_REQ to CLOSE_RESP. tracefs
/// is put back whatever happens.
pub fn serve_host(
    control: BorrowedFd<'_>,
    params: &AgentParams,
    stop: &dyn Fn() -> bool,
) -> Result<(), AgentError> {
    let peer = peer_of(control)?;
    // A host that stops reading must not hold the agent: sends time out too.
    let tv = nix::sys::time::TimeVal::new(
        params.timeout.as_secs().min(i64::MAX as u64) as i64,
        params.timeout.subsec_micros().into(),
    );
    nix::sys::socket::setsockopt(&control, nix::sys::socket::sockopt::SendTimeout, &tv)
        .map_err(std::io::Error::from)?;
    let ch = Channel::new(control).with_timeout(Some(params.timeout));
    let merr = |source| AgentError::Msg { peer, source };
    let (argv, tsync_protos) = match v3::recv(&ch, Wait::Timed).map_err(merr)? {
        v3::Msg::TraceReq {
            argv, tsync_protos, ..
        } => (argv, tsync_protos),
        other => {
            let _ = v3::send(&ch, &v3::Msg::NotSupp);
            return Err(AgentError::NotTraceReq {
                peer,
                got: other.name(),
            });
        }
    };
    let bad = |reason| AgentError::BadRequest { peer, reason };
    let req = parse_request(&argv).map_err(bad)?;
    log::info!("host {peer} asks for {req:?}");
    let inst = match &req.instance {
        None => Instance::top().map_err(|e| bad(e.to_string()))?,
        Some(n) => Instance::open(n).or_else(|_| Instance::create(n))?,
    };
    let selectors: Vec<&str> = req.events.iter().map(String::as_str).collect();
    let events = inst.resolve_events(&selectors)?;
    let cpus = tracefs::cpu_count(&inst)?;
    let mut guard = TracefsState::new(&inst);
    guard.prepare_recording(
        &RecordingSetup {
            tracer: None,
            buffer_kb: req.buffer_kb,
            clock: req.clock.as_deref(),
        },
        &events,
    )?;
    let meta = Metadata::from_tracefs(&inst, &events)?;
    let mut bytes = meta.to_bytes()?;
    write_options_block(
        &mut bytes,
        cpus as u32,
        &standard_options(&inst.trace_clock_text()?, &[]),
    )?;
    let (listeners, ports): (Vec<OwnedFd>, Vec<u32>) = (0..cpus)
        .map(|_| data_listener(control))
        .collect::<std::io::Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    // 3.x's PTP clock sync: over vsock only (as 3.x), on a port of its own, for
    // a clock that counts ns.
    let clock_text = inst.trace_clock_text()?;
    let clock = clock_text
        .split_once('[')
        .and_then(|(_, r)| r.split_once(']'))
        .map_or("local", |(c, _)| c)
        .to_string();
    let tsync = if matches!(peer, HostAddr::Vsock(_))
        && tsync_protos.iter().any(|p| p == ptp::PTP)
        && tsync::is_ns_clock(&clock)
    {
        Some(data_listener(control)?)
    } else {
        if !tsync_protos.is_empty() {
            log::info!("host {peer} offers clock sync {tsync_protos:?}; not over this connection or clock {clock:?}");
        }
        None
    };
    let trace_id = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 ^ u64::from(std::process::id()));
    v3::send(
        &ch,
        &v3::Msg::TraceResp {
            flags: 0,
            cpus: cpus as u32,
            page_size: meta.page_size,
            trace_id,
            tsync_proto: tsync
                .as_ref()
                .map_or(String::new(), |_| ptp::PTP.to_string()),
            tsync_port: tsync.as_ref().map_or(0, |t| t.1),
            ports,
        },
    )
    .map_err(merr)?;
    // The clock-sync host connects first (3.x's agent waits for it); its rounds
    // run beside the recording until the host says STOP or the recording ends.
    let timeout = params.timeout;
    let sync_stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let syncer = tsync.map(|(l, _)| {
        let stop = sync_stop.0.clone();
        std::thread::spawn(move || {
            let conn = accept_all(vec![l], peer, timeout)?.pop();
            let Some(conn) = conn else { return Ok(0) };
            let ch = Channel::new(conn.as_fd()).with_timeout(Some(timeout));
            tsync::ptp_serve(&ch, &clock, &stop).map_err(AgentError::from)
        })
    });
    // The host may connect before or after reading the metadata: accept in a
    // thread while the metadata goes out.
    let acceptor = std::thread::spawn(move || accept_all(listeners, peer, timeout));
    let sent = send_v3_data(&ch, &bytes).map_err(merr);
    let socks = acceptor.join().unwrap_or(Err(AgentError::DataTimeout {
        peer,
        secs: timeout.as_secs(),
    }))?;
    sent?;
    let mut recorders = CpuRecorderSet::new("agent");
    for (cpu, sock) in socks.into_iter().enumerate() {
        let input = Input::Buffer {
            dir: inst.path().to_path_buf(),
            cpu,
        };
        let rec = CpuRecorder::new(input, Output::Stream(sock), RecordFlags::default())
            .map_err(|source| RecordError::StartRecorder { cpu, source })?;
        recorders.start(cpu, rec, params.sleep)?;
    }
    guard.set_tracing_on(true)?;
    log::info!(
        "recording {} events on {cpus} CPUs for host {peer}",
        events.len()
    );
    let ended = wait_close(&ch, &recorders, stop);
    inst.set_tracing_on(false)?;
    let flushed = recorders.finish();
    guard.restore()?;
    flushed.map_err(RecordError::from)?;
    ended.map_err(merr)?;
    v3::send(&ch, &v3::Msg::CloseResp).map_err(merr)?;
    // 3.x's host runs its last clock-sync round and STOP after CLOSE, once it
    // has written its files: served until then, within six message timeouts
    // (as a host waits for a slow guest), or until the agent is stopped.
    if let Some(t) = syncer {
        let end = Instant::now() + timeout * 6;
        while !t.is_finished() && Instant::now() < end && !stop() {
            std::thread::sleep(Duration::from_millis(20));
        }
        sync_stop.0.store(true, Ordering::Relaxed);
        match t.join() {
            Ok(Ok(n)) => log::info!("host {peer}: {n} PTP clock-sync rounds"),
            Ok(Err(e)) => log::warn!("host {peer}: clock sync ended: {e}"),
            Err(_) => log::warn!("host {peer}: the clock-sync thread panicked"),
        }
    }
    log::info!("host {peer}: recording sent and closed");
    Ok(())
}

/// Tells the clock-sync thread to stop waiting, however `serve_host` ends.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Waits for the host's CLOSE, answering NOT_SUPP to anything else; stops early if
/// a recorder fails.
fn wait_close(
    ch: &Channel<'_>,
    recorders: &CpuRecorderSet,
    stop: &dyn Fn() -> bool,
) -> Result<(), MsgError> {
    loop {
        match v3::recv(ch, Wait::Timed) {
            Ok(v3::Msg::Close) => return Ok(()),
            Ok(v3::Msg::NotSupp) => {}
            Ok(m) => {
                log::info!("{} while recording; answered NOT_SUPP", m.name());
                v3::send(ch, &v3::Msg::NotSupp)?;
            }
            Err(MsgError::TimedOut(_)) | Err(MsgError::Interrupted) => {
                if recorders.finished_early() || stop() {
                    return Err(MsgError::Aborted);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// One connection per listener, from `peer` only, all within `timeout`.
fn accept_all(
    listeners: Vec<OwnedFd>,
    peer: HostAddr,
    timeout: Duration,
) -> Result<Vec<OwnedFd>, AgentError> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(listeners.len());
    for l in listeners {
        set_nonblocking(l.as_fd(), true)?;
        loop {
            match accept_from(l.as_fd()) {
                Ok((s, from)) if from == peer => {
                    set_nonblocking(s.as_fd(), false)?;
                    out.push(s);
                    break;
                }
                Ok((_, from)) => log::warn!("refused a data connection from {from}"),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(AgentError::DataTimeout {
                            peer,
                            secs: timeout.as_secs(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(out)
}

pub use super::remote::DEFAULT_AGENT_PORT;

fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags - OFlag::O_NONBLOCK
    };
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// One connection from a non-blocking listener, and who made it.
fn accept_from(l: BorrowedFd<'_>) -> std::io::Result<(OwnedFd, HostAddr)> {
    let s = transport::accept(l)?;
    let from = peer_of(s.as_fd())?;
    Ok((s, from))
}

/// Listens on TCP `port` and serves hosts from `client` one after the other,
/// refusing every other address; returns only when `stop` says so.
pub fn run_tcp(
    client: IpAddr,
    port: u16,
    params: &AgentParams,
    stop: &dyn Fn() -> bool,
) -> std::io::Result<()> {
    let bind: IpAddr = if client.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let l = OwnedFd::from(TcpListener::bind(SocketAddr::new(bind, port))?);
    log::info!("agent listening on TCP port {port} for {client}");
    serve(l, Some(HostAddr::Tcp(client)), params, stop)
}

/// Listens on vsock `port` (every local CID) and serves hosts one after the
/// other; returns only when `stop` says so.
pub fn run_vsock(port: u32, params: &AgentParams, stop: &dyn Fn() -> bool) -> std::io::Result<()> {
    let l = transport::listen_vsock(port)?;
    log::info!("agent listening on vsock port {port}");
    serve(l, None, params, stop)
}

/// Accepts hosts on `listener` (only `only`, when given), serving each in turn.
fn serve(
    listener: OwnedFd,
    only: Option<HostAddr>,
    params: &AgentParams,
    stop: &dyn Fn() -> bool,
) -> std::io::Result<()> {
    set_nonblocking(listener.as_fd(), true)?;
    while !stop() {
        match accept_from(listener.as_fd()) {
            Ok((s, from)) if only.map_or(true, |c| c == from) => {
                set_nonblocking(s.as_fd(), false)?;
                if let Err(e) = serve_host(s.as_fd(), params, stop) {
                    log::error!("{e}");
                }
            }
            Ok((_, from)) => {
                log::warn!(
                    "refused a connection from {from}: only {} may connect",
                    only.map_or_else(String::new, |c| c.to_string())
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // A peer that left before its address could be read.
            Err(e) if e.kind() == std::io::ErrorKind::NotConnected => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
