// SPDX-License-Identifier: MIT
//! `flake-ctl firecracker show [--format table|json|csv]`: VM instances.
//!
//! Instances are the directories `<firecracker_ids_dir>/<uid>/.vm/<flake>[@NAME]/` (resume)
//! and `<flake>[@NAME]#<pid>` (one-shot; see `vm_pilot::instance`). One is
//! `running` while its VMM process lives and names that directory on its command line (a
//! reused pid is not mistaken for the VM), `stale` otherwise (a VM that crashed or was killed
//! keeps its console log there for inspection). For a VM image made from an OCI image the
//! rows name that image, its digest and id, and in JSON the kernel image and its digest
//! where the kernel came from one. The TAP column names the network device an instance
//! uses (`tap-NAME[@ID]`, or its short form where that is longer than the kernel's 15
//! characters: the one the admin must make).
//!
//! Root lists every user's instances, so every directory is held by descriptor and every
//! file read bounded and without following links (see `vm_pilot::state_file`): a user's
//! `vmm.pid` that is a FIFO or a symlink to `/dev/zero` makes that instance `stale`, and
//! nothing else.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use flakes::config::Engine;
use flakes::instance::Dir;
use flakes::FlakeName;
use serde::Serialize;

use crate::cli::ShowArgs;
use crate::context::Context;
use crate::output::{render, Row};

/// One VM instance.
#[derive(Debug, Serialize)]
pub struct VmRow {
    pub(crate) name: String,
    pub(crate) user: String,
    id: Option<String>,
    pub(crate) status: String,
    pub(crate) image: Option<String>,
    config: Option<String>,
    tap: Option<String>,
    /// For a VM image made from an OCI image: the reference it was pulled as.
    oci_image: Option<String>,
    /// The manifest digest that reference resolved to (none for a local-only image).
    digest: Option<String>,
    /// The OCI image's id.
    image_id: Option<String>,
    /// For a kernel taken from an OCI image: the reference it was pulled as (JSON only:
    /// the table and CSV columns stay as they were).
    kernel_oci_image: Option<String>,
    /// The manifest digest that reference resolved to.
    kernel_digest: Option<String>,
}

impl Row for VmRow {
    const HEADERS: &'static [&'static str] = &[
        "NAME",
        "USER",
        "ID",
        "STATUS",
        "IMAGE",
        "CONFIG",
        "TAP",
        "OCI IMAGE",
        "DIGEST",
        "IMAGE ID",
    ];

    fn cells(&self) -> Vec<Option<String>> {
        vec![
            Some(self.name.clone()),
            Some(self.user.clone()),
            self.id.clone(),
            Some(self.status.clone()),
            self.image.clone(),
            self.config.clone(),
            self.tap.clone(),
            self.oci_image.clone(),
            self.digest.clone(),
            self.image_id.clone(),
        ]
    }
}

/// Runs the listing.
pub fn run(args: &ShowArgs, ctx: &Context) -> Result<ExitCode> {
    let ids = ctx.settings.firecracker_ids_dir();
    let rows = rows(ctx);
    let title = format!("Flake firecracker instances in {}", ids.display());
    print!(
        "{}",
        render(&rows, args.format, &title, "No instance(s) found")
    );
    Ok(ExitCode::SUCCESS)
}

/// Every VM instance below the state base (`doctor` reports the stale ones).
pub(crate) fn rows(ctx: &Context) -> Vec<VmRow> {
    let ids = ctx.settings.firecracker_ids_dir();
    let mut rows = Vec::new();
    for (uid, user_dir) in user_dirs(&ids, ctx.settings.caller.uid) {
        let Ok(Some(vms)) = user_dir.open_child(".vm") else {
            continue;
        };
        for (label, instance) in subdirs(&vms) {
            rows.push(row(ctx, uid, &label, &instance));
        }
    }
    rows
}

fn row(ctx: &Context, uid: u32, label: &str, dir: &Dir) -> VmRow {
    let pid = vm_pilot::instance_running_in(dir);
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
        .map(|_| vm_pilot::tap::used_by_in(dir, label));
    let record = vm.and_then(oci_record);
    let origin = record.as_ref().map(|r| r.rootfs.clone());
    let kernel = record.and_then(|r| r.kernel);
    VmRow {
        name: label.to_string(),
        user: flakes::host::user_name(uid),
        id: pid.map(|p| p.to_string()),
        status: if pid.is_some() { "running" } else { "stale" }.to_string(),
        image,
        config: found.as_ref().map(|f| f.path.display().to_string()),
        tap,
        oci_image: origin.as_ref().map(|o| o.reference.clone()),
        digest: origin.as_ref().and_then(|o| o.digest.clone()),
        image_id: origin.map(|o| o.image_id),
        kernel_oci_image: kernel.as_ref().map(|k| k.reference.clone()),
        kernel_digest: kernel.and_then(|k| k.digest),
    }
}

/// Where `vm`'s image came from, when it was made from an OCI image; a record that
/// cannot be read shows as none (`validate` and the launch report it).
fn oci_record(vm: &flakes::config::vm::VmFlake) -> Option<vm_pilot::oci::OciRecord> {
    let dir = vm.runtime.rootfs.parent()?;
    vm_pilot::oci::read(dir).ok()?
}

/// `(uid, dir)` of the per-user directories: `<ids>/<uid>` and its alternatives, and
/// those of the bases beside a base another user took (`<ids>-<uid>`, see
/// `flakes::instance`), each held and owned by its uid.
fn user_dirs(ids: &Path, caller: u32) -> Vec<(u32, Dir)> {
    let mut dirs = Dir::open_base(ids, caller)
        .map(|base| numbered_dirs(&base, None))
        .unwrap_or_default();
    let beside = ids.file_name().and_then(|n| n.to_str());
    if let (Some(parent), Some(base_name)) = (ids.parent(), beside) {
        if let Ok(parent) = Dir::open_base(parent, caller) {
            for (uid, base) in owned_subdirs(&parent, |name| {
                flakes::instance::uid_of_name(name.strip_prefix(base_name)?.strip_prefix('-')?)
            }) {
                dirs.extend(numbered_dirs(&base, Some(uid)));
            }
        }
    }
    dirs
}

/// The per-user directories in `base` (of user `only`, if given).
fn numbered_dirs(base: &Dir, only: Option<u32>) -> Vec<(u32, Dir)> {
    owned_subdirs(base, |name| {
        flakes::instance::uid_of_name(name).filter(|uid| only.is_none_or(|only| only == *uid))
    })
}

/// The real subdirectories of `dir` whose name `uid_of` maps to a uid that owns them: a
/// directory of one uid's pattern made by another user is not that uid's.
fn owned_subdirs(dir: &Dir, uid_of: impl Fn(&str) -> Option<u32>) -> Vec<(u32, Dir)> {
    subdirs(dir)
        .into_iter()
        .filter_map(|(name, sub)| Some((uid_of(&name)?, sub)))
        .filter(|(uid, sub)| sub.owner_and_mode().is_ok_and(|(owner, _)| owner == *uid))
        .collect()
}

/// The real subdirectories of `dir` (never through a symlink), sorted by name.
fn subdirs(dir: &Dir) -> Vec<(String, Dir)> {
    dir.entries()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|name| Some((name.clone(), dir.open_child(&name).ok()??)))
        .collect()
}
