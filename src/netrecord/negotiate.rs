//! The client's text handshake when it offers V3 (shared spec doc §6.3) and its
//! downgrades: a V2-era listener answers "V2\0" and then reads another CPU string on
//! the same connection (wire spec §3.2), so the client offers "-1V2\0" there; a
//! V1-only listener closes on any versioned offer, so the client reconnects and
//! speaks V1 (doc §7.1).

use crate::msg::channel::{Channel, Wait};
use crate::msg::handshake::{OK, V2_CPU, V2_MAGIC};
use crate::msg::v1::{ChannelSource, TextSource, GREETING};
use crate::msg::{MsgError, Result};

/// The client's V3 offer, NUL included: `2d 31 56 33 00`.
pub const V3_CPU: &[u8; 5] = b"-1V3\0";
/// The client's V3 magic: `37 36 36 36 37 39 00 00`.
pub const V3_MAGIC: &[u8; 8] = b"766679\0\0";
/// Longest version answer read from a listener.
const MAX_VERSION_REPLY: usize = 64;

/// Where a versioned offer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// V3 agreed ("OK" received).
    V3,
    /// The listener answered "V2"; V2 was agreed on the same connection.
    V2,
    /// The listener closed instead of answering: a V1-only listener. Reconnect.
    Closed,
}

/// Reads the 8-byte "tracecmd" banner every listener sends first.
pub fn read_banner(ch: &Channel<'_>) -> Result<()> {
    let mut banner = [0u8; 8];
    match ch.recv_exact(&mut banner, Wait::Timed) {
        Ok(()) if &banner == GREETING => Ok(()),
        Ok(()) => Err(MsgError::NotTraceCmd(format!(
            "it greeted with {:?}, not \"tracecmd\"",
            String::from_utf8_lossy(&banner)
        ))),
        Err(MsgError::Closed) => Err(MsgError::NotTraceCmd(
            "it closed the connection without the \"tracecmd\" banner".into(),
        )),
        Err(e) => Err(e),
    }
}

/// The version string the listener answers with; `None` when it closed instead
/// (or sent an empty string, which the C client treats the same way).
fn version_reply(ch: &Channel<'_>) -> Result<Option<Vec<u8>>> {
    let mut src = ChannelSource::new(ch);
    match src.string("protocol version answer", MAX_VERSION_REPLY) {
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(MsgError::Closed) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The error for a version answer this client cannot follow.
fn mismatch(reply: &[u8], offered: &str) -> MsgError {
    let text = String::from_utf8_lossy(reply);
    let version = if reply.starts_with(b"V") {
        text.to_string()
    } else {
        "unknown".to_string()
    };
    MsgError::ProtocolMismatch(format!(
        "{version} (it answered the {offered} offer with {text:?})"
    ))
}

/// Sends `magic` and requires the two bytes "OK" back.
fn confirm(ch: &Channel<'_>, magic: &[u8; 8], version: &str) -> Result<()> {
    ch.send_all(magic)?;
    let mut ok = [0u8; 2];
    ch.recv_exact(&mut ok, Wait::Timed)?;
    if &ok != OK {
        return Err(MsgError::NotTraceCmd(format!(
            "it answered the {version} magic with {ok:02x?} instead of \"OK\""
        )));
    }
    Ok(())
}

/// After the banner: offers V3 and, when `downgrade` allows, follows the listener
/// down to V2 on the same connection. `label` names the listener in log lines.
pub fn offer_v3(ch: &Channel<'_>, downgrade: bool, label: &str) -> Result<Offered> {
    ch.send_all(V3_CPU)?;
    let Some(reply) = version_reply(ch)? else {
        return Ok(Offered::Closed);
    };
    match reply.as_slice() {
        b"V3" => {
            confirm(ch, V3_MAGIC, "V3")?;
            Ok(Offered::V3)
        }
        b"V2" if downgrade => {
            log::info!("listener at {label} speaks V2; continuing with V2");
            offer_v2(ch)
        }
        other => Err(mismatch(other, "V3")),
    }
}

/// After the banner (or after a "V2" answer to the V3 offer): offers V2.
pub fn offer_v2(ch: &Channel<'_>) -> Result<Offered> {
    ch.send_all(V2_CPU)?;
    let Some(reply) = version_reply(ch)? else {
        return Ok(Offered::Closed);
    };
    if reply != b"V2" {
        return Err(mismatch(&reply, "V2"));
    }
    confirm(ch, V2_MAGIC, "V2")?;
    Ok(Offered::V2)
}
