//! The manager side of the listener's manager socket: `connect` (spec §3.4),
//! `list -G`/`-A` (§3.8) and `record -A GUEST` (§3.6, completed): get the agent's
//! control channel and the per-CPU FIFOs from the listener, send the arguments,
//! answer the agent's TINIT, collect its metadata, and stop it at the end.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use super::{Result, VirtError, VirtPaths};
use crate::msg::session;
use crate::msg::v2::{self, Msg};
use crate::msg::{Channel, MsgError, Wait};
use crate::transport;

/// Most metadata bytes accepted from a guest (kallsyms of a big kernel is ~20 MiB).
pub const MAX_GUEST_METADATA: usize = 256 << 20;

/// How long `record -A` waits for a connected but busy agent.
pub const AGENT_WAIT: Duration = Duration::from_secs(15);

/// What the listener lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Guests registered by `connect` (GLIST).
    Guests,
    /// Agents connected to the listener (ALIST).
    Agents,
}

/// The listener's guests or agents: `(name, CPUs)` in the order it sent them.
///
/// The virt-server C listener may close without FINISH when it has nothing to
/// list (spec §5.2 item 22: `ret` is uninitialised then); that counts as an
/// empty list. A close after some entries is an error.
pub fn list(paths: &VirtPaths, what: Listing) -> Result<Vec<(String, u32)>> {
    let s = transport::connect_unix(&paths.manager_socket())?;
    let ch = Channel::new(s.as_fd());
    v2::send(
        &ch,
        &match what {
            Listing::Guests => Msg::GList,
            Listing::Agents => Msg::AList,
        },
    )?;
    let mut out = Vec::new();
    loop {
        match v2::recv(&ch, Wait::Timed) {
            Ok(Msg::Finish) => return Ok(out),
            Err(MsgError::Closed) if out.is_empty() => return Ok(out),
            Ok(Msg::Domain { cpus }) => {
                let name = session::recv_string(&ch)?;
                out.push((String::from_utf8_lossy(&name).into_owned(), cpus));
            }
            Ok(m) => {
                return Err(MsgError::Unexpected {
                    expected: "DOMAIN or FINISH",
                    got: m.cmd().name(),
                }
                .into())
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The CPU count under which the listener lists `name`, if it does.
fn listed(paths: &VirtPaths, what: Listing, name: &str) -> Result<Option<u32>> {
    Ok(list(paths, what)?
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, c)| c))
}

/// Whether the listener lists an agent named `name`.
fn agent_listed(paths: &VirtPaths, name: &str) -> Result<bool> {
    Ok(listed(paths, Listing::Agents, name)?.is_some())
}

/// What came back on a `connect` socket after the strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectAnswer {
    Ack,
    Finish,
    /// The listener closed the connection.
    Closed,
    /// Nothing yet, and the connection is still open.
    Nothing,
}

/// The answer on `ch`, waiting at most `wait` for it to start (`None`: the
/// channel's own timeout).
fn connect_answer(ch: &Channel<'_>, wait: Option<Duration>) -> Result<ConnectAnswer> {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    if let Some(wait) = wait {
        let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
        let mut p = [PollFd::new(ch.fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut p, PollTimeout::from(ms)) {
            Ok(0) => return Ok(ConnectAnswer::Nothing),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(MsgError::from(e).into()),
        }
    }
    match v2::recv(ch, Wait::Timed) {
        Ok(Msg::Ack) => Ok(ConnectAnswer::Ack),
        Ok(Msg::Finish) => Ok(ConnectAnswer::Finish),
        Err(MsgError::Closed) => Ok(ConnectAnswer::Closed),
        Err(MsgError::TimedOut(_)) if wait.is_none() => Ok(ConnectAnswer::Nothing),
        Ok(m) => Err(MsgError::Unexpected {
            expected: "ACK, FINISH or nothing",
            got: m.cmd().name(),
        }
        .into()),
        Err(e) => Err(e.into()),
    }
}

/// `trace-cmd connect`: registers guest `domain` (its agent FIFO pair and CPU
/// FIFO pairs, as base paths) with the listener, and finds out whether it did.
///
/// Our listener answers ACK or FINISH. The virt-server C listener answers
/// nothing: when it registers the guest, its forked bridge inherits the socket
/// and keeps it open; when it refuses (a duplicate, missing FIFOs) it closes it.
/// So the guest list (GLIST) before and after decides. The C listener serves
/// manager connections one after the other, so by the time it answers the
/// GLIST it has finished with the registration.
pub fn connect(paths: &VirtPaths, domain: &str, agent: &[u8], cpus: &[&[u8]]) -> Result<()> {
    let before = listed(paths, Listing::Guests, domain)?;
    let sock = transport::connect_unix(&paths.manager_socket())?;
    let ch = Channel::new(sock.as_fd());
    session::connect_guest(&ch, domain.as_bytes(), agent, cpus)?;
    let mut answer = connect_answer(&ch, Some(Duration::from_millis(100)))?;
    let mut after = None;
    if matches!(answer, ConnectAnswer::Nothing | ConnectAnswer::Closed) {
        after = listed(paths, Listing::Guests, domain)?;
        if answer == ConnectAnswer::Nothing {
            answer = connect_answer(&ch, Some(Duration::ZERO))?;
        }
        // Still open and not newly listed: only a slow listener of ours, which
        // always answers, gets here.
        if answer == ConnectAnswer::Nothing && !(before.is_none() && after.is_some()) {
            answer = connect_answer(&ch, None)?;
        }
    }
    let refused = || match before {
        Some(n) => Err(VirtError::AlreadyRegistered {
            guest: domain.to_string(),
            cpus: n,
        }),
        None => Err(VirtError::Refused(domain.to_string())),
    };
    match answer {
        ConnectAnswer::Ack => Ok(()),
        ConnectAnswer::Finish => refused(),
        _ if before.is_none() && after.is_some() => {
            if answer == ConnectAnswer::Closed {
                log::warn!("the listener lists guest {domain:?} but closed the connection: its bridge to the guest may have ended (see the listener's log)");
            } else {
                log::debug!("the listener lists guest {domain:?} and answers nothing (a virt-server C listener)");
            }
            Ok(())
        }
        ConnectAnswer::Closed => refused(),
        ConnectAnswer::Nothing if before.is_some() => refused(),
        ConnectAnswer::Nothing => Err(VirtError::NoAnswer(domain.to_string())),
    }
}

/// A guest being recorded.
#[derive(Debug)]
pub struct GuestSession {
    pub name: String,
    /// The listener holds the agent for us until FINISH or this socket closes.
    manager: OwnedFd,
    agent: OwnedFd,
    /// The per-CPU FIFO read ends (take them for the recorders).
    pub cpu_fifos: Vec<OwnedFd>,
    /// CPUs the agent records (its TINIT).
    pub cpus: u32,
    pub page_size: u32,
    /// The guest's v6 metadata (magic … saved cmdlines).
    pub metadata: Vec<u8>,
}

/// Splits `GUEST[:pid]`.
pub fn parse_guest_spec(spec: &str) -> Result<(String, u32)> {
    let (name, pid) = match spec.rsplit_once(':') {
        Some((n, p)) => (
            n,
            p.parse::<u32>().map_err(|_| {
                VirtError::Invalid(format!("{spec:?}: the part after ':' must be a pid"))
            })?,
        ),
        None => (spec, 0),
    };
    super::validate_domain(name)?;
    Ok((name.to_string(), pid))
}

impl GuestSession {
    /// Connects through the listener to the agent of `name` and starts its
    /// recording with `argv` (the record options meant for the guest).
    pub fn start(paths: &VirtPaths, name: &str, pid: u32, argv: &[String]) -> Result<GuestSession> {
        // With `GUEST:pid` the listener picks the guest whose QEMU process is
        // `pid`; `name` is still the buffer's name in the file.
        // A manager that just ended frees its agent a moment later: while the
        // agent is connected (ALIST) but busy, retry for a while.
        let deadline = std::time::Instant::now() + AGENT_WAIT;
        let (mgr, cpus_announced) = loop {
            let mgr = transport::connect_unix(&paths.manager_socket())?;
            let ch = Channel::new(mgr.as_fd());
            match session::connect_agent(&ch, name.as_bytes(), pid) {
                Ok(c) => break (mgr, c),
                Err(MsgError::NoSuchAgent) | Err(MsgError::Closed) => {
                    if pid != 0 {
                        // The listener found no guest in that process.
                        return Err(VirtError::NoAgent(format!("{name}:{pid}")));
                    }
                    if std::time::Instant::now() >= deadline || !agent_listed(paths, name)? {
                        return Err(VirtError::NoAgent(name.to_string()));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let ch = Channel::new(mgr.as_fd());
        let (agent, cpu_fifos) = session::get_fds(&ch)?;
        log::info!(
            "guest {name}: agent with {cpus_announced} CPUs, {} CPU FIFOs",
            cpu_fifos.len()
        );
        let ach = Channel::new(agent.as_fd());
        v2::send(
            &ach,
            &Msg::Connect {
                cpus: argv.len() as u32,
            },
        )?;
        for a in argv {
            session::send_string(&ach, a.as_bytes())?;
        }
        // The agent answers TINIT, or a string with the reason it refuses. A stray
        // ACK from an earlier session's stop may come first.
        let (cpus, page_size) = loop {
            match v2::recv(&ach, Wait::Timed)? {
                Msg::TInit {
                    cpus, page_size, ..
                } => break (cpus, page_size),
                Msg::Ack => continue,
                Msg::SendMeta(first) => {
                    let mut reason = first;
                    loop {
                        match v2::recv(&ach, Wait::Timed)? {
                            Msg::SendMeta(d) if reason.len() < 4096 => reason.extend(d),
                            Msg::SendMeta(_) => {}
                            _ => break,
                        }
                    }
                    // The agent is idle again: the listener may free it now.
                    let _ = v2::send(&Channel::new(mgr.as_fd()), &Msg::Finish);
                    return Err(VirtError::AgentRefused {
                        guest: name.to_string(),
                        reason: String::from_utf8_lossy(&reason).into_owned(),
                    });
                }
                m => {
                    return Err(MsgError::Unexpected {
                        expected: "TINIT",
                        got: m.cmd().name(),
                    }
                    .into())
                }
            }
        };
        if cpus as usize > cpu_fifos.len() {
            log::warn!(
                "guest {name} records {cpus} CPUs but only {} FIFOs were registered; the others are lost",
                cpu_fifos.len()
            );
        }
        session::send_port_array(&ach, cpus, None)?;
        let mut metadata = Vec::new();
        loop {
            match v2::recv(&ach, Wait::Timed)? {
                Msg::SendMeta(d) => {
                    if metadata.len() + d.len() > MAX_GUEST_METADATA {
                        return Err(VirtError::BadMetadata(format!(
                            "more than {MAX_GUEST_METADATA} bytes"
                        )));
                    }
                    metadata.extend_from_slice(&d);
                }
                Msg::FinMeta => break,
                m => {
                    return Err(MsgError::Unexpected {
                        expected: "SENDMETA or FINMETA",
                        got: m.cmd().name(),
                    }
                    .into())
                }
            }
        }
        Ok(GuestSession {
            name: name.to_string(),
            manager: mgr,
            agent,
            cpu_fifos,
            cpus,
            page_size,
            metadata,
        })
    }

    /// Asks the agent to stop (CLOSE); [`GuestSession::wait_stopped`] waits for
    /// its confirmation.
    pub fn request_stop(&self) -> Result<()> {
        v2::send(&Channel::new(self.agent.as_fd()), &Msg::Close)?;
        Ok(())
    }

    /// Waits up to `wait` for the agent's ACK, which it sends once it has flushed
    /// every CPU; then tells the listener (FINISH) that the agent is free.
    pub fn wait_stopped(&self, wait: Duration) -> Result<()> {
        let ch = Channel::new(self.agent.as_fd()).with_timeout(Some(wait));
        loop {
            match v2::recv(&ch, Wait::Timed) {
                Ok(Msg::Ack) => {
                    let _ = v2::send(&Channel::new(self.manager.as_fd()), &Msg::Finish);
                    return Ok(());
                }
                Ok(m) => log::debug!(
                    "guest {}: ignoring {} after CLOSE",
                    self.name,
                    m.cmd().name()
                ),
                Err(MsgError::Interrupted) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// [`GuestSession::request_stop`], then [`GuestSession::wait_stopped`].
    pub fn stop(&self, wait: Duration) -> Result<()> {
        self.request_stop()?;
        self.wait_stopped(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_spec() {
        assert_eq!(parse_guest_spec("vm1").unwrap(), ("vm1".into(), 0));
        assert_eq!(parse_guest_spec("vm1:42").unwrap(), ("vm1".into(), 42));
        assert!(parse_guest_spec("vm1:x").is_err());
        assert!(parse_guest_spec("../x").is_err());
        assert!(parse_guest_spec("").is_err());
    }
}
