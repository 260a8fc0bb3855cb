// SPDX-License-Identifier: MIT
//! `flake-ctl podman remove --app PATH | --container IMAGE [--force]`.
//!
//! `--container` removes every flake whose `container.name` is the image, then the image
//! itself (`podman image rm -f`, once: the original ran it twice on success).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use flakes::config::load::load_raw;
use flakes::register::remove_app;
use flakes::{Mode, Registry};

use crate::cli::RemoveArgs;
use crate::context::Context;

/// Runs the removal.
pub fn run(args: &RemoveArgs, mode: Mode, ctx: &Context) -> Result<ExitCode> {
    let registry = ctx.settings.registry(mode);
    if let Some(app) = &args.app {
        let name = remove_app(&registry, app, args.force)?;
        println!("removed flake {name} ({})", app.display());
    }
    if let Some(image) = &args.container {
        purge_image(&registry, image, ctx.podman(mode)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn purge_image(registry: &Registry, image: &str, podman: podman_pilot::Engine) -> Result<()> {
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
        remove_app(registry, Path::new(&app), false)?;
        println!("removed flake {name} ({app})");
    }
    if podman.image_exists(image).succeeds()? {
        podman.image_remove(image).stdout()?;
        println!("removed image {image}");
    }
    Ok(())
}
