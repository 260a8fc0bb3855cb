// SPDX-License-Identifier: MIT
//! The flake configuration: raw file format, merging, and the validated domain types.
//!
//! Loading happens in three steps so that nothing acts on a half-understood file:
//! 1. every file (`NAME.yaml`, then `NAME.d/*.yaml` sorted by name) is parsed on its own, so a
//!    syntax error or an unknown key is reported with the file that holds it;
//! 2. the documents are deep-merged ([`merge::deep_merge`]);
//! 3. the merged [`raw::RawFlake`] is validated into a [`Flake`].

pub mod check;
pub mod load;
pub mod merge;
pub mod raw;
mod validate;
pub mod vm;

use std::path::PathBuf;

pub use load::load_flake;

use crate::names::FlakeName;

/// Errors while loading or validating a flake configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not valid YAML for a flake (syntax, type or unknown key).
    #[error("{}: {}", path.display(), one_line(source))]
    Parse {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        source: yaml_serde::Error,
    },
    /// The merged configuration is well-formed YAML but not a usable flake.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// Main file of the flake (`NAME.yaml`).
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
}

/// Keeps error messages on one line: YAML errors sometimes embed newlines.
fn one_line(err: &yaml_serde::Error) -> String {
    err.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Result alias for this module.
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// A validated flake.
#[derive(Debug, Clone, PartialEq)]
pub struct Flake {
    /// Registration name (`NAME` of `NAME.yaml`).
    pub name: FlakeName,
    /// The main configuration file.
    pub path: PathBuf,
    /// Host files provisioned into the instance.
    pub include: Include,
    /// Which engine runs the flake, with its settings.
    pub engine: Engine,
}

/// Host files provisioned into an instance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Include {
    /// Tar archives extracted into the instance root.
    pub tar: Vec<PathBuf>,
    /// Host paths copied to the same path inside the instance.
    pub path: Vec<PathBuf>,
}

impl Include {
    /// True when there is nothing to provision.
    pub fn is_empty(&self) -> bool {
        self.tar.is_empty() && self.path.is_empty()
    }
}

/// The engine of a flake.
#[derive(Debug, Clone, PartialEq)]
pub enum Engine {
    /// Runs in a podman container.
    Container(ContainerFlake),
    /// Runs in a microVM.
    Vm(vm::VmFlake),
}

impl Engine {
    /// Short engine name as shown by `flake-ctl list`.
    pub fn label(&self) -> &'static str {
        match self {
            Engine::Container(_) => "podman",
            Engine::Vm(_) => "firecracker",
        }
    }
}

/// Settings of a container flake.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerFlake {
    /// Image that is run (the delta image when there is a base).
    pub image: String,
    /// Program started in the container.
    pub target: Target,
    /// Registered host path, if recorded.
    pub host_app_path: Option<PathBuf>,
    /// Base image for a delta container.
    pub base: Option<String>,
    /// Images applied between base and delta.
    pub layers: Vec<String>,
    /// Provision host files listed by the image (implied by a base).
    pub check_host_dependencies: bool,
    /// Run the image's `/systemfiles` as a script on the host (explicit opt-in).
    pub execute_systemfiles: bool,
    /// Launch settings.
    pub runtime: ContainerRuntime,
}

impl ContainerFlake {
    /// True when the instance needs more than the image itself (issue: provisioning).
    pub fn needs_provisioning(&self, include: &Include) -> bool {
        self.base.is_some() || self.check_host_dependencies || !include.is_empty()
    }

    /// True when the host files listed by the images (`/removed`, `/systemfiles`) are
    /// provisioned: always for a delta flake (as Flake Pilot 3.1 did), and for a plain one
    /// with `check_host_dependencies`.
    pub fn provisions_host_files(&self) -> bool {
        self.base.is_some() || self.check_host_dependencies
    }
}

/// What runs inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `target_app_path: /`: keep the image's own entrypoint and command.
    ImageEntrypoint,
    /// An absolute program path inside the container.
    Program(String),
    /// No `target_app_path`: the program named like the flake, looked up in the container.
    FlakeName,
}

/// How a container flake is launched.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRuntime {
    /// Whose engine runs the instance.
    pub runas: RunAs,
    /// Instance lifecycle.
    pub mode: LaunchMode,
    /// Extra engine options, one `OPTION[ VALUE]` per entry, as written in the file.
    pub podman: Vec<String>,
}

/// Whose engine runs the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// Root's engine and storage; callers other than root go through `sudo`.
    Root,
    /// The caller's own (rootless) engine. The recorded user name is informational.
    Caller(Option<String>),
}

/// Instance lifecycle. Mutually exclusive by construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchMode {
    /// A fresh instance per call, removed when the app exits.
    OneShot,
    /// One long-lived instance; every call runs the target inside it.
    Resume,
    /// One instance running its entry command; later calls attach to it.
    Attach,
}

impl LaunchMode {
    /// Lower-case name as used in docs and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            LaunchMode::OneShot => "one-shot",
            LaunchMode::Resume => "resume",
            LaunchMode::Attach => "attach",
        }
    }
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;

/// Validates a raw document as if it were loaded from `path`; lets `flake-ctl` check a
/// registration with exactly the rules the launchers apply, before writing it.
pub fn validate_raw(name: FlakeName, path: &std::path::Path, raw: raw::RawFlake) -> Result<Flake> {
    validate::validate(name, path, raw)
}
