// SPDX-License-Identifier: MIT
//! `flake-ctl firecracker show [--format table|json|csv]`: VM instances.
//!
//! Instances are the directories `<firecracker_ids_dir>/<uid>/.vm/<flake>[@NAME]/` (resume)
//! and `<flake>[@NAME]#<pid>` (one-shot; see `vm_pilot::instance`). One is
//! `running` while its VMM process lives and names that directory on its command line (a
//! reused pid is not mistaken for the VM), `stale` otherwise (a VM that crashed or was killed
//! keeps its console log there for inspection). The TAP column names the network device
//! an instance uses (`tap-NAME[@ID]`, or its short form where that is longer than the
//! kernel's 15 characters: the one the admin must make).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use flakes::config::Engine;
use flakes::FlakeName;
use serde::Serialize;

use crate::cli::ShowArgs;
use crate::context::Context;
use crate::output::{render, Row};

/// One VM instance.
#[derive(Debug, Serialize)]
pub struct VmRow {
    name: String,
    user: String,
    id: Option<String>,
    status: String,
    image: Option<String>,
    config: Option<String>,
    tap: Option<String>,
}

impl Row for VmRow {
    const HEADERS: &'static [&'static str] =
        &["NAME", "USER", "ID", "STATUS", "IMAGE", "CONFIG", "TAP"];

    fn cells(&self) -> Vec<Option<String>> {
        vec![
            Some(self.name.clone()),
            Some(self.user.clone()),
            self.id.clone(),
            Some(self.status.clone()),
            self.image.clone(),
            self.config.clone(),
            self.tap.clone(),
        ]
    }
}

/// Runs the listing.
pub fn run(args: &ShowArgs, ctx: &Context) -> Result<ExitCode> {
    let ids = ctx.settings.firecracker_ids_dir();
    let mut rows = Vec::new();
    for (uid, user_dir) in numbered_dirs(&ids) {
        let dir = vm_pilot::instances_dir(&user_dir);
        for (label, instance) in entries(&dir) {
            rows.push(row(ctx, uid, &label, &instance));
        }
    }
    let title = format!("Flake firecracker instances in {}", ids.display());
    print!(
        "{}",
        render(&rows, args.format, &title, "No instance(s) found")
    );
    Ok(ExitCode::SUCCESS)
}

fn row(ctx: &Context, uid: u32, label: &str, dir: &Path) -> VmRow {
    let pid = vm_pilot::instance_running(dir);
    let key = label.split_once('#').map_or(label, |(key, _)| key);
    let flake = key.split_once('@').map_or(key, |(flake, _)| flake);
    let found = FlakeName::new(flake)
        .ok()
        .and_then(|name| flakes::registry::find(&ctx.settings.lookup_order(), &name).ok());
    let vm = found.as_ref().and_then(|f| match &f.engine {
        Engine::Vm(vm) => Some(vm),
        Engine::Container(_) => None,
    });
    let image = vm.map(|vm| vm.image.clone());
    let tap = vm
        .filter(|vm| vm.runtime.network)
        .map(|_| vm_pilot::tap::used_by(dir, key));
    VmRow {
        name: label.to_string(),
        user: flakes::host::user_name(uid),
        id: pid.map(|p| p.to_string()),
        status: if pid.is_some() { "running" } else { "stale" }.to_string(),
        image,
        config: found.as_ref().map(|f| f.path.display().to_string()),
        tap,
    }
}

/// `(uid, dir)` of the numeric per-user directories under `ids`.
fn numbered_dirs(ids: &Path) -> Vec<(u32, std::path::PathBuf)> {
    entries(ids)
        .into_iter()
        .filter_map(|(name, path)| Some((flakes::instance::uid_of_name(&name)?, path)))
        // A directory of one uid's pattern made by another user is not that uid's.
        .filter(|(uid, path)| {
            std::fs::symlink_metadata(path)
                .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == *uid)
        })
        .collect()
}

/// Real subdirectories of `dir`, sorted by name.
fn entries(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, std::path::PathBuf)> = read
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect();
    out.sort();
    out
}
