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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawFlake {
    /// Host files provisioned into the instance.
    #[serde(default)]
    pub include: Option<RawInclude>,
    /// Container engine section.
    #[serde(default)]
    pub container: Option<RawContainer>,
    /// VM engine section; container flakes written by flake-ctl 3.1 carry `vm: ~`.
    #[serde(default)]
    pub vm: Option<RawVm>,
}

/// The `include` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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

/// The `vm` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawVm {
    /// Name of the VM image in the image registry.
    #[serde(default)]
    pub name: Option<String>,
    /// Program inside the guest.
    #[serde(default)]
    pub target_app_path: Option<String>,
    /// Registered host path (informational for the launcher).
    #[serde(default)]
    pub host_app_path: Option<String>,
    /// Written by flake-ctl 3.1 and never used; accepted for compatibility.
    #[serde(default)]
    pub base_vm: Option<String>,
    /// Written by flake-ctl 3.1 and never used; accepted for compatibility.
    #[serde(default)]
    pub layers: Option<Vec<String>>,
    /// How the VM runs.
    #[serde(default)]
    pub runtime: Option<RawVmRuntime>,
}

/// The `vm.runtime` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawVmRuntime {
    /// User the VMM runs as (recorded; the VMM runs as the caller).
    #[serde(default)]
    pub runas: Option<String>,
    /// Keep the VM running and run each call in it.
    #[serde(default)]
    pub resume: Option<bool>,
    /// Use the guest channel even for one-shot calls.
    #[serde(default)]
    pub force_vsock: Option<bool>,
    /// `firecracker` (default) or `qemu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<String>,
    /// `false`: no network device at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<bool>,
    /// Resume VMs: seconds without a call after which the VM powers off (0: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<u64>,
    /// Machine settings.
    #[serde(default)]
    pub firecracker: Option<RawFirecracker>,
}

/// A size written as a number of bytes or as text such as `20GiB`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum RawSize {
    /// Bytes.
    Bytes(u64),
    /// Text with a unit.
    Text(String),
}

/// The `vm.runtime.firecracker` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawFirecracker {
    /// Kernel command line, one argument per entry.
    #[serde(default)]
    pub boot_args: Option<Vec<String>>,
    /// Size of the writable overlay disk; absent means no overlay.
    #[serde(default)]
    pub overlay_size: Option<RawSize>,
    /// Root filesystem image.
    #[serde(default)]
    pub rootfs_image_path: Option<String>,
    /// Kernel image.
    #[serde(default)]
    pub kernel_image_path: Option<String>,
    /// Initrd image.
    #[serde(default)]
    pub initrd_path: Option<String>,
    /// Guest memory in MiB.
    #[serde(default)]
    pub mem_size_mib: Option<u32>,
    /// Guest CPUs.
    #[serde(default)]
    pub vcpu_count: Option<u8>,
    /// `Writeback` or `Unsafe` for the overlay drive.
    #[serde(default)]
    pub cache_type: Option<String>,
}

/// The JSON Schema of a flake document (`NAME.yaml` or a fragment), derived from the types
/// above so that it cannot disagree with what the loader accepts.
#[cfg(feature = "schema")]
pub fn json_schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(RawFlake);
    schema.insert(
        "title".into(),
        "flake-pilot flake file (NAME.yaml or a NAME.d/ fragment)".into(),
    );
    schema.to_value()
}
