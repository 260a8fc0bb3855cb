// SPDX-License-Identifier: MIT
//! `flake-ctl podman remove --app PATH | --container IMAGE [--force]`.
//!
//! `--container` removes every flake whose `container.name` is the image, then the image
//! itself (`podman image rm -f`, once: the original ran it twice on success).
//!
//! Removing a flake also removes its resume and attach instances (containers labelled with
//! the flake's name, and the caller's state directories) and the images assembled for it
//! with their record and lock, so nothing is left running or cached for a flake that no
//! longer exists. A VM flake is refused: that is `flake-ctl firecracker remove`'s.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use flakes::config::load::load_raw;
use flakes::register::remove_app;
use flakes::{FlakeName, Mode, Registry};
use podman_pilot::oneshot::FLAKE_LABEL;
use podman_pilot::provision::ASSEMBLED_LABEL;

use crate::cli::RemoveArgs;
use crate::context::Context;

/// Runs the removal.
pub fn run(args: &RemoveArgs, mode: Mode, ctx: &Context) -> Result<ExitCode> {
    let registry = ctx.settings.registry(mode);
    if let Some(app) = &args.app {
        let name = remove_app(&registry, app, args.force, "podman")?;
        remove_instances(ctx, mode, &name);
        println!("removed flake {name} ({})", app.display());
    }
    if let Some(image) = &args.container {
        purge_image(ctx, mode, &registry, image)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `remove` on the IDs that `list` prints, if any.
fn remove_listed(podman: &podman_pilot::Engine, list: &[&str], remove: &[&str]) {
    let ids = podman.podman().args(list).stdout().unwrap_or_default();
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let _ = podman.podman().args(remove).args(ids).succeeds();
    }
}

/// Removes the containers, assembled images and the caller's state directories of flake
/// `name`; best effort, since the registration itself is already gone.
fn remove_instances(ctx: &Context, mode: Mode, name: &FlakeName) {
    if let Ok(podman) = ctx.podman(mode) {
        let containers = format!("label={FLAKE_LABEL}={name}");
        remove_listed(
            &podman,
            &["ps", "-aq", "--filter", &containers],
            &["rm", "-f", "-t", "0"],
        );
        let assembled = format!("label={ASSEMBLED_LABEL}={name}");
        remove_listed(
            &podman,
            &["images", "-q", "--filter", &assembled],
            &["image", "rm", "-f"],
        );
    }
    let uid = ctx.settings.caller.uid;
    let Ok(dir) = flakes::instance::user_dir(&ctx.settings.podman_ids_dir(mode), uid) else {
        return;
    };
    if let Ok(Some(cache)) = dir.open_child(".cache") {
        for kind in ["record", "lock"] {
            let _ = cache.remove_file(&format!("{name}.{kind}"));
        }
    }
    let own = |file: &str| {
        file == name.as_str()
            || file
                .strip_prefix(name.as_str())
                .is_some_and(|r| r.starts_with('@'))
    };
    for file in dir.entries().unwrap_or_default() {
        if own(&file) {
            let _ = dir.remove_tree(&file);
        }
    }
}

fn purge_image(ctx: &Context, mode: Mode, registry: &Registry, image: &str) -> Result<()> {
    let podman = ctx.podman(mode)?;
    for name in registry.names()? {
        let config = registry.config_path(&name);
        let Ok(raw) = load_raw(&config) else {
            tracing::warn!(config = %config.display(), "skipping unreadable flake");
            continue;
        };
        let Some(container) = raw.container.filter(|c| c.name.as_deref() == Some(image)) else {
            continue;
        };
        let app = container.host_app_path.with_context(|| {
            format!(
                "{}: no host_app_path; remove it with --app",
                config.display()
            )
        })?;
        remove_app(registry, Path::new(&app), false, "podman")?;
        remove_instances(ctx, mode, &name);
        println!("removed flake {name} ({app})");
    }
    if podman.image_exists(image).succeeds()? {
        podman.image_remove(image).run()?;
        println!("removed image {image}");
    }
    Ok(())
}
