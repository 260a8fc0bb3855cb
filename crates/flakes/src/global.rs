// SPDX-License-Identifier: MIT
//! The global configuration: `/etc/flakes.yml` (system) and `~/.config/flakes.yml` (user).
//!
//! Both files hold one `generic:` section with optional keys. A missing file means defaults.
//! Setting the environment variable [`CONFIG_ENV`] replaces the system file for every binary,
//! which is how tests and side-by-side installations point flake-pilot at their own flakes dir.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable naming a file used instead of `/etc/flakes.yml`.
pub const CONFIG_ENV: &str = "FLAKES_CONFIG";
/// The system-wide global configuration file.
pub const SYSTEM_CONFIG: &str = "/etc/flakes.yml";
/// Default registration directory of system flakes.
pub const SYSTEM_FLAKES_DIR: &str = "/usr/share/flakes";
/// Shared directory for the instance state of users without a safe `$XDG_RUNTIME_DIR`
/// (the original's default for everyone; layout `<dir>/<uid>/`).
pub const DEFAULT_IDS_DIR: &str = "/tmp/flakes";
/// Default directory for root's instance state.
pub const ROOT_IDS_DIR: &str = "/run/flakes";

/// Errors while reading a global configuration file.
#[derive(Debug, thiserror::Error)]
pub enum GlobalConfigError {
    /// The file exists but cannot be read.
    #[error("cannot read global config {}: {source}", path.display())]
    Read {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("global config {}: {}; see the configuration reference in the README", path.display(),
        source.to_string().split_whitespace().collect::<Vec<_>>().join(" "))]
    Parse {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        source: yaml_serde::Error,
    },
}

/// The keys of a global configuration file (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Generic {
    /// Where `NAME.yaml` and `NAME.d/` registrations live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flakes_dir: Option<PathBuf>,
    /// Base directory of container instance state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub podman_ids_dir: Option<PathBuf>,
    /// Base directory of VM instance state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firecracker_ids_dir: Option<PathBuf>,
    /// containers-storage config handed to podman as `CONTAINERS_STORAGE_CONF`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub podman_storage_conf: Option<PathBuf>,
}

/// A global configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalConfig {
    /// The only section.
    #[serde(default)]
    pub generic: Generic,
}

impl GlobalConfig {
    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Self, GlobalConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(GlobalConfigError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        Self::parse(path, &text)
    }

    /// Parses `text`, the contents of `path` (named in errors); blank text gives the
    /// defaults. [`GlobalConfig::load`] is this after reading the file.
    pub fn parse(path: &Path, text: &str) -> Result<Self, GlobalConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        yaml_serde::from_str(text).map_err(|source| GlobalConfigError::Parse {
            path: path.into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_system_file_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flakes.yml");
        std::fs::write(
            &path,
            "generic:\n  flakes_dir: /usr/share/flakes\n  podman_ids_dir: /tmp/flakes\n  \
             firecracker_ids_dir: /tmp/flakes\n  podman_storage_conf: /etc/flakes/storage.conf\n",
        )
        .unwrap();
        let config = GlobalConfig::load(&path).unwrap();
        assert_eq!(
            config.generic.flakes_dir.as_deref(),
            Some(Path::new("/usr/share/flakes"))
        );
        assert_eq!(
            config.generic.podman_storage_conf.as_deref(),
            Some(Path::new("/etc/flakes/storage.conf"))
        );
    }

    #[test]
    fn missing_and_empty_files_give_defaults() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            GlobalConfig::load(&dir.path().join("none")).unwrap(),
            GlobalConfig::default()
        );
        let empty = dir.path().join("empty.yml");
        std::fs::write(&empty, "\n").unwrap();
        assert_eq!(GlobalConfig::load(&empty).unwrap(), GlobalConfig::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flakes.yml");
        std::fs::write(&path, "generic:\n  flake_dir: /x\n").unwrap();
        let err = GlobalConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("flake_dir") && err.contains("flakes.yml"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }
}
