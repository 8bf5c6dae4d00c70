//! The listener's negotiation for every client generation
//! (`server_negotiate_any`, spec §3.1, §3.2, doc §6.3): the exact bytes it sends
//! and what it makes of random or cut-off client streams (never a panic or hang).

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use tracecmd_rs::msg::handshake::{server_negotiate_any, AnyHello};
use tracecmd_rs::msg::v1::ClientInit;
use tracecmd_rs::msg::{Channel, MsgError};

/// Runs the server side on `client` bytes (then EOF); returns its result and
/// everything it sent.
fn negotiate(client: &[u8], timeout: Duration) -> (Result<AnyHello, MsgError>, Vec<u8>) {
    let (mut c, s) = UnixStream::pair().unwrap();
    c.write_all(client).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let ch = Channel::new(s.as_fd()).with_timeout(Some(timeout));
    let r = server_negotiate_any(&ch);
    drop(s);
    let mut sent = Vec::new();
    // The server may close with client bytes unread: a reset ends the reading.
    let _ = c.read_to_end(&mut sent);
    (r, sent)
}

#[test]
fn byte_exact_answers() {
    let t = Duration::from_secs(2);
    let (r, sent) = negotiate(b"-1V3\x00766679\0\0", t);
    assert_eq!(r.unwrap(), AnyHello::V3);
    assert_eq!(sent, b"tracecmdV3\0OK");
    let (r, sent) = negotiate(b"-1V2\x00677768\0\0", t);
    assert_eq!(r.unwrap(), AnyHello::V2);
    assert_eq!(sent, b"tracecmdV2\0OK");
    // An unknown version is steered to V3, as 3.x listeners do.
    let (r, sent) = negotiate(b"-1V7\0-1V3\x00766679\0\0", t);
    assert_eq!(r.unwrap(), AnyHello::V3);
    assert_eq!(sent, b"tracecmdV3\0V3\0OK");
    let (r, _) = negotiate(b"-1V7\0-1V7\0", t);
    assert!(matches!(r, Err(MsgError::ProtocolMismatch(_))), "{r:?}");
    // V1: the announcement, nothing sent after the greeting.
    let (r, sent) = negotiate(b"8\x004096\x001\x004\0TCP\0", t);
    assert_eq!(
        r.unwrap(),
        AnyHello::V1(ClientInit {
            cpus: 8,
            page_size: 4096,
            use_tcp: true
        })
    );
    assert_eq!(sent, b"tracecmd");
    // The wrong magic for the offered version.
    let (r, _) = negotiate(b"-1V3\x00677768\0\0", t);
    assert!(matches!(r, Err(MsgError::BadText(_))), "{r:?}");
}

#[test]
fn random_and_cut_streams_end_without_panic_or_hang() {
    let prefixes: [&[u8]; 5] = [b"", b"-1V3\0", b"-1V2\0", b"4\0", b"-1V"];
    let mut x = 0xdead_beef_cafe_f00du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let t0 = Instant::now();
    for i in 0..3000 {
        let mut s = prefixes[i % prefixes.len()].to_vec();
        let n = next() % 40;
        for _ in 0..n {
            let r = next();
            // Mostly digits, NULs and protocol letters, to get past the first checks.
            s.push(b"0123456789\0\0-1V3TCP,\xff"[(r % 19) as usize]);
        }
        let (r, _) = negotiate(&s, Duration::from_millis(500));
        if let Ok(AnyHello::V1(init)) = r {
            assert!(init.cpus <= 4096);
        }
    }
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t0.elapsed()
    );
}
