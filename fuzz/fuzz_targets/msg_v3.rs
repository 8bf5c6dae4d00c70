//! V3 messages, from a buffer and from a socket (see `codec_target!`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::os::fd::AsFd;
use tracecmd_rs::msg::{v3, Channel, Wait};

#[path = "../common.rs"]
mod common;

fuzz_target!(|data: &[u8]| codec_target!(v3, data));
