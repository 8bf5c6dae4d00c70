//! The manager side of the listener's manager socket: `connect` (spec §3.4) and
//! `list -G`/`-A` (§3.8). `record -A GUEST` (§3.6) lives in the recording engine
//! ([`crate::record::guest`]).

use std::os::fd::AsFd;
use std::time::Duration;

use super::{Result, VirtError, VirtPaths};
use crate::msg::session;
use crate::msg::v2::{self, Msg};
use crate::msg::{Channel, MsgError, Wait};
use crate::transport;

/// Moved to the recording engine; these names stay for existing callers.
pub use crate::record::guest::{
    parse_guest_spec, GuestLink, GuestSession, AGENT_WAIT, MAX_GUEST_METADATA,
};

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
