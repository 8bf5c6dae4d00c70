//! The V1 text protocol and the text part of every handshake (spec §3.1, §6.3).
//!
//! Text fields are NUL-terminated byte strings read one byte at a time (so nothing
//! after the NUL is consumed), with a bound on their length. The parsers work on any
//! [`TextSource`]: a [`Channel`] with one deadline for the whole exchange, or a byte
//! slice ([`SliceSource`], used by tests).

use super::channel::{Channel, Deadline, Wait};
use super::{MsgError, Result, MAX_CPUS, MAX_OPTION_SIZE};

/// What the server writes first.
pub const GREETING: &[u8; 8] = b"tracecmd";
/// Longest decimal field accepted.
pub const MAX_FIELD_LEN: usize = 64;
/// Most options a V1 client may announce.
pub const MAX_V1_OPTIONS: u32 = 16;

/// A byte stream the text parsers read from.
pub trait TextSource {
    /// The next byte; [`MsgError::Closed`] at the end.
    fn byte(&mut self) -> Result<u8>;

    /// Exactly `n` bytes.
    fn bytes(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut v = Vec::with_capacity(n.min(MAX_OPTION_SIZE as usize));
        for _ in 0..n {
            v.push(self.byte()?);
        }
        Ok(v)
    }

    /// A NUL-terminated string of at most `max` bytes before the NUL (NUL dropped).
    fn string(&mut self, what: &str, max: usize) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        loop {
            let b = self.byte()?;
            if b == 0 {
                return Ok(v);
            }
            if v.len() == max {
                return Err(MsgError::BadText(format!(
                    "{what} is longer than {max} bytes"
                )));
            }
            v.push(b);
        }
    }
}

/// Reads from a byte slice.
#[derive(Debug)]
pub struct SliceSource<'a> {
    pub data: &'a [u8],
    pub pos: usize,
}

impl<'a> SliceSource<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        SliceSource { data, pos: 0 }
    }
}

impl TextSource for SliceSource<'_> {
    fn byte(&mut self) -> Result<u8> {
        let b = *self.data.get(self.pos).ok_or(MsgError::Closed)?;
        self.pos += 1;
        Ok(b)
    }
}

/// Reads from a channel; one deadline covers everything read through it.
pub struct ChannelSource<'c, 'fd> {
    ch: &'c Channel<'fd>,
    dl: Deadline,
}

impl<'c, 'fd> ChannelSource<'c, 'fd> {
    pub fn new(ch: &'c Channel<'fd>) -> Self {
        ChannelSource {
            ch,
            dl: ch.deadline(Wait::Timed),
        }
    }
}

impl TextSource for ChannelSource<'_, '_> {
    fn byte(&mut self) -> Result<u8> {
        let mut b = [0u8];
        self.ch.read_exact(&mut b, &mut self.dl)?;
        Ok(b[0])
    }
}

/// Parses a decimal integer: optional `-`, then 1 to 19 digits, nothing else.
pub fn parse_decimal(what: &str, s: &[u8]) -> Result<i64> {
    let bad = || {
        MsgError::BadText(format!(
            "{what} {:?} is not a decimal number",
            String::from_utf8_lossy(s)
        ))
    };
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let v = digits
        .iter()
        .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
    Ok(if neg { -v } else { v })
}

fn field(src: &mut impl TextSource, what: &'static str, max: i64) -> Result<i64> {
    let s = src.string(what, MAX_FIELD_LEN)?;
    let v = parse_decimal(what, &s)?;
    if v < 0 || v > max {
        return Err(MsgError::OutOfRange {
            what,
            value: v,
            max,
        });
    }
    Ok(v)
}

/// What a V1 client announces after the greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInit {
    pub cpus: u32,
    pub page_size: u32,
    pub use_tcp: bool,
}

impl ClientInit {
    /// The client's bytes: `"<cpus>\0<pagesize>\0<nopts>\0"` plus `"4\0TCP\0"` for TCP.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = format!("{}\0{}\0", self.cpus, self.page_size).into_bytes();
        if self.use_tcp {
            v.extend_from_slice(b"1\x004\x00TCP\x00");
        } else {
            v.extend_from_slice(b"0\0");
        }
        v
    }
}

/// Reads the rest of a V1 client's announcement after its CPU string `cpus`.
pub fn read_client_init_after_cpus(src: &mut impl TextSource, cpus: u32) -> Result<ClientInit> {
    let page_size = field(src, "page size", i64::from(i32::MAX))?;
    if page_size == 0 {
        return Err(MsgError::OutOfRange {
            what: "page size",
            value: 0,
            max: i64::from(i32::MAX),
        });
    }
    let nopts = field(src, "option count", i64::from(MAX_V1_OPTIONS))?;
    let mut use_tcp = false;
    for _ in 0..nopts {
        let size = field(src, "option size", i64::from(MAX_OPTION_SIZE))? as usize;
        let opt = src.bytes(size)?;
        // The option is a NUL-terminated string inside its `size` bytes.
        let Some(nul) = opt.iter().position(|&b| b == 0) else {
            return Err(MsgError::BadOption(
                "V1 option is not NUL-terminated".into(),
            ));
        };
        match &opt[..nul] {
            b"TCP" => use_tcp = true,
            other => {
                return Err(MsgError::BadOption(format!(
                    "unknown V1 option {:?}",
                    String::from_utf8_lossy(other)
                )))
            }
        }
    }
    Ok(ClientInit {
        cpus,
        page_size: page_size as u32,
        use_tcp,
    })
}

/// Reads a whole V1 client announcement (CPU string first).
pub fn read_client_init(src: &mut impl TextSource) -> Result<ClientInit> {
    let cpus = field(src, "cpu count", i64::from(MAX_CPUS))? as u32;
    read_client_init_after_cpus(src, cpus)
}

/// The server's port list: `"p0,p1,...\0"`.
pub fn encode_ports(ports: &[u32]) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        if i > 0 {
            v.push(b',');
        }
        v.extend_from_slice(p.to_string().as_bytes());
    }
    v.push(0);
    v
}

/// Reads `count` ports of a port list (each ends at `,` or NUL; the last at NUL).
pub fn read_ports(src: &mut impl TextSource, count: usize) -> Result<Vec<u32>> {
    let mut ports = Vec::with_capacity(count.min(MAX_CPUS as usize));
    if count > MAX_CPUS as usize {
        return Err(MsgError::OutOfRange {
            what: "port count",
            value: count as i64,
            max: i64::from(MAX_CPUS),
        });
    }
    if count == 0 {
        return match src.byte()? {
            0 => Ok(ports),
            _ => Err(MsgError::BadText(
                "port list has ports but none were expected".into(),
            )),
        };
    }
    for i in 0..count {
        let mut digits = Vec::new();
        let end = loop {
            let b = src.byte()?;
            if b == b',' || b == 0 {
                break b;
            }
            if digits.len() == 5 {
                return Err(MsgError::BadText("port number longer than 5 digits".into()));
            }
            digits.push(b);
        };
        let p = parse_decimal("port", &digits)?;
        if !(1..=65535).contains(&p) {
            return Err(MsgError::OutOfRange {
                what: "port",
                value: p,
                max: 65535,
            });
        }
        ports.push(p as u32);
        let last = i + 1 == count;
        if end == 0 && !last {
            return Err(MsgError::BadText(format!(
                "port list ends after {} of {count} ports",
                i + 1
            )));
        }
        if end == b',' && last {
            return Err(MsgError::BadText(format!(
                "port list has more than {count} ports"
            )));
        }
    }
    Ok(ports)
}
