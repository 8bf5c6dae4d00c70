//! Output names: `<prefix>.<host>:<port>.dat` with the peer's reverse-resolved
//! name (doc §6.1, P16), made safe to use as one file name inside `-d`, and never
//! the name of another session's file.

use std::fs::File;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// Longest host part kept in a file name.
pub const MAX_HOST_LEN: usize = 64;

/// Makes `host` a harmless piece of a file name: only ASCII letters, digits and
/// `.-_:` survive (others become `_`), no `..` sequence, no leading `.`, at most
/// [`MAX_HOST_LEN`] bytes, never empty. Whatever a resolver returns, the result
/// cannot leave the output directory.
pub fn sanitise_host(host: &str) -> String {
    let mut s = String::with_capacity(host.len().min(MAX_HOST_LEN));
    for c in host.chars() {
        if s.len() == MAX_HOST_LEN {
            break;
        }
        let keep = c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
        let c = if keep { c } else { '_' };
        if c == '.' && (s.is_empty() || s.ends_with('.')) {
            s.push('_');
        } else {
            s.push(c);
        }
    }
    if s.is_empty() {
        s.push_str("unknown");
    }
    s
}

/// The peer's address with an IPv4-mapped IPv6 address turned back into IPv4, so
/// that 127.0.0.1 reached through a dual-stack socket still resolves to "localhost".
pub fn unmapped(peer: SocketAddr) -> SocketAddr {
    match peer.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), peer.port()),
            None => peer,
        },
        IpAddr::V4(_) => peer,
    }
}

/// The peer's host name as `getnameinfo` gives it (reverse-resolved, numeric when
/// that fails), like upstream's listener; not yet sanitised.
pub fn peer_host(peer: SocketAddr) -> String {
    let peer = unmapped(peer);
    let name = match peer {
        SocketAddr::V4(a) => {
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            name_info(&sa)
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = a.port().to_be();
            sa.sin6_addr.s6_addr = a.ip().octets();
            sa.sin6_scope_id = a.scope_id();
            name_info(&sa)
        }
    };
    name.unwrap_or_else(|| peer.ip().to_string())
}

/// Most names [`claim`] tries for one session.
const MAX_CLAIMS: u32 = 10_000;

/// Claims a file name for a session whose natural name is `<base>.dat`: the
/// first of `base`, `base-2`, `base-3`, … with neither a finished `.dat` nor a
/// `.dat.partial` in `dir`. The `.dat.partial` is created exclusively and
/// returned (read and write), so two sessions never share one: a client port is
/// free again as soon as a V1 client closes, and the next client from that host
/// may get it while the first session is still being assembled (a fleet on one
/// host), or days later. Returns the base that was claimed.
pub fn claim(dir: &Path, base: &str) -> std::io::Result<(String, File)> {
    for n in 1..=MAX_CLAIMS {
        let name = if n == 1 {
            base.to_string()
        } else {
            format!("{base}-{n}")
        };
        if dir.join(format!("{name}.dat")).exists() {
            continue;
        }
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join(format!("{name}.dat.partial")))
        {
            Ok(f) => {
                if n > 1 {
                    log::info!("{base}.dat is taken by another session; writing {name}.dat");
                }
                return Ok((name, f));
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        ErrorKind::AlreadyExists,
        format!("{base}.dat and {MAX_CLAIMS} numbered names after it are all taken"),
    ))
}

/// Renames the finished `work` file to `dat` unless `dat` exists: a finished
/// file is never replaced (`renameat2(RENAME_NOREPLACE)`; where the file system
/// lacks it, a check just before an ordinary rename).
pub fn publish(work: &Path, dat: &Path) -> std::io::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags};
    match renameat2(None, work, None, dat, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS) => {
            if dat.exists() {
                return Err(ErrorKind::AlreadyExists.into());
            }
            std::fs::rename(work, dat)
        }
        Err(e) => Err(e.into()),
    }
}

/// `getnameinfo(3)` for a `sockaddr_in` or `sockaddr_in6`: the host name only.
fn name_info<T>(sa: &T) -> Option<String> {
    let mut host = [0 as libc::c_char; 1025];
    // SAFETY: `sa` points to a complete socket address of `size_of::<T>()` bytes
    // (callers pass sockaddr_in or sockaddr_in6) that outlives the call; `host` is
    // a writable buffer of the length passed; no service buffer is requested
    // (NULL, 0). On success getnameinfo NUL-terminates `host`.
    let rc = unsafe {
        libc::getnameinfo(
            (sa as *const T).cast::<libc::sockaddr>(),
            std::mem::size_of::<T>() as libc::socklen_t,
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            0,
        )
    };
    if rc != 0 {
        return None;
    }
    let bytes: Vec<u8> = host
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_in_use_or_finished_is_never_claimed_again() {
        let dir = crate::testutil::TempDir::new("listen-claim");
        let d: &Path = &dir;
        let (a, _fa) = claim(d, "trace.h:1").unwrap();
        assert_eq!(a, "trace.h:1");
        // A session still building trace.h:1 holds its name.
        let (b, _fb) = claim(d, "trace.h:1").unwrap();
        assert_eq!(b, "trace.h:1-2");
        // A finished file holds its name too, and is never replaced.
        publish(&d.join("trace.h:1.dat.partial"), &d.join("trace.h:1.dat")).unwrap();
        let (c, _fc) = claim(d, "trace.h:1").unwrap();
        assert_eq!(c, "trace.h:1-3");
        std::fs::write(d.join("x.dat.partial"), b"new").unwrap();
        let e = publish(&d.join("x.dat.partial"), &d.join("trace.h:1.dat")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        assert!(d.join("x.dat.partial").exists());
    }

    #[test]
    fn hostile_names_stay_inside_the_directory() {
        for (input, want) in [
            ("localhost", "localhost"),
            ("host.example.com", "host.example.com"),
            ("::1", "::1"),
            ("../../etc/passwd", "_._.__etc_passwd"),
            ("..", "_."),
            (".hidden", "_hidden"),
            ("a/b", "a_b"),
            ("a..b", "a._b"),
            ("", "unknown"),
            ("ünï\n\0x", "_n___x"),
        ] {
            let got = sanitise_host(input);
            assert_eq!(got, want, "input {input:?}");
        }
        let long = "a".repeat(1000);
        assert_eq!(sanitise_host(&long).len(), MAX_HOST_LEN);
    }

    #[test]
    fn random_names_never_escape() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 80) as usize;
            let s: String = (0..len)
                .map(|i| {
                    let b = (x >> ((i % 8) * 8)) as u8 ^ (i as u8).wrapping_mul(31);
                    [b'.', b'/', b'a', b'\0', b'%'][b as usize % 5] as char
                })
                .collect();
            let out = sanitise_host(&s);
            assert!(!out.is_empty() && out.len() <= MAX_HOST_LEN);
            assert!(!out.contains('/') && !out.contains("..") && !out.starts_with('.'));
            assert!(out.bytes().all(|b| b.is_ascii_graphic()));
        }
    }

    #[test]
    fn loopback_resolves_to_a_name() {
        let h = peer_host("[::ffff:127.0.0.1]:1234".parse().unwrap());
        assert!(!h.is_empty());
        assert!(!h.starts_with("::ffff"), "{h}");
    }
}
