//! V1 text parsers and V3 framing: golden bytes, bad input, never-panic runs of
//! at least 100,000 random and truncated inputs per dialect.

use testkit::msg::hex;
use testkit::Rng;
use tracecmd_rs::msg::v1::{
    encode_ports, parse_decimal, read_client_init, read_ports, ClientInit, SliceSource,
};
use tracecmd_rs::msg::v3::{self, Msg};
use tracecmd_rs::msg::MsgError;

#[test]
fn v1_client_announcement_bytes() {
    let tcp = ClientInit {
        cpus: 8,
        page_size: 4096,
        use_tcp: true,
    };
    assert_eq!(tcp.encode(), b"8\x004096\x001\x004\x00TCP\x00");
    let udp = ClientInit {
        use_tcp: false,
        ..tcp.clone()
    };
    assert_eq!(udp.encode(), b"8\x004096\x000\x00");
    for init in [tcp, udp] {
        let bytes = init.encode();
        let mut src = SliceSource::new(&bytes);
        assert_eq!(read_client_init(&mut src).unwrap(), init);
        assert_eq!(
            src.pos,
            bytes.len(),
            "nothing after the last NUL is consumed"
        );
    }
}

#[test]
fn v1_port_list_bytes() {
    assert_eq!(encode_ports(&[1500, 1501, 1502]), b"1500,1501,1502\x00");
    assert_eq!(encode_ports(&[1500]), b"1500\x00");
    assert_eq!(encode_ports(&[]), b"\x00");
    let mut src = SliceSource::new(b"1500,1501,1502\x00rest");
    assert_eq!(read_ports(&mut src, 3).unwrap(), vec![1500, 1501, 1502]);
    assert_eq!(src.pos, 15);
    assert_eq!(
        read_ports(&mut SliceSource::new(b"\x00"), 0).unwrap(),
        Vec::<u32>::new()
    );
}

#[test]
fn v1_bad_input_is_refused() {
    let bad_inits: [&[u8]; 10] = [
        b"-1\x004096\x000\x00",            // negative cpus
        b"4097\x004096\x000\x00",          // too many cpus
        b"8\x000\x000\x00",                // page size 0
        b"8\x00-4096\x000\x00",            // negative page size
        b"8\x004096\x0017\x00",            // too many options
        b"8\x004096\x001\x004097\x00",     // option too large
        b"8\x004096\x001\x00-4\x00",       // negative option size
        b"8\x004096\x001\x004\x00UDP\x00", // unknown option
        b"8\x004096\x001\x003\x00TCP",     // option not NUL-terminated
        b"8x\x004096\x000\x00",            // not a number
    ];
    for b in bad_inits {
        let r = read_client_init(&mut SliceSource::new(b));
        assert!(r.is_err(), "{b:?} gave {r:?}");
    }
    // A field without an end never ends the read: bounded at 64 bytes.
    let long = [b'1'; 100];
    assert!(matches!(
        read_client_init(&mut SliceSource::new(&long)),
        Err(MsgError::BadText(_))
    ));
    for (b, n) in [
        (&b"1500\x00"[..], 2usize), // too few
        (b"1500,1501\x00", 1),      // too many
        (b"0\x00", 1),              // port 0
        (b"65536\x00", 1),          // too large
        (b"123456\x00", 1),         // too long
        (b",\x00", 1),              // empty
        (b"1500,", 2),              // cut short
    ] {
        assert!(read_ports(&mut SliceSource::new(b), n).is_err(), "{b:?}");
    }
    assert_eq!(parse_decimal("x", b"-1").unwrap(), -1);
    assert!(parse_decimal("x", b"").is_err());
    assert!(parse_decimal("x", b"-").is_err());
    assert!(parse_decimal("x", b"1 ").is_err());
    assert!(parse_decimal("x", b"99999999999999999999").is_err());
}

#[test]
// 100,000 inputs take hours under Miri; the fuzz targets cover this ground.
#[cfg_attr(miri, ignore)]
fn v1_parsers_never_panic_on_random_and_truncated_input() {
    let mut rng = Rng::new(0x5eed_0001);
    let valid = [
        ClientInit {
            cpus: 8,
            page_size: 4096,
            use_tcp: true,
        }
        .encode(),
        b"2\x00\x00".to_vec(),
        encode_ports(&[1500, 1501, 1502, 1503]),
    ];
    let alphabet = b"0123456789-,\x00TCP";
    let mut runs = 0;
    for i in 0..120_000usize {
        let input: Vec<u8> = match i % 3 {
            0 => rng.bytes_below(40),
            1 => (0..rng.below(40))
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect(),
            _ => rng.mangled(&valid),
        };
        runs += 1;
        let mut src = SliceSource::new(&input);
        if let Ok(init) = read_client_init(&mut src) {
            assert!(init.cpus <= 4096 && init.page_size > 0);
            assert!(src.pos <= input.len());
        }
        let n = rng.below(6);
        if let Ok(p) = read_ports(&mut SliceSource::new(&input), n) {
            assert_eq!(p.len(), n);
        }
        let _ = parse_decimal("x", &input);
    }
    assert!(runs >= 100_000);
}

fn v3_golden() -> Vec<(Msg, Vec<u8>)> {
    vec![
        (
            Msg::TInit {
                cpus: 8,
                page_size: 4096,
                options: vec!["tcp".into()],
            },
            hex("0000001c 00000001 0000000c 00000008 00001000 00000001 74637000"),
        ),
        (
            Msg::TInit {
                cpus: 2,
                page_size: 4096,
                options: vec![],
            },
            hex("00000018 00000001 0000000c 00000002 00001000 00000000"),
        ),
        (
            Msg::RInit {
                ports: vec![1500, 1501],
            },
            hex("0000001a 00000002 00000004 00000002 31353030 00313530 3100"),
        ),
        (
            Msg::SendData(vec![0x17, 0x08, 0x44]),
            hex("0000000f 00000003 00000000 170844"),
        ),
        (Msg::FinData, hex("0000000c 00000004 00000000")),
        (Msg::Close, hex("0000000c 00000000 00000000")),
        (Msg::NotSupp, hex("0000000c 00000005 00000000")),
        (Msg::CloseResp, hex("0000000c 00000008 00000000")),
        // Captured from Debian 3.1.6: `record --tsync-interval -1 -A 127.0.0.1:PORT -e sched_switch`.
        (
            Msg::TraceReq {
                flags: 0,
                trace_id: 0xc02d_e3ff_060d_5a05,
                argv: ["-C", "local", "-e", "sched_switch"]
                    .map(String::from)
                    .to_vec(),
                tsync_protos: vec![],
            },
            hex(
                "00000041 00000006 00000010 00000000 00000000 c02de3ff 060d5a05 \
                 00000000 0000001d 00000004 2d43006c 6f63616c 002d6500 73636865 \
                 645f7377 69746368 00",
            ),
        ),
        // The same host offering clock sync.
        (
            Msg::TraceReq {
                flags: 1,
                trace_id: 7,
                argv: vec![],
                tsync_protos: vec!["kvm".into(), "ptp".into()],
            },
            hex(
                "00000039 00000006 00000010 00000001 00000000 00000000 00000007 \
                 00000000 00000004 00000000 00000001 00000009 6b766d00 70747000 00",
            ),
        ),
        // Captured from Debian 3.1.6's `agent -N 127.0.0.1` answering the request above.
        (
            Msg::TraceResp {
                flags: 0,
                cpus: 2,
                page_size: 4096,
                trace_id: 0x9c24_bd92_6093_d45c,
                tsync_proto: String::new(),
                tsync_port: 0,
                ports: vec![1623, 1624],
            },
            hex(
                "0000003e 00000007 00000028 00000000 00000002 00001000 9c24bd92 6093d45c \
                 00000000 00000000 00000000 00000000 00000000 31363233 00313632 3400",
            ),
        ),
    ]
}

#[test]
fn v3_golden_bytes_and_round_trips() {
    for (msg, bytes) in v3_golden() {
        assert_eq!(msg.encode().unwrap(), bytes, "{msg:?}");
        let (back, used) = v3::decode(&bytes).unwrap();
        assert_eq!((back, used), (msg, bytes.len()));
    }
    let big = Msg::SendData(vec![1; 8180]).encode().unwrap();
    assert_eq!(&big[..12], &hex("00002000 00000003 00000000")[..]);
    assert!(Msg::SendData(vec![1; 8181]).encode().is_err());
}

#[test]
fn v3_extra_body_bytes_are_skipped_and_other_commands_are_unsupported() {
    // TINIT with a 16-byte body: the 4 extra bytes are skipped.
    let b = hex("00000020 00000001 00000010 00000002 00001000 00000001 ffffffff 74637000");
    assert_eq!(
        v3::decode(&b).unwrap().0,
        Msg::TInit {
            cpus: 2,
            page_size: 4096,
            options: vec!["tcp".into()]
        }
    );
    // TIME_SYNC (9): a 16-byte protocol name (here empty) and a message id.
    let b = hex("00000020 00000009 00000014 00000000 00000000 00000000 00000000 00000001");
    assert_eq!(
        v3::decode(&b).unwrap().0,
        Msg::TimeSync {
            proto: String::new(),
            id: 1,
            payload: vec![]
        }
    );
    // TRACE_PROXY (10) is known but not decoded here.
    let b = hex("00000024 0000000a 00000018 00000000 00000000 00000000 00000000 00000000 00000000");
    assert_eq!(v3::decode(&b).unwrap().0, Msg::Unsupported { cmd: 10 });
    // TRACE_REQ with an unknown parameter (id 9) after the arguments: skipped.
    let b = hex(
        "00000030 00000006 00000010 00000000 00000000 00000000 00000001 \
                 00000000 00000004 00000000 00000009 00000000",
    );
    assert_eq!(
        v3::decode(&b).unwrap().0,
        Msg::TraceReq {
            flags: 0,
            trace_id: 1,
            argv: vec![],
            tsync_protos: vec![]
        }
    );
}

#[test]
fn v3_bad_input_is_refused() {
    for s in [
        "00000008 00000000 00000000",                            // size < 12
        "00002001 00000003 00000000",                            // size > 8192
        "0000000c 0000000c 00000000",                            // cmd 12 unknown
        "00000010 00000003 00000008 00000000",                   // cmd_size beyond the message
        "00000010 00000000 00000000 00000000",                   // payload on CLOSE
        "00000014 00000001 00000008 00000001 00001000",          // TINIT body too short
        "00000018 00000001 0000000c 00001001 00001000 00000000", // 4097 cpus
        "00000018 00000001 0000000c ffffffff 00001000 00000000", // -1 cpus
        "00000018 00000001 0000000c 00000001 00000000 00000000", // page size 0
        "0000001c 00000001 0000000c 00000001 00001000 00000002 74637000", // 2 options, 1 given
        "0000001b 00000001 0000000c 00000001 00001000 00000001 746370", // no NUL
        "00000014 00000002 00000004 00000001 31353030",          // port without NUL
        "00000016 00000002 00000004 00000001 37303030 3000",     // port 70000
        "00000010 00000002 00000004 00001001",                   // RINIT 4097
        // TRACE_REQ: body too short; argc 2^31; argc 4097; argc 2 with one string;
        // parameter length beyond the message; a parameter header cut short.
        "00000018 00000006 0000000c 00000000 00000000 00000000",
        "0000002c 00000006 00000010 00000000 00000000 00000000 00000001 00000000 00000008 80000000 61006200",
        "0000002c 00000006 00000010 00000000 00000000 00000000 00000001 00000000 00000008 00001001 61006200",
        "0000002a 00000006 00000010 00000000 00000000 00000000 00000001 00000000 00000006 00000002 6100",
        "00000024 00000006 00000010 00000000 00000000 00000000 00000001 00000000 ffffffff",
        "00000020 00000006 00000010 00000000 00000000 00000000 00000001 00000000",
        // TRACE_RESP: 2 cpus, 1 port; 4097 cpus; name not NUL-terminated.
        "00000039 00000007 00000028 00000000 00000002 00001000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 31363233 00",
        "00000034 00000007 00000028 00000000 00001001 00001000 00000000 00000000 00000000 00000000 00000000 00000000 00000000",
        "00000039 00000007 00000028 00000000 00000001 00001000 00000000 00000000 61616161 61616161 61616161 61616161 00000000 31363233 00",
    ] {
        assert!(v3::decode(&hex(s)).is_err(), "{s} decoded");
    }
}

#[test]
// 100,000 inputs take hours under Miri; the fuzz targets cover this ground.
#[cfg_attr(miri, ignore)]
fn v3_decoder_never_panics_on_random_mutated_and_truncated_input() {
    let mut rng = Rng::new(0x5eed_0003);
    let golden: Vec<Vec<u8>> = v3_golden().into_iter().map(|(_, b)| b).collect();
    let mut decoded = 0;
    let mut runs = 0;
    for i in 0..150_000usize {
        let input = match i % 3 {
            0 => rng.bytes_below(48),
            1 => {
                let size = [12u32, 16, 24, 28, 8192, 8193][rng.below(6)]
                    .wrapping_add(rng.below(5) as u32)
                    .wrapping_sub(2);
                let mut v = size.to_be_bytes().to_vec();
                v.extend_from_slice(&(rng.below(14) as u32).to_be_bytes());
                v.extend_from_slice(&([0u32, 4, 12, 16, 0xffff_ffff][rng.below(5)]).to_be_bytes());
                v.extend(rng.bytes_below(40));
                v
            }
            _ => rng.mangled(&golden),
        };
        runs += 1;
        if let Ok((msg, used)) = v3::decode(&input) {
            decoded += 1;
            assert!(used <= input.len());
            if !matches!(msg, Msg::Unsupported { .. }) {
                let again = msg.encode().expect("decoded messages re-encode");
                assert_eq!(v3::decode(&again).unwrap().0, msg);
            }
        }
    }
    assert!(runs >= 100_000);
    assert!(
        decoded > 100,
        "the generator reaches valid messages too ({decoded})"
    );
}
