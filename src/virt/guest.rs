//! The manager side of `record -A GUEST` (spec §3.6, completed): get the agent's
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

/// Whether the listener lists an agent named `name`.
fn agent_listed(paths: &VirtPaths, name: &str) -> Result<bool> {
    let s = transport::connect_unix(&paths.manager_socket())?;
    let mut found = false;
    session::list_agents(&Channel::new(s.as_fd()), &mut |n, _| {
        found |= n == name.as_bytes()
    })?;
    Ok(found)
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
