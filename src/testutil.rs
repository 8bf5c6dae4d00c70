//! Helpers of the library's unit tests (the integration tests have `testkit`,
//! which the unit tests cannot use: it depends on this crate).

use std::path::{Path, PathBuf};

/// A path in a per-test temporary directory, removed with the directory on drop.
pub(crate) struct TmpPath {
    path: PathBuf,
    _dir: TempDir,
}

impl std::ops::Deref for TmpPath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TmpPath {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// `name` in a fresh directory of its own (per process and name).
pub(crate) fn tmp(name: &str) -> TmpPath {
    let dir = TempDir::new(name);
    TmpPath {
        path: dir.join(name),
        _dir: dir,
    }
}

/// A fresh directory (per process and tag), removed with its contents on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tcrs-unit-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
