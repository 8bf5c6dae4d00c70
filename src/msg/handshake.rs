//! The text handshakes of both sides (spec §3.1, §3.2, §6.3).
//!
//! Client: [`client_negotiate`] offers V2 and reports [`Negotiated::V1Fallback`] when
//! the server closes on the offer (an old V1 listener); the caller then reconnects
//! and runs [`client_v1`]. Server: [`server_negotiate`] answers V2 offers, steers a
//! `-1V3` (or any other `-1V<x>`) client to V2 by answering "V2\0" and reading
//! another CPU string, and parses a V1 client's announcement.
//!
//! Every read here runs under the channel's timeout, counted over the whole
//! exchange; give the channel `with_timeout(None)` for the C original's unbounded
//! (but, here, signal-interruptible) wait. Fixed-size fields are read completely
//! even when the peer splits them, and strings byte by byte up to their NUL.

use super::channel::{Channel, Wait};
use super::v1::{self, ChannelSource, ClientInit, TextSource};
use super::{MsgError, Result};

/// The client's V2 offer, NUL included: `2d 31 56 32 00`.
pub const V2_CPU: &[u8; 5] = b"-1V2\0";
/// The client's V2 magic: `36 37 37 37 36 38 00 00`.
pub const V2_MAGIC: &[u8; 8] = b"677768\0\0";
/// The server's answer to a versioned offer.
pub const V2_REPLY: &[u8; 3] = b"V2\0";
/// The server's final word.
pub const OK: &[u8; 2] = b"OK";
/// Longest version string accepted from a server.
const MAX_REPLY: usize = 64;

/// Outcome of the client side of the V2 negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiated {
    /// The server speaks V2: go on with TINIT.
    V2,
    /// The server closed on the offer (a V1 listener): reconnect and use V1.
    V1Fallback,
}

fn expect_greeting(ch: &Channel<'_>) -> Result<()> {
    let mut g = [0u8; 8];
    match ch.recv_exact(&mut g, Wait::Timed) {
        Ok(()) if &g == v1::GREETING => Ok(()),
        Ok(()) => Err(MsgError::NotTraceCmd(format!(
            "greeting {:?} instead of \"tracecmd\"",
            String::from_utf8_lossy(&g)
        ))),
        Err(MsgError::Closed) => Err(MsgError::NotTraceCmd(
            "closed before sending \"tracecmd\"".into(),
        )),
        Err(e) => Err(e),
    }
}

/// Client side: read "tracecmd", offer V2 and finish the negotiation.
pub fn client_negotiate(ch: &Channel<'_>) -> Result<Negotiated> {
    expect_greeting(ch)?;
    ch.send_all(V2_CPU)?;
    let mut src = ChannelSource::new(ch);
    let reply = match src.string("version reply", MAX_REPLY) {
        Ok(r) => r,
        // EOF before any answer: a V1 server rejected cpus = -1 and closed.
        Err(MsgError::Closed) => return Ok(Negotiated::V1Fallback),
        Err(e) => return Err(e),
    };
    if reply.is_empty() {
        return Ok(Negotiated::V1Fallback);
    }
    if reply != b"V2" {
        return Err(MsgError::ProtocolMismatch(
            String::from_utf8_lossy(&reply).into_owned(),
        ));
    }
    ch.send_all(V2_MAGIC)?;
    let mut ok = [0u8; 2];
    ch.recv_exact(&mut ok, Wait::Timed)?;
    if &ok != OK {
        return Err(MsgError::NotTraceCmd(format!(
            "answered the V2 magic with {:?} instead of \"OK\"",
            String::from_utf8_lossy(&ok)
        )));
    }
    Ok(Negotiated::V2)
}

/// Client side of V1 on a fresh connection: read "tracecmd", announce, read ports.
pub fn client_v1(ch: &Channel<'_>, init: &ClientInit) -> Result<Vec<u32>> {
    expect_greeting(ch)?;
    ch.send_all(&init.encode())?;
    let mut src = ChannelSource::new(ch);
    v1::read_ports(&mut src, init.cpus as usize)
}

/// What a client asked for, as seen by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerHello {
    /// V2 negotiated ("OK" sent): TINIT follows.
    V2,
    /// A V1 client; answer with [`server_send_ports_v1`].
    V1(ClientInit),
}

/// Server side: send "tracecmd" and negotiate with whatever client connected.
pub fn server_negotiate(ch: &Channel<'_>) -> Result<ServerHello> {
    ch.send_all(v1::GREETING)?;
    server_negotiate_after_greeting(ch)
}

fn server_negotiate_after_greeting(ch: &Channel<'_>) -> Result<ServerHello> {
    let mut src = ChannelSource::new(ch);
    let mut last_version: Option<Vec<u8>> = None;
    loop {
        let cpus = src.string("cpu string", v1::MAX_FIELD_LEN)?;
        if let Some(version) = cpus.strip_prefix(b"-1V") {
            if version == b"2" {
                break;
            }
            if last_version.as_deref() == Some(version) {
                return Err(MsgError::ProtocolMismatch(format!(
                    "V{} (offered twice)",
                    String::from_utf8_lossy(version)
                )));
            }
            log::info!(
                "client offers protocol V{}; answering V2",
                String::from_utf8_lossy(version)
            );
            last_version = Some(version.to_vec());
            ch.send_all(V2_REPLY)?;
            continue;
        }
        let n = v1::parse_decimal("cpu count", &cpus)?;
        let n = super::check_count("cpu count", n, super::MAX_CPUS)?;
        return Ok(ServerHello::V1(v1::read_client_init_after_cpus(
            &mut src, n,
        )?));
    }
    ch.send_all(V2_REPLY)?;
    let mut magic = [0u8; 8];
    ch.recv_exact(&mut magic, Wait::Timed)?;
    if &magic != V2_MAGIC {
        return Err(MsgError::BadText(format!(
            "V2 magic {magic:02x?} is not {V2_MAGIC:02x?}"
        )));
    }
    ch.send_all(OK)?;
    Ok(ServerHello::V2)
}

/// Server side of V1: the comma-separated port list.
pub fn server_send_ports_v1(ch: &Channel<'_>, ports: &[u32]) -> Result<()> {
    ch.send_all(&v1::encode_ports(ports))
}

/// The client's V3 offer, NUL included: `2d 31 56 33 00`.
pub const V3_CPU: &[u8; 5] = b"-1V3\0";
/// The client's V3 magic: `37 36 36 36 37 39 00 00` (spec §6.2, doc §6.3).
pub const V3_MAGIC: &[u8; 8] = b"766679\0\0";
/// The server's answer to a V3 offer (exactly these three bytes: doc §8).
pub const V3_REPLY: &[u8; 3] = b"V3\0";
/// Most version offers a client may make on one connection.
const MAX_OFFERS: usize = 8;

/// What a client of any generation asked for, as seen by a listener that speaks
/// V1, V2 and V3 ([`server_negotiate_any`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyHello {
    /// A V1 client's announcement; answer with [`server_send_ports_v1`].
    V1(ClientInit),
    /// V2 negotiated ("OK" sent): a V2 TINIT follows.
    V2,
    /// V3 negotiated ("OK" sent): a V3 TINIT follows.
    V3,
}

/// Listener side for every client generation (spec §3.1, §3.2, doc §6.3): sends
/// "tracecmd", then the client's first string decides. A CPU count is a V1
/// client; "-1V2" gets "V2\0" and the V2 magic check; "-1V3" gets "V3\0" and the
/// V3 magic check. Any other "-1V<x>" is answered "V3\0" and another string is
/// read, as 3.x listeners do; the same offer twice ends the negotiation.
/// The channel's timeout covers the whole exchange.
pub fn server_negotiate_any(ch: &Channel<'_>) -> Result<AnyHello> {
    ch.send_all(v1::GREETING)?;
    let mut src = ChannelSource::new(ch);
    let mut offered: Vec<Vec<u8>> = Vec::new();
    loop {
        let cpus = src.string("cpu string", v1::MAX_FIELD_LEN)?;
        let Some(version) = cpus.strip_prefix(b"-1V") else {
            let n = v1::parse_decimal("cpu count", &cpus)?;
            let n = super::check_count("cpu count", n, super::MAX_CPUS)?;
            return Ok(AnyHello::V1(v1::read_client_init_after_cpus(&mut src, n)?));
        };
        let (reply, magic, hello): (&[u8], &[u8; 8], AnyHello) = match version {
            b"2" => (V2_REPLY, V2_MAGIC, AnyHello::V2),
            b"3" => (V3_REPLY, V3_MAGIC, AnyHello::V3),
            other => {
                let shown = String::from_utf8_lossy(other).into_owned();
                if offered.iter().any(|o| o == other) || offered.len() == MAX_OFFERS {
                    return Err(MsgError::ProtocolMismatch(format!(
                        "V{shown} (offered again after \"V3\" was answered)"
                    )));
                }
                log::info!("client offers protocol V{shown}; answering V3");
                offered.push(other.to_vec());
                ch.send_all(V3_REPLY)?;
                continue;
            }
        };
        ch.send_all(reply)?;
        let mut got = [0u8; 8];
        for b in got.iter_mut() {
            *b = src.byte()?;
        }
        if &got != magic {
            return Err(MsgError::BadText(format!(
                "protocol magic {got:02x?} is not {magic:02x?}"
            )));
        }
        ch.send_all(OK)?;
        return Ok(hello);
    }
}
