//! Host and guest on one clock (`record -A`, issue 12): reading a trace clock,
//! the probe rounds of the manager and the agent's answers (wire in
//! [`crate::msg::tsync`]), the piecewise-linear correction they give, and the
//! rewrite of a guest's recorded pages onto the host's timeline.
//!
//! **Reading the trace clock.** Each side must read the clock its tracing stamps
//! events with. `local`/`global` are the kernel's sched_clock, which no
//! `clock_gettime` clock returns (measured here: several ms away from
//! CLOCK_MONOTONIC). So each side keeps a small private tracefs instance with the
//! same `trace_clock`, writes a few `trace_marker` lines bracketed by
//! `CLOCK_MONOTONIC_RAW` readings, reads the markers' timestamps back from the
//! instance's `trace_pipe_raw`, and keeps the offset of the tightest bracket. A
//! probe then reads `CLOCK_MONOTONIC_RAW` (cheap) plus that offset. The
//! calibration is redone at every round, so the two clocks' rate difference over
//! one interval is what remains. Only ns clocks can be synced (`x86-tsc` and
//! `counter` count something else).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::msg::ptp::{self, PtpMsg};
use crate::msg::tsync::{self as wire, TsyncMsg};
use crate::msg::{Channel, MsgError, Wait};
use crate::output::layout::{rewrite_file_pages, EventLayout, PageLayout};
use crate::tracefs::Instance;

/// Probes per round; the shortest round trips of them are kept.
pub const PROBES: usize = 40;
/// The longest the manager waits for the answer to its offer. An agent that does
/// not know the exchange never answers; the recording then goes on unsynced.
pub const OFFER_WAIT: Duration = Duration::from_secs(2);
/// The shortest: scheduling delays of a loaded host or a TCG guest reach
/// hundreds of ms whatever the round trip measured before.
pub const OFFER_WAIT_MIN: Duration = Duration::from_millis(500);

/// How long to wait for the answer to the offer, given `reply`, how long the
/// agent took to start its metadata after our RINIT (a round trip plus a little
/// work, measured on the same channel). Our agent answers the offer at once
/// (its clock is opened at the first round), so 20 such replies are plenty;
/// a C agent, which never answers, then costs this instead of [`OFFER_WAIT`].
pub fn offer_wait(reply: Duration) -> Duration {
    reply.saturating_mul(20).clamp(OFFER_WAIT_MIN, OFFER_WAIT)
}
/// An offset change between two rounds beyond this (plus the drift allowance
/// and both rounds' error) is a clock step, not drift.
pub const STEP_MIN_NS: i64 = 1_000_000;
/// Largest plausible rate difference of two clocks (ppm) before a change is
/// called a step.
pub const MAX_DRIFT_PPM: i64 = 1000;
/// Option id of the stored corrections (not a trace-cmd id: a v6 file has one
/// options block for all buffers, and TIME_SHIFT there would shift the host).
pub const OPTION_GUEST_CLOCK: u16 = 64;

/// Why clock sync could not be done.
#[derive(Debug, thiserror::Error)]
pub enum TsyncError {
    /// The clock counts no nanoseconds.
    #[error("trace clock {0:?} is not a nanosecond clock; host and guest cannot be aligned (use local, global, mono, mono_raw or boot)")]
    UnsupportedClock(String),
    /// The private tracefs instance for reading the clock failed.
    #[error("cannot read trace clock {clock:?} through tracefs: {source}")]
    Tracefs {
        /// The clock.
        clock: String,
        /// Why.
        source: std::io::Error,
    },
    /// None of the calibration markers came back.
    #[error("the trace clock calibration markers were not found in the instance's buffer")]
    NoMarkers,
    /// The exchange failed.
    #[error("clock sync exchange: {0}")]
    Msg(#[from] MsgError),
    /// The agent could not read its clock.
    #[error("the agent cannot sync clocks: {0}")]
    Refused(String),
    /// The agent answered out of turn.
    #[error("clock sync: the agent sent {0} out of turn")]
    OutOfTurn(String),
}

/// Whether `clock` is a trace clock that counts ns.
pub fn is_ns_clock(clock: &str) -> bool {
    matches!(
        clock,
        "local" | "global" | "perf" | "mono" | "mono_raw" | "boot" | "tai"
    )
}

fn raw_now() -> u64 {
    clock_ns(nix::time::ClockId::CLOCK_MONOTONIC_RAW)
}

/// `clock`'s time in ns (CLOCK_MONOTONIC_RAW and CLOCK_MONOTONIC always exist on Linux).
fn clock_ns(clock: nix::time::ClockId) -> u64 {
    nix::time::clock_gettime(clock).map_or(0, |ts| {
        ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
    })
}

/// Reads one trace clock (see the module documentation).
#[derive(Debug)]
pub struct TraceClock {
    clock: String,
    // Declared before the instance: closed before it is removed.
    marker: File,
    inst: Instance,
    pl: PageLayout,
    el: EventLayout,
    page_size: usize,
    /// trace clock − CLOCK_MONOTONIC_RAW, from the last calibration.
    offset: i64,
    /// Half the width of the calibration's tightest bracket.
    pub uncertainty_ns: u64,
}

const MARK: &[u8] = b"tracecmd-rs-tsync ";
/// Name of the private instances: `<prefix><pid>-<n>`.
const INSTANCE_PREFIX: &str = "tracecmd-rs-tsync-";

/// Removes the clock-reading instances of processes that are gone (a process
/// killed with SIGKILL cannot remove its own); returns how many.
pub fn remove_stale_instances() -> usize {
    let Ok(top) = crate::tracefs::tracing_dir() else {
        return 0;
    };
    let Ok(dir) = std::fs::read_dir(top.join("instances")) else {
        return 0;
    };
    let mut removed = 0;
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(INSTANCE_PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        // A zombie is gone too: its instance has no owner any more.
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|st| {
                st.rsplit(')')
                    .next()
                    .is_some_and(|r| !r.trim_start().starts_with('Z'))
            })
            .unwrap_or(false);
        if !alive && std::fs::remove_dir(e.path()).is_ok() {
            log::info!("removed the stale clock-sync instance {name}");
            removed += 1;
        }
    }
    removed
}

impl TraceClock {
    /// A private instance with trace clock `clock`, calibrated once.
    pub fn open(clock: &str) -> Result<TraceClock, TsyncError> {
        if !is_ns_clock(clock) {
            return Err(TsyncError::UnsupportedClock(clock.to_string()));
        }
        let io = |source| TsyncError::Tracefs {
            clock: clock.to_string(),
            source,
        };
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        remove_stale_instances();
        let name = format!(
            "{INSTANCE_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let inst = Instance::create(&name).map_err(io)?;
        let other = |e: crate::tracefs::TracefsError| io(std::io::Error::other(e.to_string()));
        inst.set_trace_clock(clock).map_err(other)?;
        let pl = PageLayout::parse(&inst.header_page().map_err(other)?)
            .ok_or_else(|| io(std::io::Error::other("unreadable header_page")))?;
        let el = EventLayout::parse(&inst.header_event().map_err(other)?)
            .ok_or_else(|| io(std::io::Error::other("unreadable header_event")))?;
        let marker = OpenOptions::new()
            .write(true)
            .open(inst.path().join("trace_marker"))
            .map_err(io)?;
        let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096) as usize;
        let mut c = TraceClock {
            clock: clock.to_string(),
            marker,
            inst,
            pl,
            el,
            page_size,
            offset: 0,
            uncertainty_ns: 0,
        };
        c.calibrate()?;
        Ok(c)
    }

    /// The clock's name.
    pub fn name(&self) -> &str {
        &self.clock
    }

    /// Re-measures the offset of the trace clock from CLOCK_MONOTONIC_RAW.
    pub fn calibrate(&mut self) -> Result<(), TsyncError> {
        const N: usize = 8;
        let mut brackets = Vec::with_capacity(N);
        for k in 0..N {
            let t0 = raw_now();
            let mut line = MARK.to_vec();
            line.extend_from_slice(k.to_string().as_bytes());
            let ok = self.marker.write_all(&line).is_ok();
            let t1 = raw_now();
            brackets.push(ok.then_some((t0, t1)));
        }
        let stamps = self.read_markers()?;
        let best = stamps
            .iter()
            .filter_map(|&(k, ts)| {
                let (t0, t1) = (*brackets.get(k)?)?;
                Some((t1 - t0, ts as i128 - (t0 as i128 + t1 as i128) / 2))
            })
            .min_by_key(|&(w, _)| w)
            .ok_or(TsyncError::NoMarkers)?;
        self.offset = best.1 as i64;
        self.uncertainty_ns = best.0 / 2;
        Ok(())
    }

    /// (marker index, timestamp) of the markers in the instance's buffer (which
    /// is emptied).
    fn read_markers(&self) -> Result<Vec<(usize, u64)>, TsyncError> {
        let mut out = Vec::new();
        let cpus = crate::tracefs::cpu_count(&self.inst).unwrap_or(1);
        let mut page = vec![0u8; self.page_size];
        for cpu in 0..cpus {
            let Ok(mut f) = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(self.inst.trace_pipe_raw(cpu))
            else {
                continue;
            };
            // A bounded number of pages: the markers are a few hundred bytes.
            for _ in 0..64 {
                match f.read(&mut page) {
                    Ok(n) if n > 0 => {
                        let _ = crate::output::layout::walk_page(
                            &page[..n],
                            &self.pl,
                            &self.el,
                            false,
                            |r| {
                                if let Some(k) = marker_index(r.payload) {
                                    out.push((k, r.ts));
                                }
                            },
                        );
                    }
                    _ => break,
                }
            }
        }
        Ok(out)
    }

    /// The trace clock now, in ns.
    pub fn now(&self) -> u64 {
        (raw_now() as i64).wrapping_add(self.offset) as u64
    }
}

fn marker_index(payload: &[u8]) -> Option<usize> {
    let at = payload.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let digits: Vec<u8> = payload[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// One round's result: at guest time `guest_ns`, host = guest + `offset_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncPoint {
    /// Guest trace clock at the best probe.
    pub guest_ns: u64,
    /// Host − guest.
    pub offset_ns: i64,
    /// The best probe's round trip.
    pub rtt_ns: u64,
    /// Error bound of this point: half the round trip plus the host's
    /// calibration uncertainty.
    pub error_ns: u64,
}

/// Picks the round's point from (host send, guest, host receive) samples: the
/// shortest round trips, their median offset.
pub fn best_point(samples: &[(u64, u64, u64)], host_uncertainty: u64) -> Option<SyncPoint> {
    let mut v: Vec<(u64, u64, i64)> = samples
        .iter()
        .filter(|s| s.2 >= s.0)
        .map(|&(t0, g, t1)| {
            let mid = t0 + (t1 - t0) / 2;
            (t1 - t0, g, mid as i64 - g as i64)
        })
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by_key(|s| s.0);
    let keep = (v.len() / 4).max(1);
    let mut best = v[..keep].to_vec();
    let rtt = best[0].0;
    best.sort_by_key(|s| s.2);
    let (_, g, off) = best[keep / 2];
    Some(SyncPoint {
        guest_ns: g,
        offset_ns: off,
        rtt_ns: rtt,
        error_ns: rtt / 2 + host_uncertainty,
    })
}

/// One round with the agent on `ch`: ROUND/READY, then [`PROBES`] probes.
pub fn round(ch: &Channel<'_>, host: &mut TraceClock) -> Result<SyncPoint, TsyncError> {
    wire::send(ch, &TsyncMsg::Round)?;
    expect(ch, |m| matches!(m, TsyncMsg::Ready))?;
    host.calibrate()?;
    let mut samples = Vec::with_capacity(PROBES);
    for seq in 0..PROBES as u32 {
        let t0 = host.now();
        wire::send(ch, &TsyncMsg::Probe { seq })?;
        let TsyncMsg::Time { ns, .. } = expect(
            ch,
            |m| matches!(m, TsyncMsg::Time { seq: s, .. } if *s == seq),
        )?
        else {
            unreachable!("expect checked the kind")
        };
        let t1 = host.now();
        samples.push((t0, ns, t1));
    }
    best_point(&samples, host.uncertainty_ns).ok_or(TsyncError::NoMarkers)
}

/// The next tsync message, which must satisfy `ok`; other messages are skipped.
fn expect(ch: &Channel<'_>, ok: impl Fn(&TsyncMsg) -> bool) -> Result<TsyncMsg, TsyncError> {
    loop {
        match wire::recv(ch, Wait::Timed)? {
            Ok(TsyncMsg::Refuse { reason }) => return Err(TsyncError::Refused(reason)),
            Ok(m) if ok(&m) => return Ok(m),
            Ok(m) => return Err(TsyncError::OutOfTurn(format!("{m:?}"))),
            Err(m) => log::debug!("clock sync: skipping {}", m.cmd().name()),
        }
    }
}

/// Offers clock sync to the agent on `ch` and waits up to `wait` for its answer.
/// `Ok(None)`: no answer (an agent that does not know the exchange).
pub fn offer(ch: &Channel<'_>, wait: Duration) -> Result<Option<String>, TsyncError> {
    wire::send(ch, &TsyncMsg::Offer)?;
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let timed = Channel::new(ch.fd()).with_timeout(Some(left));
        match wire::recv(&timed, Wait::Timed) {
            Ok(Ok(TsyncMsg::Accept { clock })) => return Ok(Some(clock)),
            Ok(Ok(TsyncMsg::Refuse { reason })) => return Err(TsyncError::Refused(reason)),
            Ok(Ok(m)) => return Err(TsyncError::OutOfTurn(format!("{m:?}"))),
            Ok(Err(m)) => log::debug!("clock sync offer: skipping {}", m.cmd().name()),
            Err(MsgError::TimedOut(_)) => return Ok(None),
            Err(MsgError::Interrupted) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The agent's side: answers the manager's tsync messages with its trace clock.
#[derive(Debug)]
pub struct AgentClock {
    clock: String,
    offered: bool,
    reader: Option<TraceClock>,
}

impl AgentClock {
    /// For a recording with trace clock `clock`.
    pub fn new(clock: &str) -> AgentClock {
        AgentClock {
            clock: clock.to_string(),
            offered: false,
            reader: None,
        }
    }

    /// Answers one tsync payload received on `ch`.
    pub fn handle(&mut self, ch: &Channel<'_>, payload: &[u8]) -> Result<(), TsyncError> {
        let answer = match TsyncMsg::decode(payload)? {
            // Answered at once: the manager waits only a little for it
            // (offer_wait). The clock's instance is made at the first round.
            TsyncMsg::Offer if is_ns_clock(&self.clock) => {
                self.offered = true;
                TsyncMsg::Accept {
                    clock: self.clock.clone(),
                }
            }
            TsyncMsg::Offer => TsyncMsg::Refuse {
                reason: TsyncError::UnsupportedClock(self.clock.clone()).to_string(),
            },
            TsyncMsg::Round if !self.offered => TsyncMsg::Refuse {
                reason: "no offer before the round".into(),
            },
            TsyncMsg::Round => {
                let ready = match self.reader.as_mut() {
                    Some(r) => r.calibrate(),
                    None => TraceClock::open(&self.clock).map(|r| self.reader = Some(r)),
                };
                match ready {
                    Ok(()) => TsyncMsg::Ready,
                    Err(e) => TsyncMsg::Refuse {
                        reason: e.to_string(),
                    },
                }
            }
            TsyncMsg::Probe { seq } => match &self.reader {
                Some(r) => TsyncMsg::Time { seq, ns: r.now() },
                None => TsyncMsg::Refuse {
                    reason: "no offer before the probe".into(),
                },
            },
            m => return Err(TsyncError::OutOfTurn(format!("{m:?}"))),
        };
        wire::send(ch, &answer)?;
        Ok(())
    }
}

/// One round of 3.x's PTP exchange as the host (3.x's client role) for guest CPU
/// `cpu`, on the connection to the agent's clock-sync port. The guest leads the
/// probes and computes the offset; this side stamps each probe with its trace
/// clock and measures the round trip between its echo and the next probe.
pub fn ptp_round(
    ch: &Channel<'_>,
    host: &mut TraceClock,
    cpu: u16,
) -> Result<SyncPoint, TsyncError> {
    host.calibrate()?;
    ptp::send(ch, &PtpMsg::Probe { cpu })?;
    let (series, flags) = match ptp::recv(ch)? {
        PtpMsg::Start { series, flags } => (series, flags),
        m => return Err(TsyncError::OutOfTurn(format!("{m:?}"))),
    };
    // Without the flag 3.x stamps with CLOCK_MONOTONIC_RAW, which is the trace
    // clock only for mono_raw.
    let use_trace_clock = flags & ptp::FLAG_USE_MARKER != 0;
    if !use_trace_clock && host.name() != "mono_raw" {
        return Err(TsyncError::Refused(format!(
            "the guest stamps probes with CLOCK_MONOTONIC_RAW (PTP flags {flags:#x}), not the trace clock {:?}",
            host.name()
        )));
    }
    ptp::send(ch, &PtpMsg::Start { series, flags })?;
    let probes = ptp::PROBES as usize;
    let mut seen = vec![(0u32, 0u64); probes];
    let (mut got, mut last) = (0usize, 0usize);
    let mut rtt = u64::MAX;
    let mut echoed: Option<u64> = None;
    loop {
        match ptp::recv(ch)? {
            PtpMsg::Ping { count } if (1..=ptp::PROBES).contains(&count) && got < probes => {
                let t = host.now();
                if let Some(e) = echoed {
                    rtt = rtt.min(t.saturating_sub(e));
                }
                seen[count as usize - 1] = (count, t);
                got += 1;
                last = last.max(count as usize);
                ptp::send(ch, &PtpMsg::Ping { count })?;
                echoed = Some(host.now());
            }
            PtpMsg::End => break,
            m => return Err(TsyncError::OutOfTurn(format!("{m:?}"))),
        }
    }
    // 3.x's layout: the sample of probe n at index n − 1.
    seen.truncate(last);
    ptp::send(
        ch,
        &PtpMsg::Results {
            series,
            samples: seen,
        },
    )?;
    match ptp::recv(ch)? {
        // 3.x's guest sends zeros when no probe was usable.
        PtpMsg::Offset { ts: 0, offset: 0 } => Err(TsyncError::Refused(
            "the guest found no usable probe in the round".into(),
        )),
        PtpMsg::Offset { ts, offset } => {
            let rtt = if rtt == u64::MAX { 0 } else { rtt };
            Ok(SyncPoint {
                guest_ns: ts,
                offset_ns: offset,
                rtt_ns: rtt,
                error_ns: rtt / 2 + host.uncertainty_ns,
            })
        }
        m => Err(TsyncError::OutOfTurn(format!("{m:?}"))),
    }
}

/// Waits until `fd` is readable or `stop` is set (false); polls in short slices.
fn readable(fd: std::os::fd::BorrowedFd<'_>, stop: &AtomicBool) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => return true,
            Err(_) => return false,
        }
    }
    false
}

/// The guest's side of 3.x's PTP exchange (3.x's server role), for a host that
/// connected to the agent's clock-sync port: leads one round per request until
/// the host says STOP, leaves, or `stop` is set. Returns the rounds done.
pub fn ptp_serve(ch: &Channel<'_>, clock: &str, stop: &AtomicBool) -> Result<usize, TsyncError> {
    let mut clock = TraceClock::open(clock)?;
    let mut rounds = 0;
    let mut series = 0u32;
    while readable(ch.fd(), stop) {
        match ptp::recv(ch) {
            Ok(PtpMsg::Probe { .. }) => {}
            Ok(PtpMsg::Stop) | Err(MsgError::Closed) => break,
            Ok(m) => return Err(TsyncError::OutOfTurn(format!("{m:?}"))),
            Err(e) => return Err(e.into()),
        }
        series = series.wrapping_add(1);
        ptp_lead_round(ch, &mut clock, series)?;
        rounds += 1;
    }
    Ok(rounds)
}

fn ptp_lead_round(ch: &Channel<'_>, clock: &mut TraceClock, series: u32) -> Result<(), TsyncError> {
    clock.calibrate()?;
    let flags = ptp::FLAG_FASTEST | ptp::FLAG_USE_MARKER;
    ptp::send(ch, &PtpMsg::Start { series, flags })?;
    match ptp::recv(ch)? {
        PtpMsg::Start { .. } => {}
        m => return Err(TsyncError::OutOfTurn(format!("{m:?}"))),
    }
    let mut own = Vec::with_capacity(ptp::PROBES as usize);
    for count in 1..=ptp::PROBES {
        let t0 = clock.now();
        ptp::send(ch, &PtpMsg::Ping { count })?;
        match ptp::recv(ch)? {
            PtpMsg::Ping { count: c } if c == count => own.push((t0, clock.now())),
            m => return Err(TsyncError::OutOfTurn(format!("{m:?}"))),
        }
    }
    ptp::send(ch, &PtpMsg::End)?;
    let samples = match ptp::recv(ch)? {
        PtpMsg::Results { samples, .. } => samples,
        m => return Err(TsyncError::OutOfTurn(format!("{m:?}"))),
    };
    // (guest send, host, guest receive): the host's view mirrored.
    let triples: Vec<_> = samples
        .iter()
        .zip(&own)
        .enumerate()
        .filter(|&(i, (&(id, ts), _))| id as usize == i + 1 && ts != 0)
        .map(|(_, (&(_, ts), &(t0, t1)))| (t0, ts, t1))
        .collect();
    let answer = match best_point(&triples, clock.uncertainty_ns) {
        // p.guest_ns is the host's time, p.offset_ns guest − host at it.
        Some(p) => PtpMsg::Offset {
            ts: p.guest_ns.wrapping_add_signed(p.offset_ns),
            offset: -p.offset_ns,
        },
        None => PtpMsg::Offset { ts: 0, offset: 0 },
    };
    ptp::send(ch, &answer)?;
    Ok(())
}

/// A clock step found between two rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Guest time of the round before the step.
    pub from_guest_ns: u64,
    /// Guest time of the round after it.
    pub to_guest_ns: u64,
    /// How far the offset jumped.
    pub jump_ns: i64,
}

/// The guest → host mapping from the rounds, in the order they ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Correction {
    /// The rounds' points, in time order.
    pub points: Vec<SyncPoint>,
    /// Intervals with a step (not interpolated: the earlier offset holds).
    pub steps: Vec<Step>,
}

impl Correction {
    /// Builds the mapping; an offset change that drift cannot explain is a step.
    pub fn new(points: Vec<SyncPoint>) -> Correction {
        let mut steps = Vec::new();
        for w in points.windows(2) {
            let (a, b) = (w[0], w[1]);
            let jump = b.offset_ns - a.offset_ns;
            let span = b.guest_ns as i128 - a.guest_ns as i128;
            let allowed = STEP_MIN_NS
                + (span.unsigned_abs() as i64).saturating_mul(MAX_DRIFT_PPM) / 1_000_000
                + (a.error_ns + b.error_ns) as i64;
            if span <= 0 || jump.abs() > allowed {
                steps.push(Step {
                    from_guest_ns: a.guest_ns,
                    to_guest_ns: b.guest_ns,
                    jump_ns: jump,
                });
            }
        }
        Correction { points, steps }
    }

    fn is_step(&self, a: &SyncPoint, b: &SyncPoint) -> bool {
        self.steps
            .iter()
            .any(|s| s.from_guest_ns == a.guest_ns && s.to_guest_ns == b.guest_ns)
    }

    /// Host − guest at guest time `g`: linear between two rounds, constant
    /// before the first and after the last, and the earlier offset across a step.
    pub fn offset_at(&self, g: u64) -> i64 {
        let p = &self.points;
        let Some(first) = p.first() else { return 0 };
        for w in p.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            if a.guest_ns <= g && g < b.guest_ns {
                if self.is_step(a, b) {
                    return a.offset_ns;
                }
                let frac = (g - a.guest_ns) as i128 * (b.offset_ns - a.offset_ns) as i128
                    / (b.guest_ns - a.guest_ns) as i128;
                return a.offset_ns + frac as i64;
            }
        }
        if g < first.guest_ns {
            first.offset_ns
        } else {
            p.iter()
                .rev()
                .find(|x| x.guest_ns <= g)
                .unwrap_or(first)
                .offset_ns
        }
    }

    /// Guest time `g` on the host's clock.
    pub fn map(&self, g: u64) -> u64 {
        (g as i128 + self.offset_at(g) as i128).clamp(0, u64::MAX as i128) as u64
    }

    /// The per-guest figures of the summary.
    pub fn summary(&self) -> Option<TsyncSummary> {
        let first = self.points.first()?;
        let last = self.points.last()?;
        let span = last.guest_ns.saturating_sub(first.guest_ns);
        let drift_ppm = if span > 0 && self.steps.is_empty() {
            (last.offset_ns - first.offset_ns) as f64 * 1e6 / span as f64
        } else {
            0.0
        };
        Some(TsyncSummary {
            rounds: self.points.len(),
            offset_ns: first.offset_ns,
            drift_ppm,
            best_rtt_ns: self.points.iter().map(|p| p.rtt_ns).min().unwrap_or(0),
            error_ns: self.points.iter().map(|p| p.error_ns).max().unwrap_or(0),
            steps: self.steps.clone(),
        })
    }

    /// The text stored in the file (option [`OPTION_GUEST_CLOCK`]), from which the
    /// raw guest clock can be recovered: raw = shown − offset(raw), with offset
    /// interpolated between the listed points as [`Correction::offset_at`] does.
    pub fn option_text(&self, guest: &str, guest_clock: &str, host_clock: &str) -> String {
        let mut s = format!(
            "tracecmd-rs guest clock v1\nguest {guest}\nguest_clock {guest_clock}\nhost_clock {host_clock}\n"
        );
        for p in &self.points {
            s.push_str(&format!(
                "point {} {} {} {}\n",
                p.guest_ns, p.offset_ns, p.rtt_ns, p.error_ns
            ));
        }
        for st in &self.steps {
            s.push_str(&format!(
                "step {} {} {}\n",
                st.from_guest_ns, st.to_guest_ns, st.jump_ns
            ));
        }
        s
    }
}

/// What the summary says about one guest's clock.
#[derive(Debug, Clone, PartialEq)]
pub struct TsyncSummary {
    /// Rounds done.
    pub rounds: usize,
    /// Host − guest at the first round.
    pub offset_ns: i64,
    /// Rate difference over the recording (0 when it stepped).
    pub drift_ppm: f64,
    /// Shortest round trip seen.
    pub best_rtt_ns: u64,
    /// Largest error bound of a round.
    pub error_ns: u64,
    /// Steps found.
    pub steps: Vec<Step>,
}

impl std::fmt::Display for TsyncSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "offset {} ns, drift {:.3} ppm, best round trip {} ns, error bound ±{} ns ({} rounds)",
            self.offset_ns, self.drift_ppm, self.best_rtt_ns, self.error_ns, self.rounds
        )?;
        for s in &self.steps {
            write!(
                f,
                "; the guest clock stepped by {} ns between guest times {} and {} (events there keep the earlier offset)",
                s.jump_ns, s.from_guest_ns, s.to_guest_ns
            )?;
        }
        Ok(())
    }
}

/// Which clock alignment a guest got: the summary says it per guest.
#[derive(Debug, Clone, PartialEq)]
pub enum GuestSync {
    /// This crate's exchange with a virt-server agent ran; its figures.
    Synced(TsyncSummary),
    /// trace-cmd 3.x's PTP exchange ran; its figures.
    SyncedPtp(TsyncSummary),
    /// The user turned sync off (`--tsync-interval -1`).
    Off,
    /// A 3.x agent over TCP: 3.x syncs clocks only over vsock.
    TcpPeer,
    /// The agent did not answer the offer (it does not know the exchange).
    AgentDeclined,
    /// Sync was tried and failed.
    Failed(String),
}

impl std::fmt::Display for GuestSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuestSync::Synced(s) => write!(f, "synced: {s}"),
            GuestSync::SyncedPtp(s) => write!(f, "synced (ptp): {s}"),
            GuestSync::Off => f.write_str("none: --tsync-interval -1"),
            GuestSync::TcpPeer => f.write_str(
                "none: TCP peer (trace-cmd 3.x syncs clocks over vsock only); guest timestamps are the guest's clock",
            ),
            GuestSync::AgentDeclined => f.write_str(
                "none: the agent does not sync clocks; guest timestamps are the guest's clock",
            ),
            GuestSync::Failed(e) => {
                write!(f, "none: {e}; guest timestamps are the guest's clock")
            }
        }
    }
}

/// How `record -A` syncs guest clocks (`--tsync-interval`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsyncConfig {
    /// Time between rounds while recording; `None`: only before and at the end.
    pub interval: Option<Duration>,
    /// The host's trace clock (of the buffer it records).
    pub host_clock: String,
}

/// One guest's clock sync while it records: the first round before the guest's
/// data counts, then a thread that runs a round every interval.
#[derive(Debug)]
pub struct ClockSync {
    guest_clock: String,
    host_clock: String,
    exchange: Exchange,
    /// The clock-sync connection when it is not the agent's control channel (PTP).
    own: Option<OwnedFd>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<SyncState>>,
}

/// Which exchange a guest's rounds use; the correction and the file are the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    /// This crate's exchange with `agent --virt` (on the control channel).
    Virt,
    /// trace-cmd 3.x's PTP (on its own connection).
    Ptp,
}

impl Exchange {
    fn round(self, ch: &Channel<'_>, host: &mut TraceClock) -> Result<SyncPoint, TsyncError> {
        match self {
            Exchange::Virt => round(ch, host),
            // One correction for all guest CPUs: ns trace clocks are per machine.
            Exchange::Ptp => ptp_round(ch, host, 0),
        }
    }
}

#[derive(Debug)]
struct SyncState {
    host: TraceClock,
    points: Vec<SyncPoint>,
    failed: Option<TsyncError>,
}

/// What a guest's clock sync gives the file and the summary.
#[derive(Debug)]
pub struct GuestClock {
    /// The guest's trace clock.
    pub guest_clock: String,
    /// The host's.
    pub host_clock: String,
    /// The mapping.
    pub correction: Correction,
    /// A round that failed (the rounds before it still count).
    pub failed: Option<TsyncError>,
    /// The exchange used.
    pub exchange: Exchange,
}

impl ClockSync {
    /// Offers sync to the agent on `agent` and, when it accepts, runs the first
    /// round and starts the periodic ones. `Ok(None)`: the agent did not answer
    /// (a peer that does not know the exchange), nothing changes.
    /// `reply` is the agent's reply time measured before ([`offer_wait`]).
    pub fn start(
        agent: &OwnedFd,
        cfg: &TsyncConfig,
        reply: Duration,
    ) -> Result<Option<ClockSync>, TsyncError> {
        // The host's clock first: an offer the host cannot follow is not made.
        let host = TraceClock::open(&cfg.host_clock)?;
        let ch = Channel::new(agent.as_fd());
        let wait = offer_wait(reply);
        log::debug!("clock sync offer: waiting up to {wait:?} (the agent replied in {reply:?})");
        let Some(guest_clock) = offer(&ch, wait)? else {
            return Ok(None);
        };
        let fd = agent.try_clone().map_err(MsgError::Io)?;
        ClockSync::run(fd, None, Exchange::Virt, host, guest_clock, cfg).map(Some)
    }

    /// Starts 3.x's PTP rounds on `conn`, the connection to a 3.x agent's
    /// clock-sync port, for a guest recording with trace clock `guest_clock`.
    pub fn start_ptp(
        conn: OwnedFd,
        cfg: &TsyncConfig,
        guest_clock: &str,
    ) -> Result<ClockSync, TsyncError> {
        let host = TraceClock::open(&cfg.host_clock)?;
        let fd = conn.try_clone().map_err(MsgError::Io)?;
        ClockSync::run(
            fd,
            Some(conn),
            Exchange::Ptp,
            host,
            guest_clock.to_string(),
            cfg,
        )
    }

    /// The first round now (before the guest's data counts), then a thread that
    /// runs one every interval on `fd`.
    fn run(
        fd: OwnedFd,
        own: Option<OwnedFd>,
        exchange: Exchange,
        mut host: TraceClock,
        guest_clock: String,
        cfg: &TsyncConfig,
    ) -> Result<ClockSync, TsyncError> {
        let first = exchange.round(&Channel::new(fd.as_fd()), &mut host)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let interval = cfg.interval;
        let thread = std::thread::Builder::new()
            .name("tsync".into())
            .spawn(move || {
                let mut st = SyncState {
                    host,
                    points: vec![first],
                    failed: None,
                };
                let Some(every) = interval else { return st };
                let ch = Channel::new(fd.as_fd());
                'rounds: loop {
                    let next = Instant::now() + every;
                    while Instant::now() < next {
                        if stopped.load(Ordering::Relaxed) {
                            break 'rounds;
                        }
                        std::thread::sleep(Duration::from_millis(20).min(every));
                    }
                    match exchange.round(&ch, &mut st.host) {
                        Ok(p) => st.points.push(p),
                        Err(e) => {
                            st.failed = Some(e);
                            break;
                        }
                    }
                }
                st
            })
            .map_err(MsgError::Io)?;
        Ok(ClockSync {
            guest_clock,
            host_clock: cfg.host_clock.clone(),
            exchange,
            own,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the periodic rounds and runs the last one (before the agent is
    /// asked to stop) on `agent`, or on the exchange's own connection (PTP,
    /// which then gets STOP).
    pub fn finish(mut self, agent: Option<&OwnedFd>) -> GuestClock {
        self.stop.store(true, Ordering::Relaxed);
        let st = self.thread.take().and_then(|t| t.join().ok());
        let own = self.own.take();
        let fd = own.as_ref().or(agent);
        let (points, failed) = match (st, fd) {
            (Some(mut st), Some(fd)) => {
                let ch = Channel::new(fd.as_fd());
                if st.failed.is_none() {
                    match self.exchange.round(&ch, &mut st.host) {
                        Ok(p) => st.points.push(p),
                        Err(e) => st.failed = Some(e),
                    }
                }
                if own.is_some() && st.failed.is_none() {
                    if let Err(e) = ptp::send(&ch, &PtpMsg::Stop) {
                        log::debug!("clock sync: STOP not sent: {e}");
                    }
                }
                (st.points, st.failed)
            }
            (Some(st), None) => (st.points, st.failed),
            (None, _) => (Vec::new(), None),
        };
        GuestClock {
            guest_clock: std::mem::take(&mut self.guest_clock),
            host_clock: std::mem::take(&mut self.host_clock),
            correction: Correction::new(points),
            failed,
            exchange: self.exchange,
        }
    }
}

impl Drop for ClockSync {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn rd32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Rewrites one little-endian ring-buffer page onto the host's clock: the page
/// timestamp, every delta (data, padding, TIME_EXTEND) and every absolute
/// TIME_STAMP. The deltas are recomputed from the corrected running time.
///
/// A clock step cannot show in the middle of a page: an event's delta field
/// holds 2^27 ns at most, and a full page has no room for a TIME_EXTEND. So the
/// events of a page that holds a step's second round take that round's offset
/// from the page's start (the step happened somewhere in the interval; its end
/// is the only place we know it had). A delta that still does not fit is
/// clamped and made up by the next events; the result counts them. A page that
/// cannot be walked is left as it is (`None`).
pub fn shift_page(
    page: &mut [u8],
    pl: &PageLayout,
    el: &EventLayout,
    c: &Correction,
) -> Option<usize> {
    let (tso, tsl) = pl.timestamp;
    let (co, cl) = pl.commit;
    let hdr_end = pl.data.0.max(co + cl).max(tso + tsl);
    if page.len() < hdr_end || tsl != 8 || cl > 8 {
        return None;
    }
    let mut raw = u64::from_le_bytes(page[tso..tso + 8].try_into().unwrap_or([0; 8]));
    let mut commit = [0u8; 8];
    commit[..cl].copy_from_slice(&page[co..co + cl]);
    let end = pl.data.0 + (u64::from_le_bytes(commit) & ((1 << 27) - 1)) as usize;
    if end > page.len() {
        return None;
    }
    // The steps whose second round falls inside this page (after its timestamp).
    let mut last = raw;
    crate::output::layout::walk_page(page, pl, el, false, |r| last = last.max(r.ts)).ok()?;
    let late: Vec<&Step> = c
        .steps
        .iter()
        .filter(|s| raw < s.to_guest_ns && s.to_guest_ns <= last)
        .collect();
    let map = |g: u64| {
        let off = match late
            .iter()
            .find(|s| s.from_guest_ns <= g && g < s.to_guest_ns)
        {
            Some(s) => c.offset_at(s.to_guest_ns),
            None => c.offset_at(g),
        };
        (g as i128 + off as i128).clamp(0, u64::MAX as i128) as u64
    };
    let mut written = map(raw);
    page[tso..tso + 8].copy_from_slice(&written.to_le_bytes());
    let tlb = el.type_len_bits;
    let tdb = el.time_delta_bits;
    let max_delta = (1u64 << tdb) - 1;
    let mut clamped = 0;
    // New delta for a record at raw time `raw`, at most `max`; updates `written`.
    let mut step = |raw: u64, written: &mut u64, max: u64| {
        let need = map(raw).saturating_sub(*written);
        if need > max {
            clamped += 1;
        }
        let d = need.min(max);
        *written += d;
        d
    };
    let mut off = pl.data.0;
    while off + 4 <= end {
        let h = rd32(page, off);
        let type_len = h & ((1 << tlb) - 1);
        let delta = u64::from(h >> tlb);
        let put_hdr = |page: &mut [u8], d: u64| {
            let v = type_len | ((d as u32) << tlb);
            page[off..off + 4].copy_from_slice(&v.to_le_bytes());
        };
        let next = if type_len == el.padding {
            if delta == 0 || off + 8 > end {
                break;
            }
            raw = raw.wrapping_add(delta);
            let d = step(raw, &mut written, max_delta);
            put_hdr(page, d);
            off + 4 + rd32(page, off + 4) as usize
        } else if type_len == el.time_extend || type_len == el.time_stamp {
            if off + 8 > end {
                return None;
            }
            let ext = (u64::from(rd32(page, off + 4)) << tdb) | delta;
            let v = if type_len == el.time_extend {
                raw = raw.wrapping_add(ext);
                step(raw, &mut written, (1u64 << (tdb + 32)) - 1)
            } else {
                raw = ext;
                written = map(raw);
                written
            };
            put_hdr(page, v & max_delta);
            page[off + 4..off + 8].copy_from_slice(&((v >> tdb) as u32).to_le_bytes());
            off + 8
        } else if type_len == 0 {
            if off + 8 > end {
                return None;
            }
            let len = rd32(page, off + 4) as usize;
            if len < 4 {
                return None;
            }
            raw = raw.wrapping_add(delta);
            let d = step(raw, &mut written, max_delta);
            put_hdr(page, d);
            off + 8 + ((len - 4 + 3) & !3)
        } else if type_len <= el.data_max {
            raw = raw.wrapping_add(delta);
            let d = step(raw, &mut written, max_delta);
            put_hdr(page, d);
            off + 4 + type_len as usize * 4
        } else {
            return None;
        };
        if next <= off || next > end {
            return None;
        }
        off = next;
    }
    Some(clamped)
}

/// Rewrites every whole page of the recorded guest data in `path`; returns the
/// number of pages that could not be walked (left unshifted).
pub fn shift_file(
    path: &Path,
    page_size: usize,
    header_page: &[u8],
    header_event: &[u8],
    c: &Correction,
) -> std::io::Result<u64> {
    let bad = |w: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, w.to_string());
    let pl = PageLayout::parse(header_page).ok_or_else(|| bad("unreadable guest header_page"))?;
    let el =
        EventLayout::parse(header_event).ok_or_else(|| bad("unreadable guest header_event"))?;
    if page_size == 0 || c.points.is_empty() {
        return Ok(0);
    }
    let mut skipped = 0;
    let mut clamped = 0;
    rewrite_file_pages(path, page_size, |page| {
        match shift_page(page, &pl, &el, c) {
            Some(n) => clamped += n,
            None => skipped += 1,
        }
    })?;
    if clamped > 0 {
        log::warn!(
            "{clamped} guest events are shown early: their page holds two clock steps, and an event's delta cannot carry the jump"
        );
    }
    Ok(skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(g: u64, off: i64) -> SyncPoint {
        SyncPoint {
            guest_ns: g,
            offset_ns: off,
            rtt_ns: 1000,
            error_ns: 500,
        }
    }

    #[test]
    fn best_point_takes_the_short_round_trips() {
        // Guest = host − 1_000_000 at the midpoint of the fast probes; the slow
        // ones answer late (their midpoint offset is wrong).
        let s = vec![
            (2_000_000, 1_000_500, 2_001_000),
            (3_000_000, 2_070_000, 3_090_000),
            (4_000_000, 3_000_400, 4_000_800),
            (5_000_000, 4_150_000, 5_400_000),
        ];
        let p = best_point(&s, 5).unwrap();
        assert_eq!(p.rtt_ns, 800);
        assert_eq!(p.offset_ns, 1_000_000);
        assert_eq!(p.error_ns, 405);
        assert!(best_point(&[(5, 1, 4)], 0).is_none());
    }

    #[test]
    fn the_offer_wait_follows_the_reply_time_within_its_bounds() {
        assert_eq!(offer_wait(Duration::ZERO), OFFER_WAIT_MIN);
        assert_eq!(
            offer_wait(Duration::from_millis(40)),
            Duration::from_millis(800)
        );
        assert_eq!(offer_wait(Duration::from_secs(1)), OFFER_WAIT);
        assert_eq!(offer_wait(Duration::MAX), OFFER_WAIT);
    }

    #[test]
    fn correction_interpolates_and_holds_across_steps() {
        let c = Correction::new(vec![
            pt(1_000_000_000, 5_000),
            pt(2_000_000_000, 6_000),
            pt(3_000_000_000, 50_000_000),
        ]);
        assert_eq!(c.offset_at(0), 5_000);
        assert_eq!(c.offset_at(1_500_000_000), 5_500);
        assert_eq!(c.steps.len(), 1);
        assert_eq!(c.steps[0].jump_ns, 50_000_000 - 6_000);
        assert_eq!(c.offset_at(2_500_000_000), 6_000);
        assert_eq!(c.offset_at(9_000_000_000), 50_000_000);
        let s = c.summary().unwrap();
        assert_eq!(s.drift_ppm, 0.0);
        assert!(s.to_string().contains("stepped"));
        let c = Correction::new(vec![pt(1_000_000_000, 0), pt(2_000_000_000, 10_000)]);
        assert!(c.steps.is_empty());
        assert!((c.summary().unwrap().drift_ppm - 10.0).abs() < 1e-9);
        assert!(c
            .option_text("vm", "mono", "local")
            .contains("point 2000000000 10000"));
    }

    /// A page: ts 1000, an 8-byte event with delta 5, a TIME_EXTEND of 2^27,
    /// an event with delta 3, an absolute stamp of 10^9, an event with delta 1.
    fn page() -> (Vec<u8>, PageLayout, EventLayout) {
        let pl = PageLayout {
            timestamp: (0, 8),
            commit: (8, 8),
            data: (16, 4080),
        };
        let el = EventLayout::default();
        let mut p = vec![0u8; 4096];
        p[0..8].copy_from_slice(&1000u64.to_le_bytes());
        let mut d = Vec::new();
        let hdr = |t: u32, delta: u32| (t | (delta << 5)).to_le_bytes();
        d.extend_from_slice(&hdr(2, 5));
        d.extend_from_slice(&[1; 8]);
        let ext = 1u64 << 27;
        d.extend_from_slice(&hdr(30, (ext & ((1 << 27) - 1)) as u32));
        d.extend_from_slice(&((ext >> 27) as u32).to_le_bytes());
        d.extend_from_slice(&hdr(2, 3));
        d.extend_from_slice(&[2; 8]);
        let abs = 1_000_000_000u64;
        d.extend_from_slice(&hdr(31, (abs & ((1 << 27) - 1)) as u32));
        d.extend_from_slice(&((abs >> 27) as u32).to_le_bytes());
        d.extend_from_slice(&hdr(2, 1));
        d.extend_from_slice(&[3; 8]);
        p[8..16].copy_from_slice(&(d.len() as u64).to_le_bytes());
        p[16..16 + d.len()].copy_from_slice(&d);
        (p, pl, el)
    }

    fn stamps(p: &[u8], pl: &PageLayout, el: &EventLayout) -> Vec<u64> {
        let mut v = Vec::new();
        crate::output::layout::walk_page(p, pl, el, false, |r| v.push(r.ts)).unwrap();
        v
    }

    #[test]
    fn shift_page_moves_every_stamp_and_keeps_the_payloads() {
        let (mut p, pl, el) = page();
        let before = stamps(&p, &pl, &el);
        assert_eq!(before, vec![1005, 1008 + (1 << 27), 1_000_000_001]);
        // Offset 7_000_000 everywhere, then a drift after 10^8.
        let c = Correction::new(vec![
            pt(0, 7_000_000),
            pt(100_000_000, 7_000_000),
            pt(2_000_000_000, 7_000_190),
        ]);
        assert_eq!(shift_page(&mut p, &pl, &el, &c), Some(0));
        let after = stamps(&p, &pl, &el);
        let want: Vec<u64> = before.iter().map(|&t| c.map(t)).collect();
        assert_eq!(after, want);
        assert_eq!(&p[16 + 4..16 + 12], &[1; 8]);
        // A negative offset too.
        let (mut p, pl, el) = page();
        let c = Correction::new(vec![pt(0, -900)]);
        assert_eq!(shift_page(&mut p, &pl, &el, &c), Some(0));
        assert_eq!(
            stamps(&p, &pl, &el),
            vec![105, 108 + (1 << 27), 999_999_101]
        );
    }

    #[test]
    fn a_page_with_a_step_inside_takes_the_later_offset_from_its_start() {
        // The second round (guest time 1007) falls between the page's first
        // event (1005) and its second: a 0.5 s jump there cannot be carried
        // by a 27-bit delta, so the whole page takes the later offset.
        let c = Correction::new(vec![pt(0, 0), pt(1007, 500_000_000)]);
        assert_eq!(c.steps.len(), 1);
        let (mut p, pl, el) = page();
        let before = stamps(&p, &pl, &el);
        assert_eq!(shift_page(&mut p, &pl, &el, &c), Some(0));
        let got = stamps(&p, &pl, &el);
        let want: Vec<u64> = before.iter().map(|&t| t + 500_000_000).collect();
        assert_eq!(got, want);
        // Between the page's timestamp and its first event: the same.
        let c = Correction::new(vec![pt(0, 0), pt(1003, 500_000_000)]);
        let (mut p, pl, el) = page();
        assert_eq!(shift_page(&mut p, &pl, &el, &c), Some(0));
        assert_eq!(stamps(&p, &pl, &el), want);
        let page_ts = |p: &[u8]| u64::from_le_bytes(p[0..8].try_into().unwrap());
        assert_eq!(page_ts(&p), 1000 + 500_000_000);
        // At the page's timestamp: nothing to move.
        let c = Correction::new(vec![pt(0, 0), pt(1000, 500_000_000)]);
        let (mut p, pl, el) = page();
        assert_eq!(shift_page(&mut p, &pl, &el, &c), Some(0));
        assert_eq!(stamps(&p, &pl, &el), want);
        // After the page: the earlier offset (0) throughout.
        let c = Correction::new(vec![pt(0, 0), pt(2_000_000_000, 500_000_000)]);
        let (mut p, pl, el) = page();
        assert_eq!(shift_page(&mut p, &pl, &el, &c), Some(0));
        assert_eq!(stamps(&p, &pl, &el), before);
        // Two steps between the page's timestamp and its first event: the page
        // takes the first step's later offset, and the second jump (0.4 s) does
        // not fit the event's delta: clamped, counted, made up by the
        // TIME_EXTEND that follows.
        let c = Correction::new(vec![pt(0, 0), pt(1003, 500_000_000), pt(1004, 900_000_000)]);
        assert_eq!(c.steps.len(), 2);
        let (mut p, pl, el) = page();
        assert_eq!(shift_page(&mut p, &pl, &el, &c), Some(1));
        let got = stamps(&p, &pl, &el);
        assert_eq!(got[0], 1000 + 500_000_000 + (1 << 27) - 1);
        assert_eq!(got[1..], [before[1] + 900_000_000, before[2] + 900_000_000]);
    }

    /// Needs root and tracefs: the `mono` trace clock read through markers
    /// agrees with CLOCK_MONOTONIC, and the private instance goes away.
    #[test]
    fn trace_clock_reads_the_trace_clock() {
        let c = TraceClock::open("mono").expect("tracefs with a mono trace clock");
        let dir = c.inst.path().to_path_buf();
        let ours = c.now();
        let mono = clock_ns(nix::time::ClockId::CLOCK_MONOTONIC);
        let diff = mono as i64 - ours as i64;
        assert!(diff.abs() < 5_000_000, "mono via markers is {diff} ns off");
        assert!(matches!(
            TraceClock::open("x86-tsc"),
            Err(TsyncError::UnsupportedClock(_))
        ));
        drop(c);
        assert!(!dir.exists());
    }

    /// Our PTP host against our PTP guest on one machine and one trace clock:
    /// two rounds, an offset within the round trip's bound of 0, then STOP ends
    /// the guest's side.
    #[test]
    fn ptp_host_and_guest_agree_on_one_clock() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (a, b) = (OwnedFd::from(a), OwnedFd::from(b));
        let stop = AtomicBool::new(false);
        let guest = std::thread::spawn(move || {
            let ch = Channel::new(b.as_fd()).with_timeout(Some(Duration::from_secs(10)));
            ptp_serve(&ch, "local", &stop)
        });
        let ch = Channel::new(a.as_fd()).with_timeout(Some(Duration::from_secs(10)));
        let mut host = TraceClock::open("local").expect("tracefs");
        for _ in 0..2 {
            let p = ptp_round(&ch, &mut host, 0).expect("a PTP round");
            // Host and guest read the same clock: the offset is noise, within
            // the bound the round reports (plus a calibration's slack).
            assert!(
                p.offset_ns.unsigned_abs() <= p.error_ns + 1_000_000,
                "offset {} ns beyond ±{} ns",
                p.offset_ns,
                p.error_ns
            );
            assert!(p.guest_ns > 0);
        }
        ptp::send(&ch, &PtpMsg::Stop).unwrap();
        assert_eq!(guest.join().unwrap().expect("the guest side"), 2);
    }

    /// A guest that answers out of turn or sends results for probes never made
    /// gets a clear error, not a hang.
    #[test]
    fn ptp_host_refuses_a_guest_out_of_turn() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (a, b) = (OwnedFd::from(a), OwnedFd::from(b));
        let peer = std::thread::spawn(move || {
            let ch = Channel::new(b.as_fd()).with_timeout(Some(Duration::from_secs(5)));
            assert_eq!(ptp::recv(&ch).unwrap(), PtpMsg::Probe { cpu: 0 });
            // A probe before START.
            ptp::send(&ch, &PtpMsg::Ping { count: 1 }).unwrap();
        });
        let ch = Channel::new(a.as_fd()).with_timeout(Some(Duration::from_secs(5)));
        let mut host = TraceClock::open("local").expect("tracefs");
        assert!(matches!(
            ptp_round(&ch, &mut host, 0),
            Err(TsyncError::OutOfTurn(_))
        ));
        peer.join().unwrap();
        // A peer that is silent: the channel's timeout ends the round.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let a = OwnedFd::from(a);
        let ch = Channel::new(a.as_fd()).with_timeout(Some(Duration::from_millis(300)));
        assert!(matches!(
            ptp_round(&ch, &mut host, 0),
            Err(TsyncError::Msg(MsgError::TimedOut(_)))
        ));
    }
}
