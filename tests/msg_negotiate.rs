//! The negotiation module (`msg::negotiate`): the client's versioned offer against
//! scripted listeners and against our own listener side, the announcement of every
//! generation end to end, the V3 TINIT/RINIT bytes, and the V3 command table.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use testkit::msg::{chan, hex, read_n};
use tracecmd_rs::msg::negotiate::{self, Hello, Negotiated, Proto};
use tracecmd_rs::msg::v1::ClientInit;
use tracecmd_rs::msg::v3::{self, Cmd};
use tracecmd_rs::msg::MsgError;

fn pair() -> (UnixStream, UnixStream) {
    UnixStream::pair().unwrap()
}

fn init(cpus: u32, use_tcp: bool) -> ClientInit {
    ClientInit {
        cpus,
        page_size: 4096,
        use_tcp,
    }
}

/// Runs `client_offer` against a listener that writes `script` and then closes;
/// returns the result and every byte the client sent.
fn offer_against(
    script: &'static [u8],
    highest: Proto,
    downgrade: bool,
) -> (Result<Negotiated, MsgError>, Vec<u8>) {
    let (c, mut s) = pair();
    let server = thread::spawn(move || {
        s.write_all(script).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let r = negotiate::client_offer(&chan(&c), highest, downgrade);
    drop(c);
    (r, server.join().unwrap())
}

#[test]
fn the_client_offer_sends_the_exact_bytes_of_each_outcome() {
    let (r, sent) = offer_against(b"tracecmdV3\0OK", Proto::V3, true);
    assert_eq!(r.unwrap(), Negotiated::V3);
    assert_eq!(sent, hex("2d31563300 3736363637390000"));

    // A V2-era listener: "V2" to the V3 offer, then V2 on the same connection.
    let (r, sent) = offer_against(b"tracecmdV2\0V2\0OK", Proto::V3, true);
    assert_eq!(r.unwrap(), Negotiated::V2);
    assert_eq!(sent, hex("2d31563300 2d31563200 3637373736380000"));

    // Without downgrade the same answer is a mismatch naming the version.
    let (r, sent) = offer_against(b"tracecmdV2\0", Proto::V3, false);
    assert!(
        matches!(r, Err(MsgError::ProtocolMismatch(ref v)) if v == "V2"),
        "{r:?}"
    );
    assert_eq!(sent, hex("2d31563300"));

    // A V1-only listener closes on the offer.
    let (r, _) = offer_against(b"tracecmd", Proto::V3, true);
    assert_eq!(r.unwrap(), Negotiated::V1Fallback);
    assert_eq!(Negotiated::V1Fallback.proto(), Proto::V1);

    // An answer that is not a version.
    let (r, _) = offer_against(b"tracecmdxyz\0", Proto::V2, true);
    assert!(
        matches!(r, Err(MsgError::ProtocolMismatch(ref v)) if v.contains("xyz")),
        "{r:?}"
    );

    // A wrong word after the magic.
    let (r, _) = offer_against(b"tracecmdV3\0NO", Proto::V3, true);
    assert!(matches!(r, Err(MsgError::NotTraceCmd(_))), "{r:?}");

    // V1 has no offer.
    let (c, _s) = pair();
    let e = negotiate::client_offer(&chan(&c), Proto::V1, true).unwrap_err();
    assert!(matches!(e, MsgError::InvalidArgument(_)), "{e}");
}

#[test]
fn our_client_and_our_listeners_agree() {
    // (listener speaks up to, client offers, downgrade, expected client, expected listener)
    let cases = [
        (Proto::V3, Proto::V3, true, Negotiated::V3, Hello::V3),
        (Proto::V3, Proto::V2, false, Negotiated::V2, Hello::V2),
        (Proto::V2, Proto::V3, true, Negotiated::V2, Hello::V2),
        (Proto::V2, Proto::V2, false, Negotiated::V2, Hello::V2),
    ];
    for (listener, offer, downgrade, want_c, want_s) in cases {
        let (c, s) = pair();
        let server = thread::spawn(move || {
            let ch = chan(&s);
            if listener == Proto::V3 {
                negotiate::server_negotiate_any(&ch)
            } else {
                negotiate::server_negotiate(&ch)
            }
            .unwrap()
        });
        let got = negotiate::client_offer(&chan(&c), offer, downgrade).unwrap();
        let hello = server.join().unwrap();
        assert_eq!(got, want_c, "{listener} listener, {offer} offer");
        assert_eq!(hello, want_s, "{listener} listener, {offer} offer");
        assert_eq!(hello.proto(), got.proto());
    }
}

#[test]
fn every_generation_announces_and_gets_its_ports() {
    let ports = [1500u32, 1501];
    for proto in [Proto::V1, Proto::V2, Proto::V3] {
        for tcp in [false, true] {
            let (c, s) = pair();
            let server = thread::spawn(move || {
                let ch = chan(&s);
                let got = match proto {
                    Proto::V1 => match negotiate::server_negotiate_any(&ch).unwrap() {
                        Hello::V1(i) => i,
                        h => panic!("{h:?}"),
                    },
                    Proto::V2 => negotiate::initial_setting(&ch).unwrap().record().unwrap(),
                    Proto::V3 => {
                        let req = negotiate::v3_initial_setting(&ch).unwrap();
                        assert!(!req.vsock && req.unknown.is_empty(), "{req:?}");
                        req.init
                    }
                };
                negotiate::send_ports(&ch, proto, &ports).unwrap();
                got
            });
            let back = negotiate::client_init(&chan(&c), proto, &init(2, tcp)).unwrap();
            assert_eq!(back, ports, "{proto}");
            assert_eq!(server.join().unwrap(), init(2, tcp), "{proto}");
        }
    }
}

#[test]
fn v3_tinit_and_rinit_are_byte_exact() {
    let b = negotiate::v3_tinit(&init(2, true)).encode().unwrap();
    assert_eq!(
        b,
        hex("0000001c 00000001 0000000c 00000002 00001000 00000001 74637000")
    );
    let b = negotiate::v3_tinit(&init(1, false)).encode().unwrap();
    assert_eq!(
        b,
        hex("00000018 00000001 0000000c 00000001 00001000 00000000")
    );

    // The listener's RINIT, read by hand.
    let (c, mut s) = pair();
    negotiate::send_ports(&chan(&c), Proto::V3, &[1500, 1501]).unwrap();
    assert_eq!(
        read_n(&mut s, 26),
        hex("0000001a 00000002 00000004 00000002 3135303000 3135303100")
    );
}

#[test]
fn v3_options_are_read_into_the_request() {
    let opts: Vec<String> = ["tcp", "vsock", "zstd"].map(String::from).to_vec();
    let req = negotiate::v3_request(4, 8192, &opts);
    assert_eq!(
        req.init,
        ClientInit {
            cpus: 4,
            page_size: 8192,
            use_tcp: true
        }
    );
    assert!(req.vsock);
    assert_eq!(req.unknown, vec!["zstd".to_string()]);
    let req = negotiate::v3_request(1, 4096, &[]);
    assert!(!req.init.use_tcp && !req.vsock && req.unknown.is_empty());
}

#[test]
fn a_v3_listener_answers_anything_but_tinit_with_not_supp() {
    let (c, mut s) = pair();
    let client = thread::spawn(move || {
        s.write_all(&v3::Msg::FinData.encode().unwrap()).unwrap();
        read_n(&mut s, 12)
    });
    let e = negotiate::v3_initial_setting(&chan(&c)).unwrap_err();
    assert!(
        matches!(
            e,
            MsgError::Unexpected {
                expected: "TINIT",
                got: "FIN_DATA"
            }
        ),
        "{e}"
    );
    assert_eq!(client.join().unwrap(), hex("0000000c 00000005 00000000"));

    // A client that gets CLOSE instead of RINIT.
    let (c, mut s) = pair();
    let server = thread::spawn(move || {
        read_n(&mut s, 24);
        s.write_all(&v3::Msg::Close.encode().unwrap()).unwrap();
    });
    let e = negotiate::v3_send_init(&chan(&c), &init(1, false)).unwrap_err();
    assert!(matches!(e, MsgError::Aborted), "{e}");
    server.join().unwrap();
}

#[test]
fn v3_commands_number_and_name_once() {
    let mut names = Vec::new();
    for n in 0..12u32 {
        let cmd = Cmd::from_u32(n).unwrap();
        assert_eq!(cmd as u32, n);
        names.push(cmd.name());
    }
    assert_eq!(Cmd::from_u32(12), None);
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 12, "{names:?}");
    assert_eq!(names[6], "TRACE_REQ");
    assert_eq!(v3::Msg::Unsupported { cmd: 6 }.name(), "TRACE_REQ");
    assert_eq!(v3::Msg::FinData.name(), "FIN_DATA");
    // A header naming command 12 is refused, one naming 11 is accepted.
    assert!(matches!(
        v3::parse_header(&hex("0000000c 0000000c 00000000").try_into().unwrap()),
        Err(MsgError::UnknownCommand(12))
    ));
    assert_eq!(
        v3::parse_header(&hex("0000000c 0000000b 00000000").try_into().unwrap()).unwrap(),
        (Cmd::Cont, 12, 0)
    );
}

#[test]
fn protocol_numbers_round_trip() {
    for p in [Proto::V1, Proto::V2, Proto::V3] {
        assert_eq!(Proto::from_number(p.number()), Some(p));
        assert_eq!(p.to_string(), format!("V{}", p.number()));
    }
    assert_eq!(negotiate::Initial::Agent { cpus: 2 }.record(), None);
    assert_eq!(Proto::from_number(0), None);
    assert_eq!(Proto::from_number(4), None);
    assert!(Proto::V1 < Proto::V2 && Proto::V2 < Proto::V3);
}
