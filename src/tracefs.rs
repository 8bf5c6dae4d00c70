//! Finding and using the kernel's tracing directory (tracefs or debugfs).

use std::path::{Path, PathBuf};

/// Places where the tracing directory is looked for, in order.
const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Error when no tracing directory is mounted.
#[derive(Debug, thiserror::Error)]
#[error(
    "no tracing directory found: mount tracefs with `mount -t tracefs nodev /sys/kernel/tracing`"
)]
pub struct NotMounted;

/// The tracing directory: `$TRACEFS_DIR` if set (tests), else the first mounted
/// candidate that has `per_cpu/` (a mounted tracefs, or debugfs with tracing inside).
pub fn tracing_dir() -> Result<PathBuf, NotMounted> {
    if let Some(dir) = std::env::var_os("TRACEFS_DIR") {
        return Ok(PathBuf::from(dir));
    }
    CANDIDATES
        .iter()
        .map(Path::new)
        .find(|p| p.join("per_cpu").is_dir())
        .map(Path::to_path_buf)
        .ok_or(NotMounted)
}
