// SPDX-License-Identifier: MIT
//! `flake-ctl podman show [--format table|json|csv]`: instances of resume and attach flakes.
//!
//! Instances are the state directories under `<podman_ids_dir>/<uid>/`. The state column is
//! `running` when the instance's agent answers on its socket (or podman reports the container
//! running), `stopped` when the container exists but does not run, and `stale` when the
//! container is gone; the next call of a stale instance starts it afresh. One `podman ps`
//! serves the whole listing.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use flakes::config::Engine;
use flakes::{FlakeName, Mode};
use podman_pilot::oneshot::FLAKE_LABEL;
use serde::Serialize;

use crate::cli::ShowArgs;
use crate::context::Context;
use crate::output::{render, Row};

/// One instance.
#[derive(Debug, Serialize)]
pub struct InstanceRow {
    pub(crate) name: String,
    pub(crate) user: String,
    id: String,
    pub(crate) status: String,
    image: Option<String>,
    config: Option<String>,
}

impl Row for InstanceRow {
    const HEADERS: &'static [&'static str] = &["NAME", "USER", "ID", "STATUS", "IMAGE", "CONFIG"];

    fn cells(&self) -> Vec<Option<String>> {
        vec![
            Some(self.name.clone()),
            Some(self.user.clone()),
            Some(self.id.clone()),
            Some(self.status.clone()),
            self.image.clone(),
            self.config.clone(),
        ]
    }
}

/// Runs the listing.
pub fn run(args: &ShowArgs, mode: Mode, ctx: &Context) -> Result<ExitCode> {
    let ids_dir = ctx.settings.podman_ids_dir(mode);
    let rows = rows(ctx, mode);
    let title = format!("Flake podman instances in {}", ids_dir.display());
    print!(
        "{}",
        render(&rows, args.format, &title, "No instance(s) found")
    );
    Ok(ExitCode::SUCCESS)
}

/// Every instance below the mode's state base (`doctor` reports the stale ones).
pub(crate) fn rows(ctx: &Context, mode: Mode) -> Vec<InstanceRow> {
    let ids_dir = ctx.settings.podman_ids_dir(mode);
    let containers = container_states(ctx, mode);
    let mut rows = Vec::new();
    for (uid, dir) in uid_dirs(&ids_dir) {
        for label in sorted_entries(&dir) {
            rows.push(instance_row(
                ctx,
                uid,
                &dir.join(&label),
                &label,
                &containers,
            ));
        }
    }
    rows
}

fn instance_row(
    ctx: &Context,
    uid: u32,
    dir: &Path,
    label: &str,
    containers: &HashMap<String, String>,
) -> InstanceRow {
    let (flake, instance) = match label.split_once('@') {
        Some((flake, instance)) => (flake, Some(instance)),
        None => (label, None),
    };
    let id = instance_container_name(flake, instance, uid);
    let agent_up = flakes::instance::agent_listens(dir);
    let status = match (agent_up, id.as_ref().and_then(|n| containers.get(n))) {
        (true, _) => "running".to_string(),
        (false, Some(state)) if state == "running" => "running".to_string(),
        (false, Some(_)) => "stopped".to_string(),
        (false, None) => "stale".to_string(),
    };
    let (image, config) = flake_details(ctx, flake);
    InstanceRow {
        name: label.to_string(),
        user: flakes::host::user_name(uid),
        id: id.unwrap_or_default(),
        status,
        image,
        config,
    }
}

fn instance_container_name(flake: &str, instance: Option<&str>, uid: u32) -> Option<String> {
    let key = flakes::instance::InstanceKey {
        flake: FlakeName::new(flake).ok()?,
        instance: match instance {
            Some(i) => Some(flakes::InstanceName::new(i).ok()?),
            None => None,
        },
    };
    Some(key.container_name(uid))
}

fn flake_details(ctx: &Context, flake: &str) -> (Option<String>, Option<String>) {
    let Ok(name) = FlakeName::new(flake) else {
        return (None, None);
    };
    match flakes::registry::find(&ctx.settings.lookup_order(), &name) {
        Ok(flake) => {
            let image = match &flake.engine {
                Engine::Container(c) => Some(c.image.clone()),
                Engine::Vm(_) => None,
            };
            (image, Some(flake.path.display().to_string()))
        }
        Err(_) => (None, None),
    }
}

/// Container name -> podman state, for every flake container, from one `podman ps`.
fn container_states(ctx: &Context, mode: Mode) -> HashMap<String, String> {
    let Ok(podman) = ctx.podman(mode) else {
        return HashMap::new();
    };
    let filter = format!("label={FLAKE_LABEL}");
    let out = podman
        .podman()
        .args([
            "ps",
            "-a",
            "--filter",
            &filter,
            "--format",
            "{{.Names}} {{.State}}",
        ])
        .stdout()
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(name, state)| (name.to_string(), state.trim().to_string()))
        .collect()
}

/// Numeric per-user directories we may read, sorted by uid.
fn uid_dirs(ids_dir: &Path) -> Vec<(u32, std::path::PathBuf)> {
    let mut dirs: Vec<(u32, std::path::PathBuf)> = sorted_entries(ids_dir)
        .into_iter()
        .filter_map(|name| Some((flakes::instance::uid_of_name(&name)?, ids_dir.join(name))))
        .filter(|(uid, dir)| {
            // A directory of one uid's pattern made by another user is not that uid's.
            std::fs::symlink_metadata(dir)
                .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == *uid)
        })
        .collect();
    dirs.sort();
    dirs
}

/// Names of the real directories (not symlinks) in `dir`, sorted.
fn sorted_entries(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.'))
        .collect();
    names.sort();
    names
}
