//! Output names: `<prefix>.<host>:<port>.dat` with the peer's reverse-resolved
//! name (doc §6.1, P16), made safe to use as one file name inside `-d`.

use std::net::{IpAddr, SocketAddr};

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
