//! Feeds a fuzz input to a decoder the way the real receive path gets it: from
//! the other end of a socketpair, with a short receive timeout.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a receive may wait: everything is written before or while the
/// decoder reads, so this only bounds a decoder that waits for more.
pub const TIMEOUT: Duration = Duration::from_millis(200);

/// Our end of a socketpair whose peer writes `data` and then closes, from a
/// thread so that inputs larger than the socket buffer cannot block. The peer
/// also drains whatever we send, so our replies never block either.
pub fn feed(data: &[u8]) -> (UnixStream, JoinHandle<()>) {
    ignore_sigpipe();
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let data = data.to_vec();
    let t = std::thread::spawn(move || {
        let mut w = theirs;
        let mut r = w.try_clone().expect("dup");
        let drain = std::thread::spawn(move || {
            let _ = std::io::copy(&mut r, &mut std::io::sink());
        });
        let _ = w.write_all(&data);
        let _ = w.shutdown(std::net::Shutdown::Write);
        let _ = drain.join();
    });
    (ours, t)
}

/// Closes our end (so the peer's drain ends) and waits for the peer.
pub fn finish(ours: UnixStream, t: JoinHandle<()>) {
    let _ = ours.shutdown(std::net::Shutdown::Both);
    drop(ours);
    t.join().expect("feeder thread");
}

/// libFuzzer's `main` is C's, so Rust's start-up never ignored SIGPIPE: a write
/// to a peer that has gone must fail with EPIPE, as in our programs, not kill.
pub fn ignore_sigpipe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: setting a signal's disposition to SIG_IGN has no handler to race with.
    ONCE.call_once(|| unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    });
}

/// The body of a message-codec target (V2 and V3 share the shape): every
/// message decoded from the buffer re-encodes and decodes again, and the same
/// bytes are then received one message after another from a socket, as the real
/// receive path does, until the stream fails or ends.
#[macro_export]
macro_rules! codec_target {
    ($codec:ident, $data:expr) => {{
        let data: &[u8] = $data;
        let mut rest = data;
        while let Ok((msg, used)) = $codec::decode(rest) {
            // Commands kept undecoded (V3's unknown ones) cannot be sent again.
            if let Ok(again) = msg.encode() {
                $codec::decode(&again).expect("a re-encoded message decodes");
            }
            if used == 0 {
                break;
            }
            rest = &rest[used..];
        }
        let (s, t) = common::feed(data);
        {
            let ch = Channel::new(s.as_fd()).with_timeout(Some(common::TIMEOUT));
            while $codec::recv(&ch, Wait::Timed).is_ok() {}
        }
        common::finish(s, t);
    }};
}
