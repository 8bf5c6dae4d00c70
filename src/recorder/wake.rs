//! When a recorder waits for its input and for how long: the longest wait
//! ([`WAIT_SLICE`]) and, for a ring buffer woken at `buffer_percent`, the measured
//! drain rate that makes it drain before the buffer gets too full ([`WakeWatch`]).

use std::path::Path;
use std::time::{Duration, Instant};

/// Longest single wait (input or output) before the loop looks around again. A stop
/// ends a wait at once (self-pipe); this only bounds waits nothing else ends.
pub(super) const WAIT_SLICE: Duration = Duration::from_millis(100);

/// How long the recorder waits for the kernel at most. The kernel wakes a recorder
/// waiting in `poll()` when its buffer reaches `buffer_percent` (50 by default); what
/// is left of the buffer must then outlast any delay before the thread runs. perf
/// sched on the benchmark showed such delays of up to 4 ms (kernel threads that do not
/// yield on this kernel without forced preemption), and about one wake-up in a hundred
/// coming when the buffer was nearly full (14 ms after the last drain at 500k events/s
/// per CPU, where 50% takes 7 ms). So the recorder measures the rate at which it
/// drains and waits at most until a third of the buffer has filled at that rate (or,
/// for a `buffer_percent` below 25, until a third more than `buffer_percent`), which
/// leaves two thirds of the buffer for delays instead of a half. On the benchmark that
/// cost no measurable CPU (0.67 and 0.69 CPU-s/GiB against 0.67 and 0.71 when waiting
/// for `buffer_percent`, two 6-round runs each at 700k), while draining at a quarter cost
/// 10% more. A round that moved nothing counts as a rate of nothing, so an idle buffer
/// is soon waited on with the usual slice again.
#[derive(Debug)]
pub(super) struct WakeWatch {
    /// Bytes after which to drain without the kernel's wake-up.
    wake_bytes: f64,
    /// Bytes per second, smoothed; 0 until measured.
    rate: f64,
    /// When the current round began (the end of the last wait) and what it has moved.
    since: Instant,
    moved: u64,
}

impl WakeWatch {
    /// For a buffer of `size` bytes in `dir`, whose `buffer_percent` is read now.
    /// None when either is unknown, or the kernel wakes at once (0) anyway.
    pub(super) fn new(size: Option<u64>, dir: &Path) -> Option<WakeWatch> {
        let text = std::fs::read_to_string(dir.join("buffer_percent")).ok()?;
        let percent: u64 = text.trim().parse().ok().filter(|p| (1..=100).contains(p))?;
        Some(WakeWatch {
            wake_bytes: size? as f64 * (1.0 / 3.0f64).min(percent as f64 / 100.0 * 4.0 / 3.0),
            rate: 0.0,
            since: Instant::now(),
            moved: 0,
        })
    }

    /// Counts bytes moved in this round.
    #[inline]
    pub(super) fn moved(&mut self, n: usize) {
        self.moved += n as u64;
    }

    /// Called before waiting for the input: ends the round, and returns how long to
    /// wait at most.
    pub(super) fn before_wait(&mut self) -> Duration {
        let now = Instant::now();
        let took = now.duration_since(self.since).as_secs_f64();
        // A round that moved nothing counts too: a rate that fell to nothing lengthens
        // the wait by a third each round, up to the usual slice.
        if took > 0.0 {
            let sample = self.moved as f64 / took;
            self.rate = if self.rate == 0.0 {
                sample
            } else {
                0.75 * self.rate + 0.25 * sample
            };
        }
        self.since = now;
        self.moved = 0;
        if self.rate <= 0.0 {
            return WAIT_SLICE;
        }
        let fill = self.wake_bytes / self.rate;
        Duration::from_secs_f64(fill.clamp(0.002, WAIT_SLICE.as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::tmp;

    #[test]
    fn wake_watch_drains_at_a_third_of_the_buffer_at_the_measured_rate() {
        let dir = tmp("watch");
        std::fs::create_dir_all(&dir).unwrap();
        // No buffer_percent, 0 (the kernel wakes at once) or garbage: no watch.
        assert!(WakeWatch::new(Some(1 << 20), &dir).is_none());
        for bad in ["0\n", "101\n", "x\n"] {
            std::fs::write(dir.join("buffer_percent"), bad).unwrap();
            assert!(WakeWatch::new(Some(1 << 20), &dir).is_none(), "{bad:?}");
        }
        std::fs::write(dir.join("buffer_percent"), "50\n").unwrap();
        assert!(WakeWatch::new(None, &dir).is_none());
        let mut w = WakeWatch::new(Some(1 << 20), &dir).unwrap();
        // Nothing measured yet: the usual slice.
        assert_eq!(w.before_wait(), WAIT_SLICE);
        // 512 KiB in 10 ms: a third of 1 MiB takes 6.7 ms at that rate.
        w.since = Instant::now() - Duration::from_millis(10);
        w.moved(512 << 10);
        let first = w.before_wait();
        assert!(
            first >= Duration::from_micros(6_400) && first <= Duration::from_micros(7_000),
            "{first:?}"
        );
        // The rate falls to nothing: each empty round waits longer, up to the slice.
        let mut last = first;
        for _ in 0..40 {
            w.since = Instant::now() - last;
            let next = w.before_wait();
            assert!(next >= last, "{next:?} after {last:?}");
            last = next;
        }
        assert_eq!(last, WAIT_SLICE);
        // A very fast rate: never below 2 ms.
        w.since = Instant::now() - Duration::from_millis(1);
        w.moved(1 << 30);
        assert_eq!(w.before_wait(), Duration::from_millis(2));
        // buffer_percent 15: a third more than it (20%), not a third of the buffer.
        std::fs::write(dir.join("buffer_percent"), "15\n").unwrap();
        let mut w = WakeWatch::new(Some(1 << 20), &dir).unwrap();
        w.before_wait();
        w.since = Instant::now() - Duration::from_millis(10);
        w.moved(512 << 10);
        let low = w.before_wait();
        assert!(
            low >= Duration::from_micros(3_800) && low <= Duration::from_micros(4_300),
            "{low:?}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
