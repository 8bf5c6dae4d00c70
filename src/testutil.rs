//! Helpers of the recorder's unit tests.

use std::path::{Path, PathBuf};

/// A path in a per-test temporary directory, removed with the directory on drop.
pub(super) struct TmpPath(PathBuf);

impl std::ops::Deref for TmpPath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TmpPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpPath {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `name` in a fresh directory of its own (per process and name).
pub(super) fn tmp(name: &str) -> TmpPath {
    let dir = std::env::temp_dir().join(format!("tcrs-rec-unit-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    TmpPath(dir.join(name))
}
