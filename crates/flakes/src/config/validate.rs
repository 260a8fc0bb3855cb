// SPDX-License-Identifier: MIT
//! Validation of a merged [`RawFlake`] into a [`Flake`]: required keys, absolute paths, and
//! combinations that cannot work, each reported with the key to fix.

use std::path::{Path, PathBuf};

use super::raw::{RawContainer, RawFlake, RawInclude, RawRuntime};
use super::{
    ConfigError, ContainerFlake, ContainerRuntime, Engine, Flake, Include, LaunchMode, Result,
    RunAs, Target,
};
use crate::names::FlakeName;

/// Turns the merged document of flake `name` (main file `path`) into a [`Flake`].
pub(crate) fn validate(name: FlakeName, path: &Path, raw: RawFlake) -> Result<Flake> {
    let invalid = |reason: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let engine = match (raw.container, raw.vm) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "has both a container and a vm section; keep the one of its engine".into(),
            ))
        }
        (Some(container), None) => Engine::Container(container_flake(container).map_err(invalid)?),
        (None, Some(vm)) => {
            Engine::Vm(super::vm::vm_flake(vm).map_err(|e| invalid(e.to_string()))?)
        }
        (None, None) => {
            return Err(invalid(
                "has neither a container nor a vm section; register it with flake-ctl".into(),
            ))
        }
    };
    let include = include(raw.include.unwrap_or_default()).map_err(invalid)?;
    Ok(Flake {
        name,
        path: path.to_path_buf(),
        include,
        engine,
    })
}

fn container_flake(raw: RawContainer) -> Result<ContainerFlake, String> {
    let image = non_empty(raw.name, "container.name", "the image to run")?;
    image_reference(&image, "container.name")?;
    let target = match raw.target_app_path.as_deref() {
        None | Some("") => Target::FlakeName,
        Some("/") => Target::ImageEntrypoint,
        Some(p) if p.starts_with('/') => Target::Program(p.to_string()),
        Some(p) => {
            return Err(format!(
                "container.target_app_path '{p}' must be an absolute path, or / for the image's \
                 entrypoint"
            ))
        }
    };
    let base = raw.base_container.filter(|b| !b.is_empty());
    let layers = raw.layers.unwrap_or_default();
    if !layers.is_empty() && base.is_none() {
        return Err("container.layers needs container.base_container to layer onto".into());
    }
    if raw.execute_systemfiles == Some(true)
        && raw.check_host_dependencies != Some(true)
        && base.is_none()
    {
        return Err(
            "container.execute_systemfiles needs container.base_container or \
             container.check_host_dependencies: true"
                .into(),
        );
    }
    if let Some(empty) = layers.iter().position(String::is_empty) {
        return Err(format!("container.layers entry {} is empty", empty + 1));
    }
    if let Some(base) = &base {
        image_reference(base, "container.base_container")?;
    }
    for (i, layer) in layers.iter().enumerate() {
        image_reference(layer, &format!("container.layers entry {}", i + 1))?;
    }
    Ok(ContainerFlake {
        image,
        target,
        host_app_path: raw
            .host_app_path
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
        base,
        layers,
        check_host_dependencies: raw.check_host_dependencies.unwrap_or(false),
        execute_systemfiles: raw.execute_systemfiles.unwrap_or(false),
        runtime: runtime(raw.runtime.unwrap_or_default())?,
    })
}

fn runtime(raw: RawRuntime) -> Result<ContainerRuntime, String> {
    let mode = match (raw.resume.unwrap_or(false), raw.attach.unwrap_or(false)) {
        (true, true) => {
            return Err("container.runtime.resume and attach are both true; keep one".into())
        }
        (true, false) => LaunchMode::Resume,
        (false, true) => LaunchMode::Attach,
        (false, false) => LaunchMode::OneShot,
    };
    let runas = match raw.runas.as_deref() {
        Some("root") => RunAs::Root,
        Some("") | None => RunAs::Caller(None),
        Some(user) => RunAs::Caller(Some(user.to_string())),
    };
    Ok(ContainerRuntime {
        runas,
        mode,
        podman: raw.podman.unwrap_or_default(),
    })
}

fn include(raw: RawInclude) -> Result<Include, String> {
    Ok(Include {
        tar: absolute_paths(raw.tar.unwrap_or_default(), "include.tar")?,
        path: absolute_paths(raw.path.unwrap_or_default(), "include.path")?,
    })
}

fn absolute_paths(paths: Vec<String>, key: &str) -> Result<Vec<PathBuf>, String> {
    paths
        .into_iter()
        .map(|p| {
            if p.starts_with('/') {
                Ok(PathBuf::from(p))
            } else {
                Err(format!("{key} entry '{p}' must be an absolute host path"))
            }
        })
        .collect()
}

/// An image reference in podman's grammar; the message names the key to fix.
fn image_reference(image: &str, key: &str) -> Result<(), String> {
    crate::image_ref::check(image).map_err(|err| format!("{key}: {err}"))
}

fn non_empty(value: Option<String>, key: &str, what: &str) -> Result<String, String> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(format!("{key} is missing; set it to {what}")),
    }
}
