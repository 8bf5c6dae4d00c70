//! Helpers shared by the tests/msg_*.rs suites.
#![allow(dead_code)]

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;
use tracecmd_rs::msg::Channel;

/// xorshift64*: a small deterministic PRNG (no rand crate needed).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Flips a few random bytes of `v`.
    pub fn mutate(&mut self, v: &mut [u8]) {
        if v.is_empty() {
            return;
        }
        for _ in 0..1 + self.below(3) {
            let i = self.below(v.len());
            v[i] = self.next() as u8;
        }
    }
}

/// Parses "0000000c 00000008 ..." into bytes.
pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(s.len() % 2 == 0, "odd hex string {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A channel on `s` with a short test timeout.
pub fn chan(s: &UnixStream) -> Channel<'_> {
    Channel::new(s.as_fd()).with_timeout(Some(Duration::from_secs(5)))
}

/// Reads exactly n bytes from a std stream.
pub fn read_n(s: &mut impl std::io::Read, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v)
        .expect("peer sent fewer bytes than expected");
    v
}
