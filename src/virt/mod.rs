//! Guests through the virt-server (spec §1.1, §3.3–§3.8): the host listener that
//! brokers guests ([`listener`]), the guest agent ([`agent`]), and the guest metadata
//! handling ([`meta`]). The manager side of `record -A` is the recording engine's
//! ([`crate::record::guest`]; [`guest`] keeps its old names).
//!
//! Messages the virt-server branch left undefined, all within the V2 command set
//! (README "Guests (virt-server)"):
//!
//! * `connect` → listener, after the strings: the listener answers **ACK** when it
//!   registered the guest and **FINISH** when it refused (a VS C `connect` closes
//!   without reading the answer; that still works).
//! * manager → agent, after CONNECT{argc} + argv: the agent answers **TINIT**{cpus,
//!   page size, 0 options}, the manager **RINIT**{cpus} without ports, the agent sends
//!   its metadata as SENDMETA…FINMETA; when the agent cannot record with those
//!   arguments it sends one **string** (SENDMETA…FINMETA) with the reason instead
//!   of TINIT.
//! * manager → agent **CLOSE** = stop; the agent stops tracing, flushes every CPU
//!   into its port and answers **ACK**. The listener sends CLOSE too when a manager
//!   disappears, so the agent is free for the next one.
//! * manager → agent, after FINMETA: the clock-sync offer and rounds, in SENDMETA
//!   payloads starting with `TSYNC1` ([`crate::msg::tsync`]); an agent that does not
//!   answer the offer is never sent another.

pub mod agent;
pub mod guest;
pub mod listener;
pub mod meta;

use std::path::{Path, PathBuf};

use crate::msg::MsgError;

/// Default run directory of the unix sockets (spec §1.1 `TRACE_CMD_RUN_DIR`).
pub const DEFAULT_RUN_DIR: &str = "/var/run/trace-cmd";
/// Default directory of the domain directories (spec §1.1 `VIRT_DIR`).
pub const DEFAULT_VIRT_DIR: &str = "/var/lib/trace-cmd/virt";
/// Default guest-side directory of the virtio ports (spec §1.1 `VIRTIO_PORTS`).
pub const DEFAULT_PORTS_DIR: &str = "/dev/virtio-ports";
/// Longest domain name accepted.
pub const MAX_DOMAIN_LEN: usize = 64;

/// What went wrong on the virt-server paths.
#[derive(Debug, thiserror::Error)]
pub enum VirtError {
    #[error(transparent)]
    Msg(#[from] MsgError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("invalid domain name {0:?}: use 1 to 64 characters without '/', NUL or control characters, and not '.' or '..'")]
    BadDomain(String),
    #[error("the listener refused to register guest {0:?} (are its FIFOs there? see the listener's log)")]
    Refused(String),
    #[error("guest {guest:?} is already registered with the listener ({cpus} CPUs); restart the listener to register it anew")]
    AlreadyRegistered { guest: String, cpus: u32 },
    #[error("the listener neither answered nor lists guest {0:?}; see the listener's log")]
    NoAnswer(String),
    #[error("the guest agent of {guest:?} refused to record: {reason}")]
    AgentRefused { guest: String, reason: String },
    #[error("the listener knows no free agent for guest {0:?} (is `trace-cmd agent --virt` running in it, and no other record -A using it?)")]
    NoAgent(String),
    #[error("bad guest metadata: {0}")]
    BadMetadata(String),
    #[error("{0}")]
    Invalid(String),
}

impl VirtError {
    /// The positive errno value for the C layer.
    pub fn errno(&self) -> i32 {
        match self {
            VirtError::Msg(e) => e.errno(),
            VirtError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            VirtError::BadDomain(_) | VirtError::Invalid(_) => libc::EINVAL,
            VirtError::Refused(_) => libc::EINVAL,
            VirtError::AlreadyRegistered { .. } => libc::EEXIST,
            VirtError::NoAnswer(_) => libc::ETIMEDOUT,
            VirtError::AgentRefused { .. } => libc::EINVAL,
            VirtError::NoAgent(_) => libc::ENODEV,
            VirtError::BadMetadata(_) => libc::EBADMSG,
        }
    }
}

/// Builds a [`VirtError::Io`] naming what failed.
pub fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VirtError {
    let what = what.into();
    move |source| VirtError::Io { what, source }
}

/// Result of this module's functions.
pub type Result<T> = std::result::Result<T, VirtError>;

/// Checks a domain (guest) name: it becomes a directory name under the virt dir.
pub fn validate_domain(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_DOMAIN_LEN
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(VirtError::BadDomain(name.to_string()))
    }
}

/// Where the host side keeps its sockets and FIFOs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtPaths {
    /// Directory of `agent-ctl-path` and `manager-ctl-path`.
    pub run_dir: PathBuf,
    /// Directory of the per-domain directories.
    pub virt_dir: PathBuf,
}

impl VirtPaths {
    /// The given directories, else `TRACE_CMD_RUN_DIR` / `TRACE_CMD_VIRT_DIR`,
    /// else the defaults of spec §1.1.
    pub fn new(run_dir: Option<PathBuf>, virt_dir: Option<PathBuf>) -> VirtPaths {
        let pick = |given: Option<PathBuf>, var: &str, default: &str| {
            given
                .or_else(|| std::env::var_os(var).map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(default))
        };
        VirtPaths {
            run_dir: pick(run_dir, "TRACE_CMD_RUN_DIR", DEFAULT_RUN_DIR),
            virt_dir: pick(virt_dir, "TRACE_CMD_VIRT_DIR", DEFAULT_VIRT_DIR),
        }
    }

    /// The listener's socket for agents (and QEMU unix chardevs).
    pub fn agent_socket(&self) -> PathBuf {
        self.run_dir.join("agent-ctl-path")
    }

    /// The listener's socket for `connect`, `list` and `record -A`.
    pub fn manager_socket(&self) -> PathBuf {
        self.run_dir.join("manager-ctl-path")
    }

    /// `<virt dir>/<domain>`.
    pub fn domain_dir(&self, domain: &str) -> PathBuf {
        self.virt_dir.join(domain)
    }

    /// The agent control FIFO pair's base name (without `.in`/`.out`).
    pub fn agent_fifo(&self, domain: &str) -> PathBuf {
        self.domain_dir(domain).join("agent-ctl-path")
    }

    /// CPU `cpu`'s FIFO pair base name.
    pub fn cpu_fifo(&self, domain: &str, cpu: u32) -> PathBuf {
        self.domain_dir(domain).join(format!("trace-path-cpu{cpu}"))
    }
}

/// `base` with `suffix` appended to its last component (`x` → `x.in`).
pub fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Whether `path` is a FIFO (not following a dangling name).
pub fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// Creates `dir` (and parents) if missing, then sets its mode and group.
pub fn make_dir(dir: &Path, mode: u32, group: Option<nix::unistd::Gid>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("cannot chmod {}", dir.display())))?;
    chgrp(dir, group)
}

/// Changes the group of `path` (nothing for `None`).
pub fn chgrp(path: &Path, group: Option<nix::unistd::Gid>) -> Result<()> {
    if group.is_some() {
        nix::unistd::chown(path, None, group).map_err(|e| VirtError::Io {
            what: format!("cannot change the group of {}", path.display()),
            source: e.into(),
        })?;
    }
    Ok(())
}

/// Creates the FIFO pair `base.in` / `base.out` (existing FIFOs are kept).
pub fn make_fifo_pair(base: &Path, mode: u32, group: Option<nix::unistd::Gid>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for suffix in [".in", ".out"] {
        let p = with_suffix(base, suffix);
        if !is_fifo(&p) {
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(mode)).map_err(
                |e| VirtError::Io {
                    what: format!("cannot create the FIFO {}", p.display()),
                    source: e.into(),
                },
            )?;
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(format!("cannot chmod {}", p.display())))?;
        chgrp(&p, group)?;
    }
    Ok(())
}

/// The group `name`, or, when it does not exist, the caller's group with a warning
/// (spec §3.3 needs `qemu` to exist; tests and hosts without QEMU have none).
pub fn group_or_own(name: &str) -> nix::unistd::Gid {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => g.gid,
        _ => {
            let own = nix::unistd::getegid();
            log::warn!("group {name:?} does not exist; using the caller's group {own}");
            own
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_names() {
        for ok in ["guest", "Guest-1.x", "a", &"x".repeat(64)] {
            assert!(validate_domain(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a\0b",
            "a\nb",
            &"x".repeat(65),
        ] {
            assert!(validate_domain(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths_follow_spec() {
        let p = VirtPaths::new(Some("/r".into()), Some("/v".into()));
        assert_eq!(p.agent_socket(), Path::new("/r/agent-ctl-path"));
        assert_eq!(p.manager_socket(), Path::new("/r/manager-ctl-path"));
        assert_eq!(p.cpu_fifo("g", 3), Path::new("/v/g/trace-path-cpu3"));
        assert_eq!(
            with_suffix(&p.agent_fifo("g"), ".in"),
            Path::new("/v/g/agent-ctl-path.in")
        );
    }
}
