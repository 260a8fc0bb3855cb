// SPDX-License-Identifier: MIT
//! Raw flake YAML, mirroring the file format one to one.
//!
//! Every struct rejects unknown keys so that a typo (`runtim:`) is reported with the file and
//! key instead of being silently ignored. Every field is optional here: a `NAME.d` fragment may
//! set a single key, and the main file written by older releases spells absent values as `~`.
//! Required keys are enforced later, when the merged document is validated into
//! [`crate::config::Flake`].

use serde::{Deserialize, Serialize};

/// One flake document: `NAME.yaml` or a fragment of `NAME.d/`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlake {
    /// Host files provisioned into the instance.
    #[serde(default)]
    pub include: Option<RawInclude>,
    /// Container engine section.
    #[serde(default)]
    pub container: Option<RawContainer>,
    /// VM engine section. Kept opaque until the VM engine validates it; container flakes
    /// written by flake-ctl 3.1 carry `vm: ~`.
    #[serde(default)]
    pub vm: Option<yaml_serde::Value>,
}

/// The `include` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawInclude {
    /// Tar archives extracted into the instance.
    #[serde(default)]
    pub tar: Option<Vec<String>>,
    /// Host paths copied into the instance at the same path.
    #[serde(default)]
    pub path: Option<Vec<String>>,
}

/// The `container` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawContainer {
    /// Image of the app (the delta image when `base_container` is set).
    #[serde(default)]
    pub name: Option<String>,
    /// Program inside the container; `/` keeps the image's entrypoint.
    #[serde(default)]
    pub target_app_path: Option<String>,
    /// Registered host path (informational for the launcher).
    #[serde(default)]
    pub host_app_path: Option<String>,
    /// Base image under a delta container.
    #[serde(default)]
    pub base_container: Option<String>,
    /// Provision host files listed by the image.
    #[serde(default)]
    pub check_host_dependencies: Option<bool>,
    /// Run the image's `/systemfiles` on the host to produce that list (opt-in; it is read
    /// as a plain list otherwise). Not written unless set, so registrations keep the
    /// original layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execute_systemfiles: Option<bool>,
    /// Extra images applied between base and delta, in order.
    #[serde(default)]
    pub layers: Option<Vec<String>>,
    /// How the instance runs.
    #[serde(default)]
    pub runtime: Option<RawRuntime>,
}

/// The `container.runtime` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    /// `root` runs the engine as root (via sudo for other callers); anything else runs it as
    /// the caller.
    #[serde(default)]
    pub runas: Option<String>,
    /// Keep one instance alive and run each call inside it.
    #[serde(default)]
    pub resume: Option<bool>,
    /// Attach to the running instance instead of starting another.
    #[serde(default)]
    pub attach: Option<bool>,
    /// Extra engine options, one `OPTION[ VALUE]` per entry.
    #[serde(default)]
    pub podman: Option<Vec<String>>,
}
