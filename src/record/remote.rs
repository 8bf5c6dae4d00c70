//! `record -A` reaching a trace-cmd 3.x agent (issue 14 item 2): the host side of
//! the V3 agent exchange, over TCP (`-A ADDRESS[:PORT]`) or vsock
//! (`-A NAME@CID[:PORT]`).
//!
//! The host connects, sends TRACE_REQ with the guest's record options, and gets
//! TRACE_RESP with the agent's CPUs and one data port per CPU. It connects every
//! data port (on the agent's address), then reads the agent's metadata (SEND_DATA
//! until FIN_DATA: a version 6 or 7 file prefix, as a V3 `record -N` client sends
//! it). At the end it sends CLOSE and waits for CLOSE_RESP. The recorders of the
//! data connections and the merge into one trace.dat are the virt-server guests'
//! ([`super::guest`]).
//!
//! Clock sync: no protocol is offered. 3.x syncs clocks only over vsock (its PTP
//! exchange), which this crate does not speak yet; the summary says so per guest.
//!
//! Everything from the agent is bounded: each message by [`crate::msg`]'s codec and
//! timeout, the metadata by [`MAX_GUEST_METADATA`] and [`METADATA_WAIT`], the ports
//! by their range.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use super::guest::MAX_GUEST_METADATA;
use crate::msg::{v3, Channel, MsgError, Wait};
use crate::virt::{io_err, Result, VirtError};

/// trace-cmd's default agent port (vsock and TCP).
pub const DEFAULT_AGENT_PORT: u16 = 823;

/// Longest wait for an agent's whole metadata (kallsyms of a big kernel are tens of
/// MiB); each message must still come within the message timeout.
pub const METADATA_WAIT: Duration = Duration::from_secs(120);

/// Where a 3.x agent listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentAddr {
    /// `trace-cmd agent -N CLIENT` on this address.
    Tcp(SocketAddr),
    /// `trace-cmd agent` in a VM with context ID `cid`.
    Vsock {
        /// The VM's context ID.
        cid: u32,
        /// The agent's port.
        port: u32,
    },
}

impl std::fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentAddr::Tcp(a) => write!(f, "{a} (TCP)"),
            AgentAddr::Vsock { cid, port } => write!(f, "vsock {cid}:{port}"),
        }
    }
}

impl AgentAddr {
    /// Reads trace-cmd 3.x's agent forms of `-A`: `NAME@CID[:PORT]` (vsock) and
    /// `ADDRESS[:PORT]` with an IP address (`[v6]` in brackets) for TCP; the port
    /// defaults to [`DEFAULT_AGENT_PORT`]. Returns the guest's buffer name (NAME, or
    /// the address) and where its agent is; `None` when `spec` is neither form (a
    /// virt-server guest name).
    pub fn parse(spec: &str) -> Result<Option<(String, AgentAddr)>> {
        let bad = |why: &str| VirtError::Invalid(format!("-A {spec:?}: {why}"));
        if let Some((name, rest)) = spec.rsplit_once('@') {
            let (cid, port) = match rest.split_once(':') {
                Some((c, p)) => (c, Some(p)),
                None => (rest, None),
            };
            let cid = cid
                .parse::<u32>()
                .map_err(|_| bad("the part after '@' must be a vsock context ID (a number)"))?;
            let port = match port {
                Some(p) => p
                    .parse::<u32>()
                    .map_err(|_| bad("the part after the CID's ':' must be a port number"))?,
                None => u32::from(DEFAULT_AGENT_PORT),
            };
            crate::virt::validate_domain(name)?;
            return Ok(Some((name.to_string(), AgentAddr::Vsock { cid, port })));
        }
        let (host, port) = if let Some(v6) = spec.strip_prefix('[') {
            let Some((h, rest)) = v6.split_once(']') else {
                return Err(bad("an IPv6 address needs its closing ']'"));
            };
            match rest {
                "" => (h, None),
                r => match r.strip_prefix(':') {
                    Some(p) => (h, Some(p)),
                    None => return Err(bad("only ':PORT' may follow the ']'")),
                },
            }
        } else {
            match spec.rsplit_once(':') {
                // A bare IPv6 address has colons of its own.
                Some((h, p)) if !h.contains(':') => (h, Some(p)),
                _ => (spec, None),
            }
        };
        let Ok(ip) = host.parse::<IpAddr>() else {
            return Ok(None);
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?,
            None => DEFAULT_AGENT_PORT,
        };
        Ok(Some((
            ip.to_string(),
            AgentAddr::Tcp(SocketAddr::new(ip, port)),
        )))
    }

    /// Whether the agent is reached over TCP.
    pub fn is_tcp(&self) -> bool {
        matches!(self, AgentAddr::Tcp(_))
    }

    /// The same machine, another port (a data connection).
    fn with_port(&self, port: u32) -> AgentAddr {
        match *self {
            AgentAddr::Tcp(a) => AgentAddr::Tcp(SocketAddr::new(a.ip(), port as u16)),
            AgentAddr::Vsock { cid, .. } => AgentAddr::Vsock { cid, port },
        }
    }

    /// A connected stream socket; sends give up after `timeout` too, so an agent
    /// that stops reading cannot hold the host.
    fn connect(&self, timeout: Duration) -> std::io::Result<OwnedFd> {
        let fd = match self {
            AgentAddr::Tcp(a) => OwnedFd::from(TcpStream::connect_timeout(a, timeout)?),
            AgentAddr::Vsock { cid, port } => crate::transport::connect_vsock(*cid, *port)?,
        };
        let tv = nix::sys::time::TimeVal::new(
            timeout.as_secs().min(i64::MAX as u64) as i64,
            timeout.subsec_micros().into(),
        );
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::SendTimeout, &tv)?;
        Ok(fd)
    }
}

/// A 3.x agent recording for this host.
#[derive(Debug)]
pub struct AgentSession {
    /// The guest's buffer name.
    pub name: String,
    /// Where its agent is.
    pub addr: AgentAddr,
    control: OwnedFd,
    /// CPUs the agent records (its TRACE_RESP).
    pub cpus: u32,
    /// The agent's page size (its TRACE_RESP).
    pub page_size: u32,
    /// One connected data socket per CPU, in CPU order (take them for the recorders).
    pub data: Vec<OwnedFd>,
    /// What the agent sent before its data: a version 6 or 7 file prefix.
    pub metadata: Vec<u8>,
    /// The connection to the agent's clock-sync port when it chose the PTP
    /// exchange we offered (or why it could not be made); `None`: no sync.
    pub tsync: Option<std::result::Result<OwnedFd, String>>,
}

impl AgentSession {
    /// Asks the agent at `addr` to record with the record options `argv`, connects
    /// its data ports and reads its metadata; `timeout` bounds each message and
    /// each connection. With `offer_sync` over vsock, offers 3.x's PTP exchange
    /// (3.x syncs over vsock only).
    pub fn start(
        name: &str,
        addr: AgentAddr,
        argv: &[String],
        timeout: Duration,
        offer_sync: bool,
    ) -> Result<AgentSession> {
        let offer_ptp = offer_sync && !addr.is_tcp();
        let control = addr
            .connect(timeout)
            .map_err(io_err(format!("cannot reach the agent at {addr}")))?;
        let ch = Channel::new(control.as_fd()).with_timeout(Some(timeout));
        v3::send(
            &ch,
            &v3::Msg::TraceReq {
                flags: 0,
                trace_id: trace_id(),
                argv: argv.to_vec(),
                tsync_protos: if offer_ptp {
                    vec![crate::msg::ptp::PTP.to_string()]
                } else {
                    Vec::new()
                },
            },
        )?;
        let refused = |reason: String| VirtError::AgentRefused {
            guest: name.to_string(),
            reason,
        };
        let (flags, cpus, page_size, tsync_proto, tsync_port, ports) = match v3::recv(&ch, Wait::Timed) {
            Ok(v3::Msg::TraceResp {
                flags,
                cpus,
                page_size,
                tsync_proto,
                tsync_port,
                ports,
                ..
            }) => (flags, cpus, page_size, tsync_proto, tsync_port, ports),
            Ok(v3::Msg::NotSupp) => {
                return Err(refused(
                    "it answered NOT_SUPP (is it a trace-cmd 3.x agent?)".into(),
                ))
            }
            // A 3.x agent that cannot parse the options exits without a word.
            Err(MsgError::Closed) => {
                return Err(refused(
                    "it closed the connection without an answer (does it take these record options? see its output)".into(),
                ))
            }
            Ok(m) => {
                return Err(MsgError::Unexpected {
                    expected: "TRACE_RESP",
                    got: m.name(),
                }
                .into())
            }
            Err(e) => return Err(e.into()),
        };
        if flags & v3::TRACE_REQ_USE_FIFOS != 0 {
            return Err(refused(
                "it wants to send over FIFOs, which this host did not offer".into(),
            ));
        }
        // 3.x's agent waits for this connection before it records: made first.
        let tsync = if tsync_proto.is_empty() {
            None
        } else if !offer_ptp || tsync_proto != crate::msg::ptp::PTP {
            log::warn!("guest {name}: the agent chose clock sync {tsync_proto:?}, which was not offered; its clock stays unsynced");
            None
        } else if tsync_port == crate::transport::VSOCK_PORT_ANY {
            Some(Err(format!("the agent gave clock-sync port {tsync_port}")))
        } else {
            let at = addr.with_port(tsync_port);
            Some(
                at.connect(timeout)
                    .map_err(|e| format!("cannot connect to its clock-sync port {at}: {e}")),
            )
        };
        let mut data = Vec::with_capacity(ports.len());
        for (cpu, &port) in ports.iter().enumerate() {
            let valid = match addr {
                AgentAddr::Tcp(_) => (1..=65535).contains(&port),
                AgentAddr::Vsock { .. } => port != crate::transport::VSOCK_PORT_ANY,
            };
            if !valid {
                return Err(VirtError::Invalid(format!(
                    "guest {name}: the agent gave port {port} for CPU {cpu}"
                )));
            }
            let at = addr.with_port(port);
            data.push(at.connect(timeout).map_err(io_err(format!(
                "guest {name}: cannot connect to CPU {cpu}'s data port {at}"
            )))?);
        }
        let metadata = read_metadata(&ch, name)?;
        log::info!(
            "guest {name}: agent at {addr} records {cpus} CPUs, {} bytes of metadata",
            metadata.len()
        );
        Ok(AgentSession {
            name: name.to_string(),
            addr,
            control,
            cpus,
            page_size,
            data,
            metadata,
            tsync,
        })
    }

    /// Asks the agent to stop (CLOSE).
    pub fn request_stop(&self) -> Result<()> {
        v3::send(&Channel::new(self.control.as_fd()), &v3::Msg::Close)?;
        Ok(())
    }

    /// Waits up to `wait` for CLOSE_RESP, which the agent sends once it has flushed
    /// every CPU.
    pub fn wait_stopped(&self, wait: Duration) -> Result<()> {
        let ch = Channel::new(self.control.as_fd()).with_timeout(Some(wait));
        let end = Instant::now() + wait;
        loop {
            match v3::recv(&ch, Wait::Timed) {
                Ok(v3::Msg::CloseResp) => return Ok(()),
                Ok(m) => {
                    log::debug!("guest {}: ignoring {} after CLOSE", self.name, m.name());
                    if Instant::now() >= end {
                        return Err(MsgError::TimedOut(wait.as_millis() as u64).into());
                    }
                }
                Err(MsgError::Interrupted) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// SEND_DATA until FIN_DATA, at most [`MAX_GUEST_METADATA`] bytes within
/// [`METADATA_WAIT`].
fn read_metadata(ch: &Channel<'_>, name: &str) -> Result<Vec<u8>> {
    let end = Instant::now() + METADATA_WAIT;
    let mut metadata = Vec::new();
    loop {
        match v3::recv(ch, Wait::Timed)? {
            v3::Msg::SendData(d) => {
                if metadata.len() + d.len() > MAX_GUEST_METADATA {
                    return Err(VirtError::BadMetadata(format!(
                        "guest {name}: more than {MAX_GUEST_METADATA} bytes"
                    )));
                }
                metadata.extend_from_slice(&d);
            }
            v3::Msg::FinData => return Ok(metadata),
            m => {
                return Err(MsgError::Unexpected {
                    expected: "SEND_DATA or FIN_DATA",
                    got: m.name(),
                }
                .into())
            }
        }
        if Instant::now() >= end {
            return Err(VirtError::BadMetadata(format!(
                "guest {name}: the metadata did not arrive within {} s",
                METADATA_WAIT.as_secs()
            )));
        }
    }
}

/// A trace ID for TRACE_REQ: only needs to differ between recordings.
fn trace_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 ^ u64::from(std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(s: &str) -> AgentAddr {
        AgentAddr::Tcp(s.parse().unwrap())
    }

    #[test]
    fn agent_forms_of_dash_a() {
        let p = |s| AgentAddr::parse(s).unwrap();
        assert_eq!(
            p("127.0.0.1:5000"),
            Some(("127.0.0.1".into(), tcp("127.0.0.1:5000")))
        );
        assert_eq!(
            p("10.0.0.2"),
            Some(("10.0.0.2".into(), tcp("10.0.0.2:823")))
        );
        assert_eq!(p("[::1]:99"), Some(("::1".into(), tcp("[::1]:99"))));
        assert_eq!(p("::1"), Some(("::1".into(), tcp("[::1]:823"))));
        assert_eq!(
            p("vm1@3:1234"),
            Some(("vm1".into(), AgentAddr::Vsock { cid: 3, port: 1234 }))
        );
        assert_eq!(
            p("vm1@3"),
            Some(("vm1".into(), AgentAddr::Vsock { cid: 3, port: 823 }))
        );
        // Virt-server guests, with or without a pid.
        assert_eq!(p("vm1"), None);
        assert_eq!(p("vm1:42"), None);
        assert_eq!(p("my.vm:42"), None);
        for bad in [
            "vm@x",
            "vm@3:x",
            "@3",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "127.0.0.1:x",
            "[::1",
            "[::1]x",
        ] {
            assert!(AgentAddr::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
