// SPDX-License-Identifier: MIT
//! `flake-ctl firecracker remove --app PATH | --vm NAME [--force]`.
//!
//! `--vm` removes every flake whose `vm.name` is the image, then the image directory; the
//! original only logged failures here, this reports them. A removed flake's saved VM
//! states (the caller's) go with it.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use flakes::config::load::load_raw;
use flakes::register::remove_app;
use flakes::Mode;

use crate::cli::VmRemoveArgs;
use crate::context::Context;

/// Runs the removal.
pub fn run(args: &VmRemoveArgs, mode: Mode, ctx: &Context) -> Result<ExitCode> {
    let registry = ctx.settings.registry(mode);
    if let Some(app) = &args.app {
        let name = remove_app(&registry, app, args.force)?;
        forget_states(ctx, &name.to_string());
        println!("removed flake {name} ({})", app.display());
    }
    if let Some(vm) = &args.vm {
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
            remove_app(&registry, Path::new(&app), false)?;
            forget_states(ctx, &name.to_string());
            println!("removed flake {name} ({app})");
        }
        let image = vm_pilot::image_dir(&vm_pilot::images_dir(&ctx.settings, mode), vm)?;
        anyhow::ensure!(image.is_dir(), "no VM image {vm} in {}", image.display());
        std::fs::remove_dir_all(&image)
            .with_context(|| format!("cannot remove {}", image.display()))?;
        println!("removed VM image {vm} ({})", image.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Removes the caller's saved VM states of flake `name`.
fn forget_states(ctx: &Context, name: &str) {
    vm_pilot::saved::remove(&vm_pilot::states_dir(&ctx.settings), name);
}
