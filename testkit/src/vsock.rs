//! AF_VSOCK over TCP loopback for tests on machines without vsock
//! (`testkit/c/vsock_shim.c`, loaded with LD_PRELOAD): CID:PORT is
//! 127.0.0.1:PORT; each process says which CID it is and which its peers are.
//! It carries stream sockets only; real vsock (a guest, vhost-vsock) is not
//! exercised by it.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The host's CID (VMADDR_CID_HOST).
pub const HOST_CID: u32 = 2;
/// The CID the tests give the guest.
pub const GUEST_CID: u32 = 3;

/// Which end of a vsock connection a process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// CID 2; its peers are the guest.
    Host,
    /// [`GUEST_CID`]; its peers are the host.
    Guest,
}

/// The shim, built once per test program with `cc` (a build failure panics:
/// the tests that need it must not pass without it).
pub fn shim() -> PathBuf {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("c/vsock_shim.c");
        let out = std::env::temp_dir().join(format!("tcrs-vsock-shim-{}.so", std::process::id()));
        let st = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
            .arg(&out)
            .arg(&src)
            .arg("-ldl")
            .status()
            .expect("run cc to build the vsock shim");
        assert!(st.success(), "cc could not build {}", src.display());
        out
    })
    .clone()
}

/// Makes `cmd` (and the processes it starts, the sandbox included) use the shim
/// as `side`.
pub fn apply(cmd: &mut Command, side: Side) -> &mut Command {
    let (local, peer) = match side {
        Side::Host => (HOST_CID, GUEST_CID),
        Side::Guest => (GUEST_CID, HOST_CID),
    };
    cmd.env("LD_PRELOAD", shim())
        .env("VSOCK_SHIM_LOCAL_CID", local.to_string())
        .env("VSOCK_SHIM_PEER_CID", peer.to_string())
}
