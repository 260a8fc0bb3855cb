// SPDX-License-Identifier: MIT
//! The TAP device of a VM with a network.
//!
//! The device is named `tap-<instance>` (for example `tap-mybash` or `tap-mybash@work`)
//! when that fits the kernel's 15-character limit on interface names, and
//! `tap-<8 hex digits>` (a hash of the instance name) when it does not; the original let
//! long names fail. One-shot instances of root get their own device (the name then
//! carries the launcher's pid, so it is the short form); other users' one-shot calls use
//! the flake's `tap-<flake>[@NAME]`, which only an admin can make. A device that exists
//! already (made by an admin, for instance with
//! `ip tuntap add NAME mode tap user UID`) is used as it is and left alone. Otherwise the
//! launcher creates it and records that in the instance directory, so it is removed with
//! the instance and only then. Creating one needs `CAP_NET_ADMIN` (root); routing and
//! addresses stay the admin's business, as before.

use std::path::Path;

use flakes::process::Cmd;

use crate::error::{Result, VmError};

/// Longest interface name the kernel accepts (`IFNAMSIZ` - 1).
pub const MAX_NAME: usize = 15;
/// File in the instance directory that says the launcher created the device.
const CREATED: &str = "tap.created";

/// The TAP device name of instance `label`.
pub fn name(label: &str) -> String {
    let full = format!("tap-{label}");
    let valid = full
        .chars()
        .all(|c| c.is_ascii_graphic() && !matches!(c, '/' | ':' | '%'));
    if full.len() <= MAX_NAME && valid {
        full
    } else {
        let hash = label.bytes().fold(0x811c_9dc5u32, |hash, b| {
            (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        format!("tap-{hash:08x}")
    }
}

/// Makes sure device `name` exists for the instance in `dir`; creates it when missing.
pub fn ensure(name: &str, dir: &Path, ip: &Path, uid: u32) -> Result<()> {
    if Path::new("/sys/class/net").join(name).exists() {
        return Ok(());
    }
    if !rustix::process::geteuid().is_root() {
        return Err(VmError::Tap {
            name: name.into(),
            reason: format!(
                "it does not exist and only root can create it; create it with \
                 `ip tuntap add {name} mode tap user {uid}`, or register the flake with --no-net"
            ),
        });
    }
    Cmd::new(ip)
        .args([
            "tuntap",
            "add",
            "dev",
            name,
            "mode",
            "tap",
            "user",
            &uid.to_string(),
        ])
        .status()?;
    let marker = dir.join(CREATED);
    std::fs::write(&marker, name).map_err(crate::error::io(&marker))?;
    Cmd::new(ip).args(["link", "set", name, "up"]).stdout()?;
    Ok(())
}

/// Removes the device of the instance in `dir` if the launcher created it (`ip` is only
/// looked for then).
pub fn release(dir: &Path, tools: &crate::tools::Tools) {
    let marker = dir.join(CREATED);
    if let Ok(name) = std::fs::read_to_string(&marker) {
        // Without `ip` the mark stays, for a launch that has it.
        if let Ok(ip) = tools.ip() {
            let _ = Cmd::new(ip).args(["link", "delete", name.trim()]).stdout();
            let _ = std::fs::remove_file(marker);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limit() {
        assert_eq!(name("mybash"), "tap-mybash");
        assert_eq!(name("fcapp@vm1"), "tap-fcapp@vm1");
        let long = name("a-rather-long-flake@instance");
        assert_eq!(long.len(), 12);
        assert!(long.starts_with("tap-"));
        assert_ne!(
            long,
            name("a-rather-long-flake@other"),
            "distinct instances"
        );
        assert_eq!(long, name("a-rather-long-flake@instance"), "stable");
        assert_eq!(name("exactly11ch").len(), MAX_NAME);
        assert_ne!(name("exactly12chr"), "tap-exactly12chr");
        assert!(name("a:b").starts_with("tap-") && !name("a:b").contains(':'));
    }
}
