//! The agent's side of the manager/agent exchange: the handshake with the
//! host listener, then waiting for a manager's CONNECT, with the host's bytes
//! from the fuzzer.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nix::sys::socket::{recv, MsgFlags};
use std::os::fd::{AsFd, AsRawFd};
use tracecmd_rs::msg::Channel;
use tracecmd_rs::virt::agent;

#[path = "../common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let (s, t) = common::feed(data);
    {
        let ch = Channel::new(s.as_fd()).with_timeout(Some(common::TIMEOUT));
        // The agent waits for a host that is not there yet (the port closed)
        // until it is told to stop: here, once every input byte was read and
        // the feeder closed its end, as a signal would end the real agent.
        let stopped = || {
            let mut b = [0u8; 1];
            matches!(
                recv(s.as_raw_fd(), &mut b, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT),
                Ok(0)
            )
        };
        if let Ok(true) = agent::handshake(&ch, 2, &stopped) {
            let _ = agent::wait_for_manager(&ch, &stopped);
        }
    }
    common::finish(s, t);
});
