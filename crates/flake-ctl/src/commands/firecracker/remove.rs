// SPDX-License-Identifier: MIT
//! `flake-ctl firecracker remove --app PATH | --vm NAME [--force]`.
//!
//! `--vm` removes every flake whose `vm.name` is the image, then the image directory; the
//! original only logged failures here, this reports them. What dead pulls left in the
//! image registry is removed on the way ([`vm_pilot::pull::collect_stale`]). A removed flake's VMs (the
//! caller's) are stopped first, as `podman remove` removes a flake's containers; their
//! instance directories, resume overlays, saved states and the TAP devices the launcher
//! made go with them. A podman flake is refused: that is `flake-ctl podman remove`'s.
//!
//! The instance directories are reached by descriptor from a checked base, as the
//! launcher reaches them: root removes them, and a shared base (`/tmp/flakes`) is open to
//! every user, so nothing found there by path is trusted (a `.vm` that is a symlink to
//! `/usr/lib` must not make root delete `/usr/lib/<flake>`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use flakes::config::load::load_raw;
use flakes::instance::Dir;
use flakes::register::remove_app;
use flakes::Mode;

use crate::cli::VmRemoveArgs;
use crate::context::Context;

/// Runs the removal.
pub fn run(args: &VmRemoveArgs, mode: Mode, ctx: &Context) -> Result<ExitCode> {
    let registry = ctx.settings.registry(mode);
    if let Some(app) = &args.app {
        // Resolved first: a state directory that cannot be used safely stops the removal
        // before anything is gone.
        let vms = instances(ctx)?;
        let name = remove_app(&registry, app, args.force, "firecracker")?;
        remove_instances(ctx, vms.as_ref(), name.as_str());
        println!("removed flake {name} ({})", app.display());
    }
    if let Some(vm) = &args.vm {
        let vms = instances(ctx)?;
        for name in registry.names()? {
            let config = registry.config_path(&name);
            let Some(raw_vm) = load_raw(&config).ok().and_then(|r| r.vm) else {
                continue;
            };
            if raw_vm.name.as_deref() != Some(vm) {
                continue;
            }
            let app = raw_vm.host_app_path.with_context(|| {
                format!(
                    "{}: no host_app_path; remove it with --app",
                    config.display()
                )
            })?;
            remove_app(&registry, Path::new(&app), false, "firecracker")?;
            remove_instances(ctx, vms.as_ref(), name.as_str());
            println!("removed flake {name} ({app})");
        }
        let images = vm_pilot::images_dir(&ctx.settings, mode);
        vm_pilot::pull::collect_stale(&images);
        let image = vm_pilot::image_dir(&images, vm)?;
        anyhow::ensure!(image.is_dir(), "no VM image {vm} in {}", image.display());
        std::fs::remove_dir_all(&image)
            .with_context(|| format!("cannot remove {}", image.display()))?;
        println!("removed VM image {vm} ({})", image.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The caller's directory of VM instances, held (see `flakes::instance`): found the way
/// the launcher finds it, so VMs in an alternative per-user directory (`<uid>.<hex>`,
/// `<base>-<uid>`) are found too, and checked level by level, so nothing another user
/// planted (a symlink, a directory of theirs) is ever followed. `None` when the caller has
/// no VM instances.
fn instances(ctx: &Context) -> Result<Option<Dir>> {
    let uid = ctx.settings.caller.uid;
    let ids = ctx.settings.firecracker_ids_dir();
    // Nothing is made for a removal where no launcher ever made state.
    let beside = PathBuf::from(format!("{}-{uid}", ids.display()));
    if !ids.exists() && !beside.exists() {
        return Ok(None);
    }
    let user = flakes::instance::user_dir(&ids, uid)?;
    let Some(vms) = user.open_child(".vm")? else {
        return Ok(None);
    };
    let (owner, _) = vms.owner_and_mode()?;
    anyhow::ensure!(
        owner == uid,
        "refusing to use {}: it belongs to uid {owner}, not {uid}; remove it",
        vms.path().display()
    );
    Ok(Some(vms))
}

/// Stops the caller's VMs of flake `name` (in `vms`, see [`instances`]) and removes what
/// they leave: instance directories, TAP devices the launcher made, resume overlays and
/// saved states. Best effort, since the registration itself is already gone.
fn remove_instances(ctx: &Context, vms: Option<&Dir>, name: &str) {
    // Tools in sbin are found for users whose PATH lacks it, as the launcher does.
    let mut path = ctx.path_env.clone().unwrap_or_default();
    path.push(":/usr/local/sbin:/usr/sbin:/sbin");
    let tools = vm_pilot::tools::Tools::new(path);
    if let Some(vms) = vms {
        vm_pilot::instance::remove_flake(vms, name, &tools);
    }
    let storage = ctx
        .settings
        .flakes_dir(flakes::Mode::User)
        .join("firecracker/storage");
    vm_pilot::instance::remove_overlays(&storage, name);
    vm_pilot::saved::remove(&vm_pilot::states_dir(&ctx.settings), name);
}
