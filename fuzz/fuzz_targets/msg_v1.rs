//! V1 text protocol: the client's init strings, then the listener's port list,
//! read from a socket as the listener and the V1 client read them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::os::fd::AsFd;
use tracecmd_rs::msg::v1::{self, ChannelSource, SliceSource};
use tracecmd_rs::msg::{Channel, Wait};

#[path = "../common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let _ = v1::read_client_init(&mut SliceSource::new(data));
    let (s, t) = common::feed(data);
    {
        let ch = Channel::new(s.as_fd()).with_timeout(Some(common::TIMEOUT));
        let mut src = ChannelSource::new(&ch);
        if let Ok(init) = v1::read_client_init(&mut src) {
            let _ = v1::read_ports(&mut src, init.cpus.min(64) as usize);
        }
        let mut buf = [0u8; 1];
        let _ = ch.recv_some(&mut buf, Wait::Timed);
    }
    common::finish(s, t);
});
