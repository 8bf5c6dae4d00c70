//! The 8-byte-header dialect of released V2 and the virt-server branch (spec §1.4,
//! §1.5, §1.7).
//!
//! A message is `BE32 size` (header included), `BE32 cmd`, then the command's fixed
//! body and, for some commands, a payload. [`Msg::encode`] produces exactly the
//! bytes of the C original (the TINIT option's padding is sent as zeros); [`decode`]
//! parses a message from a byte slice and [`recv`] reads one from a [`Channel`].
//! Both check, before anything is allocated, that the size lies in
//! `8..=`[`MSG_MAX_LEN`], that the command is known (0..=16), that the size reaches
//! the command's minimum and that header-only commands carry nothing else; then the
//! body's own rules (size fields equal to the payload length, CPU counts in
//! `0..=4096`, well-formed options).

use super::channel::{Channel, Wait};
use super::{check_count, get32, MsgError, Result, MAX_CPUS, MAX_OPTION_SIZE, MSG_MAX_LEN};
use super::{CONNECTION_MSG, MSG_META_MAX_LEN};

/// Header length.
pub const HDR_LEN: usize = 8;
/// `MSGOPT_USETCP`: the only TINIT option (spec §1.7).
pub const MSGOPT_USETCP: u32 = 1;
/// Size of one binary TINIT option.
pub const OPT_LEN: usize = 12;

commands! {
    /// Command numbers (spec §1.5); 17 (MAX) and above are not commands.
    pub enum Cmd {
        Error = 0 => "ERROR",
        Close = 1 => "CLOSE",
        TConnect = 2 => "TCONNECT",
        RConnect = 3 => "RCONNECT",
        TInit = 4 => "TINIT",
        RInit = 5 => "RINIT",
        SendMeta = 6 => "SENDMETA",
        FinMeta = 7 => "FINMETA",
        Connect = 8 => "CONNECT",
        Ack = 9 => "ACK",
        GList = 10 => "GLIST",
        Domain = 11 => "DOMAIN",
        Finish = 12 => "FINISH",
        CInit = 13 => "CINIT",
        CRInit = 14 => "CRINIT",
        AList = 15 => "ALIST",
        Trace = 16 => "TRACE",
    }
}

impl Cmd {
    /// Minimum message size (header + fixed body); 0 for header-only commands.
    pub fn min_size(self) -> u32 {
        match self {
            Cmd::TInit => 20,
            Cmd::RConnect
            | Cmd::RInit
            | Cmd::SendMeta
            | Cmd::Connect
            | Cmd::Domain
            | Cmd::CInit
            | Cmd::Trace => 12,
            _ => 0,
        }
    }
}

/// One V2/VS message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Header only here; the C original's 36-byte ERROR is a dead path (spec §5.2.6).
    Error,
    Close,
    TConnect,
    /// Payload: normally [`CONNECTION_MSG`].
    RConnect(Vec<u8>),
    TInit {
        cpus: u32,
        page_size: u32,
        use_tcp: bool,
    },
    /// `ports` is empty in virt mode (no port array).
    RInit {
        cpus: u32,
        ports: Vec<u32>,
    },
    SendMeta(Vec<u8>),
    FinMeta,
    /// `cpus` is also the `argc` of an agent request and the "fds left" count of
    /// fd passing.
    Connect {
        cpus: u32,
    },
    Ack,
    GList,
    Domain {
        cpus: u32,
    },
    Finish,
    /// Sent in the sender's native byte order (spec §5.2.1); decoded in either.
    CInit {
        cpus: u32,
    },
    CRInit,
    AList,
    Trace {
        pid: u32,
    },
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

impl Msg {
    /// The command of this message.
    pub fn cmd(&self) -> Cmd {
        match self {
            Msg::Error => Cmd::Error,
            Msg::Close => Cmd::Close,
            Msg::TConnect => Cmd::TConnect,
            Msg::RConnect(_) => Cmd::RConnect,
            Msg::TInit { .. } => Cmd::TInit,
            Msg::RInit { .. } => Cmd::RInit,
            Msg::SendMeta(_) => Cmd::SendMeta,
            Msg::FinMeta => Cmd::FinMeta,
            Msg::Connect { .. } => Cmd::Connect,
            Msg::Ack => Cmd::Ack,
            Msg::GList => Cmd::GList,
            Msg::Domain { .. } => Cmd::Domain,
            Msg::Finish => Cmd::Finish,
            Msg::CInit { .. } => Cmd::CInit,
            Msg::CRInit => Cmd::CRInit,
            Msg::AList => Cmd::AList,
            Msg::Trace { .. } => Cmd::Trace,
        }
    }

    /// The RCONNECT the listener sends.
    pub fn rconnect() -> Msg {
        Msg::RConnect(CONNECTION_MSG.to_vec())
    }

    /// The exact bytes the C original sends for this message.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(HDR_LEN + 12);
        put32(&mut out, 0); // size, patched below
        put32(&mut out, self.cmd() as u32);
        match self {
            Msg::RConnect(data) | Msg::SendMeta(data) => {
                if data.len() > MSG_META_MAX_LEN {
                    return Err(MsgError::TooBig("a data chunk over 8180 bytes"));
                }
                put32(&mut out, data.len() as u32);
                out.extend_from_slice(data);
            }
            Msg::TInit {
                cpus,
                page_size,
                use_tcp,
            } => {
                put32(&mut out, *cpus);
                put32(&mut out, *page_size);
                put32(&mut out, u32::from(*use_tcp));
                if *use_tcp {
                    put32(&mut out, OPT_LEN as u32);
                    put32(&mut out, MSGOPT_USETCP);
                    put32(&mut out, 0); // padding: uninitialised in C, zeros here
                }
            }
            Msg::RInit { cpus, ports } => {
                if HDR_LEN + 4 + 4 * ports.len() > MSG_MAX_LEN {
                    return Err(MsgError::TooBig("a port array of more than 2045 ports"));
                }
                put32(&mut out, *cpus);
                for p in ports {
                    put32(&mut out, *p);
                }
            }
            Msg::Connect { cpus } | Msg::Domain { cpus } => put32(&mut out, *cpus),
            Msg::Trace { pid } => put32(&mut out, *pid),
            Msg::CInit { cpus } => out.extend_from_slice(&cpus.to_ne_bytes()),
            _ => {}
        }
        let size = out.len() as u32;
        out[..4].copy_from_slice(&size.to_be_bytes());
        Ok(out)
    }
}

/// Checks a header; returns the command and the total message size.
pub fn parse_header(hdr: &[u8; HDR_LEN]) -> Result<(Cmd, usize)> {
    let size = get32(hdr, 0);
    let cmd_n = get32(hdr, 4);
    if size > MSG_MAX_LEN as u32 || size < HDR_LEN as u32 {
        return Err(MsgError::BadSize {
            size,
            min: HDR_LEN as u32,
            max: MSG_MAX_LEN as u32,
        });
    }
    let cmd = Cmd::from_u32(cmd_n).ok_or(MsgError::UnknownCommand(cmd_n))?;
    let min = cmd.min_size();
    if min == 0 && size != HDR_LEN as u32 {
        return Err(MsgError::UnexpectedPayload {
            cmd: cmd.name(),
            len: size as usize - HDR_LEN,
        });
    }
    if size < min {
        return Err(MsgError::TooShort {
            cmd: cmd.name(),
            size,
            min,
        });
    }
    Ok((cmd, size as usize))
}

fn tinit_options(cmd: Cmd, opt_num: u32, opts: &[u8]) -> Result<bool> {
    // Each option takes at least 12 bytes, so the count is bounded by the message.
    if opt_num as usize > opts.len() / OPT_LEN {
        return Err(MsgError::BadOption(format!(
            "{opt_num} options announced but only {} bytes follow",
            opts.len()
        )));
    }
    let mut use_tcp = false;
    let mut off = 0usize;
    for i in 0..opt_num {
        if opts.len() - off < OPT_LEN {
            return Err(MsgError::BadOption(format!("option {i} is cut short")));
        }
        let size = get32(opts, off);
        let opt_cmd = get32(opts, off + 4);
        if (size as usize) < OPT_LEN || size > MAX_OPTION_SIZE || size as usize > opts.len() - off {
            return Err(MsgError::BadOption(format!(
                "option {i} claims {size} bytes (allowed {OPT_LEN}..={MAX_OPTION_SIZE}, {} left)",
                opts.len() - off
            )));
        }
        if opt_cmd != MSGOPT_USETCP {
            return Err(MsgError::BadOption(format!(
                "unknown option command {opt_cmd}"
            )));
        }
        use_tcp = true;
        off += size as usize;
    }
    if off != opts.len() {
        return Err(MsgError::SizeMismatch {
            cmd: cmd.name(),
            field: (off + 20) as u32,
            actual: opts.len() + 20,
        });
    }
    Ok(use_tcp)
}

/// Decodes the body (`size − 8` bytes after the header) of a command whose header
/// passed [`parse_header`].
pub fn decode_body(cmd: Cmd, body: &[u8]) -> Result<Msg> {
    let fixed = (cmd.min_size() as usize).saturating_sub(HDR_LEN);
    if body.len() < fixed {
        return Err(MsgError::TooShort {
            cmd: cmd.name(),
            size: (body.len() + HDR_LEN) as u32,
            min: cmd.min_size(),
        });
    }
    let word = |i: usize| get32(body, 4 * i);
    let count = |what, v: u32| check_count(what, i64::from(v as i32), MAX_CPUS);
    let payload = &body[fixed..];
    Ok(match cmd {
        Cmd::Error => Msg::Error,
        Cmd::Close => Msg::Close,
        Cmd::TConnect => Msg::TConnect,
        Cmd::FinMeta => Msg::FinMeta,
        Cmd::Ack => Msg::Ack,
        Cmd::GList => Msg::GList,
        Cmd::Finish => Msg::Finish,
        Cmd::CRInit => Msg::CRInit,
        Cmd::AList => Msg::AList,
        Cmd::RConnect | Cmd::SendMeta => {
            let n = word(0);
            if n as usize != payload.len() {
                return Err(MsgError::SizeMismatch {
                    cmd: cmd.name(),
                    field: n,
                    actual: payload.len(),
                });
            }
            if cmd == Cmd::RConnect {
                Msg::RConnect(payload.to_vec())
            } else {
                Msg::SendMeta(payload.to_vec())
            }
        }
        Cmd::TInit => {
            let cpus = count("TINIT cpu count", word(0))?;
            let page_size = word(1);
            if page_size as i32 <= 0 {
                return Err(MsgError::OutOfRange {
                    what: "TINIT page size",
                    value: i64::from(page_size as i32),
                    max: i64::from(i32::MAX),
                });
            }
            let use_tcp = tinit_options(cmd, word(2), payload)?;
            Msg::TInit {
                cpus,
                page_size,
                use_tcp,
            }
        }
        Cmd::RInit => {
            let cpus = count("RINIT cpu count", word(0))?;
            if !payload.is_empty() && payload.len() != 4 * cpus as usize {
                return Err(MsgError::SizeMismatch {
                    cmd: cmd.name(),
                    field: 4 * cpus,
                    actual: payload.len(),
                });
            }
            let mut ports = Vec::with_capacity(payload.len() / 4);
            for c in payload.chunks_exact(4) {
                let p = get32(c, 0);
                if p > 65535 {
                    return Err(MsgError::OutOfRange {
                        what: "RINIT port",
                        value: i64::from(p),
                        max: 65535,
                    });
                }
                ports.push(p);
            }
            Msg::RInit { cpus, ports }
        }
        Cmd::Connect | Cmd::Domain | Cmd::CInit | Cmd::Trace => {
            if !payload.is_empty() {
                return Err(MsgError::UnexpectedPayload {
                    cmd: cmd.name(),
                    len: payload.len(),
                });
            }
            match cmd {
                Cmd::Connect => Msg::Connect {
                    cpus: count("CONNECT count", word(0))?,
                },
                Cmd::Domain => Msg::Domain {
                    cpus: count("DOMAIN cpu count", word(0))?,
                },
                Cmd::Trace => Msg::Trace {
                    pid: check_count("TRACE pid", i64::from(word(0) as i32), i32::MAX as u32)?,
                },
                _ => Msg::CInit {
                    cpus: cinit_count(word(0))?,
                },
            }
        }
    })
}

/// CINIT's count in either byte order: the C agent sends its native order.
fn cinit_count(be: u32) -> Result<u32> {
    if be <= MAX_CPUS {
        return Ok(be);
    }
    let swapped = be.swap_bytes();
    if swapped <= MAX_CPUS {
        return Ok(swapped);
    }
    Err(MsgError::OutOfRange {
        what: "CINIT cpu count",
        value: i64::from(be as i32),
        max: i64::from(MAX_CPUS),
    })
}

/// Decodes the first message in `buf`; returns it and the bytes it used.
pub fn decode(buf: &[u8]) -> Result<(Msg, usize)> {
    let Some(hdr) = buf.first_chunk::<HDR_LEN>() else {
        return Err(MsgError::Incomplete {
            have: buf.len(),
            need: HDR_LEN,
        });
    };
    let (cmd, size) = parse_header(hdr)?;
    if buf.len() < size {
        return Err(MsgError::Incomplete {
            have: buf.len(),
            need: size,
        });
    }
    Ok((decode_body(cmd, &buf[HDR_LEN..size])?, size))
}

/// Reads one message. The body goes into a fixed 8 KiB buffer, so a claimed size
/// never drives an allocation; `wait` selects the whole-message deadline or none.
pub fn recv(ch: &Channel<'_>, wait: Wait) -> Result<Msg> {
    let mut dl = ch.deadline(wait);
    let mut hdr = [0u8; HDR_LEN];
    ch.read_exact(&mut hdr, &mut dl)?;
    let (cmd, size) = parse_header(&hdr)?;
    let mut body = [0u8; MSG_MAX_LEN - HDR_LEN];
    let body = &mut body[..size - HDR_LEN];
    ch.read_exact(body, &mut dl)?;
    let msg = decode_body(cmd, body)?;
    log::debug!("msg received: {}", cmd.name());
    Ok(msg)
}

/// Sends one message.
pub fn send(ch: &Channel<'_>, msg: &Msg) -> Result<()> {
    log::debug!("msg send: {}", msg.cmd().name());
    ch.send_all(&msg.encode()?)
}
