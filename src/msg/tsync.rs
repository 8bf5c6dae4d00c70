//! The clock-sync exchange of `record -A` with `agent --virt` (README "Guests
//! (virt-server)", issue 12), carried in V2 `SENDMETA` messages whose payload
//! starts with [`MAGIC`].
//!
//! Why SENDMETA: after FINMETA the agent only waits for CLOSE, and a C peer of the
//! virt-server branch frames a SENDMETA correctly and ignores what it does not
//! wait for (as released V2's close wait does). The manager offers once, after
//! FINMETA; only an agent that answers [`TsyncMsg::Accept`] ever sees another
//! tsync message, and an agent never sends one unasked. So a C peer on either
//! side leaves the flow as it was.

use super::channel::{Channel, Wait};
use super::v2::{self, Msg};
use super::{get32, get64, MsgError, Result};

/// First bytes of every tsync payload (version 1 of the exchange).
pub const MAGIC: &[u8; 6] = b"TSYNC1";

/// One tsync message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TsyncMsg {
    /// manager → agent, once after FINMETA: "shall we sync clocks?"
    Offer,
    /// agent → manager: yes; `clock` is the agent's trace clock.
    Accept {
        /// The trace clock the guest records with.
        clock: String,
    },
    /// agent → manager: it cannot read its trace clock (why).
    Refuse {
        /// Why.
        reason: String,
    },
    /// manager → agent: a round starts (the agent re-reads its clock's relation
    /// to the one it samples and answers [`TsyncMsg::Ready`]).
    Round,
    /// agent → manager: ready for the probes of a round.
    Ready,
    /// manager → agent: read your clock now.
    Probe {
        /// Echoed in the answer.
        seq: u32,
    },
    /// agent → manager: the agent's trace clock at the probe, in ns.
    Time {
        /// The probe's `seq`.
        seq: u32,
        /// The guest's trace-clock reading.
        ns: u64,
    },
}

/// Whether a SENDMETA payload belongs to the tsync exchange.
pub fn is_tsync(payload: &[u8]) -> bool {
    payload.starts_with(MAGIC)
}

/// Longest clock name or refusal text carried.
const MAX_TEXT: usize = 1024;

fn bad(what: &str) -> MsgError {
    MsgError::BadText(format!("tsync message: {what}"))
}

impl TsyncMsg {
    /// The SENDMETA payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        match self {
            TsyncMsg::Offer => out.push(b'O'),
            TsyncMsg::Accept { clock } => {
                out.push(b'A');
                out.extend_from_slice(&clock.as_bytes()[..clock.len().min(MAX_TEXT)]);
            }
            TsyncMsg::Refuse { reason } => {
                out.push(b'X');
                out.extend_from_slice(&reason.as_bytes()[..reason.len().min(MAX_TEXT)]);
            }
            TsyncMsg::Round => out.push(b'R'),
            TsyncMsg::Ready => out.push(b'r'),
            TsyncMsg::Probe { seq } => {
                out.push(b'P');
                out.extend_from_slice(&seq.to_be_bytes());
            }
            TsyncMsg::Time { seq, ns } => {
                out.push(b'T');
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&ns.to_be_bytes());
            }
        }
        out
    }

    /// Parses a payload that [`is_tsync`].
    pub fn decode(p: &[u8]) -> Result<TsyncMsg> {
        if !is_tsync(p) || p.len() < MAGIC.len() + 1 {
            return Err(bad("no tsync header"));
        }
        let kind = p[MAGIC.len()];
        let body = &p[MAGIC.len() + 1..];
        let text = || {
            if body.len() > MAX_TEXT {
                Err(bad("text too long"))
            } else {
                Ok(String::from_utf8_lossy(body).into_owned())
            }
        };
        let fixed = |n: usize| {
            if body.len() == n {
                Ok(())
            } else {
                Err(bad("wrong length"))
            }
        };
        Ok(match kind {
            b'O' => fixed(0).map(|()| TsyncMsg::Offer)?,
            b'A' => TsyncMsg::Accept { clock: text()? },
            b'X' => TsyncMsg::Refuse { reason: text()? },
            b'R' => fixed(0).map(|()| TsyncMsg::Round)?,
            b'r' => fixed(0).map(|()| TsyncMsg::Ready)?,
            b'P' => {
                fixed(4)?;
                TsyncMsg::Probe {
                    seq: get32(body, 0),
                }
            }
            b'T' => {
                fixed(12)?;
                TsyncMsg::Time {
                    seq: get32(body, 0),
                    ns: get64(body, 4),
                }
            }
            _ => return Err(bad("unknown kind")),
        })
    }
}

/// Sends one tsync message.
pub fn send(ch: &Channel<'_>, m: &TsyncMsg) -> Result<()> {
    v2::send(ch, &Msg::SendMeta(m.encode()))
}

/// Receives the next tsync message; other messages are returned as they are
/// (`Err(msg)`) so the caller can decide (a stray ACK, a CLOSE).
pub fn recv(ch: &Channel<'_>, wait: Wait) -> Result<std::result::Result<TsyncMsg, Msg>> {
    match v2::recv(ch, wait)? {
        Msg::SendMeta(p) if is_tsync(&p) => Ok(Ok(TsyncMsg::decode(&p)?)),
        m => Ok(Err(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        for m in [
            TsyncMsg::Offer,
            TsyncMsg::Accept {
                clock: "mono".into(),
            },
            TsyncMsg::Refuse {
                reason: "no tracefs".into(),
            },
            TsyncMsg::Round,
            TsyncMsg::Ready,
            TsyncMsg::Probe { seq: 7 },
            TsyncMsg::Time {
                seq: 9,
                ns: u64::MAX - 3,
            },
        ] {
            let p = m.encode();
            assert!(is_tsync(&p));
            assert_eq!(TsyncMsg::decode(&p).unwrap(), m);
        }
        assert!(TsyncMsg::decode(b"TSYNC1").is_err());
        assert!(TsyncMsg::decode(b"TSYNC1P\0\0").is_err());
        assert!(TsyncMsg::decode(b"TSYNC1Z").is_err());
        assert!(TsyncMsg::decode(b"TSYNC1Ox").is_err());
        assert!(!is_tsync(b"-e sched"));
    }
}
