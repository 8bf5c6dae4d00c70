//! V2/VS codec: golden bytes of spec §1.5 and §6.3, round trips, every class of bad
//! input, and a never-panic run over random, mutated and truncated input.

use testkit::msg::hex;
use testkit::Rng;
use tracecmd_rs::msg::v2::{decode, Cmd, Msg};
use tracecmd_rs::msg::MsgError;

fn golden() -> Vec<(Msg, Vec<u8>)> {
    let cinit4 = if cfg!(target_endian = "little") {
        "0000000c 0000000d 04000000"
    } else {
        "0000000c 0000000d 00000004"
    };
    vec![
        (Msg::Error, hex("00000008 00000000")),
        (Msg::Close, hex("00000008 00000001")),
        (Msg::TConnect, hex("00000008 00000002")),
        (
            Msg::rconnect(),
            hex("00000018 00000003 0000000c 74726163 65636d64 2d563200"),
        ),
        (
            Msg::TInit {
                cpus: 8,
                page_size: 4096,
                use_tcp: false,
            },
            hex("00000014 00000004 00000008 00001000 00000000"),
        ),
        (
            Msg::TInit {
                cpus: 8,
                page_size: 4096,
                use_tcp: true,
            },
            hex("00000020 00000004 00000008 00001000 00000001 0000000c 00000001 00000000"),
        ),
        (
            Msg::RInit {
                cpus: 2,
                ports: vec![1500, 1501],
            },
            hex("00000014 00000005 00000002 000005dc 000005dd"),
        ),
        (
            Msg::RInit {
                cpus: 2,
                ports: vec![],
            },
            hex("0000000c 00000005 00000002"),
        ),
        (
            Msg::SendMeta(b"abc".to_vec()),
            hex("0000000f 00000006 00000003 616263"),
        ),
        (Msg::SendMeta(vec![]), hex("0000000c 00000006 00000000")),
        (Msg::FinMeta, hex("00000008 00000007")),
        (Msg::Connect { cpus: 2 }, hex("0000000c 00000008 00000002")),
        (Msg::Ack, hex("00000008 00000009")),
        (Msg::GList, hex("00000008 0000000a")),
        (Msg::Domain { cpus: 2 }, hex("0000000c 0000000b 00000002")),
        (Msg::Finish, hex("00000008 0000000c")),
        (Msg::CInit { cpus: 4 }, hex(cinit4)),
        (Msg::CRInit, hex("00000008 0000000e")),
        (Msg::AList, hex("00000008 0000000f")),
        (Msg::Trace { pid: 0 }, hex("0000000c 00000010 00000000")),
        (Msg::Trace { pid: 1234 }, hex("0000000c 00000010 000004d2")),
    ]
}

#[test]
fn every_command_encodes_to_the_c_bytes_and_decodes_back() {
    let mut seen = std::collections::HashSet::new();
    for (msg, bytes) in golden() {
        assert_eq!(msg.encode().unwrap(), bytes, "encoding of {msg:?}");
        let (back, used) = decode(&bytes).unwrap();
        assert_eq!(back, msg);
        assert_eq!(used, bytes.len());
        seen.insert(msg.cmd() as u32);
    }
    assert_eq!(seen.len(), 17, "every command 0..=16 has a golden example");
}

#[test]
fn sendmeta_of_8180_bytes_fits_and_8181_is_refused() {
    let m = Msg::SendMeta(vec![7; 8180]).encode().unwrap();
    assert_eq!(m.len(), 8192);
    assert_eq!(&m[..12], &hex("00002000 00000006 00001ff4")[..]);
    assert!(matches!(
        Msg::SendMeta(vec![7; 8181]).encode(),
        Err(MsgError::TooBig(_))
    ));
    let (back, _) = decode(&m).unwrap();
    assert_eq!(back, Msg::SendMeta(vec![7; 8180]));
}

#[test]
fn rinit_with_2045_ports_fits_and_2046_is_refused() {
    let ok = Msg::RInit {
        cpus: 2045,
        ports: vec![1500; 2045],
    };
    assert_eq!(ok.encode().unwrap().len(), 8192);
    let too_many = Msg::RInit {
        cpus: 2046,
        ports: vec![1500; 2046],
    };
    assert!(matches!(too_many.encode(), Err(MsgError::TooBig(_))));
}

#[test]
fn cinit_is_accepted_in_either_byte_order() {
    for bytes in ["0000000c 0000000d 04000000", "0000000c 0000000d 00000004"] {
        assert_eq!(decode(&hex(bytes)).unwrap().0, Msg::CInit { cpus: 4 });
    }
    // 4096 in both orders; 0 is 0 either way.
    assert_eq!(
        decode(&hex("0000000c 0000000d 00100000")).unwrap().0,
        Msg::CInit { cpus: 4096 }
    );
    assert_eq!(
        decode(&hex("0000000c 0000000d 00000000")).unwrap().0,
        Msg::CInit { cpus: 0 }
    );
    // Neither order is a valid count.
    assert!(matches!(
        decode(&hex("0000000c 0000000d 01010101")),
        Err(MsgError::OutOfRange { .. })
    ));
}

fn err(bytes: &str) -> MsgError {
    match decode(&hex(bytes)) {
        Ok(m) => panic!("{bytes} decoded as {m:?}"),
        Err(e) => e,
    }
}

#[test]
fn sizes_below_8_or_above_8192_are_refused() {
    for s in [
        "00000000 00000001",
        "00000007 00000001",
        "00002001 00000006",
        "ffffffff 00000006",
    ] {
        let e = err(s);
        assert!(matches!(e, MsgError::BadSize { .. }), "{s}: {e}");
        assert_eq!(e.errno(), libc::ENOMSG);
    }
}

#[test]
fn unknown_commands_including_17_are_refused() {
    for s in [
        "00000008 00000011",
        "00000008 00000012",
        "0000000c 000000ff 00000000",
    ] {
        let e = err(s);
        assert!(matches!(e, MsgError::UnknownCommand(_)), "{s}: {e}");
        assert_eq!(e.errno(), libc::EINVAL);
    }
}

#[test]
fn sizes_below_the_command_minimum_are_refused() {
    for s in [
        "00000008 00000004",                   // TINIT header only
        "00000010 00000004 00000001 00001000", // TINIT 16 < 20
        "00000008 00000006",                   // SENDMETA without size field
        "00000009 00000005 00",                // RINIT 9 < 12
        "00000008 00000008",                   // CONNECT without count
        "00000008 0000000d",                   // CINIT without count
    ] {
        let e = err(s);
        assert!(matches!(e, MsgError::TooShort { .. }), "{s}: {e}");
    }
}

#[test]
fn payload_on_a_header_only_command_is_refused() {
    for cmd in [0u32, 1, 2, 7, 9, 10, 12, 14, 15] {
        let e = err(&format!("0000000c {cmd:08x} 00000000"));
        assert!(
            matches!(e, MsgError::UnexpectedPayload { .. }),
            "{cmd}: {e}"
        );
    }
    // Fixed-body commands without a payload, too.
    let e = err("00000010 00000008 00000002 00000000");
    assert!(matches!(e, MsgError::UnexpectedPayload { .. }), "{e}");
}

#[test]
fn data_size_field_must_equal_the_payload_length() {
    for s in [
        "0000000f 00000006 00000004 616263", // says 4, carries 3
        "0000000f 00000006 00000002 616263", // says 2, carries 3
        "0000000c 00000006 ffffffff",        // says 4 GiB, carries 0
        "00000018 00000003 00000000 74726163 65636d64 2d563200",
    ] {
        let e = err(s);
        assert!(matches!(e, MsgError::SizeMismatch { .. }), "{s}: {e}");
    }
}

#[test]
fn cpu_counts_above_4096_or_negative_are_refused() {
    for s in [
        "00000014 00000004 00001001 00001000 00000000", // TINIT 4097
        "00000014 00000004 ffffffff 00001000 00000000", // TINIT -1
        "0000000c 00000005 00001001",                   // RINIT 4097
        "0000000c 00000005 80000000",                   // RINIT negative
        "0000000c 00000008 00001001",                   // CONNECT
        "0000000c 00000008 ffffffff",
        "0000000c 0000000b 00001001", // DOMAIN
        "0000000c 0000000b fffffffe",
        "0000000c 0000000d 00100100", // CINIT: 1048832 / 0x00011000
        "0000000c 0000000d ffffffff",
        "0000000c 00000010 ffffffff", // TRACE pid -1
    ] {
        let e = err(s);
        assert!(matches!(e, MsgError::OutOfRange { .. }), "{s}: {e}");
        assert_eq!(e.errno(), libc::EINVAL);
    }
    // The bound itself is fine.
    assert_eq!(
        decode(&hex("0000000c 00000008 00001000")).unwrap().0,
        Msg::Connect { cpus: 4096 }
    );
}

#[test]
fn tinit_page_size_must_be_positive() {
    for s in [
        "00000014 00000004 00000001 00000000 00000000",
        "00000014 00000004 00000001 80000000 00000000",
    ] {
        assert!(matches!(err(s), MsgError::OutOfRange { .. }));
    }
}

#[test]
fn bad_tinit_options_are_refused() {
    let head = "00000004 00000001 00001000";
    for (size, rest) in [
        // opt_num larger than the message can hold
        (20, format!("{head} 00000001")),
        (32, format!("{head} 00000002 0000000c 00000001 00000000")),
        (32, format!("{head} 7fffffff 0000000c 00000001 00000000")),
        (32, format!("{head} ffffffff 0000000c 00000001 00000000")),
        // option sizes out of range
        (32, format!("{head} 00000001 00000000 00000001 00000000")),
        (32, format!("{head} 00000001 00000008 00000001 00000000")),
        (32, format!("{head} 00000001 0000000d 00000001 00000000")),
        (32, format!("{head} 00000001 00001001 00000001 00000000")),
        (32, format!("{head} 00000001 ffffffff 00000001 00000000")),
        // unknown option command
        (32, format!("{head} 00000001 0000000c 00000002 00000000")),
    ] {
        let bytes = format!("{size:08x} {rest}");
        let e = err(&bytes);
        assert!(matches!(e, MsgError::BadOption(_)), "{bytes}: {e}");
    }
    // Bytes left over after the announced options.
    let e = err(&format!(
        "00000020 {head} 00000000 0000000c 00000001 00000000"
    ));
    assert!(matches!(e, MsgError::SizeMismatch { .. }), "{e}");
    // A larger (but valid) option is stepped over by its own size.
    let big = format!("00000024 {head} 00000001 00000010 00000001 00000000 00000000");
    assert_eq!(
        decode(&hex(&big)).unwrap().0,
        Msg::TInit {
            cpus: 1,
            page_size: 4096,
            use_tcp: true
        }
    );
}

#[test]
fn bad_rinit_payloads_are_refused() {
    let e = err("00000010 00000005 00000002 000005dc");
    assert!(matches!(e, MsgError::SizeMismatch { .. }), "{e}");
    let e = err("00000014 00000005 00000002 000005dc 00010000");
    assert!(matches!(e, MsgError::OutOfRange { .. }), "{e}");
}

#[test]
fn truncated_messages_are_incomplete_not_wrong() {
    for (_, bytes) in golden() {
        for cut in 0..bytes.len() {
            match decode(&bytes[..cut]) {
                Err(MsgError::Incomplete { have, need }) => {
                    assert_eq!(have, cut);
                    assert!(need > cut);
                }
                other => panic!("{:02x?} cut at {cut}: {other:?}", bytes),
            }
        }
    }
}

#[test]
// 100,000 inputs take hours under Miri; the fuzz targets cover this ground.
#[cfg_attr(miri, ignore)]
fn decoder_never_panics_on_random_mutated_and_truncated_input() {
    let mut rng = Rng::new(0x5eed_0002);
    let golden: Vec<Vec<u8>> = golden().into_iter().map(|(_, b)| b).collect();
    let mut decoded = 0usize;
    let mut runs = 0usize;
    for i in 0..150_000usize {
        let input = match i % 3 {
            0 => rng.bytes_below(48),
            1 => {
                // A plausible header (size near a minimum, small command) + noise.
                let size = [8u32, 12, 20, 24, 32, 8192, 8193][rng.below(7)]
                    .wrapping_add(rng.below(5) as u32)
                    .wrapping_sub(2);
                let cmd = rng.below(20) as u32;
                let mut v = size.to_be_bytes().to_vec();
                v.extend_from_slice(&cmd.to_be_bytes());
                v.extend(rng.bytes_below(40));
                v
            }
            _ => rng.mangled(&golden),
        };
        runs += 1;
        if let Ok((msg, used)) = decode(&input) {
            decoded += 1;
            assert!(used <= input.len());
            // Whatever decodes re-encodes to a valid message of the same command.
            let again = msg.encode().expect("decoded messages re-encode");
            assert_eq!(decode(&again).unwrap().0, msg);
        }
    }
    assert!(runs >= 100_000);
    assert!(
        decoded > 100,
        "the generator reaches valid messages too ({decoded})"
    );
}

#[test]
fn command_table_matches_spec() {
    let mins: Vec<u32> = (0..17)
        .map(|n| Cmd::from_u32(n).unwrap().min_size())
        .collect();
    assert_eq!(
        mins,
        vec![0, 0, 0, 12, 20, 12, 12, 0, 12, 0, 0, 12, 0, 12, 0, 0, 12]
    );
    assert!(Cmd::from_u32(17).is_none());
}
