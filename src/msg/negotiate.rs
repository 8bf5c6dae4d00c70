//! Protocol negotiation, both sides, every generation (spec §3.1, §3.2, §1.7; doc
//! §6.3, §7): the one place that decides which protocol a connection speaks and how
//! a record client and a listener agree on CPUs and data ports. The network client
//! (`crate::netrecord`), the listener (`crate::listen`) and the C ABI
//! (`capi/msg.rs`) all call it.
//!
//! 1. **Text handshake.** The listener greets with "tracecmd". A client offers a
//!    version ("-1V3\0" or "-1V2\0"), the listener answers the version it will speak
//!    ("V3\0" or "V2\0"), the client sends that version's magic and the listener
//!    says "OK". A V1-only listener closes on a versioned offer; a V1 client sends
//!    its CPU count instead of an offer. Client: [`client_offer`] (and
//!    [`client_negotiate`], V2 only), [`client_v1`]. Listener:
//!    [`server_negotiate_any`] (V1, V2, V3), [`server_negotiate`] (V1, V2).
//! 2. **Announcement.** The V1 text, or TINIT answered by RINIT in the V2 or the V3
//!    framing. Client: [`client_init`] for any generation, or [`send_init`] (V2,
//!    also the virtio mode of the C ABI) and [`v3_send_init`]. Listener:
//!    [`initial_setting`] (V2: TINIT or a guest agent's CINIT),
//!    [`v3_initial_setting`], then [`send_ports`] for any generation or
//!    [`send_port_array`] (V2, with the virtio mode's empty list).
//!
//! Every read of the text handshake runs under the channel's timeout, counted over
//! the whole exchange; give the channel `with_timeout(None)` for the C original's
//! unbounded (but, here, signal-interruptible) wait. Fixed-size fields are read
//! completely even when the peer splits them, and strings byte by byte up to their
//! NUL.

use std::fmt;

use super::channel::{Channel, Wait};
use super::session::unexpected;
use super::v1::{self, ChannelSource, ClientInit, TextSource};
use super::v2::{self, Msg};
use super::v3;
use super::{MsgError, Result};

/// A protocol generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// The pre-2014 text protocol (wire spec §3.1).
    V1,
    /// Released V2 / virt-server branch (wire spec §3.2).
    V2,
    /// trace-cmd 3.x (shared doc §6).
    V3,
}

impl Proto {
    /// From the number given to `--proto`.
    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            1 => Some(Proto::V1),
            2 => Some(Proto::V2),
            3 => Some(Proto::V3),
            _ => None,
        }
    }

    /// The generation's number (1, 2 or 3).
    pub fn number(self) -> u8 {
        match self {
            Proto::V1 => 1,
            Proto::V2 => 2,
            Proto::V3 => 3,
        }
    }

    /// The handshake strings of a versioned protocol; V1 has none.
    fn text(self) -> Option<&'static VersionText> {
        match self {
            Proto::V1 => None,
            Proto::V2 => Some(&V2_TEXT),
            Proto::V3 => Some(&V3_TEXT),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "V{}", self.number())
    }
}

/// The client's V2 offer, NUL included: `2d 31 56 32 00`.
pub const V2_CPU: &[u8; 5] = b"-1V2\0";
/// The client's V2 magic: `36 37 37 37 36 38 00 00`.
pub const V2_MAGIC: &[u8; 8] = b"677768\0\0";
/// The server's answer to a V2 offer.
pub const V2_REPLY: &[u8; 3] = b"V2\0";
/// The client's V3 offer, NUL included: `2d 31 56 33 00`.
pub const V3_CPU: &[u8; 5] = b"-1V3\0";
/// The client's V3 magic: `37 36 36 36 37 39 00 00` (spec §6.2, doc §6.3).
pub const V3_MAGIC: &[u8; 8] = b"766679\0\0";
/// The server's answer to a V3 offer (exactly these three bytes: doc §8).
pub const V3_REPLY: &[u8; 3] = b"V3\0";
/// The server's final word.
pub const OK: &[u8; 2] = b"OK";
/// V3 TINIT option: per-CPU data over TCP instead of UDP.
pub const V3_OPT_TCP: &str = "tcp";
/// V3 TINIT option: per-CPU data over vsock.
pub const V3_OPT_VSOCK: &str = "vsock";
/// Longest version answer read from a listener.
const MAX_REPLY: usize = 64;
/// Most unknown version offers a client may make on one connection.
const MAX_OFFERS: usize = 8;

/// What both sides say for one versioned protocol.
struct VersionText {
    proto: Proto,
    offer: &'static [u8; 5],
    reply: &'static [u8; 3],
    magic: &'static [u8; 8],
}

impl VersionText {
    /// The answer without its NUL, as the client reads it.
    fn reply_str(&self) -> &'static [u8] {
        &self.reply[..2]
    }
}

const V2_TEXT: VersionText = VersionText {
    proto: Proto::V2,
    offer: V2_CPU,
    reply: V2_REPLY,
    magic: V2_MAGIC,
};
const V3_TEXT: VersionText = VersionText {
    proto: Proto::V3,
    offer: V3_CPU,
    reply: V3_REPLY,
    magic: V3_MAGIC,
};

fn versioned(p: Proto) -> Result<&'static VersionText> {
    p.text().ok_or(MsgError::InvalidArgument(
        "V1 has no version offer; a V1 client announces itself with client_v1",
    ))
}

// ---------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------

/// Outcome of the client's versioned offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiated {
    /// V3 agreed ("OK" received): a V3 TINIT follows.
    V3,
    /// V2 agreed ("OK" received): a V2 TINIT follows.
    V2,
    /// The server closed on the offer (a V1 listener): reconnect and use V1.
    V1Fallback,
}

impl Negotiated {
    /// The protocol the connection (or, for V1, a new connection) speaks.
    pub fn proto(self) -> Proto {
        match self {
            Negotiated::V3 => Proto::V3,
            Negotiated::V2 => Proto::V2,
            Negotiated::V1Fallback => Proto::V1,
        }
    }
}

/// Reads the 8-byte "tracecmd" greeting every listener sends first.
fn read_greeting(ch: &Channel<'_>) -> Result<()> {
    let mut g = [0u8; 8];
    match ch.recv_exact(&mut g, Wait::Timed) {
        Ok(()) if &g == v1::GREETING => Ok(()),
        Ok(()) => Err(MsgError::NotTraceCmd(format!(
            "it greeted with {:?}, not \"tracecmd\"",
            String::from_utf8_lossy(&g)
        ))),
        Err(MsgError::Closed) => Err(MsgError::NotTraceCmd(
            "it closed the connection without the \"tracecmd\" greeting".into(),
        )),
        Err(e) => Err(e),
    }
}

/// The version string the listener answers with; `None` when it closed instead
/// (or sent an empty string, which the C client treats the same way).
fn version_reply(ch: &Channel<'_>) -> Result<Option<Vec<u8>>> {
    let mut src = ChannelSource::new(ch);
    match src.string("protocol version answer", MAX_REPLY) {
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(MsgError::Closed) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The error for a version answer this client cannot follow: the version the
/// listener named, or what it sent instead of one.
fn mismatch(reply: &[u8]) -> MsgError {
    let text = String::from_utf8_lossy(reply);
    MsgError::ProtocolMismatch(if reply.starts_with(b"V") {
        text.into_owned()
    } else {
        format!("unknown (it answered {text:?})")
    })
}

/// Sends the magic of `v` and requires the two bytes "OK" back.
fn confirm(ch: &Channel<'_>, v: &VersionText) -> Result<()> {
    ch.send_all(v.magic)?;
    let mut ok = [0u8; 2];
    ch.recv_exact(&mut ok, Wait::Timed)?;
    if &ok != OK {
        return Err(MsgError::NotTraceCmd(format!(
            "it answered the {} magic with {:?} instead of \"OK\"",
            v.proto,
            String::from_utf8_lossy(&ok)
        )));
    }
    Ok(())
}

/// Client: reads the greeting and offers `highest` (V2 or V3). With `downgrade`, a
/// "V2" answer to the V3 offer is followed on the same connection: a V2-era
/// listener then reads another CPU string, so the client offers V2 there. A
/// listener that closes instead of answering is V1-only:
/// [`Negotiated::V1Fallback`], reconnect and run [`client_v1`].
pub fn client_offer(ch: &Channel<'_>, highest: Proto, downgrade: bool) -> Result<Negotiated> {
    let mut v = versioned(highest)?;
    read_greeting(ch)?;
    loop {
        ch.send_all(v.offer)?;
        let Some(reply) = version_reply(ch)? else {
            return Ok(Negotiated::V1Fallback);
        };
        if reply == v.reply_str() {
            confirm(ch, v)?;
            return Ok(match v.proto {
                Proto::V3 => Negotiated::V3,
                _ => Negotiated::V2,
            });
        }
        if downgrade && v.proto == Proto::V3 && reply == V2_TEXT.reply_str() {
            log::info!("the listener speaks V2; continuing with V2");
            v = &V2_TEXT;
            continue;
        }
        return Err(mismatch(&reply));
    }
}

/// Client: reads the greeting and offers V2 only ([`client_offer`] with V2).
pub fn client_negotiate(ch: &Channel<'_>) -> Result<Negotiated> {
    client_offer(ch, Proto::V2, false)
}

/// Client side of V1 on a fresh connection: read "tracecmd", announce, read ports.
pub fn client_v1(ch: &Channel<'_>, init: &ClientInit) -> Result<Vec<u32>> {
    read_greeting(ch)?;
    ch.send_all(&init.encode())?;
    let mut src = ChannelSource::new(ch);
    v1::read_ports(&mut src, init.cpus as usize)
}

/// Client: announces `init` in `proto` and returns the listener's data ports, one
/// per CPU it accepted. V1 runs on a fresh connection (greeting included); V2 and
/// V3 follow the handshake of [`client_offer`].
pub fn client_init(ch: &Channel<'_>, proto: Proto, init: &ClientInit) -> Result<Vec<u32>> {
    match proto {
        Proto::V1 => client_v1(ch, init),
        Proto::V2 => Ok(send_init(ch, init.cpus, init.page_size, init.use_tcp)?.ports),
        Proto::V3 => v3_send_init(ch, init),
    }
}

/// The server's RINIT answer as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RInit {
    pub cpus: u32,
    /// Empty in virt mode.
    pub ports: Vec<u32>,
}

/// Client, V2: TINIT, then the RINIT answer (CLOSE → [`MsgError::Aborted`]).
pub fn send_init(ch: &Channel<'_>, cpus: u32, page_size: u32, use_tcp: bool) -> Result<RInit> {
    v2::send(
        ch,
        &Msg::TInit {
            cpus,
            page_size,
            use_tcp,
        },
    )?;
    match v2::recv(ch, Wait::Timed)? {
        Msg::RInit { cpus, ports } => Ok(RInit { cpus, ports }),
        Msg::Close => Err(MsgError::Aborted),
        m => Err(unexpected("RINIT", &m)),
    }
}

/// The V3 TINIT a record client sends for `init`.
pub fn v3_tinit(init: &ClientInit) -> v3::Msg {
    let options = if init.use_tcp {
        vec![V3_OPT_TCP.to_string()]
    } else {
        vec![]
    };
    v3::Msg::TInit {
        cpus: init.cpus,
        page_size: init.page_size,
        options,
    }
}

/// Client, V3: TINIT, then the ports of the RINIT answer (CLOSE →
/// [`MsgError::Aborted`]).
pub fn v3_send_init(ch: &Channel<'_>, init: &ClientInit) -> Result<Vec<u32>> {
    v3::send(ch, &v3_tinit(init))?;
    match v3::recv(ch, Wait::Timed)? {
        v3::Msg::RInit { ports } => Ok(ports),
        v3::Msg::Close => Err(MsgError::Aborted),
        m => Err(MsgError::Unexpected {
            expected: "RINIT",
            got: m.name(),
        }),
    }
}

// ---------------------------------------------------------------------------
// Listener side
// ---------------------------------------------------------------------------

/// What a client asked for, as seen by the listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A V1 client's announcement; answer with [`send_ports`].
    V1(ClientInit),
    /// V2 negotiated ("OK" sent): a V2 TINIT follows.
    V2,
    /// V3 negotiated ("OK" sent): a V3 TINIT follows.
    V3,
}

impl Hello {
    /// The protocol agreed on.
    pub fn proto(&self) -> Proto {
        match self {
            Hello::V1(_) => Proto::V1,
            Hello::V2 => Proto::V2,
            Hello::V3 => Proto::V3,
        }
    }
}

/// Earlier name of [`Hello`] for a V1/V2 listener ([`server_negotiate`]).
pub type ServerHello = Hello;
/// Earlier name of [`Hello`] for a V1/V2/V3 listener ([`server_negotiate_any`]).
pub type AnyHello = Hello;

/// Listener that speaks V1 and V2 (spec §3.2): sends "tracecmd" and negotiates.
/// "-1V3" (or any other `-1V<x>`) is answered "V2\0" and another CPU string is
/// read, as V2-era listeners do.
pub fn server_negotiate(ch: &Channel<'_>) -> Result<Hello> {
    server_hello(ch, Proto::V2)
}

/// Listener for every client generation (spec §3.1, §3.2, doc §6.3): sends
/// "tracecmd", then the client's first string decides. A CPU count is a V1
/// client; "-1V2" gets "V2\0" and the V2 magic check; "-1V3" gets "V3\0" and the
/// V3 magic check. Any other `-1V<x>` is answered "V3\0" and another string is
/// read, as 3.x listeners do.
pub fn server_negotiate_any(ch: &Channel<'_>) -> Result<Hello> {
    server_hello(ch, Proto::V3)
}

/// Listener speaking every generation up to `highest`. An offer it does not speak
/// is answered with `highest` and another string is read; the same offer twice (or
/// more than [`MAX_OFFERS`] of them) ends the negotiation. The channel's timeout
/// covers the whole exchange.
fn server_hello(ch: &Channel<'_>, highest: Proto) -> Result<Hello> {
    let top = versioned(highest)?;
    ch.send_all(v1::GREETING)?;
    let mut src = ChannelSource::new(ch);
    let mut offered: Vec<Vec<u8>> = Vec::new();
    loop {
        let cpus = src.string("cpu string", v1::MAX_FIELD_LEN)?;
        let Some(version) = cpus.strip_prefix(b"-1V") else {
            let n = v1::parse_decimal("cpu count", &cpus)?;
            let n = super::check_count("cpu count", n, super::MAX_CPUS)?;
            return Ok(Hello::V1(v1::read_client_init_after_cpus(&mut src, n)?));
        };
        let spoken = match version {
            b"2" => Some(&V2_TEXT),
            b"3" => Some(&V3_TEXT),
            _ => None,
        }
        .filter(|v| v.proto <= highest);
        let Some(v) = spoken else {
            let shown = String::from_utf8_lossy(version).into_owned();
            if offered.iter().any(|o| o == version) || offered.len() == MAX_OFFERS {
                return Err(MsgError::ProtocolMismatch(format!(
                    "V{shown} (offered again after \"{highest}\" was answered)"
                )));
            }
            log::info!("client offers protocol V{shown}; answering {highest}");
            offered.push(version.to_vec());
            ch.send_all(top.reply)?;
            continue;
        };
        ch.send_all(v.reply)?;
        let mut got = [0u8; 8];
        for b in got.iter_mut() {
            *b = src.byte()?;
        }
        if &got != v.magic {
            return Err(MsgError::BadText(format!(
                "{} magic {got:02x?} is not {:02x?}",
                v.proto, v.magic
            )));
        }
        ch.send_all(OK)?;
        return Ok(match v.proto {
            Proto::V3 => Hello::V3,
            _ => Hello::V2,
        });
    }
}

/// What the first message on a V2 server connection asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Initial {
    /// A guest agent sent CINIT (CRINIT already answered).
    Agent { cpus: u32 },
    /// A record client sent TINIT.
    Record {
        cpus: u32,
        page_size: u32,
        use_tcp: bool,
    },
}

impl Initial {
    /// A record client's announcement; `None` for a guest agent.
    pub fn record(self) -> Option<ClientInit> {
        match self {
            Initial::Record {
                cpus,
                page_size,
                use_tcp,
            } => Some(ClientInit {
                cpus,
                page_size,
                use_tcp,
            }),
            Initial::Agent { .. } => None,
        }
    }
}

/// Listener, V2: wait for TINIT or CINIT; a CINIT is answered with CRINIT.
pub fn initial_setting(ch: &Channel<'_>) -> Result<Initial> {
    match v2::recv(ch, Wait::Timed)? {
        Msg::CInit { cpus } => {
            v2::send(ch, &Msg::CRInit)?;
            Ok(Initial::Agent { cpus })
        }
        Msg::TInit {
            cpus,
            page_size,
            use_tcp,
        } => Ok(Initial::Record {
            cpus,
            page_size,
            use_tcp,
        }),
        m => Err(unexpected("TINIT or CINIT", &m)),
    }
}

/// A V3 TINIT as the listener reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V3Request {
    /// CPUs, page size and TCP ("tcp" option).
    pub init: ClientInit,
    /// The client wants its per-CPU data over vsock ("vsock" option).
    pub vsock: bool,
    /// Options this crate does not know; upstream listeners ignore them.
    pub unknown: Vec<String>,
}

/// Reads the options of a V3 TINIT.
pub fn v3_request(cpus: u32, page_size: u32, options: &[String]) -> V3Request {
    let mut req = V3Request {
        init: ClientInit {
            cpus,
            page_size,
            use_tcp: false,
        },
        vsock: false,
        unknown: vec![],
    };
    for o in options {
        match o.as_str() {
            V3_OPT_TCP => req.init.use_tcp = true,
            V3_OPT_VSOCK => req.vsock = true,
            other => req.unknown.push(other.to_string()),
        }
    }
    req
}

/// Listener, V3: waits for TINIT. Anything else is answered NOT_SUPP and refused.
pub fn v3_initial_setting(ch: &Channel<'_>) -> Result<V3Request> {
    match v3::recv(ch, Wait::Timed)? {
        v3::Msg::TInit {
            cpus,
            page_size,
            options,
        } => Ok(v3_request(cpus, page_size, &options)),
        m => {
            // Best effort: the refusal below is the error that counts.
            let _ = v3::send(ch, &v3::Msg::NotSupp);
            Err(MsgError::Unexpected {
                expected: "TINIT",
                got: m.name(),
            })
        }
    }
}

/// Listener, V2: RINIT with `cpus` and the ports (none in virt mode).
pub fn send_port_array(ch: &Channel<'_>, cpus: u32, ports: Option<&[u32]>) -> Result<()> {
    v2::send(
        ch,
        &Msg::RInit {
            cpus,
            ports: ports.map(<[u32]>::to_vec).unwrap_or_default(),
        },
    )
}

/// Listener, V1: the comma-separated port list.
pub fn server_send_ports_v1(ch: &Channel<'_>, ports: &[u32]) -> Result<()> {
    ch.send_all(&v1::encode_ports(ports))
}

/// Listener: one data port per CPU, in the form `proto` wants (the V1 port list,
/// a V2 or a V3 RINIT).
pub fn send_ports(ch: &Channel<'_>, proto: Proto, ports: &[u32]) -> Result<()> {
    match proto {
        Proto::V1 => server_send_ports_v1(ch, ports),
        Proto::V2 => send_port_array(ch, ports.len() as u32, Some(ports)),
        Proto::V3 => v3::send(
            ch,
            &v3::Msg::RInit {
                ports: ports.to_vec(),
            },
        ),
    }
}
