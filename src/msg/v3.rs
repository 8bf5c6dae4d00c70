//! Framing of the modern V3 protocol (spec §6.2b).
//!
//! Header: `BE32 size` (total), `BE32 cmd`, `BE32 cmd_size` (length of the fixed
//! body that follows). The receiver keeps `min(cmd_size, known body)` bytes of the
//! body and skips the rest, as upstream does; everything after the body is payload.
//! Commands are the [`Cmd`] enum (one name table, [`Cmd::name`]). Bodies decoded
//! here: CLOSE, TINIT, RINIT, SEND_DATA, FIN_DATA, NOT_SUPP, and the agent's
//! TRACE_REQ, TRACE_RESP and CLOSE_RESP; the other known commands (time sync, proxy,
//! CONT) decode to [`Msg::Unsupported`] so that a caller can answer NOT_SUPP. The TINIT/RINIT exchange itself is in [`super::negotiate`].

use super::channel::{Channel, Wait};
use super::{check_count, get32, MsgError, Result, MAX_CPUS, MSG_MAX_LEN, MSG_META_MAX_LEN};

/// Header length.
pub const HDR_LEN: usize = 12;

commands! {
    /// Command numbers (spec §6.2b); 12 and above are not commands. The time-sync,
    /// proxy and CONT commands decode to [`Msg::Unsupported`].
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
            Cmd::TraceReq => 16,
            Cmd::TraceResp => 40,
            Cmd::TimeSync => 20,
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
    /// A host asks an agent to record (3.x `record -A`).
    TraceReq {
        /// Bit 0 is [`TRACE_REQ_USE_FIFOS`].
        flags: u32,
        trace_id: u64,
        /// The recording options, as `record` takes them ("-C", "local", "-e", …).
        argv: Vec<String>,
        /// Clock-sync protocols the host offers ("kvm", "ptp"); empty: no sync.
        tsync_protos: Vec<String>,
    },
    /// The agent's answer: its CPUs and the port of each CPU's data connection.
    TraceResp {
        flags: u32,
        cpus: u32,
        page_size: u32,
        trace_id: u64,
        /// The clock-sync protocol chosen; empty: none.
        tsync_proto: String,
        tsync_port: u32,
        ports: Vec<u32>,
    },
    /// The agent has sent everything and stops.
    CloseResp,
    /// One message of a clock-sync exchange (on its own connection): the
    /// protocol ("none" for the framing commands, "ptp"), its message id and
    /// the protocol's bytes ([`crate::msg::ptp`]).
    TimeSync {
        proto: String,
        id: u32,
        payload: Vec<u8>,
    },
    /// A known command whose body this crate does not decode (yet); `cmd` is its
    /// number ([`Cmd::from_u32`] gives it back).
    Unsupported {
        cmd: u32,
    },
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
            Msg::TraceReq { .. } => Cmd::TraceReq.name(),
            Msg::TraceResp { .. } => Cmd::TraceResp.name(),
            Msg::CloseResp => Cmd::CloseResp.name(),
            Msg::TimeSync { .. } => Cmd::TimeSync.name(),
            Msg::Unsupported { cmd } => Cmd::from_u32(*cmd).map_or("V3 command", Cmd::name),
        }
    }

    /// The exact bytes upstream trace-cmd sends.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let (cmd, body, payload): (Cmd, Vec<u8>, Vec<u8>) = match self {
            Msg::Close => (Cmd::Close, vec![], vec![]),
            Msg::FinData => (Cmd::FinData, vec![], vec![]),
            Msg::NotSupp => (Cmd::NotSupp, vec![], vec![]),
            Msg::CloseResp => (Cmd::CloseResp, vec![], vec![]),
            Msg::TraceReq {
                flags,
                trace_id,
                argv,
                tsync_protos,
            } => {
                // argc in the body is always 0: the arguments travel as a parameter.
                let mut body = Vec::with_capacity(16);
                body.extend_from_slice(&flags.to_be_bytes());
                body.extend_from_slice(&0u32.to_be_bytes());
                body.extend_from_slice(&trace_id.to_be_bytes());
                let mut args = (argv.len() as u32).to_be_bytes().to_vec();
                args.extend(nul_strings(argv));
                let mut p = param(PARAM_ARGS, &args);
                if !tsync_protos.is_empty() {
                    let mut names = nul_strings(tsync_protos);
                    names.push(0);
                    p.extend(param(PARAM_TSYNC_PROTOS, &names));
                }
                (Cmd::TraceReq, body, p)
            }
            Msg::TraceResp {
                flags,
                cpus,
                page_size,
                trace_id,
                tsync_proto,
                tsync_port,
                ports,
            } => {
                if tsync_proto.len() >= TSYNC_NAME_LEN {
                    return Err(MsgError::TooBig(
                        "a clock-sync protocol name of 16 bytes or more",
                    ));
                }
                if *cpus as usize != ports.len() {
                    return Err(MsgError::InvalidArgument(
                        "TRACE_RESP needs one port per CPU",
                    ));
                }
                let mut body = Vec::with_capacity(40);
                for v in [*flags, *cpus, *page_size] {
                    body.extend_from_slice(&v.to_be_bytes());
                }
                body.extend_from_slice(&trace_id.to_be_bytes());
                let mut name = [0u8; TSYNC_NAME_LEN];
                name[..tsync_proto.len()].copy_from_slice(tsync_proto.as_bytes());
                body.extend_from_slice(&name);
                body.extend_from_slice(&tsync_port.to_be_bytes());
                (Cmd::TraceResp, body, port_strings(ports))
            }
            Msg::Unsupported { .. } => {
                return Err(MsgError::InvalidArgument(
                    "cannot encode an undecoded V3 command",
                ))
            }
            Msg::TimeSync { proto, id, payload } => {
                if proto.len() >= TSYNC_NAME_LEN {
                    return Err(MsgError::InvalidArgument(
                        "a clock-sync protocol name of 16 bytes or more",
                    ));
                }
                let mut body = vec![0u8; TSYNC_NAME_LEN];
                body[..proto.len()].copy_from_slice(proto.as_bytes());
                body.extend_from_slice(&id.to_be_bytes());
                (Cmd::TimeSync, body, payload.clone())
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
                (Cmd::RInit, body, port_strings(ports))
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

/// TRACE_REQ flag: the agent is to use FIFOs (virtio-serial) for the data.
pub const TRACE_REQ_USE_FIFOS: u32 = 1;
/// TRACE_REQ parameter: the recording arguments.
const PARAM_ARGS: u32 = 0;
/// TRACE_REQ parameter: the clock-sync protocols offered.
const PARAM_TSYNC_PROTOS: u32 = 1;
/// Length of TRACE_RESP's NUL-padded protocol name.
const TSYNC_NAME_LEN: usize = 16;

fn nul_strings(list: &[String]) -> Vec<u8> {
    let mut p = Vec::new();
    for s in list {
        p.extend_from_slice(s.as_bytes());
        p.push(0);
    }
    p
}

fn port_strings(ports: &[u32]) -> Vec<u8> {
    nul_strings(&ports.iter().map(u32::to_string).collect::<Vec<_>>())
}

fn param(id: u32, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + data.len());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&(data.len() as u32).to_be_bytes());
    p.extend_from_slice(data);
    p
}

fn text(s: &[u8]) -> Result<String> {
    String::from_utf8(s.to_vec()).map_err(|_| MsgError::BadText("a V3 string is not UTF-8".into()))
}

/// `count` decimal port strings, each 0..=65535.
fn ports(cmd: Cmd, payload: &[u8], count: u32) -> Result<Vec<u32>> {
    let mut out = Vec::with_capacity(count as usize);
    for s in strings(cmd, payload, count as usize)? {
        let p = super::v1::parse_decimal("port", s)?;
        if !(0..=65535).contains(&p) {
            return Err(MsgError::OutOfRange {
                what: "port",
                value: p,
                max: 65535,
            });
        }
        out.push(p as u32);
    }
    Ok(out)
}

/// TRACE_REQ's parameters: `{BE32 id, BE32 length, data}` records filling the
/// payload; unknown ids are skipped, as upstream does.
fn trace_req_params(payload: &[u8]) -> Result<(Vec<String>, Vec<String>)> {
    let cmd = Cmd::TraceReq;
    let mut argv = Vec::new();
    let mut protos = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        if rest.len() < 8 {
            return Err(MsgError::SizeMismatch {
                cmd: cmd.name(),
                field: 8,
                actual: rest.len(),
            });
        }
        let id = get32(rest, 0);
        let len = get32(rest, 4) as usize;
        if len > rest.len() - 8 {
            return Err(MsgError::SizeMismatch {
                cmd: cmd.name(),
                field: len as u32,
                actual: rest.len() - 8,
            });
        }
        let data = &rest[8..8 + len];
        rest = &rest[8 + len..];
        match id {
            PARAM_ARGS => {
                if data.len() < 4 {
                    return Err(MsgError::TooShort {
                        cmd: "TRACE_REQ argument list",
                        size: data.len() as u32,
                        min: 4,
                    });
                }
                // Each argument takes at least its NUL, so the count is bounded by
                // the bytes that came; `strings` checks that.
                let argc = check_count(
                    "TRACE_REQ argument count",
                    i64::from(get32(data, 0) as i32),
                    MAX_ARGS,
                )?;
                argv = strings(cmd, &data[4..], argc as usize)?
                    .into_iter()
                    .map(text)
                    .collect::<Result<_>>()?;
            }
            PARAM_TSYNC_PROTOS => {
                protos.clear();
                let mut names = data;
                loop {
                    let Some(nul) = names.iter().position(|&b| b == 0) else {
                        return Err(MsgError::BadText(
                            "TRACE_REQ clock-sync protocol list is not NUL-terminated".into(),
                        ));
                    };
                    if nul == 0 {
                        break;
                    }
                    protos.push(text(&names[..nul])?);
                    names = &names[nul + 1..];
                }
            }
            other => log::debug!("TRACE_REQ: skipping unknown parameter {other}"),
        }
    }
    Ok((argv, protos))
}

/// A CPU count and a page size from the wire, both checked.
fn cpus_and_page_size(
    cpus_what: &'static str,
    cpus: u32,
    page_what: &'static str,
    page_size: u32,
) -> Result<(u32, u32)> {
    let cpus = check_count(cpus_what, i64::from(cpus as i32), MAX_CPUS)?;
    if page_size as i32 <= 0 {
        return Err(MsgError::OutOfRange {
            what: page_what,
            value: i64::from(page_size as i32),
            max: i64::from(i32::MAX),
        });
    }
    Ok((cpus, page_size))
}

/// Largest argument count a TRACE_REQ may carry.
pub const MAX_ARGS: u32 = 4096;

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
            let (cpus, page_size) = cpus_and_page_size(
                "TINIT cpu count",
                get32(body, 0),
                "TINIT page size",
                get32(body, 4),
            )?;
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
            Ok(Msg::RInit {
                ports: ports(cmd, payload, cpus)?,
            })
        }
        Cmd::CloseResp => header_only(Msg::CloseResp),
        Cmd::TraceReq => {
            let (argv, tsync_protos) = trace_req_params(payload)?;
            Ok(Msg::TraceReq {
                flags: get32(body, 0),
                trace_id: u64::from_be_bytes(body[8..16].try_into().expect("16-byte body")),
                argv,
                tsync_protos,
            })
        }
        Cmd::TraceResp => {
            let (cpus, page_size) = cpus_and_page_size(
                "TRACE_RESP cpu count",
                get32(body, 4),
                "TRACE_RESP page size",
                get32(body, 8),
            )?;
            let name = &body[20..20 + TSYNC_NAME_LEN];
            let Some(nul) = name.iter().position(|&b| b == 0) else {
                return Err(MsgError::BadText(
                    "TRACE_RESP clock-sync protocol name is not NUL-terminated".into(),
                ));
            };
            let name = &name[..nul];
            Ok(Msg::TraceResp {
                flags: get32(body, 0),
                cpus,
                page_size,
                trace_id: u64::from_be_bytes(body[12..20].try_into().expect("40-byte body")),
                tsync_proto: text(name)?,
                tsync_port: get32(body, 36),
                ports: ports(cmd, payload, cpus)?,
            })
        }
        Cmd::TimeSync => {
            let name = &body[..TSYNC_NAME_LEN];
            let end = name.iter().position(|&b| b == 0).unwrap_or(TSYNC_NAME_LEN);
            Ok(Msg::TimeSync {
                proto: String::from_utf8_lossy(&name[..end]).into_owned(),
                id: get32(body, TSYNC_NAME_LEN),
                payload: payload.to_vec(),
            })
        }
        Cmd::TraceProxy | Cmd::Cont => Ok(Msg::Unsupported { cmd: cmd as u32 }),
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
