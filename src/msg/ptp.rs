//! trace-cmd 3.x's "ptp" clock-sync exchange (lib/trace-cmd/trace-timesync.c and
//! trace-timesync-ptp.c), carried in V3 TIME_SYNC messages on a connection of
//! its own: the agent listens on the port it names in TRACE_RESP.
//!
//! Roles: the host asks (`"none"`/[`CMD_PROBE`] with a guest CPU number, native
//! u16); the guest then leads one round: START (series, flags), [`PROBES`]
//! PROBE/echo pairs, END; the host sends the times it saw each probe (RESULTS),
//! and the guest answers with the offset it computed (OFFSET: guest time, host −
//! guest). The host ends with `"none"`/[`CMD_STOP`]. Every number is big-endian
//! except the CPU number.

use super::channel::{Channel, Wait};
use super::v3::{self, Msg};
use super::{get32, get64, MsgError, Result};

/// Protocol name of the framing commands.
pub const NONE: &str = "none";
/// The exchange's name in TRACE_REQ / TRACE_RESP.
pub const PTP: &str = "ptp";
/// `"none"` command: run a round (payload: the guest CPU, u16 native order).
pub const CMD_PROBE: u32 = 1;
/// `"none"` command: the host is done.
pub const CMD_STOP: u32 = 2;
/// `"ptp"` message ids.
pub const PKT_START: u32 = 1;
/// A probe: BE32 count (1 …), echoed by the host.
pub const PKT_PROBE: u32 = 2;
/// The host's probe times.
pub const PKT_RESULTS: u32 = 3;
/// The guest's result.
pub const PKT_OFFSET: u32 = 4;
/// The guest's last probe was sent.
pub const PKT_END: u32 = 5;
/// Probes per round (3.x's PTP_SYNC_LOOP).
pub const PROBES: u32 = 339;
/// START flag: keep only the fastest probe (3.x's default; we keep the fastest
/// quarter's median, which needs no flag from the peer).
pub const FLAG_FASTEST: u32 = 1;
/// START flag: timestamps come from the trace clock (3.x reads trace markers
/// back). Without it both sides read CLOCK_MONOTONIC_RAW.
pub const FLAG_USE_MARKER: u32 = 2;
/// Bytes of one result sample: BE64 time, BE32 probe id.
const SAMPLE_LEN: usize = 12;
/// The results message always carries room for 2 × [`PROBES`] samples.
pub const RESULTS_LEN: usize = 8 + 2 * PROBES as usize * SAMPLE_LEN;

/// One message of the exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtpMsg {
    /// host → guest: run a round for guest CPU `cpu`.
    Probe { cpu: u16 },
    /// host → guest: no more rounds.
    Stop,
    /// guest → host, echoed back: a round begins.
    Start { series: u32, flags: u32 },
    /// A probe and its echo.
    Ping { count: u32 },
    /// guest → host: the probes are done.
    End,
    /// host → guest: when the host saw each probe (probe id, trace time).
    Results {
        series: u32,
        samples: Vec<(u32, u64)>,
    },
    /// guest → host: at guest time `ts`, host − guest = `offset`.
    Offset { ts: u64, offset: i64 },
}

impl PtpMsg {
    /// The V3 TIME_SYNC message that carries it.
    pub fn to_v3(&self) -> Msg {
        let (proto, id, payload) = match self {
            PtpMsg::Probe { cpu } => (NONE, CMD_PROBE, cpu.to_ne_bytes().to_vec()),
            PtpMsg::Stop => (NONE, CMD_STOP, vec![]),
            PtpMsg::Start { series, flags } => {
                let mut p = series.to_be_bytes().to_vec();
                p.extend_from_slice(&flags.to_be_bytes());
                (PTP, PKT_START, p)
            }
            PtpMsg::Ping { count } => (PTP, PKT_PROBE, count.to_be_bytes().to_vec()),
            PtpMsg::End => (PTP, PKT_END, vec![]),
            PtpMsg::Results { series, samples } => {
                // As 3.x sends it: a fixed-size array, the host's samples first.
                let mut p = vec![0u8; RESULTS_LEN];
                p[..4].copy_from_slice(&series.to_be_bytes());
                let n = samples.len().min(2 * PROBES as usize);
                p[4..8].copy_from_slice(&(n as u32).to_be_bytes());
                for (i, &(id, ts)) in samples.iter().take(n).enumerate() {
                    let o = 8 + i * SAMPLE_LEN;
                    p[o..o + 8].copy_from_slice(&ts.to_be_bytes());
                    p[o + 8..o + 12].copy_from_slice(&id.to_be_bytes());
                }
                (PTP, PKT_RESULTS, p)
            }
            PtpMsg::Offset { ts, offset } => {
                let mut p = ts.to_be_bytes().to_vec();
                p.extend_from_slice(&offset.to_be_bytes());
                (PTP, PKT_OFFSET, p)
            }
        };
        Msg::TimeSync {
            proto: proto.to_string(),
            id,
            payload,
        }
    }

    /// Reads one from a TIME_SYNC message; anything else, an unknown id or a
    /// payload of the wrong size is an error.
    pub fn from_v3(m: &Msg) -> Result<PtpMsg> {
        let Msg::TimeSync { proto, id, payload } = m else {
            return Err(MsgError::Unexpected {
                expected: "TIME_SYNC",
                got: m.name(),
            });
        };
        let p = payload.as_slice();
        let bad = |what: &'static str| MsgError::BadText(format!("clock sync ({proto}): {what}"));
        let want = |n: usize, what: &'static str| {
            if p.len() < n {
                Err(bad(what))
            } else {
                Ok(())
            }
        };
        match (proto.as_str(), *id) {
            (NONE, CMD_PROBE) => {
                want(2, "a round request without its CPU number")?;
                Ok(PtpMsg::Probe {
                    cpu: u16::from_ne_bytes([p[0], p[1]]),
                })
            }
            (NONE, CMD_STOP) => Ok(PtpMsg::Stop),
            (PTP, PKT_START) => {
                want(8, "a START shorter than 8 bytes")?;
                Ok(PtpMsg::Start {
                    series: get32(p, 0),
                    flags: get32(p, 4),
                })
            }
            (PTP, PKT_PROBE) => {
                want(4, "a probe shorter than 4 bytes")?;
                Ok(PtpMsg::Ping { count: get32(p, 0) })
            }
            (PTP, PKT_END) => Ok(PtpMsg::End),
            (PTP, PKT_RESULTS) => {
                want(8, "results shorter than 8 bytes")?;
                let count = get32(p, 4) as usize;
                let room = (p.len() - 8) / SAMPLE_LEN;
                if count > room || count > 2 * PROBES as usize {
                    return Err(bad("results claim more samples than they carry"));
                }
                let samples = (0..count)
                    .map(|i| {
                        let o = 8 + i * SAMPLE_LEN;
                        (get32(p, o + 8), get64(p, o))
                    })
                    .collect();
                Ok(PtpMsg::Results {
                    series: get32(p, 0),
                    samples,
                })
            }
            (PTP, PKT_OFFSET) => {
                want(16, "an offset shorter than 16 bytes")?;
                Ok(PtpMsg::Offset {
                    ts: get64(p, 0),
                    offset: get64(p, 8) as i64,
                })
            }
            _ => Err(bad("an unknown message")),
        }
    }
}

/// Sends one message.
pub fn send(ch: &Channel<'_>, m: &PtpMsg) -> Result<()> {
    v3::send(ch, &m.to_v3())
}

/// Receives one message (the channel's timeout applies).
pub fn recv(ch: &Channel<'_>) -> Result<PtpMsg> {
    PtpMsg::from_v3(&v3::recv(ch, Wait::Timed)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_results_fill_the_fixed_array() {
        let all = [
            PtpMsg::Probe { cpu: 3 },
            PtpMsg::Stop,
            PtpMsg::Start {
                series: 7,
                flags: 3,
            },
            PtpMsg::Ping { count: 339 },
            PtpMsg::End,
            PtpMsg::Results {
                series: 7,
                samples: vec![(1, 10), (2, 20)],
            },
            PtpMsg::Offset { ts: 5, offset: -9 },
        ];
        for m in all {
            let bytes = m.to_v3().encode().unwrap();
            let (back, used) = v3::decode(&bytes).unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(PtpMsg::from_v3(&back).unwrap(), m);
        }
        // 3.x's results message: 12 + 20 + 8144 bytes.
        let r = PtpMsg::Results {
            series: 1,
            samples: vec![],
        };
        assert_eq!(r.to_v3().encode().unwrap().len(), 12 + 20 + RESULTS_LEN);
        // The header bytes 3.x sends for a probe request on CPU 0.
        let p = PtpMsg::Probe { cpu: 0 }.to_v3().encode().unwrap();
        assert_eq!(&p[..16], b"\0\0\0\x22\0\0\0\x09\0\0\0\x14none");
    }

    #[test]
    fn short_or_overfull_payloads_are_errors() {
        let ts = |proto: &str, id, payload: Vec<u8>| Msg::TimeSync {
            proto: proto.into(),
            id,
            payload,
        };
        assert!(PtpMsg::from_v3(&ts(PTP, PKT_PROBE, vec![0, 0])).is_err());
        assert!(PtpMsg::from_v3(&ts(PTP, PKT_OFFSET, vec![0; 15])).is_err());
        assert!(PtpMsg::from_v3(&ts(NONE, CMD_PROBE, vec![])).is_err());
        assert!(PtpMsg::from_v3(&ts("kvm", 1, vec![])).is_err());
        let mut r = vec![0u8; 8 + 12];
        r[7] = 2; // two samples claimed, one carried
        assert!(PtpMsg::from_v3(&ts(PTP, PKT_RESULTS, r)).is_err());
    }
}
