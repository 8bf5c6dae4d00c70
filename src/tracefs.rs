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

/// A ring-buffer instance: the top-level tracing directory or `instances/<name>`.
///
/// An instance made with [`Instance::create`] is removed again when dropped, so tests
/// and recordings that use a private instance leave tracefs as they found it.
#[derive(Debug)]
pub struct Instance {
    path: PathBuf,
    remove_on_drop: bool,
}

impl Instance {
    /// The top-level buffer of the tracing directory.
    pub fn top() -> Result<Instance, NotMounted> {
        Ok(Instance {
            path: tracing_dir()?,
            remove_on_drop: false,
        })
    }

    /// Creates `instances/<name>` (an error if it exists already); removed on drop.
    pub fn create(name: &str) -> std::io::Result<Instance> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid instance name {name:?}"),
            ));
        }
        let top =
            tracing_dir().map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, e))?;
        let path = top.join("instances").join(name);
        std::fs::create_dir(&path)?;
        Ok(Instance {
            path,
            remove_on_drop: true,
        })
    }

    /// The instance's directory (what the recorder's `buffer` argument names).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads a control file of this instance, e.g. `buffer_size_kb`.
    pub fn read(&self, file: &str) -> std::io::Result<String> {
        std::fs::read_to_string(self.path.join(file))
    }

    /// Writes a control file of this instance, e.g. `tracing_on` or `events/sched/enable`.
    pub fn write(&self, file: &str, contents: &str) -> std::io::Result<()> {
        std::fs::write(self.path.join(file), contents)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if self.remove_on_drop {
            // An instance with enabled events can still be removed; log, never panic.
            if let Err(e) = std::fs::remove_dir(&self.path) {
                log::warn!(
                    "could not remove tracing instance {}: {e}",
                    self.path.display()
                );
            }
        }
    }
}

/// Number of CPUs the kernel has buffers for (entries of `per_cpu/`).
pub fn cpu_count(instance: &Instance) -> std::io::Result<usize> {
    let n = std::fs::read_dir(instance.path().join("per_cpu"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("cpu"))
        .count();
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_is_created_and_removed() {
        let Ok(top) = Instance::top() else {
            panic!("tracefs is not mounted: run as root with tracefs mounted (.ci/install-deps mounts it)");
        };
        let name = format!("tracecmd-rs-test-{}", std::process::id());
        {
            let inst = Instance::create(&name).expect("create instance (needs root)");
            assert!(inst.path().join("per_cpu").is_dir());
            assert!(cpu_count(&inst).unwrap() >= 1);
            inst.write("tracing_on", "0").unwrap();
            assert_eq!(inst.read("tracing_on").unwrap().trim(), "0");
        }
        assert!(!top.path().join("instances").join(&name).exists());
        assert!(Instance::create("a/b").is_err());
    }
}
