// SPDX-License-Identifier: MIT
//! Finding the static `flake-agent` that resume instances run as PID 1, and making sure it
//! can run in any image.
//!
//! A dynamically linked agent (for instance a plain `cargo build` of it) cannot start in an
//! image without the matching C library, which would show up only as an instance whose
//! agent never answers. The ELF header tells up front: a program header of type `PT_INTERP`
//! means the binary needs a dynamic loader.

use std::path::{Path, PathBuf};

use crate::PodmanError;

/// Environment variable naming the static agent binary (for tests and custom installs).
pub const AGENT_ENV: &str = "FLAKE_AGENT";

/// The agent: `$FLAKE_AGENT` (given as `env`), else `../libexec/flake-pilot/flake-agent` or
/// `flake-agent` relative to the launcher's directory `exe_dir`.
pub fn locate(env: Option<std::ffi::OsString>, exe_dir: &Path) -> Result<PathBuf, PodmanError> {
    if let Some(path) = env.filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let looked = vec![
        exe_dir.join("../libexec/flake-pilot/flake-agent"),
        exe_dir.join("flake-agent"),
    ];
    match looked.iter().find(|p| p.is_file()) {
        Some(found) => Ok(found.clone()),
        None => Err(PodmanError::AgentMissing { looked }),
    }
}

/// Refuses an agent that is not a statically linked ELF executable.
pub fn check_static(agent: &Path) -> Result<(), PodmanError> {
    let bytes = std::fs::read(agent).map_err(|source| PodmanError::AgentUnusable {
        agent: agent.to_path_buf(),
        reason: format!("cannot read it: {source}"),
    })?;
    match needs_loader(&bytes) {
        Some(false) => Ok(()),
        Some(true) => Err(PodmanError::AgentUnusable {
            agent: agent.to_path_buf(),
            reason: "it is dynamically linked; build it with `make agent`".into(),
        }),
        None => Err(PodmanError::AgentUnusable {
            agent: agent.to_path_buf(),
            reason: "it is not a 64-bit little-endian ELF executable".into(),
        }),
    }
}

/// `Some(true)` when the ELF image has a `PT_INTERP` header; `None` when it is not ELF64 LE.
fn needs_loader(elf: &[u8]) -> Option<bool> {
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let (entsize, count) = (usize::from(u16_at(0x36)?), usize::from(u16_at(0x38)?));
    for index in 0..count {
        let at = phoff.checked_add(index.checked_mul(entsize)?)?;
        let kind = u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?);
        if kind == 3 {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with one program header of type `kind`.
    fn elf(kind: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; 0x40 + 0x38];
        bytes[..6].copy_from_slice(b"\x7fELF\x02\x01");
        bytes[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        bytes[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        bytes[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        bytes[0x40..0x44].copy_from_slice(&kind.to_le_bytes());
        bytes
    }

    #[test]
    fn loader_detection() {
        assert_eq!(needs_loader(&elf(3)), Some(true));
        assert_eq!(needs_loader(&elf(1)), Some(false));
        assert_eq!(needs_loader(b"#!/bin/sh\n"), None);
        assert_eq!(
            needs_loader(&elf(3)[..0x41]),
            None,
            "truncated headers are not trusted"
        );
    }

    #[test]
    fn host_shell_is_refused_as_agent() {
        let err = check_static(Path::new("/bin/sh")).unwrap_err().to_string();
        assert!(
            err.contains("dynamically linked") && err.contains("make agent"),
            "{err}"
        );
    }

    #[test]
    fn location_order() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(dir.path().join("libexec/flake-pilot")).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        assert!(matches!(
            locate(None, &bin),
            Err(PodmanError::AgentMissing { .. })
        ));
        std::fs::write(bin.join("flake-agent"), "").unwrap();
        assert_eq!(locate(None, &bin).unwrap(), bin.join("flake-agent"));
        std::fs::write(dir.path().join("libexec/flake-pilot/flake-agent"), "").unwrap();
        assert_eq!(
            locate(None, &bin).unwrap(),
            bin.join("../libexec/flake-pilot/flake-agent")
        );
        assert_eq!(
            locate(Some("/x/agent".into()), &bin).unwrap(),
            PathBuf::from("/x/agent")
        );
    }
}
