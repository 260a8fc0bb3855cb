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
    match flakes::elf::needs_loader(&bytes) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
