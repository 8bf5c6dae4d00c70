//! Byte-level helpers of the message-protocol tests.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use tracecmd_rs::msg::Channel;

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
