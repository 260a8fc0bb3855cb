// SPDX-License-Identifier: MIT
//! `flake-ctl podman register`: create an app path that runs a program in a container.
//!
//! Everything is checked before anything is written: the options, the flake YAML (validated
//! with the launcher's own rules), include files, and what already exists at the app path and
//! under the flake name. Writing is then atomic (see `flakes::register`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use flakes::config::raw::{RawContainer, RawFlake, RawInclude, RawRuntime};
use flakes::register::{app_name, Registration};
use flakes::{FlakeName, Mode};
use podman_pilot::provision::read_in_image;

use crate::cli::RegisterArgs;
use crate::context::Context;
use crate::template::{self, Template};

/// Largest flake description `--info` prints.
const MAX_INFO: u64 = 1 << 20;

/// Runs the registration (or `--info`).
pub fn run(args: &RegisterArgs, mode: Mode, ctx: &Context) -> Result<ExitCode> {
    check_images(args)?;
    let Some(app) = &args.app else {
        return info(&args.container, mode, ctx);
    };
    let name = app_name(app)?;
    let registry = ctx.settings.registry(mode);
    let config = registry.config_path(&name);
    let template = template::load(template::Kind::Container, ctx.settings.caller.uid)?;
    let caller = &ctx.settings.caller.name;
    let raw = flake_document(args, app, caller, ctx, None)?;
    flakes::config::validate_raw(name.clone(), &config, raw.clone())?;
    let raw = match &template {
        Some(template) => {
            let raw = flake_document(args, app, caller, ctx, Some(template))?;
            flakes::config::validate_raw(name.clone(), &config, raw.clone())
                .map_err(|e| template.invalid(e))?;
            raw
        }
        None => raw,
    };
    let registration = Registration {
        registry: &registry,
        app: app.clone(),
        pilot: ctx.pilot("podman-pilot")?,
        yaml: to_yaml(&raw)?,
        force: args.force,
    };
    registration.commit()?;
    report(&name, app, &config);
    Ok(ExitCode::SUCCESS)
}

fn report(name: &FlakeName, app: &std::path::Path, config: &std::path::Path) {
    println!(
        "registered flake {name}: {} -> podman-pilot ({})",
        app.display(),
        config.display()
    );
}

/// The YAML document of the registration, in the layout flake-ctl 3.1 wrote; the admin's
/// template supplies the podman options when no `--opt` is given.
fn flake_document(
    args: &RegisterArgs,
    app: &std::path::Path,
    caller: &str,
    ctx: &Context,
    template: Option<&Template>,
) -> Result<RawFlake> {
    if !args.layers.is_empty() && args.base.is_none() {
        bail!("--layer needs --base: layers are applied on top of a base container");
    }
    let target = args
        .target
        .clone()
        .unwrap_or_else(|| app.display().to_string());
    if !target.starts_with('/') {
        bail!("--target '{target}' must be an absolute path inside the container, or /");
    }
    let opts: Vec<String> = args
        .opts
        .iter()
        .map(|o| strip_escape(o).to_string())
        .collect();
    let container = RawContainer {
        name: Some(args.container.clone()),
        target_app_path: Some(target),
        host_app_path: Some(app.display().to_string()),
        base_container: args.base.clone(),
        check_host_dependencies: Some(args.check_host_dependencies),
        execute_systemfiles: None,
        layers: (!args.layers.is_empty()).then(|| args.layers.clone()),
        runtime: Some(RawRuntime {
            runas: Some(caller.to_string()),
            resume: Some(args.resume),
            attach: Some(args.attach),
            podman: if opts.is_empty() {
                template.and_then(Template::podman)
            } else {
                Some(opts)
            },
        }),
    };
    Ok(RawFlake {
        include: Some(RawInclude {
            tar: ctx.includes(&args.include_tar, "--include-tar")?,
            path: ctx.includes(&args.include_path, "--include-path")?,
        }),
        container: Some(container),
        vm: None,
    })
}

/// Every image flag holds a reference in podman's grammar (never an option such as
/// `--privileged`); the message names the flag.
fn check_images(args: &RegisterArgs) -> Result<()> {
    let images = std::iter::once(("--container", &args.container))
        .chain(args.base.iter().map(|b| ("--base", b)))
        .chain(args.layers.iter().map(|l| ("--layer", l)));
    for (flag, image) in images {
        if let Err(err) = flakes::image_ref::check(image) {
            bail!("{flag} {err}");
        }
    }
    Ok(())
}

/// `--opt "\--net host"`: one leading backslash protects the dash from the option parser.
fn strip_escape(opt: &str) -> &str {
    opt.strip_prefix('\\').unwrap_or(opt)
}

/// The YAML text of a registration, with the document marker flake-ctl 3.1 wrote.
pub fn to_yaml(raw: &RawFlake) -> Result<String> {
    let body = yaml_serde::to_string(raw).context("cannot render the flake YAML")?;
    Ok(format!("---\n{body}"))
}

/// `--info`: print the flake description an image ships as `/<image basename>.yaml`.
fn info(container: &str, mode: Mode, ctx: &Context) -> Result<ExitCode> {
    let podman = ctx.podman(mode)?;
    let mount = podman.image_mount(container).stdout()?;
    let base = container.rsplit('/').next().unwrap_or(container);
    let base = base.split([':', '@']).next().unwrap_or(base);
    // Read beneath the mount point without following links: the image chooses what is there.
    let text = read_in_image(Path::new(mount.trim()), &format!("{base}.yaml"), MAX_INFO);
    podman.image_umount(container).run()?;
    match text {
        Ok(text) => {
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => bail!("image {container} has no flake description /{base}.yaml: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_leading_backslash_is_stripped() {
        assert_eq!(strip_escape(r"\--net host"), "--net host");
        assert_eq!(strip_escape(r"\\-x"), r"\-x");
        assert_eq!(strip_escape("--rm"), "--rm");
    }
}
