//! The V2/VS message sequences of spec §2.1 and §3, as safe functions.
//!
//! Each function sends and receives [`Msg`]s on a [`Channel`] and returns typed
//! results; the C layer (`capi/msg.rs`) only converts. Waits follow spec §1.9:
//! [`Wait::Timed`] where the C original polls with its 5 s timeout, and
//! [`Wait::Blocking`] (no timeout, interrupted by signals) where it blocks.
//!
//! | spec §2.1 function | here |
//! |---|---|
//! | connect_to_server / set_connection | [`connect_to_server`] / [`set_connection`] |
//! | send_init_data / initial_setting / send_port_array | [`send_init`] / [`initial_setting`] / [`send_port_array`] (in [`super::negotiate`], re-exported here) |
//! | metadata_send / finish_sending_metadata / collect_metadata | [`send_metadata`] / [`finish_metadata`] / [`collect_metadata`] |
//! | send_close_msg | [`send_close`] |
//! | (strings, §1.6) | [`send_string`] / [`recv_string`] |
//! | read_manager / get_connect / get_domain | [`read_manager`] / [`get_connect`] / [`get_domain`] |
//! | send_cpus / send_domain / send_finish | [`send_cpus`] / [`send_domain`] / [`send_finish`] |
//! | list_domains / list_guests / list_agents | [`list_domains`] / [`list_guests`] / [`list_agents`] |
//! | connect_guest / connect_agent | [`connect_guest`] / [`connect_agent`] |
//! | transfer_fd / receive_fd / get_fds | [`transfer_fd`] / [`receive_fd`] / [`get_fds`] |
//! | agent_connect / agent_parameters | [`agent_connect`] / [`agent_parameters`] |

use super::channel::{Channel, Wait};
pub use super::negotiate::{initial_setting, send_init, send_port_array, Initial, RInit};
use super::v2::{self, Msg};
use super::{check_count, MsgError, Result, CONNECTION_MSG, MAX_CPUS, MAX_STRING_LEN};
use super::{MSG_MAX_LEN, MSG_META_MAX_LEN};
use crate::transport;
use std::io::Write;
use std::os::fd::{BorrowedFd, OwnedFd};

pub(super) fn unexpected(expected: &'static str, got: &Msg) -> MsgError {
    MsgError::Unexpected {
        expected,
        got: got.cmd().name(),
    }
}

/// Client on a virtio channel: TCONNECT, then wait for RCONNECT("tracecmd-V2\0").
pub fn connect_to_server(ch: &Channel<'_>) -> Result<()> {
    v2::send(ch, &Msg::TConnect)?;
    match v2::recv(ch, Wait::Timed)? {
        Msg::RConnect(s) if s.as_slice() == CONNECTION_MSG => Ok(()),
        Msg::RConnect(s) => Err(MsgError::NotTraceCmd(format!(
            "RCONNECT says {:?}",
            String::from_utf8_lossy(&s)
        ))),
        Msg::Close => Err(MsgError::Aborted),
        m => Err(unexpected("RCONNECT", &m)),
    }
}

/// Listener on a virtio channel: wait (no timeout) for TCONNECT, answer RCONNECT.
pub fn set_connection(ch: &Channel<'_>) -> Result<()> {
    match v2::recv(ch, Wait::Blocking)? {
        Msg::TConnect => v2::send(ch, &Msg::rconnect()),
        Msg::Close => Err(MsgError::Aborted),
        m => Err(unexpected("TCONNECT", &m)),
    }
}

/// Sends `data` as SENDMETA chunks of at most 8180 bytes (empty data: one empty
/// SENDMETA, as the C original does).
pub fn send_metadata(ch: &Channel<'_>, data: &[u8]) -> Result<()> {
    let mut buf = Vec::with_capacity(MSG_MAX_LEN);
    let mut chunks = data.chunks(MSG_META_MAX_LEN);
    let first = chunks.next().unwrap_or(&[]);
    for chunk in std::iter::once(first).chain(chunks) {
        buf.clear();
        buf.extend_from_slice(&((12 + chunk.len()) as u32).to_be_bytes());
        buf.extend_from_slice(&(v2::Cmd::SendMeta as u32).to_be_bytes());
        buf.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        buf.extend_from_slice(chunk);
        ch.send_all(&buf)?;
    }
    Ok(())
}

/// FINMETA: end of the metadata (or of a string).
pub fn finish_metadata(ch: &Channel<'_>) -> Result<()> {
    v2::send(ch, &Msg::FinMeta)
}

/// CLOSE: end of the session.
pub fn send_close(ch: &Channel<'_>) -> Result<()> {
    v2::send(ch, &Msg::Close)
}

/// Server: copy SENDMETA payloads to `out` until FINMETA, then wait (no timeout)
/// for CLOSE unless `done()` says to stop. Returns the bytes written.
///
/// A signal during the CLOSE wait ends it: `Ok` if `done()` is then true, else
/// [`MsgError::Interrupted`].
pub fn collect_metadata(
    ch: &Channel<'_>,
    out: &mut dyn Write,
    done: &dyn Fn() -> bool,
) -> Result<u64> {
    let mut total = 0u64;
    loop {
        match v2::recv(ch, Wait::Timed)? {
            Msg::SendMeta(d) => {
                out.write_all(&d)?;
                total += d.len() as u64;
            }
            Msg::FinMeta => break,
            m => return Err(unexpected("SENDMETA or FINMETA", &m)),
        }
    }
    if !done() {
        match v2::recv(ch, Wait::Blocking) {
            Ok(Msg::Close) => {}
            Ok(m) => return Err(unexpected("CLOSE", &m)),
            Err(MsgError::Interrupted) if done() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// V1 server: copy the raw metadata stream to `out` until the client closes or
/// `done()` turns true (checked whenever a signal interrupts the wait).
pub fn collect_raw(ch: &Channel<'_>, out: &mut dyn Write, done: &dyn Fn() -> bool) -> Result<u64> {
    let mut total = 0u64;
    let mut buf = [0u8; 8192];
    while !done() {
        match ch.recv_some(&mut buf, Wait::Blocking) {
            Ok(0) => break,
            Ok(n) => {
                out.write_all(&buf[..n])?;
                total += n as u64;
            }
            Err(MsgError::Interrupted) if done() => break,
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// Sends a string (spec §1.6): its bytes as SENDMETA chunks, then FINMETA.
pub fn send_string(ch: &Channel<'_>, s: &[u8]) -> Result<()> {
    if s.len() > MAX_STRING_LEN {
        return Err(MsgError::StringTooLong(MAX_STRING_LEN));
    }
    send_metadata(ch, s)?;
    finish_metadata(ch)
}

/// Receives a string sent with [`send_string`]; at most [`MAX_STRING_LEN`] bytes.
/// A FINMETA without any SENDMETA is refused, as every C caller refuses it.
pub fn recv_string(ch: &Channel<'_>) -> Result<Vec<u8>> {
    recv_string_within(ch, &mut { MAX_STRING_LEN })
}

/// Most bytes a list of strings (CPU paths, agent arguments) may carry in all.
pub const MAX_STRING_LIST_LEN: usize = 1 << 20;

/// [`recv_string`], also charged against a `budget` shared by a list of strings.
fn recv_string_within(ch: &Channel<'_>, budget: &mut usize) -> Result<Vec<u8>> {
    let limit = (*budget).min(MAX_STRING_LEN);
    let mut s = Vec::new();
    let mut chunks = 0usize;
    loop {
        match v2::recv(ch, Wait::Timed)? {
            Msg::SendMeta(d) => {
                if s.len() + d.len() > limit {
                    return Err(MsgError::StringTooLong(limit));
                }
                *budget -= d.len();
                s.extend_from_slice(&d);
                chunks += 1;
            }
            Msg::FinMeta if chunks > 0 => return Ok(s),
            m => return Err(unexpected("SENDMETA", &m)),
        }
    }
}

/// A request on the manager socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagerRequest {
    /// `trace-cmd connect`: `cpus` CPU paths follow (after [`get_connect`]'s ACK).
    Connect {
        cpus: u32,
    },
    GuestList,
    AgentList,
    /// `record -A`: pid 0 means "look up by name" ([`get_domain`] follows).
    Trace {
        pid: u32,
    },
}

/// Listener: read one manager request.
pub fn read_manager(ch: &Channel<'_>) -> Result<ManagerRequest> {
    match v2::recv(ch, Wait::Timed)? {
        Msg::Connect { cpus } => Ok(ManagerRequest::Connect { cpus }),
        Msg::GList => Ok(ManagerRequest::GuestList),
        Msg::AList => Ok(ManagerRequest::AgentList),
        Msg::Trace { pid } => Ok(ManagerRequest::Trace { pid }),
        m => Err(unexpected("CONNECT, GLIST, ALIST or TRACE", &m)),
    }
}

/// What `trace-cmd connect` registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConnect {
    pub domain: Vec<u8>,
    pub agent: Vec<u8>,
    pub cpus: Vec<Vec<u8>>,
}

/// Listener: ACK a CONNECT, then read the domain, agent path and `cpus` CPU paths.
pub fn get_connect(ch: &Channel<'_>, cpus: u32) -> Result<GuestConnect> {
    check_count("CPU path count", i64::from(cpus), MAX_CPUS)?;
    v2::send(ch, &Msg::Ack)?;
    let mut budget = MAX_STRING_LIST_LEN;
    let domain = recv_string_within(ch, &mut budget)?;
    let agent = recv_string_within(ch, &mut budget)?;
    let cpus = (0..cpus)
        .map(|_| recv_string_within(ch, &mut budget))
        .collect::<Result<Vec<_>>>()?;
    Ok(GuestConnect {
        domain,
        agent,
        cpus,
    })
}

/// DOMAIN{cpus}.
pub fn send_cpus(ch: &Channel<'_>, cpus: u32) -> Result<()> {
    v2::send(ch, &Msg::Domain { cpus })
}

/// DOMAIN{cpus} followed by the name as a string.
pub fn send_domain(ch: &Channel<'_>, name: &[u8], cpus: u32) -> Result<()> {
    send_cpus(ch, cpus)?;
    send_string(ch, name)
}

/// Listener: ACK a TRACE{pid 0}, then read the guest name.
pub fn get_domain(ch: &Channel<'_>) -> Result<Vec<u8>> {
    v2::send(ch, &Msg::Ack)?;
    recv_string(ch)
}

/// FINISH: end of a list, or "pid not found".
pub fn send_finish(ch: &Channel<'_>) -> Result<()> {
    v2::send(ch, &Msg::Finish)
}

/// Manager: read DOMAIN{cpus}+name entries until FINISH; calls `entry` for each and
/// returns how many there were.
pub fn list_domains(ch: &Channel<'_>, entry: &mut dyn FnMut(&[u8], u32)) -> Result<usize> {
    let mut n = 0;
    loop {
        match v2::recv(ch, Wait::Timed)? {
            Msg::Finish => return Ok(n),
            Msg::Domain { cpus } => {
                let name = recv_string(ch)?;
                entry(&name, cpus);
                n += 1;
            }
            m => return Err(unexpected("DOMAIN or FINISH", &m)),
        }
    }
}

/// Manager: GLIST, then [`list_domains`].
pub fn list_guests(ch: &Channel<'_>, entry: &mut dyn FnMut(&[u8], u32)) -> Result<usize> {
    v2::send(ch, &Msg::GList)?;
    list_domains(ch, entry)
}

/// Manager: ALIST, then [`list_domains`].
pub fn list_agents(ch: &Channel<'_>, entry: &mut dyn FnMut(&[u8], u32)) -> Result<usize> {
    v2::send(ch, &Msg::AList)?;
    list_domains(ch, entry)
}

/// `trace-cmd connect`: CONNECT{n}, wait for ACK, then the domain, agent path and
/// the n CPU paths as strings. No final answer comes (spec §3.4).
pub fn connect_guest(
    ch: &Channel<'_>,
    domain: &[u8],
    agent: &[u8],
    cpu_paths: &[&[u8]],
) -> Result<()> {
    let n = check_count("CPU path count", cpu_paths.len() as i64, MAX_CPUS)?;
    v2::send(ch, &Msg::Connect { cpus: n })?;
    match v2::recv(ch, Wait::Timed)? {
        Msg::Ack => {}
        m => return Err(unexpected("ACK", &m)),
    }
    send_string(ch, domain)?;
    send_string(ch, agent)?;
    for p in cpu_paths {
        send_string(ch, p)?;
    }
    Ok(())
}

/// `record -A`: TRACE{pid}; the listener answers DOMAIN{cpus} directly, or ACK and
/// then (after the guest name) DOMAIN{cpus}. Returns the guest's CPU count.
pub fn connect_agent(ch: &Channel<'_>, guest: &[u8], pid: u32) -> Result<u32> {
    v2::send(ch, &Msg::Trace { pid })?;
    match v2::recv(ch, Wait::Timed)? {
        Msg::Domain { cpus } => return Ok(cpus),
        Msg::Ack => {}
        _ if pid != 0 => return Err(MsgError::NoSuchAgent),
        m => return Err(unexpected("DOMAIN or ACK", &m)),
    }
    send_string(ch, guest)?;
    match v2::recv(ch, Wait::Timed)? {
        Msg::Domain { cpus } => Ok(cpus),
        _ => Err(MsgError::NoSuchAgent),
    }
}

/// Listener: pass `fd` to the manager: CONNECT{cpus}, wait (no timeout) for ACK,
/// then the SCM_RIGHTS message. Returns the data bytes sent (2).
pub fn transfer_fd(ch: &Channel<'_>, fd: BorrowedFd<'_>, cpus: u32) -> Result<usize> {
    v2::send(ch, &Msg::Connect { cpus })?;
    match v2::recv(ch, Wait::Blocking)? {
        Msg::Ack => transport::send_fd(ch.fd(), fd),
        m => Err(unexpected("ACK", &m)),
    }
}

/// Manager: wait (no timeout) for CONNECT{n}, ACK it, receive the descriptor.
pub fn receive_fd(ch: &Channel<'_>) -> Result<(OwnedFd, u32)> {
    let n = match v2::recv(ch, Wait::Blocking)? {
        Msg::Connect { cpus } => cpus,
        m => return Err(unexpected("CONNECT", &m)),
    };
    v2::send(ch, &Msg::Ack)?;
    Ok((transport::recv_fd(ch, Wait::Blocking)?, n))
}

/// Manager after [`connect_agent`]: the agent's control channel, then one FIFO per
/// guest CPU (as many as the first CONNECT announced).
pub fn get_fds(ch: &Channel<'_>) -> Result<(OwnedFd, Vec<OwnedFd>)> {
    let (main, n) = receive_fd(ch)?;
    let mut fds = Vec::with_capacity(n as usize);
    for _ in 0..n {
        fds.push(receive_fd(ch)?.0);
    }
    Ok((main, fds))
}

/// Agent: CINIT{cpus} (native byte order), wait for CRINIT, then wait (no timeout)
/// for a manager's CONNECT{argc}. Returns argc.
pub fn agent_connect(ch: &Channel<'_>, cpus: u32) -> Result<u32> {
    v2::send(ch, &Msg::CInit { cpus })?;
    match v2::recv(ch, Wait::Timed)? {
        Msg::CRInit => {}
        m => return Err(unexpected("CRINIT", &m)),
    }
    match v2::recv(ch, Wait::Blocking)? {
        Msg::Connect { cpus: argc } => Ok(argc),
        m => Err(unexpected("CONNECT", &m)),
    }
}

/// Agent: the `argc` argument strings.
pub fn agent_parameters(ch: &Channel<'_>, argc: u32) -> Result<Vec<Vec<u8>>> {
    check_count("argument count", i64::from(argc), MAX_CPUS)?;
    let mut budget = MAX_STRING_LIST_LEN;
    (0..argc)
        .map(|_| recv_string_within(ch, &mut budget))
        .collect()
}
