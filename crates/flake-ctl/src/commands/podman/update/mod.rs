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
use std::fmt::Write as _;
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
    let update = Update {
        ctx,
        mode,
        engine: ctx.podman(mode)?,
        dry_run: args.dry_run,
    };
    let registry = ctx.settings.registry(mode);
    let registered = registered(&registry)?;
    let chosen = chosen(&registered.flakes, args, &registry)?;
    let images = update.images(&chosen);
    let mut failures = image_failures(&images);
    if args.all {
        failures.extend(registered.unreadable.iter().cloned());
    }
    let Cleanup { removed, kept } = update.clean_up(&images, &registered, &mut failures);
    let assembled = update.reassemble(&chosen, &images, &mut failures);
    let report = Report {
        dry_run: args.dry_run,
        images,
        removed,
        kept,
        assembled,
        failures,
    };
    print(&report, args.format)?;
    Ok(crate::output::exit_after(
        "podman update",
        report.failures.len(),
    ))
}

/// One line per failed image, in the report's order.
fn image_failures(images: &[ImageReport]) -> Vec<String> {
    let failed = images.iter().filter(|i| i.status == Status::Failed);
    failed
        .map(|i| {
            let why = i.error.as_deref().unwrap_or("unknown error");
            format!("image {}: {why}", i.image)
        })
        .collect()
}

/// One run of the update: the engine and what it may change.
struct Update<'a> {
    ctx: &'a Context,
    mode: Mode,
    engine: podman_pilot::Engine,
    dry_run: bool,
}

impl Update<'_> {
    /// Pulls (or checks) each image of `flakes` once.
    fn images(&self, flakes: &[&Flake]) -> Vec<ImageReport> {
        // Only a dry run asks the registry; without skopeo it says what it would pull.
        let skopeo = self
            .dry_run
            .then(|| crate::commands::remote::skopeo(self.ctx))
            .flatten();
        cleanup::by_image(&pairs(flakes))
            .into_iter()
            .map(|(image, users)| {
                images::update(&self.engine, &image, users, self.dry_run, skopeo.as_deref())
            })
            .collect()
    }

    /// Removes what the changed images left behind; a failure of the listing is reported.
    fn clean_up(
        &self,
        images: &[ImageReport],
        registered: &Registered,
        failures: &mut Vec<String>,
    ) -> Cleanup {
        let scope = Scope {
            engine: &self.engine,
            images,
            registered: &registered.images,
            all_known: registered.unreadable.is_empty(),
            dry_run: self.dry_run,
        };
        scope.run().unwrap_or_else(|err| {
            failures.push(format!("clean-up: {}", flakes::report::one_line(&err)));
            Cleanup::default()
        })
    }

    /// Assembles the layered flakes among `flakes` whose inputs changed again, so that
    /// their next launch is as fast as ever; a dry run only names them.
    fn reassemble(
        &self,
        flakes: &[&Flake],
        images: &[ImageReport],
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
            let image = if self.dry_run {
                None
            } else {
                match self.assemble(flake, c) {
                    Ok(image) => Some(image),
                    Err(err) => {
                        failures.push(format!("flake {}: {err:#}", flake.name));
                        continue;
                    }
                }
            };
            let flake = flake.name.to_string();
            out.push(Assembled { flake, image });
        }
        out
    }

    /// Assembles one layered flake for the caller, as its launch would.
    fn assemble(&self, flake: &Flake, c: &ContainerFlake) -> Result<String> {
        let settings = &self.ctx.settings;
        let provisioner = Provisioner {
            engine: &self.engine,
            name: &flake.name,
            config: &flake.path,
            flake: c,
            include: &flake.include,
            cache_dir: cache_dir(&settings.podman_ids_dir(self.mode), settings.caller.uid)?,
            progress: false,
            ignore_sync_error: false,
        };
        Ok(provisioner.image()?)
    }
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

/// The report for people: one line per image, then what was removed, kept and assembled,
/// then the verdict.
fn table(report: &Report) -> String {
    let mut out = String::new();
    for image in &report.images {
        let line = image_line(image, report.dry_run);
        let _ = writeln!(out, "{}: {line}", image.image);
    }
    actions(report, &mut out);
    let open = |s: Status| matches!(s, Status::Changed | Status::Unknown | Status::Failed);
    if !report.images.iter().any(|i| open(i.status)) && report.failures.is_empty() {
        out.push_str("all up to date\n");
    }
    // Failed images are said on their own line; the others (flakes, clean-up) here.
    let failed_images = report.images.iter().filter(|i| i.status == Status::Failed);
    for failure in report.failures.iter().skip(failed_images.count()) {
        let _ = writeln!(out, "failed: {failure}");
    }
    out
}

/// The lines of what the clean-up and the assembly did (or would do).
fn actions(report: &Report, out: &mut String) {
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for action in &report.removed {
        let _ = writeln!(out, "{verb} {}", describe(action));
    }
    for action in &report.kept {
        let reason = action.reason.as_deref().unwrap_or("in use");
        let _ = writeln!(out, "kept {}: {reason}", describe(action));
    }
    for assembled in &report.assembled {
        let flake = &assembled.flake;
        let _ = match &assembled.image {
            Some(image) => writeln!(out, "assembled flake {flake} again: {image}"),
            None => writeln!(out, "would assemble flake {flake} again"),
        };
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn image(status: Status) -> ImageReport {
        ImageReport {
            image: "r/x:1".into(),
            flakes: vec!["f".into()],
            status,
            old_id: Some("a".repeat(64)),
            new_id: Some("b".repeat(64)),
            old_digest: Some("sha256:old".into()),
            new_digest: Some("sha256:new".into()),
            error: (status == Status::Failed).then(|| "pull refused".into()),
        }
    }

    fn report(dry_run: bool, images: Vec<ImageReport>) -> Report {
        let failures = image_failures(&images);
        Report {
            dry_run,
            images,
            removed: Vec::new(),
            kept: Vec::new(),
            assembled: Vec::new(),
            failures,
        }
    }

    #[test]
    fn one_line_per_image_and_a_verdict() {
        let cases = [
            (false, Status::Changed, "r/x:1: changed aaaaaaaaaaaa -> bbbbbbbbbbbb (sha256:old -> sha256:new)\n"),
            (true, Status::Changed, "r/x:1: would change (local digest sha256:old -> registry sha256:new)\n"),
            (true, Status::Unknown, "r/x:1: would be pulled; local digest sha256:old (install skopeo to see the registry's)\n"),
            (false, Status::Unchanged, "r/x:1: up to date\nall up to date\n"),
            (false, Status::Pinned, "r/x:1: pinned, not pulled\nall up to date\n"),
            (false, Status::Local, "r/x:1: local, skipped\nall up to date\n"),
            (false, Status::Failed, "r/x:1: failed: pull refused\n"),
        ];
        for (dry_run, status, want) in cases {
            assert_eq!(
                table(&report(dry_run, vec![image(status)])),
                want,
                "{status:?}"
            );
        }
    }

    #[test]
    fn other_failures_follow_the_images() {
        let mut report = report(false, vec![image(Status::Failed)]);
        report.failures.push("flake g: broken".into());
        let text = table(&report);
        assert!(
            text.ends_with("r/x:1: failed: pull refused\nfailed: flake g: broken\n"),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(json["failures"].as_array().unwrap().len(), 2);
        assert_eq!(json["images"][0]["status"], "failed");
    }
}
