//! The server side of protocol negotiation from the first byte: greeting,
//! version offers, magic, then the initial setting of the protocol agreed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::os::fd::AsFd;
use tracecmd_rs::msg::negotiate::{self, Hello};
use tracecmd_rs::msg::Channel;

#[path = "../common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let (s, t) = common::feed(data);
    {
        let ch = Channel::new(s.as_fd()).with_timeout(Some(common::TIMEOUT));
        match negotiate::server_negotiate_any(&ch) {
            Ok(Hello::V2) => {
                let _ = negotiate::initial_setting(&ch);
            }
            Ok(Hello::V3) => {
                let _ = negotiate::v3_initial_setting(&ch);
            }
            _ => {}
        }
    }
    common::finish(s, t);
});
