// SPDX-License-Identifier: MIT
//! Host programs a launch may need: `mkfs.ext4` for overlay disks and `ip` for TAP devices.
//!
//! They are looked up on the launcher's search path only when first needed: most calls
//! (every warm call into a resume VM, one-shot calls without an overlay or a network) need
//! neither, and each lookup walks every directory of the path.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Result, VmError};

/// The programs, found once each on `path`.
#[derive(Debug, Default)]
pub struct Tools {
    path: OsString,
    mkfs: OnceLock<Option<PathBuf>>,
    ip: OnceLock<Option<PathBuf>>,
}

impl Tools {
    /// Programs to be looked up on `path` (a `PATH`-style list).
    pub fn new(path: OsString) -> Self {
        Tools {
            path,
            ..Tools::default()
        }
    }

    /// `mkfs.ext4`, or why it cannot be had.
    pub fn mkfs(&self) -> Result<&Path> {
        self.find(&self.mkfs, "mkfs.ext4")
    }

    /// `ip`, or why it cannot be had.
    pub fn ip(&self) -> Result<&Path> {
        self.find(&self.ip, "ip")
    }

    fn find<'a>(&'a self, cell: &'a OnceLock<Option<PathBuf>>, name: &str) -> Result<&'a Path> {
        cell.get_or_init(|| flakes::process::resolve(name, Some(&self.path)).ok())
            .as_deref()
            .ok_or_else(|| {
                VmError::Process(flakes::process::ProcessError::NotFound {
                    program: name.to_string(),
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_the_path_given_and_missing_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        let ip = dir.path().join("ip");
        std::fs::write(&ip, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&ip, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let tools = Tools::new(dir.path().as_os_str().to_owned());
        assert_eq!(tools.ip().unwrap(), ip);
        let missing = tools.mkfs().unwrap_err().to_string();
        assert!(missing.contains("mkfs.ext4"), "{missing}");
    }
}
