// SPDX-License-Identifier: MIT
//! `flake-ctl init --user [--force]`: prepare `~/.config/flakes` for user-mode flakes.
//!
//! Writes `~/.config/flakes.yml` and a podman storage configuration for the user's flake
//! images, and creates the per-engine directories. Existing files are kept unless `--force`.
//! System mode needs no init: its defaults work without any file.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use flakes::global::GlobalConfig;

use crate::cli::InitArgs;
use crate::context::Context;

/// Runs the initialisation.
pub fn run(args: &InitArgs, ctx: &Context) -> Result<ExitCode> {
    if !args.user {
        bail!(
            "init only sets up user mode: run `flake-ctl init --user` as the user who will \
               register flakes (system mode works without init)"
        );
    }
    let Some(home) = ctx.settings.caller.home.clone() else {
        bail!(
            "cannot find the home directory of {}; set HOME",
            ctx.settings.caller.name
        );
    };
    let flakes_dir = home.join(".config/flakes");
    for dir in [
        flakes_dir.clone(),
        flakes_dir.join("podman"),
        flakes_dir.join("firecracker"),
    ] {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let storage_conf = flakes_dir.join("podman/storage.conf");
    write_file(
        &storage_conf,
        &storage_conf_text(&flakes_dir.join("podman")),
        args.force,
    )?;
    let config_path = home.join(".config/flakes.yml");
    write_file(
        &config_path,
        &user_config(ctx, &flakes_dir, &storage_conf)?,
        args.force,
    )?;
    println!("user flakes go to {}", flakes_dir.display());
    println!("register apps with: flake-ctl podman --user register --container IMAGE --app PATH");
    Ok(ExitCode::SUCCESS)
}

fn user_config(ctx: &Context, flakes_dir: &Path, storage_conf: &Path) -> Result<String> {
    let system = &ctx.settings.system.generic;
    let mut config = GlobalConfig::default();
    config.generic.flakes_dir = Some(flakes_dir.to_path_buf());
    // Unset unless the system sets them: the defaults keep a user's state private.
    config
        .generic
        .podman_ids_dir
        .clone_from(&system.podman_ids_dir);
    config
        .generic
        .firecracker_ids_dir
        .clone_from(&system.firecracker_ids_dir);
    config.generic.podman_storage_conf = Some(storage_conf.to_path_buf());
    yaml_serde::to_string(&config).context("cannot render the user configuration")
}

fn storage_conf_text(podman_dir: &Path) -> String {
    let storage = podman_dir.join("storage");
    format!(
        "[storage]\ndriver = \"overlay\"\ngraphroot = \"{0}\"\nrunroot = \"{0}/runroot\"\n\
         rootless_storage_path = \"{0}\"\n",
        storage.display()
    )
}

fn write_file(path: &Path, text: &str, force: bool) -> Result<()> {
    if path.exists() && !force {
        println!(
            "keeping existing {} (use --force to rewrite it)",
            path.display()
        );
        return Ok(());
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
