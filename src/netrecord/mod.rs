//! The client of network recording (`record -N host:port`, issue 5 item 2): finds a
//! protocol both ends speak, announces the CPUs, sends the trace.dat metadata and
//! opens one data socket per CPU for the recorders (wire spec §3.1, §3.2; shared
//! doc §6, §7).
//!
//! Negotiation ([`NetSession::connect`]): offer V3 ("-1V3\0"); a V2-era listener
//! answers "V2\0" and waits for another CPU string, so V2 continues on the same
//! connection; a V1-only listener closes, so the client reconnects and speaks V1.
//! [`Proto`] passed as `force` skips the others. The handshake and the
//! TINIT/RINIT (or V1 text) announcement are [`crate::msg::negotiate`]'s, shared
//! with the listener.
//!
//! What each protocol carries as metadata ([`NetSession::send_metadata`]):
//!
//! * V1: the v6 header … saved cmdlines, raw on the control socket; the listener
//!   reads it until the client closes at the end of the recording;
//! * V2: the same bytes as SENDMETA chunks, then FINMETA; the listener appends CPU
//!   count and options itself;
//! * V3: a v6 file from the magic through the options block (CPU count, options,
//!   the bare DONE), as SEND_DATA chunks, then FIN_DATA (doc §6.5 "File v6").
//!
//! Every wait for the listener's answers is bounded by [`NetParams::timeout`], and
//! every answer is checked (port count, port range), so a broken or hostile
//! listener ends the session with an error, never a hang or a panic. Sends wait
//! while the listener does not read, as the C original's do, unless
//! [`NetSession::set_send_timeout`] bounds them.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use crate::msg::negotiate::Negotiated;
use crate::msg::{self, session, v1::ClientInit, v3, Channel, MsgError};
use crate::output::{write_options_block, DatOption, Metadata, OutputError};

/// The negotiation this client runs, kept at its earlier path.
pub use crate::msg::negotiate;
/// The protocol generation, kept at its earlier path.
pub use crate::msg::negotiate::Proto;

/// What went wrong talking to the listener. [`NetError::errno`] gives the C errno.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("bad listener address {0:?}: give host:port, e.g. 192.168.1.5:12345 or [::1]:12345")]
    BadAddress(String),
    #[error("cannot resolve the listener address {addr}: {source}")]
    Resolve { addr: String, source: io::Error },
    #[error(
        "cannot connect to the listener at {addr}: {source}; is `trace-cmd listen` running there?"
    )]
    Connect { addr: String, source: io::Error },
    #[error("listener at {addr}: {source}{}", ended_by_listener(source))]
    Protocol { addr: String, source: MsgError },
    #[error("listener at {addr} does not speak protocol {wanted}, which --proto asked for")]
    NotSpoken { addr: String, wanted: Proto },
    #[error("listener at {addr} answered with {got} data ports for {cpus} CPUs; it cannot take this machine's data")]
    PortCount { addr: String, got: usize, cpus: u32 },
    #[error("listener at {addr} gave port {port} for CPU {cpu}, which is not a usable port")]
    BadPort { addr: String, cpu: usize, port: u32 },
    #[error("cannot open the CPU {cpu} data connection to {addr}: {source}")]
    DataConnect {
        cpu: usize,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("no data port for CPU {0}: the listener announced fewer")]
    NoSuchCpu(usize),
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// What a client can do when the listener closed the session on it: the
/// listener's log says which of its reasons it was.
fn ended_by_listener(e: &MsgError) -> &'static str {
    let io_kind = |io: &io::Error| {
        matches!(
            io.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        )
    };
    match e {
        MsgError::Closed => {}
        MsgError::Send(io) | MsgError::Io(io) if io_kind(io) => {}
        _ => return "",
    }
    "; the listener ended this session (its log says why: for example its per-message timeout, listen --timeout, or a stop)"
}

impl NetError {
    /// The positive errno value for the C layer.
    pub fn errno(&self) -> i32 {
        match self {
            NetError::BadAddress(_) | NetError::NoSuchCpu(_) => libc::EINVAL,
            NetError::Resolve { .. } => libc::EHOSTUNREACH,
            NetError::Connect { source, .. } | NetError::DataConnect { source, .. } => {
                source.raw_os_error().unwrap_or(libc::ECONNREFUSED)
            }
            NetError::Protocol { source, .. } => source.errno(),
            NetError::NotSpoken { .. } => libc::EPROTONOSUPPORT,
            NetError::PortCount { .. } | NetError::BadPort { .. } => libc::EPROTO,
            NetError::Output(e) => e.errno(),
        }
    }
}

/// Result of this module's functions.
pub type Result<T> = std::result::Result<T, NetError>;

/// What the client announces and how it talks.
#[derive(Debug, Clone)]
pub struct NetParams {
    /// CPUs whose data will be sent (one data port each).
    pub cpus: u32,
    /// The page size announced in TINIT / the V1 text: the system page size,
    /// which is also what one UDP datagram carries.
    pub page_size: u32,
    /// Per-CPU data over TCP instead of UDP (`-t`).
    pub use_tcp: bool,
    /// Only this protocol (`--proto`); `None` negotiates down from V3.
    pub force: Option<Proto>,
    /// Longest wait for any answer of the listener, and for connecting.
    pub timeout: Duration,
}

/// Splits `host:port` (`[v6]:port` for IPv6) into its parts.
pub fn parse_target(target: &str) -> Result<(String, u16)> {
    let bad = || NetError::BadAddress(target.to_string());
    let (host, port) = target.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || (host.contains(':') && !target.starts_with('[')) {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// A negotiated session with a listener: the control connection, the protocol and
/// the per-CPU data ports.
#[derive(Debug)]
pub struct NetSession {
    control: TcpStream,
    proto: Proto,
    peer: SocketAddr,
    label: String,
    ports: Vec<u16>,
    use_tcp: bool,
    timeout: Duration,
}

fn connect_control(addrs: &[SocketAddr], label: &str, timeout: Duration) -> Result<TcpStream> {
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(NetError::Connect {
        addr: label.to_string(),
        source: last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable)),
    })
}

impl NetSession {
    /// Connects to `target` (`host:port`), negotiates the protocol and announces the
    /// CPUs (TINIT/RINIT or the V1 text); on return the data ports are known.
    pub fn connect(target: &str, params: &NetParams) -> Result<NetSession> {
        let (host, port) = parse_target(target)?;
        let label = format!("{host}:{port}");
        let addrs: Vec<SocketAddr> = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|source| NetError::Resolve {
                addr: label.clone(),
                source,
            })?
            .collect();
        if addrs.is_empty() {
            return Err(NetError::Resolve {
                addr: label,
                source: io::Error::from(io::ErrorKind::NotFound),
            });
        }
        let proto_err = |source: MsgError| NetError::Protocol {
            addr: label.clone(),
            source,
        };
        let timeout = params.timeout;
        let control = connect_control(&addrs, &label, timeout)?;

        // Forced V1: nothing is said on this connection before the V1 text.
        let offered = match params.force {
            Some(Proto::V1) => Negotiated::V1Fallback,
            force => {
                let ch = Channel::new(control.as_fd()).with_timeout(Some(timeout));
                let highest = force.unwrap_or(Proto::V3);
                match negotiate::client_offer(&ch, highest, force.is_none()).map_err(proto_err)? {
                    Negotiated::V1Fallback if force.is_some() => {
                        return Err(NetError::NotSpoken {
                            addr: label,
                            wanted: highest,
                        })
                    }
                    o => o,
                }
            }
        };
        let proto = offered.proto();
        let control = if proto == Proto::V1 && params.force.is_none() {
            log::info!(
                "listener at {label} closed on the versioned offer (a V1-only listener); reconnecting with V1"
            );
            drop(control);
            connect_control(&addrs, &label, timeout)?
        } else {
            control
        };
        let peer = control.peer_addr().map_err(|source| NetError::Connect {
            addr: label.clone(),
            source,
        })?;
        let ch = Channel::new(control.as_fd()).with_timeout(Some(timeout));
        let init = ClientInit {
            cpus: params.cpus,
            page_size: params.page_size,
            use_tcp: params.use_tcp,
        };
        let raw_ports = negotiate::client_init(&ch, proto, &init).map_err(proto_err)?;
        let ports = check_ports(&label, params.cpus, &raw_ports)?;
        log::info!(
            "listener at {label}: protocol {proto}, per-CPU data over {} to ports {ports:?}",
            if params.use_tcp { "TCP" } else { "UDP" }
        );
        Ok(NetSession {
            control,
            proto,
            peer,
            label,
            ports,
            use_tcp: params.use_tcp,
            timeout,
        })
    }

    /// The protocol agreed on.
    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// The data port of each CPU, in CPU order.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The listener as given (`host:port`), for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Bounds each send on the control connection (`None`: a send waits as long
    /// as the listener does not read, as the C original's does). For clients that
    /// must never hang on a listener that stopped reading (the replay client).
    pub fn set_send_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.control.set_write_timeout(timeout)
    }

    /// The local port of the control connection (listeners name files after it).
    pub fn local_port(&self) -> io::Result<u16> {
        self.control.local_addr().map(|a| a.port())
    }

    fn channel(&self) -> Channel<'_> {
        Channel::new(self.control.as_fd()).with_timeout(Some(self.timeout))
    }

    fn proto_err(&self, source: MsgError) -> NetError {
        NetError::Protocol {
            addr: self.label.clone(),
            source,
        }
    }

    /// Sends the trace.dat metadata in the form the agreed protocol wants: `meta`
    /// (header … cmdlines) for V1/V2; for V3 also the CPU count and `options`.
    pub fn send_metadata(&self, meta: &Metadata, options: &[DatOption]) -> Result<()> {
        let mut bytes = meta.to_bytes()?;
        let ch = self.channel();
        let res = match self.proto {
            Proto::V1 => ch.send_all(&bytes),
            Proto::V2 => {
                session::send_metadata(&ch, &bytes).and_then(|()| session::finish_metadata(&ch))
            }
            Proto::V3 => {
                write_options_block(&mut bytes, self.ports.len() as u32, options)?;
                send_v3_data(&ch, &bytes)
            }
        };
        res.map_err(|e| self.proto_err(e))?;
        log::debug!(
            "sent {} bytes of metadata to {} ({})",
            bytes.len(),
            self.label,
            self.proto
        );
        Ok(())
    }

    /// Opens CPU `cpu`'s connected data socket (UDP, or TCP with `-t`). The
    /// recorder takes it as its output.
    pub fn connect_data(&self, cpu: usize) -> Result<OwnedFd> {
        let port = *self.ports.get(cpu).ok_or(NetError::NoSuchCpu(cpu))?;
        let addr = SocketAddr::new(self.peer.ip(), port);
        let err = |source| NetError::DataConnect { cpu, addr, source };
        if self.use_tcp {
            let s = TcpStream::connect_timeout(&addr, self.timeout).map_err(err)?;
            Ok(OwnedFd::from(s))
        } else {
            let local: SocketAddr = if addr.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let s = UdpSocket::bind(local).map_err(err)?;
            s.connect(addr).map_err(err)?;
            Ok(OwnedFd::from(s))
        }
    }

    /// Whether the listener has closed the control connection (or reset it) while
    /// the recording runs. Never blocks.
    pub fn listener_gone(&self) -> bool {
        let mut b = [0u8; 1];
        let _ = self.control.set_nonblocking(true);
        let gone = match self.control.peek(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => {
                e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted
            }
        };
        let _ = self.control.set_nonblocking(false);
        gone
    }

    /// Ends the session once the recorders have flushed: CLOSE (V2, V3), then
    /// closes the control connection (the end of the metadata for V1).
    pub fn finish(self) -> Result<()> {
        let ch = self.channel();
        let res = match self.proto {
            Proto::V1 => Ok(()),
            Proto::V2 => session::send_close(&ch),
            Proto::V3 => v3::send(&ch, &v3::Msg::Close),
        };
        res.map_err(|e| self.proto_err(e))?;
        let _ = self.control.shutdown(std::net::Shutdown::Write);
        log::info!("session with {} ({}) closed", self.label, self.proto);
        Ok(())
    }
}

/// SEND_DATA chunks of at most 8180 bytes, then FIN_DATA.
pub(crate) fn send_v3_data(ch: &Channel<'_>, data: &[u8]) -> msg::Result<()> {
    for chunk in data.chunks(msg::MSG_META_MAX_LEN) {
        v3::send(ch, &v3::Msg::SendData(chunk.to_vec()))?;
    }
    v3::send(ch, &v3::Msg::FinData)
}

/// One usable port per CPU, or an error that says what the listener got wrong.
fn check_ports(label: &str, cpus: u32, ports: &[u32]) -> Result<Vec<u16>> {
    if ports.len() != cpus as usize {
        return Err(NetError::PortCount {
            addr: label.to_string(),
            got: ports.len(),
            cpus,
        });
    }
    ports
        .iter()
        .enumerate()
        .map(|(cpu, &p)| match u16::try_from(p) {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(NetError::BadPort {
                addr: label.to_string(),
                cpu,
                port: p,
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_or_say_why_not() {
        assert_eq!(
            parse_target("127.0.0.1:1234").unwrap(),
            ("127.0.0.1".into(), 1234)
        );
        assert_eq!(parse_target("[::1]:99").unwrap(), ("::1".into(), 99));
        assert_eq!(parse_target("host:1").unwrap(), ("host".into(), 1));
        for bad in [
            "",
            "host",
            ":1",
            "host:",
            "host:0",
            "host:65536",
            "::1:5",
            "h:x",
        ] {
            let e = parse_target(bad).unwrap_err();
            assert!(e.to_string().contains("host:port"), "{bad}: {e}");
        }
    }

    #[test]
    fn ports_are_checked_against_the_cpu_count() {
        assert_eq!(
            check_ports("l", 2, &[1500, 1501]).unwrap(),
            vec![1500, 1501]
        );
        assert!(matches!(
            check_ports("l", 2, &[1500]),
            Err(NetError::PortCount {
                got: 1,
                cpus: 2,
                ..
            })
        ));
        assert!(matches!(
            check_ports("l", 1, &[0]),
            Err(NetError::BadPort { port: 0, .. })
        ));
        assert!(matches!(
            check_ports("l", 1, &[70000]),
            Err(NetError::BadPort { port: 70000, .. })
        ));
    }
}
