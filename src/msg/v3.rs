//! Framing of the modern V3 protocol (spec §6.2b).
//!
//! Header: `BE32 size` (total), `BE32 cmd`, `BE32 cmd_size` (length of the fixed
//! body that follows). The receiver keeps `min(cmd_size, known body)` bytes of the
//! body and skips the rest, as upstream does; everything after the body is payload.
//! Commands are the [`Cmd`] enum (one name table, [`Cmd::name`]). Bodies decoded
//! here: CLOSE, TINIT, RINIT, SEND_DATA, FIN_DATA, NOT_SUPP; the other known
//! commands (6..=11) decode to [`Msg::Unsupported`] so that a caller can answer
//! NOT_SUPP. The TINIT/RINIT exchange itself is in [`super::negotiate`].

use super::channel::{Channel, Wait};
use super::{check_count, MsgError, Result, MAX_CPUS, MSG_MAX_LEN, MSG_META_MAX_LEN};

/// Header length.
pub const HDR_LEN: usize = 12;

commands! {
    /// Command numbers (spec §6.2b); 12 and above are not commands. Only CLOSE …
    /// NOT_SUPP have bodies decoded here; the agent, time-sync and proxy commands
    /// decode to [`Msg::Unsupported`].
    pub enum Cmd {
        Close = 0 => "CLOSE",
        TInit = 1 => "TINIT",
        RInit = 2 => "RINIT",
        SendData = 3 => "SEND_DATA",
        FinData = 4 => "FIN_DATA",
        NotSupp = 5 => "NOT_SUPP",
        TraceReq = 6 => "TRACE_REQ",
        TraceResp = 7 => "TRACE_RESP",
        CloseResp = 8 => "CLOSE_RESP",
        TimeSync = 9 => "TIME_SYNC",
        TraceProxy = 10 => "TRACE_PROXY",
        Cont = 11 => "CONT",
    }
}

impl Cmd {
    /// Bytes of fixed body this crate reads; a longer body is skipped, as upstream
    /// does, and a shorter one is refused.
    fn body_len(self) -> usize {
        match self {
            Cmd::TInit => 12,
            Cmd::RInit => 4,
            _ => 0,
        }
    }
}

/// One V3 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Close,
    /// Options are NUL-terminated strings on the wire ("tcp", "vsock").
    TInit {
        cpus: u32,
        page_size: u32,
        options: Vec<String>,
    },
    RInit {
        ports: Vec<u32>,
    },
    SendData(Vec<u8>),
    FinData,
    NotSupp,
    /// A known command whose body this crate does not decode (yet); `cmd` is its
    /// number ([`Cmd::from_u32`] gives it back).
    Unsupported {
        cmd: u32,
    },
}

fn get32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

impl Msg {
    /// The command's name, for messages and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Msg::Close => Cmd::Close.name(),
            Msg::TInit { .. } => Cmd::TInit.name(),
            Msg::RInit { .. } => Cmd::RInit.name(),
            Msg::SendData(_) => Cmd::SendData.name(),
            Msg::FinData => Cmd::FinData.name(),
            Msg::NotSupp => Cmd::NotSupp.name(),
            Msg::Unsupported { cmd } => Cmd::from_u32(*cmd).map_or("V3 command", Cmd::name),
        }
    }

    /// The exact bytes upstream trace-cmd sends.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let (cmd, body, payload): (Cmd, Vec<u8>, Vec<u8>) = match self {
            Msg::Close => (Cmd::Close, vec![], vec![]),
            Msg::FinData => (Cmd::FinData, vec![], vec![]),
            Msg::NotSupp => (Cmd::NotSupp, vec![], vec![]),
            Msg::Unsupported { .. } => {
                return Err(MsgError::InvalidArgument(
                    "cannot encode an undecoded V3 command",
                ))
            }
            Msg::SendData(d) => {
                if d.len() > MSG_META_MAX_LEN {
                    return Err(MsgError::TooBig("a data chunk over 8180 bytes"));
                }
                (Cmd::SendData, vec![], d.clone())
            }
            Msg::TInit {
                cpus,
                page_size,
                options,
            } => {
                let mut body = Vec::new();
                for v in [*cpus, *page_size, options.len() as u32] {
                    body.extend_from_slice(&v.to_be_bytes());
                }
                let mut p = Vec::new();
                for o in options {
                    p.extend_from_slice(o.as_bytes());
                    p.push(0);
                }
                (Cmd::TInit, body, p)
            }
            Msg::RInit { ports } => {
                let body = (ports.len() as u32).to_be_bytes().to_vec();
                let mut p = Vec::new();
                for port in ports {
                    p.extend_from_slice(port.to_string().as_bytes());
                    p.push(0);
                }
                (Cmd::RInit, body, p)
            }
        };
        let size = HDR_LEN + body.len() + payload.len();
        if size > MSG_MAX_LEN {
            return Err(MsgError::TooBig("a V3 message over 8192 bytes"));
        }
        let mut out = Vec::with_capacity(size);
        for v in [size as u32, cmd as u32, body.len() as u32] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&body);
        out.extend_from_slice(&payload);
        Ok(out)
    }
}

/// Checks a header; returns `(cmd, size, cmd_size)`.
pub fn parse_header(hdr: &[u8; HDR_LEN]) -> Result<(Cmd, usize, usize)> {
    let size = get32(hdr, 0);
    let cmd = get32(hdr, 4);
    let cmd_size = get32(hdr, 8);
    if size > MSG_MAX_LEN as u32 || size < HDR_LEN as u32 {
        return Err(MsgError::BadSize {
            size,
            min: HDR_LEN as u32,
            max: MSG_MAX_LEN as u32,
        });
    }
    let cmd = Cmd::from_u32(cmd).ok_or(MsgError::UnknownCommand(cmd))?;
    if cmd_size > size - HDR_LEN as u32 {
        return Err(MsgError::SizeMismatch {
            cmd: cmd.name(),
            field: cmd_size,
            actual: size as usize - HDR_LEN,
        });
    }
    Ok((cmd, size as usize, cmd_size as usize))
}

/// NUL-terminated strings filling `payload` exactly, `count` of them.
fn strings(cmd: Cmd, payload: &[u8], count: usize) -> Result<Vec<&[u8]>> {
    if count > payload.len() {
        return Err(MsgError::SizeMismatch {
            cmd: cmd.name(),
            field: count as u32,
            actual: payload.len(),
        });
    }
    let mut out = Vec::with_capacity(count);
    let mut rest = payload;
    for _ in 0..count {
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(MsgError::BadText(format!(
                "{} string is not NUL-terminated",
                cmd.name()
            )));
        };
        out.push(&rest[..nul]);
        rest = &rest[nul + 1..];
    }
    if !rest.is_empty() {
        return Err(MsgError::SizeMismatch {
            cmd: cmd.name(),
            field: (payload.len() - rest.len()) as u32,
            actual: payload.len(),
        });
    }
    Ok(out)
}

/// Decodes a message from its body (`cmd_size` bytes) and payload.
pub fn decode_body(cmd: Cmd, body: &[u8], payload: &[u8]) -> Result<Msg> {
    let need = cmd.body_len();
    if body.len() < need {
        return Err(MsgError::TooShort {
            cmd: cmd.name(),
            size: (HDR_LEN + body.len() + payload.len()) as u32,
            min: (HDR_LEN + need) as u32,
        });
    }
    let header_only = |m: Msg| {
        if payload.is_empty() {
            Ok(m)
        } else {
            Err(MsgError::UnexpectedPayload {
                cmd: cmd.name(),
                len: payload.len(),
            })
        }
    };
    match cmd {
        Cmd::Close => header_only(Msg::Close),
        Cmd::FinData => header_only(Msg::FinData),
        Cmd::NotSupp => header_only(Msg::NotSupp),
        Cmd::SendData => Ok(Msg::SendData(payload.to_vec())),
        Cmd::TInit => {
            let cpus = check_count(
                "TINIT cpu count",
                i64::from(get32(body, 0) as i32),
                MAX_CPUS,
            )?;
            let page_size = get32(body, 4);
            if page_size as i32 <= 0 {
                return Err(MsgError::OutOfRange {
                    what: "TINIT page size",
                    value: i64::from(page_size as i32),
                    max: i64::from(i32::MAX),
                });
            }
            let opt_num = get32(body, 8) as usize;
            let options = strings(cmd, payload, opt_num)?
                .into_iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            Ok(Msg::TInit {
                cpus,
                page_size,
                options,
            })
        }
        Cmd::RInit => {
            let cpus = check_count(
                "RINIT cpu count",
                i64::from(get32(body, 0) as i32),
                MAX_CPUS,
            )?;
            let mut ports = Vec::with_capacity(cpus as usize);
            for s in strings(cmd, payload, cpus as usize)? {
                let p = super::v1::parse_decimal("port", s)?;
                if !(0..=65535).contains(&p) {
                    return Err(MsgError::OutOfRange {
                        what: "RINIT port",
                        value: p,
                        max: 65535,
                    });
                }
                ports.push(p as u32);
            }
            Ok(Msg::RInit { ports })
        }
        Cmd::TraceReq
        | Cmd::TraceResp
        | Cmd::CloseResp
        | Cmd::TimeSync
        | Cmd::TraceProxy
        | Cmd::Cont => Ok(Msg::Unsupported { cmd: cmd as u32 }),
    }
}

/// Decodes the first message in `buf`; returns it and the bytes it used.
pub fn decode(buf: &[u8]) -> Result<(Msg, usize)> {
    let Some(hdr) = buf.first_chunk::<HDR_LEN>() else {
        return Err(MsgError::Incomplete {
            have: buf.len(),
            need: HDR_LEN,
        });
    };
    let (cmd, size, cmd_size) = parse_header(hdr)?;
    if buf.len() < size {
        return Err(MsgError::Incomplete {
            have: buf.len(),
            need: size,
        });
    }
    let rest = &buf[HDR_LEN..size];
    Ok((
        decode_body(cmd, &rest[..cmd_size], &rest[cmd_size..])?,
        size,
    ))
}

/// Reads one V3 message into a fixed 8 KiB buffer.
pub fn recv(ch: &Channel<'_>, wait: Wait) -> Result<Msg> {
    let mut dl = ch.deadline(wait);
    let mut hdr = [0u8; HDR_LEN];
    ch.read_exact(&mut hdr, &mut dl)?;
    let (cmd, size, cmd_size) = parse_header(&hdr)?;
    let mut buf = [0u8; MSG_MAX_LEN - HDR_LEN];
    let rest = &mut buf[..size - HDR_LEN];
    ch.read_exact(rest, &mut dl)?;
    decode_body(cmd, &rest[..cmd_size], &rest[cmd_size..])
}

/// Sends one V3 message.
pub fn send(ch: &Channel<'_>, msg: &Msg) -> Result<()> {
    ch.send_all(&msg.encode()?)
}
