//! The receive timeout comes from TRACECMD_MSG_TIMEOUT_MS at first use, and the
//! setter overrides it. One test only: it sets the environment of this process.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use tracecmd_rs::msg::{
    default_timeout, parse_timeout, set_default_timeout, v2, Channel, MsgError, Wait,
};

#[test]
fn environment_then_setter_decide_the_default_timeout() {
    assert_eq!(parse_timeout("250"), Some(Some(Duration::from_millis(250))));
    assert_eq!(parse_timeout(" 0 "), Some(Some(Duration::ZERO)));
    assert_eq!(parse_timeout("-1"), Some(None));
    assert_eq!(parse_timeout("inf"), Some(None));
    assert_eq!(parse_timeout("INF"), Some(None));
    assert_eq!(parse_timeout("5s"), None);
    assert_eq!(parse_timeout(""), None);

    // Only test in this binary: nothing else reads the environment concurrently.
    std::env::set_var("TRACECMD_MSG_TIMEOUT_MS", "150");
    assert_eq!(default_timeout(), Some(Duration::from_millis(150)));

    // A channel made now stalls out after about 150 ms, not 5 s.
    let (mut a, b) = UnixStream::pair().unwrap();
    a.write_all(&[0, 0, 0, 12]).unwrap();
    let ch = Channel::new(b.as_fd());
    let t = Instant::now();
    let e = v2::recv(&ch, Wait::Timed).unwrap_err();
    assert!(matches!(e, MsgError::TimedOut(150)), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // The environment is read once; the setter wins afterwards.
    std::env::set_var("TRACECMD_MSG_TIMEOUT_MS", "inf");
    assert_eq!(default_timeout(), Some(Duration::from_millis(150)));
    set_default_timeout(None);
    assert_eq!(default_timeout(), None);
    assert_eq!(Channel::new(b.as_fd()).timeout(), None);
    set_default_timeout(Some(Duration::from_millis(5000)));
    assert_eq!(default_timeout(), Some(Duration::from_secs(5)));
}
