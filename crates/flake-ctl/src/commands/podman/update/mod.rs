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
use flakes::config::Engine as FlakeEngine;
use flakes::register::app_name;
use flakes::{Mode, Registry};
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
    /// One line per failure.
    failures: Vec<String>,
}

/// Runs the update.
pub fn run(args: &UpdateArgs, mode: Mode, ctx: &Context) -> Result<ExitCode> {
    let engine = ctx.podman(mode)?;
    let registry = ctx.settings.registry(mode);
    let mut flake_failures = Vec::new();
    let all = container_flakes(&registry, &mut flake_failures)?;
    let chosen = chosen(&all, args, &registry)?;
    let skopeo = args
        .dry_run
        .then(|| flakes::process::resolve("skopeo", ctx.path_env.as_deref()).ok())
        .flatten();
    let images: Vec<ImageReport> = cleanup::by_image(&chosen)
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
    failures.append(&mut flake_failures);
    let registered: BTreeSet<String> = all.iter().map(|(_, image)| image.clone()).collect();
    let scope = Scope {
        engine: &engine,
        images: &images,
        registered: &registered,
        dry_run: args.dry_run,
    };
    let Cleanup { removed, kept } = scope.run().unwrap_or_else(|err| {
        failures.push(format!("clean-up: {}", flakes::report::one_line(&err)));
        Cleanup::default()
    });
    let report = Report {
        dry_run: args.dry_run,
        images,
        removed,
        kept,
        failures,
    };
    print(&report, args.format)?;
    if !report.failures.is_empty() {
        eprintln!(
            "flake-ctl: podman update: {} failure(s); the other images were handled",
            report.failures.len()
        );
    }
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `(flake, image)` for every image of every loadable container flake; flakes that do not
/// load are failures, named, and left out.
fn container_flakes(
    registry: &Registry,
    failures: &mut Vec<String>,
) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    for name in registry.names()? {
        let flake = match registry.load(&name) {
            Ok(flake) => flake,
            Err(err) => {
                failures.push(format!("flake {name}: {}", flakes::report::one_line(&err)));
                continue;
            }
        };
        let FlakeEngine::Container(c) = &flake.engine else {
            continue;
        };
        let inputs = c
            .base
            .iter()
            .chain(&c.layers)
            .chain(std::iter::once(&c.image));
        pairs.extend(inputs.map(|image| (name.to_string(), image.clone())));
    }
    Ok(pairs)
}

/// The pairs of the flakes chosen by `--app` (each must be a registered container flake),
/// or all with `--all`.
fn chosen(
    all: &[(String, String)],
    args: &UpdateArgs,
    registry: &Registry,
) -> Result<Vec<(String, String)>> {
    if args.all {
        return Ok(all.to_vec());
    }
    let mut names = Vec::new();
    for app in &args.app {
        let name = app_name(app)?.to_string();
        if !all.iter().any(|(flake, _)| *flake == name) {
            bail!(
                "--app {}: no container flake {name} is registered in {}; see flake-ctl list",
                app.display(),
                registry.dir().display()
            );
        }
        names.push(name);
    }
    Ok(all
        .iter()
        .filter(|(flake, _)| names.contains(flake))
        .cloned()
        .collect())
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
