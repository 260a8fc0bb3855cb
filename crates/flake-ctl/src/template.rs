// SPDX-License-Identifier: MIT
//! Admin defaults for new registrations: `/etc/flakes/container-flake.yaml` and
//! `/etc/flakes/firecracker-flake.yaml`.
//!
//! An admin of many hosts wants every new flake to start from the site's settings (podman
//! options, guest memory and CPUs) without repeating them on each `register`. A template is a
//! flake document that may set only those engine settings; what identifies one flake (image,
//! app, target, includes, layers, who it runs as) always comes from the command line, so a
//! template can never redirect a registration to another image or program. Flags win over the
//! template. A missing template changes nothing, and a broken one fails the registration
//! with its file and line before anything is written. The same templates apply to `--user`
//! registrations: like the original, there is no per-user template.
//!
//! `FLAKES_TEMPLATE_DIR` points at another directory (tests, staging a new template).

use std::path::PathBuf;

use anyhow::{bail, Result};
use flakes::config::check::Problem;
use flakes::config::raw::{RawFirecracker, RawFlake};
use flakes::config::ConfigError;
use yaml_serde::Value;

/// Environment variable naming the template directory instead of [`DEFAULT_DIR`].
pub const DIR_ENV: &str = "FLAKES_TEMPLATE_DIR";
/// Where the templates live.
pub const DEFAULT_DIR: &str = "/etc/flakes";

/// Keys a container template may set (dotted paths into the flake document).
pub const CONTAINER_KEYS: &[&str] = &["container.runtime.podman"];
/// Keys a VM template may set.
pub const VM_KEYS: &[&str] = &[
    "vm.runtime.firecracker.boot_args",
    "vm.runtime.firecracker.overlay_size",
    "vm.runtime.firecracker.mem_size_mib",
    "vm.runtime.firecracker.vcpu_count",
    "vm.runtime.firecracker.cache_type",
];

/// Which engine's template.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// `container-flake.yaml`, for `podman register`.
    Container,
    /// `firecracker-flake.yaml`, for `firecracker register` (both VMMs).
    Vm,
}

impl Kind {
    fn file_name(self) -> &'static str {
        match self {
            Kind::Container => "container-flake.yaml",
            Kind::Vm => "firecracker-flake.yaml",
        }
    }

    fn allowed(self) -> &'static [&'static str] {
        match self {
            Kind::Container => CONTAINER_KEYS,
            Kind::Vm => VM_KEYS,
        }
    }
}

/// A template that parsed and sets only keys it may set.
#[derive(Debug, Clone)]
pub struct Template {
    /// The file it was read from.
    pub path: PathBuf,
    text: String,
    raw: RawFlake,
}

/// The template file for `kind` in the configured directory.
pub fn path(kind: Kind) -> PathBuf {
    let dir = std::env::var_os(DIR_ENV)
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_DIR), PathBuf::from);
    dir.join(kind.file_name())
}

/// Largest template read.
const MAX_TEMPLATE: u64 = 1 << 20;

/// Reads and checks the template for `kind`; `None` when there is none. `caller` is the uid
/// registering: the file must be owned by root or by `caller` and writable by no one else,
/// since its podman options (`--privileged`, volumes) go into flakes that may run as root.
pub fn load(kind: Kind, caller: u32) -> Result<Option<Template>> {
    let path = path(kind);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => bail!("cannot read template {}: {err}", path.display()),
    };
    let text = read_trusted(file, &path, caller)?;
    parse(kind, path, text).map(Some)
}

/// The directory of a template: whoever may replace the file there could have written it.
/// Writable by others only with the sticky bit (then they cannot replace a file of root's).
fn trusted_dir(path: &std::path::Path, caller: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    let shown = dir.display();
    let meta = std::fs::metadata(dir)
        .map_err(|e| anyhow::anyhow!("cannot read template dir {shown}: {e}"))?;
    if meta.uid() != 0 && meta.uid() != caller {
        bail!(
            "template dir {shown} is owned by uid {}, not root or the caller; chown it to root",
            meta.uid()
        );
    }
    if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
        bail!(
            "template dir {shown} is writable by others (mode {:o}); run chmod go-w on it",
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

/// The text of an open template after checking, on the open file, who may have written it.
fn read_trusted(file: std::fs::File, path: &std::path::Path, caller: u32) -> Result<String> {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt as _;
    let shown = path.display();
    let meta = file
        .metadata()
        .map_err(|e| anyhow::anyhow!("cannot read template {shown}: {e}"))?;
    if !meta.is_file() {
        bail!("template {shown} is not a regular file; remove it or put a flake document there");
    }
    if meta.uid() != 0 && meta.uid() != caller {
        bail!(
            "template {shown} is owned by uid {}, not root or the caller; chown it to root",
            meta.uid()
        );
    }
    if meta.mode() & 0o022 != 0 {
        bail!(
            "template {shown} is writable by others (mode {:o}); run chmod go-w on it",
            meta.mode() & 0o7777
        );
    }
    trusted_dir(path, caller)?;
    let mut text = String::new();
    file.take(MAX_TEMPLATE + 1)
        .read_to_string(&mut text)
        .map_err(|e| anyhow::anyhow!("cannot read template {shown}: {e}"))?;
    if text.len() as u64 > MAX_TEMPLATE {
        bail!("template {shown} is larger than 1 MiB; a template holds a few settings");
    }
    Ok(text)
}

/// Parses `text` with the launcher's own rules (unknown keys and wrong types fail with their
/// line), then refuses keys a template may not set.
fn parse(kind: Kind, path: PathBuf, text: String) -> Result<Template> {
    let raw = flakes::config::load::parse_raw(&path, &text, &[]).map_err(problem)?;
    let value: Value = match yaml_serde::from_str(&text) {
        Ok(value) => value,
        Err(source) => return Err(problem(ConfigError::Parse { path, source })),
    };
    let mut refused = Vec::new();
    forbidden_keys(&value, "", kind.allowed(), &mut refused);
    if let Some(key) = refused.first() {
        let at = line_of(&text, key).map_or_else(String::new, |l| format!(":{l}"));
        bail!(
            "template {}{at}: key {key} may not be set in a template (allowed: {}); remove it \
             and pass it to register instead",
            path.display(),
            kind.allowed().join(", ")
        );
    }
    Ok(Template { path, text, raw })
}

/// The error of a template that does not parse, as `FILE:LINE: problem`.
fn problem(err: ConfigError) -> anyhow::Error {
    let p = Problem::from(err);
    let at = p.line.map_or_else(String::new, |l| format!(":{l}"));
    anyhow::anyhow!("template {}{at}: {}", p.file.display(), p.problem)
}

/// Collects the dotted keys below `prefix` that set a value outside `allowed`. A `~` sets
/// nothing and is accepted anywhere the format knows the key.
fn forbidden_keys(value: &Value, prefix: &str, allowed: &[&str], out: &mut Vec<String>) {
    let Value::Mapping(map) = value else { return };
    for (key, child) in map {
        let key = key.as_str().unwrap_or_default();
        let full = if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        };
        let inner = format!("{full}.");
        if child.is_null() || allowed.contains(&full.as_str()) {
            continue;
        }
        if child.is_mapping() && allowed.iter().any(|a| a.starts_with(&inner)) {
            forbidden_keys(child, &full, allowed, out);
        } else {
            out.push(full);
        }
    }
}

/// The 1-based line that sets the last component of dotted `key`, when written in block style.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let leaf = format!("{}:", key.rsplit('.').next().unwrap_or(key));
    text.lines()
        .position(|l| l.trim_start().starts_with(&leaf))
        .map(|i| i + 1)
}

impl Template {
    /// Podman options of the template, used when no `--opt` is given.
    pub fn podman(&self) -> Option<Vec<String>> {
        self.raw
            .container
            .as_ref()?
            .runtime
            .as_ref()?
            .podman
            .clone()
    }

    /// Machine settings of the template.
    pub fn firecracker(&self) -> Option<&RawFirecracker> {
        self.raw.vm.as_ref()?.runtime.as_ref()?.firecracker.as_ref()
    }

    /// Wraps a validation failure of a registration that only fails with this template's
    /// values, pointing at the template line that sets the key the message names.
    pub fn invalid(&self, err: flakes::config::ConfigError) -> anyhow::Error {
        let reason = match err {
            ConfigError::Invalid { reason, .. } => reason,
            other => return other.into(),
        };
        let key = reason.split([' ', ':']).next().unwrap_or_default();
        let at = line_of(&self.text, key).map_or_else(String::new, |l| format!(":{l}"));
        anyhow::anyhow!("template {}{at}: {reason}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str, kind: Kind) -> Vec<String> {
        let value: Value = yaml_serde::from_str(text).unwrap();
        let mut out = Vec::new();
        forbidden_keys(&value, "", kind.allowed(), &mut out);
        out
    }

    #[test]
    fn only_engine_settings_may_be_set() {
        let ok = "include: ~\ncontainer:\n  name: ~\n  runtime:\n    podman: [--rm]\nvm: ~\n";
        assert!(refused(ok, Kind::Container).is_empty());
        let bad = "container:\n  name: evil\n  runtime:\n    runas: root\n";
        assert_eq!(
            refused(bad, Kind::Container),
            ["container.name", "container.runtime.runas"]
        );
        assert_eq!(
            refused(
                "vm: {runtime: {firecracker: {rootfs_image_path: /x}}}",
                Kind::Vm
            ),
            ["vm.runtime.firecracker.rootfs_image_path"]
        );
        assert_eq!(
            refused("container: {runtime: {podman: [x]}}", Kind::Vm),
            ["container"]
        );
    }

    #[test]
    fn lines_point_at_the_key() {
        assert_eq!(line_of("a:\n  b:\n    name: x\n", "a.b.name"), Some(3));
        assert_eq!(line_of("{a: 1}", "a.b"), None);
    }
}
