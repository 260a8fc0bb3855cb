// SPDX-License-Identifier: MIT
//! `flake-ctl podman update [--app PATH]... | --all [--dry-run] [--format table|json]`:
//! pull the images of registered container flakes again and remove what the old ones leave.
//!
//! Every distinct image of the chosen flakes (base, layers and the app's image) is pulled
//! once, and the ids before and after say whether it changed. Pinned references
//! (`NAME@sha256:...`) are not pulled: their content cannot change. References by id and
//! local images (`localhost/...`, or a short name only known under `localhost/`) have no
//! registry to pull from and are skipped. After a change the clean-up (module `cleanup`)
//! removes what no longer serves; a layered flake is assembled again from the new inputs at
//! its next launch, which the changed image store tells it to do.
//!
//! `--dry-run` changes nothing: it asks the registry for each reference's digest with
//! `skopeo inspect` when skopeo is installed (else it says the image would be pulled) and
//! lists what the clean-up would remove. Exit 0 when every image could be handled (also
//! when everything is up to date), 1 when one failed; each failure is named and the other
//! images are still updated.

mod cleanup;
mod images;

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::{bail, Result};
use flakes::config::{ContainerFlake, Engine as FlakeEngine};
use flakes::instance::cache_dir;
use flakes::register::app_name;
use flakes::{Flake, Mode, Registry};
use podman_pilot::provision::Provisioner;
use serde::Serialize;

use crate::cli::{ReportFormat, UpdateArgs};
use crate::context::Context;
use cleanup::{Action, Cleanup, Scope};
use images::{ImageReport, Status};

/// The whole outcome, as `--format json` prints it.
#[derive(Debug, Serialize)]
struct Report {
    /// Nothing was changed.
    dry_run: bool,
    /// One entry per distinct image reference.
    images: Vec<ImageReport>,
    /// What was (dry run: would be) removed.
    removed: Vec<Action>,
    /// What was kept although it belongs to an old image, and why.
    kept: Vec<Action>,
    /// Layered flakes assembled again from their new inputs (dry run: that would be).
    assembled: Vec<Assembled>,
    /// One line per failure.
    failures: Vec<String>,
}

/// A layered flake assembled again.
#[derive(Debug, Serialize)]
struct Assembled {
    /// The flake.
    flake: String,
    /// The image it now launches; `None` in a dry run.
    image: Option<String>,
}

/// The registered flakes as the update sees them.
struct Registered {
    /// The container flakes that load.
    flakes: Vec<Flake>,
    /// The images of every container registration, also of those that do not load.
    images: BTreeSet<String>,
    /// Registrations whose images cannot be known, one line each.
    unreadable: Vec<String>,
}

/// Runs the update.
pub fn run(args: &UpdateArgs, mode: Mode, ctx: &Context) -> Result<ExitCode> {
    let engine = ctx.podman(mode)?;
    let registry = ctx.settings.registry(mode);
    let registered = registered(&registry)?;
    let chosen = chosen(&registered.flakes, args, &registry)?;
    let skopeo = args
        .dry_run
        .then(|| flakes::process::resolve("skopeo", ctx.path_env.as_deref()).ok())
        .flatten();
    let images: Vec<ImageReport> = cleanup::by_image(&pairs(&chosen))
        .into_iter()
        .map(|(image, users)| {
            images::update(&engine, &image, users, args.dry_run, skopeo.as_deref())
        })
        .collect();
    // Image failures first: the table says them on their own lines (see `table`).
    let mut failures: Vec<String> = images
        .iter()
        .filter(|i| i.status == Status::Failed)
        .map(|i| {
            format!(
                "image {}: {}",
                i.image,
                i.error.as_deref().unwrap_or("unknown error")
            )
        })
        .collect();
    if args.all {
        failures.extend(registered.unreadable.iter().cloned());
    }
    let scope = Scope {
        engine: &engine,
        images: &images,
        registered: &registered.images,
        all_known: registered.unreadable.is_empty(),
        dry_run: args.dry_run,
    };
    let Cleanup { removed, kept } = scope.run().unwrap_or_else(|err| {
        failures.push(format!("clean-up: {}", flakes::report::one_line(&err)));
        Cleanup::default()
    });
    let assembled = reassemble(
        &chosen,
        &images,
        ctx,
        mode,
        &engine,
        args.dry_run,
        &mut failures,
    );
    let report = Report {
        dry_run: args.dry_run,
        images,
        removed,
        kept,
        assembled,
        failures,
    };
    print(&report, args.format)?;
    if !report.failures.is_empty() {
        eprintln!(
            "flake-ctl: podman update: {} failure(s); the rest was handled",
            report.failures.len()
        );
    }
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The container flakes of `registry`, and the images of all its container registrations:
/// a registration that does not load still keeps its images (read from the raw file) from
/// being removed as unused.
fn registered(registry: &Registry) -> Result<Registered> {
    let mut out = Registered {
        flakes: Vec::new(),
        images: BTreeSet::new(),
        unreadable: Vec::new(),
    };
    for name in registry.names()? {
        match registry.load(&name) {
            Ok(flake) => {
                let Some(c) = container(&flake) else {
                    continue;
                };
                out.images.extend(inputs(c).map(str::to_string));
                out.flakes.push(flake);
            }
            Err(err) => {
                let config = registry.config_path(&name);
                let raw = flakes::config::load::load_raw(&config).ok();
                if let Some(c) = raw.and_then(|r| r.container) {
                    let images = c.name.into_iter().chain(c.base_container);
                    out.images
                        .extend(images.chain(c.layers.unwrap_or_default()));
                }
                out.unreadable
                    .push(format!("flake {name}: {}", flakes::report::one_line(&err)));
            }
        }
    }
    Ok(out)
}

fn container(flake: &Flake) -> Option<&ContainerFlake> {
    match &flake.engine {
        FlakeEngine::Container(c) => Some(c),
        FlakeEngine::Vm(_) => None,
    }
}

/// Base, layers and the app's image of `c`.
fn inputs(c: &ContainerFlake) -> impl Iterator<Item = &str> {
    c.base
        .iter()
        .chain(&c.layers)
        .chain(std::iter::once(&c.image))
        .map(String::as_str)
}

/// `(flake, image)` for every image of `flakes`.
fn pairs(flakes: &[&Flake]) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for flake in flakes {
        if let Some(c) = container(flake) {
            pairs.extend(inputs(c).map(|i| (flake.name.to_string(), i.to_string())));
        }
    }
    pairs
}

/// Assembles the layered flakes among `flakes` whose inputs changed again, so that their
/// next launch is as fast as ever; a dry run only names them.
fn reassemble(
    flakes: &[&Flake],
    images: &[ImageReport],
    ctx: &Context,
    mode: Mode,
    engine: &podman_pilot::Engine,
    dry_run: bool,
    failures: &mut Vec<String>,
) -> Vec<Assembled> {
    let changed: BTreeSet<&str> = images
        .iter()
        .filter(|i| i.status == Status::Changed)
        .flat_map(|i| i.flakes.iter().map(String::as_str))
        .collect();
    let mut out = Vec::new();
    for flake in flakes {
        let Some(c) = container(flake) else { continue };
        if !changed.contains(flake.name.as_str()) || !c.needs_provisioning(&flake.include) {
            continue;
        }
        let image = if dry_run {
            None
        } else {
            match assemble(flake, c, ctx, mode, engine) {
                Ok(image) => Some(image),
                Err(err) => {
                    failures.push(format!("flake {}: {err:#}", flake.name));
                    continue;
                }
            }
        };
        out.push(Assembled {
            flake: flake.name.to_string(),
            image,
        });
    }
    out
}

/// Assembles one layered flake for the caller, as its launch would.
fn assemble(
    flake: &Flake,
    c: &ContainerFlake,
    ctx: &Context,
    mode: Mode,
    engine: &podman_pilot::Engine,
) -> Result<String> {
    let settings = &ctx.settings;
    let provisioner = Provisioner {
        engine,
        name: &flake.name,
        config: &flake.path,
        flake: c,
        include: &flake.include,
        cache_dir: cache_dir(&settings.podman_ids_dir(mode), settings.caller.uid)?,
        progress: false,
        ignore_sync_error: false,
    };
    Ok(provisioner.image()?)
}

/// The flakes chosen by `--app` (each must be a registered container flake), or all with
/// `--all`.
fn chosen<'a>(all: &'a [Flake], args: &UpdateArgs, registry: &Registry) -> Result<Vec<&'a Flake>> {
    if args.all {
        return Ok(all.iter().collect());
    }
    let mut chosen = Vec::new();
    for app in &args.app {
        let name = app_name(app)?;
        let Some(flake) = all.iter().find(|f| f.name == name) else {
            bail!(
                "--app {}: no container flake {name} is registered in {}; see flake-ctl list",
                app.display(),
                registry.dir().display()
            );
        };
        chosen.push(flake);
    }
    Ok(chosen)
}

fn print(report: &Report, format: ReportFormat) -> Result<()> {
    match format {
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(report)?),
        ReportFormat::Table => print!("{}", table(report)),
    }
    Ok(())
}

/// The report for people: one line per image, then what was removed and kept.
fn table(report: &Report) -> String {
    let mut out = String::new();
    for image in &report.images {
        out.push_str(&format!(
            "{}: {}\n",
            image.image,
            image_line(image, report.dry_run)
        ));
    }
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for action in &report.removed {
        out.push_str(&format!("{verb} {}\n", describe(action)));
    }
    for action in &report.kept {
        let reason = action.reason.as_deref().unwrap_or("in use");
        out.push_str(&format!("kept {}: {reason}\n", describe(action)));
    }
    for assembled in &report.assembled {
        match &assembled.image {
            Some(image) => out.push_str(&format!(
                "assembled flake {} again: {image}\n",
                assembled.flake
            )),
            None => out.push_str(&format!("would assemble flake {} again\n", assembled.flake)),
        }
    }
    let open = |s: Status| matches!(s, Status::Changed | Status::Unknown | Status::Failed);
    if !report.images.iter().any(|i| open(i.status)) && report.failures.is_empty() {
        out.push_str("all up to date\n");
    }
    // Failed images are said on their own line; the others (flakes, clean-up) here.
    let images = report
        .images
        .iter()
        .filter(|i| i.status == Status::Failed)
        .count();
    for failure in report.failures.iter().skip(images) {
        out.push_str(&format!("failed: {failure}\n"));
    }
    out
}

fn image_line(image: &ImageReport, dry_run: bool) -> String {
    let id = |id: &Option<String>| id.as_deref().map_or("none", cleanup::short).to_string();
    let digest = |d: &Option<String>| d.clone().unwrap_or_else(|| "none".into());
    match image.status {
        Status::Changed if dry_run => format!(
            "would change (local digest {} -> registry {})",
            digest(&image.old_digest),
            digest(&image.new_digest)
        ),
        Status::Changed => format!(
            "changed {} -> {} ({} -> {})",
            id(&image.old_id),
            id(&image.new_id),
            digest(&image.old_digest),
            digest(&image.new_digest)
        ),
        Status::Unknown => format!(
            "{}; local digest {} (install skopeo to see the registry's)",
            Status::Unknown.word(),
            digest(&image.old_digest)
        ),
        Status::Failed => format!(
            "failed: {}",
            image.error.as_deref().unwrap_or("unknown error")
        ),
        status => status.word().to_string(),
    }
}

fn describe(action: &Action) -> String {
    let kind = action.kind.replace('-', " ");
    match &action.flake {
        Some(flake) => format!("{kind} {} (flake {flake})", action.name),
        None => format!("{kind} {}", action.name),
    }
}
