// SPDX-License-Identifier: MIT
//! `flake-ctl firecracker update (--vm NAME... | --app PATH... | --all) [--dry-run]
//! [--format table|json]`: pull the VM images made from OCI images again.
//!
//! A VM image made with `pull --oci` keeps a record of the reference it came from
//! (`vm_pilot::oci`); an update pulls that reference again through the very code of
//! `pull --oci` (no `--force`): an unchanged digest (and id) is "up to date" and nothing
//! is rebuilt, a new one rebuilds the image beside the old and swaps it in once verified.
//! The kernel follows its record: one taken from an OCI image is pulled again with it;
//! one that came from a file or URL is not recorded by address (a URL may carry a token),
//! so the image's current kernel file is kept, as a user who gave a fixed kernel expects.
//! Images without a record (kis archives, components) have nothing to follow: they are
//! reported as skipped, which is not a failure.
//!
//! A VM that runs while its image is replaced keeps the old files open and runs on them
//! until it ends (the old rootfs is unlinked, not rewritten); the report names such VMs.
//! Saved one-shot states are keyed on the identity of the rootfs file (device, inode,
//! size and times, see `vm_pilot::saved`), and a rebuilt rootfs is a new file, so a state
//! of the old image is never restored onto the new one.
//!
//! `--dry-run` changes nothing: it asks the registry for the digests of the recorded
//! references with skopeo when it is installed (else the image "would be pulled"). Exit 0
//! when every image could be handled, 1 when one failed; each failure is named and the
//! other images are still updated.

mod storage;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use flakes::config::load::load_raw;
use flakes::config::Engine;
use flakes::register::app_name;
use flakes::{FlakeName, Mode, Registry};
use serde::Serialize;
use vm_pilot::oci::{OciRecord, Origin};
use vm_pilot::pull::oci::{names_registry, OciKernel, Podman};
use vm_pilot::pull::{Pull, Source};

use crate::cli::{ReportFormat, VmUpdateArgs};
use crate::commands::podman::inspect::{inspect, short};
use crate::context::Context;
use storage::{Replaced, Storage};

/// What happened to one VM image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Status {
    /// Rebuilt from a new digest (dry run: the registry has another one).
    Changed,
    /// Pulled again, same digest and id: nothing rebuilt.
    Unchanged,
    /// Not made from an OCI image: nothing to follow.
    Skipped,
    /// Dry run without skopeo (or of a local-only image): it would be pulled.
    Unknown,
    /// The pull, the registry query or the record failed.
    Failed,
}

/// The outcome for one VM image.
#[derive(Debug, Serialize)]
struct ImageReport {
    /// The VM image (its name, as `firecracker show` gives it).
    image: String,
    /// The registered flakes that use it.
    flakes: Vec<String>,
    /// What happened.
    status: Status,
    /// The OCI reference it is made from.
    reference: Option<String>,
    /// The OCI image its kernel comes from; `None`: its kernel file is kept.
    kernel_reference: Option<String>,
    /// The recorded manifest digest before the update.
    old_digest: Option<String>,
    /// The digest after the update (dry run: the registry's).
    new_digest: Option<String>,
    /// The recorded digest of the kernel image before the update.
    old_kernel_digest: Option<String>,
    /// The kernel image's digest after the update (dry run: the registry's).
    new_kernel_digest: Option<String>,
    /// The recorded image id before the update.
    old_image_id: Option<String>,
    /// The image id after the update (none in a dry run).
    new_image_id: Option<String>,
    /// VM instances still running on the old image.
    running: Vec<String>,
    /// The OCI images the update replaced in podman's storage, removed or kept.
    replaced: Vec<Replaced>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl ImageReport {
    fn new(vm: &str, flakes: Vec<String>) -> Self {
        ImageReport {
            image: vm.to_string(),
            flakes,
            status: Status::Unchanged,
            reference: None,
            kernel_reference: None,
            old_kernel_digest: None,
            new_kernel_digest: None,
            old_digest: None,
            new_digest: None,
            old_image_id: None,
            new_image_id: None,
            running: Vec::new(),
            replaced: Vec::new(),
            error: None,
        }
    }

    fn fail(&mut self, why: String) {
        self.status = Status::Failed;
        self.error = Some(why);
    }

    /// Takes what `record` (before the update) says.
    fn recorded(&mut self, record: &OciRecord) {
        self.reference = Some(record.rootfs.reference.clone());
        self.kernel_reference = record.kernel.as_ref().map(|k| k.reference.clone());
        self.old_digest.clone_from(&record.rootfs.digest);
        self.old_kernel_digest = record.kernel.as_ref().and_then(|k| k.digest.clone());
        self.old_image_id = Some(record.rootfs.image_id.clone());
    }
}

/// The whole outcome, as `--format json` prints it.
#[derive(Debug, Serialize)]
struct Report {
    /// Nothing was changed.
    dry_run: bool,
    /// One entry per VM image.
    images: Vec<ImageReport>,
    /// One line per failure.
    failures: Vec<String>,
}

/// Runs the update.
pub fn run(args: &VmUpdateArgs, mode: Mode, ctx: &Context) -> Result<ExitCode> {
    let registry = ctx.settings.registry(mode);
    let users = users(&registry)?;
    let chosen = chosen(args, &users, &registry)?;
    let update = Update::new(args, mode, ctx, &registry);
    let mut images: Vec<ImageReport> = chosen
        .into_iter()
        .map(|(vm, flakes)| update.image(&vm, flakes))
        .collect();
    if !args.dry_run {
        note_running(&mut images, mode, ctx);
    }
    let failures = failures(&images);
    let report = Report {
        dry_run: args.dry_run,
        images,
        failures,
    };
    print(&report, args.format)?;
    Ok(crate::output::exit_after(
        "firecracker update",
        report.failures.len(),
    ))
}

/// One line per failed image, in the report's order.
fn failures(images: &[ImageReport]) -> Vec<String> {
    let failed = images.iter().filter(|i| i.status == Status::Failed);
    failed
        .map(|i| {
            let why = i.error.as_deref().unwrap_or("unknown error");
            format!("VM image {}: {why}", i.image)
        })
        .collect()
}

/// VM image name -> the registered flakes that use it, for every VM flake of `registry`.
/// A flake whose file does not load still names its image (read from the raw file).
fn users(registry: &Registry) -> Result<BTreeMap<String, Vec<String>>> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in registry.names()? {
        if let Some(vm) = image_of(registry, &name) {
            users.entry(vm).or_default().push(name.to_string());
        }
    }
    Ok(users)
}

/// The VM image flake `name` uses; `None` for a container flake or an unreadable file.
fn image_of(registry: &Registry, name: &FlakeName) -> Option<String> {
    match registry.load(name) {
        Ok(flake) => match flake.engine {
            Engine::Vm(vm) => Some(vm.image),
            Engine::Container(_) => None,
        },
        Err(_) => load_raw(&registry.config_path(name)).ok()?.vm?.name,
    }
}

/// The images chosen by `--vm`, `--app` or `--all`, each with the flakes that use it.
fn chosen(
    args: &VmUpdateArgs,
    users: &BTreeMap<String, Vec<String>>,
    registry: &Registry,
) -> Result<BTreeMap<String, Vec<String>>> {
    if args.all {
        return Ok(users.clone());
    }
    let flakes_of = |vm: &str| users.get(vm).cloned().unwrap_or_default();
    let mut chosen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for vm in &args.vm {
        chosen.insert(vm.clone(), flakes_of(vm));
    }
    for app in &args.app {
        let name = app_name(app)?;
        let Some(vm) = image_of(registry, &name) else {
            bail!(
                "--app {}: no VM flake {name} is registered in {}; see flake-ctl list",
                app.display(),
                registry.dir().display()
            );
        };
        let flakes = flakes_of(&vm);
        chosen.insert(vm, flakes);
    }
    Ok(chosen)
}

/// One run of the update: where the images are and what it may change.
struct Update<'a> {
    ctx: &'a Context,
    mode: Mode,
    images: PathBuf,
    engine: Option<podman_pilot::Engine>,
    storage: Option<Storage>,
    skopeo: Option<PathBuf>,
    max_size: u64,
    dry_run: bool,
}

impl<'a> Update<'a> {
    /// The update `args` ask for, of the images of `registry`.
    fn new(args: &VmUpdateArgs, mode: Mode, ctx: &'a Context, registry: &Registry) -> Self {
        // Without podman there is nothing to pull or remove (each pull then says why).
        let engine = ctx.podman(mode).ok();
        // A dry run removes nothing, and only a dry run asks skopeo.
        let storage = engine
            .clone()
            .filter(|_| !args.dry_run)
            .map(|engine| Storage::new(engine, registry));
        let skopeo = args.dry_run.then(|| crate::commands::remote::skopeo(ctx));
        Update {
            ctx,
            mode,
            engine,
            storage,
            images: vm_pilot::images_dir(&ctx.settings, mode),
            skopeo: skopeo.flatten(),
            max_size: args.max_size,
            dry_run: args.dry_run,
        }
    }

    /// Updates (or, dry, checks) VM image `vm`.
    fn image(&self, vm: &str, flakes: Vec<String>) -> ImageReport {
        let mut report = ImageReport::new(vm, flakes);
        let record = match self.record(vm) {
            Ok(Some((dir, record))) => (dir, record),
            Ok(None) => {
                report.status = Status::Skipped;
                return report;
            }
            Err(why) => {
                report.fail(why);
                return report;
            }
        };
        let (dir, record) = record;
        report.recorded(&record);
        if self.dry_run {
            self.check(&record, &mut report);
        } else if let Err(err) = self.pull(vm, &dir, &record, &mut report) {
            report.fail(format!("{err:#}"));
        }
        report
    }

    /// The directory and OCI record of image `vm`; `None` when it was not made from an
    /// OCI image.
    fn record(&self, vm: &str) -> Result<Option<(PathBuf, OciRecord)>, String> {
        let dir = vm_pilot::image_dir(&self.images, vm).map_err(|e| e.to_string())?;
        if !dir.is_dir() {
            return Err(format!(
                "no VM image {vm} in {}; pull it with flake-ctl firecracker pull",
                self.images.display()
            ));
        }
        let record = vm_pilot::oci::read(&dir).map_err(|e| e.to_string())?;
        Ok(record.map(|r| (dir, r)))
    }

    /// Pulls the recorded reference again as `pull --oci` would, and reads the new record.
    fn pull(
        &self,
        vm: &str,
        dir: &Path,
        record: &OciRecord,
        report: &mut ImageReport,
    ) -> Result<()> {
        let kernel = match &record.kernel {
            Some(origin) => OciKernel::Image(origin.reference.clone()),
            // Not recorded by address: the image's own kernel file is the one it keeps.
            None => OciKernel::Source(Source::File(dir.join("kernel"))),
        };
        let what = Pull::Oci {
            image: record.rootfs.reference.clone(),
            kernel,
            podman: Podman::new(self.ctx.podman(self.mode)?.podman())
                .with_skopeo(crate::commands::remote::skopeo(self.ctx)),
        };
        let pulled = super::pull::oci_pull(vm, &what, self.max_size, self.mode, self.ctx)?;
        let new = vm_pilot::oci::read(dir)?;
        report.new_digest = new.as_ref().and_then(|r| r.rootfs.digest.clone());
        report.new_kernel_digest = new.as_ref().and_then(|r| r.kernel.as_ref()?.digest.clone());
        if let Some(storage) = &self.storage {
            let rootfs = storage.release(&record.rootfs, new.as_ref().map(|r| &r.rootfs));
            let kernel = record
                .kernel
                .as_ref()
                .and_then(|old| storage.release(old, new.as_ref().and_then(|r| r.kernel.as_ref())));
            report.replaced.extend(rootfs.into_iter().chain(kernel));
        }
        report.new_image_id = new.map(|r| r.rootfs.image_id);
        report.status = if pulled.up_to_date {
            Status::Unchanged
        } else {
            Status::Changed
        };
        Ok(())
    }

    /// Dry run: compares the registry's digests of the recorded references (rootfs and
    /// kernel image) with the recorded ones.
    fn check(&self, record: &OciRecord, report: &mut ImageReport) {
        let Some(skopeo) = &self.skopeo else {
            report.status = Status::Unknown;
            return;
        };
        let origins = std::iter::once(&record.rootfs).chain(&record.kernel);
        let mut changed = false;
        for (i, origin) in origins.enumerate() {
            if !names_registry(&origin.reference) {
                // Only in local storage: no registry to ask; a pull would look again.
                report.status = Status::Unknown;
                return;
            }
            match crate::commands::remote::digest(skopeo, &origin.reference) {
                Ok(digest) => {
                    changed |= !self.known(origin, &digest);
                    if i == 0 {
                        report.new_digest = Some(digest);
                    } else {
                        report.new_kernel_digest = Some(digest);
                    }
                }
                Err(err) => {
                    let why = flakes::report::one_line(&err);
                    report.fail(format!(
                        "cannot ask the registry for {}: {why}",
                        origin.reference
                    ));
                    return;
                }
            }
        }
        report.status = if changed {
            Status::Changed
        } else {
            Status::Unchanged
        };
    }
}

impl Update<'_> {
    /// Whether the registry's `digest` is that of the image `origin` records: the recorded
    /// digest, or another manifest podman knows the recorded image by. Pulls now record
    /// the registry's digest, so the second case is for records written by earlier
    /// releases, which could hold the digest of the local manifest of an image built and
    /// pushed on this host; a record is right again after its next update.
    fn known(&self, origin: &Origin, digest: &str) -> bool {
        if origin.digest.as_deref() == Some(digest) {
            return true;
        }
        let local = self
            .engine
            .as_ref()
            .and_then(|e| inspect(e, &origin.image_id));
        local.is_some_and(|info| info.digests().contains(digest))
    }
}

/// Names, for each rebuilt image, the caller's VM instances that still run on the old one.
fn note_running(images: &mut [ImageReport], mode: Mode, ctx: &Context) {
    if !images.iter().any(|i| i.status == Status::Changed) {
        return;
    }
    let caller = flakes::host::user_name(ctx.settings.caller.uid);
    let rows = super::show::rows(ctx);
    for image in images.iter_mut().filter(|i| i.status == Status::Changed) {
        image.running = rows
            .iter()
            .filter(|r| r.status == "running" && r.image.as_deref() == Some(image.image.as_str()))
            // A user's images are that user's: other users' VMs run on theirs.
            .filter(|r| mode == Mode::System || r.user == caller)
            .map(|r| r.name.clone())
            .collect();
    }
}

fn print(report: &Report, format: ReportFormat) -> Result<()> {
    match format {
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(report)?),
        ReportFormat::Table => print!("{}", table(report)),
    }
    Ok(())
}

/// The report for people: one line per image (and per VM still on an old image), then
/// the verdict.
fn table(report: &Report) -> String {
    let mut out = String::new();
    for image in &report.images {
        let _ = writeln!(
            out,
            "{}: {}",
            image.image,
            image_line(image, report.dry_run)
        );
        for old in &image.replaced {
            let _ = writeln!(out, "  {}", replaced_line(old));
        }
        for vm in &image.running {
            let _ = writeln!(
                out,
                "  VM {vm} keeps running on the old image until it ends \
                 (a resume flake ends with its next call given %remove)"
            );
        }
    }
    let open = |s: Status| matches!(s, Status::Changed | Status::Unknown | Status::Failed);
    if report.images.is_empty() {
        out.push_str("no VM flakes are registered: nothing to update\n");
    } else if !report.images.iter().any(|i| open(i.status)) {
        out.push_str("all up to date\n");
    }
    out
}

fn replaced_line(old: &Replaced) -> String {
    let id = short(&old.id);
    match &old.reason {
        None => format!(
            "removed the old image {id} ({}) from podman's storage",
            old.reference
        ),
        Some(why) => format!("kept the old image {id} ({}): {why}", old.reference),
    }
}

/// Where the kernel came from, and for a kernel image its digests when they differ.
fn kernel_part(image: &ImageReport) -> String {
    let digest = |d: &Option<String>| d.clone().unwrap_or_else(|| "none".into());
    let (old, new) = (&image.old_kernel_digest, &image.new_kernel_digest);
    match &image.kernel_reference {
        None => "kernel file kept".to_string(),
        Some(k) if new.is_some() && old != new => {
            format!("kernel from {k} {} -> {}", digest(old), digest(new))
        }
        Some(k) => format!("kernel from {k}"),
    }
}

fn image_line(image: &ImageReport, dry_run: bool) -> String {
    let digest = |d: &Option<String>| d.clone().unwrap_or_else(|| "none".into());
    let reference = image.reference.as_deref().unwrap_or("?");
    let kernel = kernel_part(image);
    match image.status {
        Status::Changed if dry_run => format!(
            "would change: {reference} (recorded digest {} -> registry {}; {kernel})",
            digest(&image.old_digest),
            digest(&image.new_digest)
        ),
        Status::Changed => format!(
            "changed: {reference} {} -> {} ({kernel})",
            digest(&image.old_digest),
            digest(&image.new_digest)
        ),
        // The digest the record holds now (a pull may have corrected an old record's).
        Status::Unchanged => format!(
            "up to date: {reference} {}",
            digest(
                image
                    .new_digest
                    .as_ref()
                    .map_or(&image.old_digest, |_| &image.new_digest)
            )
        ),
        Status::Skipped => {
            "not from a registry; pull it again with firecracker pull --force".to_string()
        }
        Status::Unknown if !names_registry(reference) => format!(
            "would be looked up in local storage: {reference} (recorded image id {})",
            image.old_image_id.as_deref().map_or("none", short)
        ),
        Status::Unknown => format!(
            "would be pulled: {reference}; recorded digest {} (install skopeo to see the \
             registry's)",
            digest(&image.old_digest)
        ),
        Status::Failed => format!(
            "failed: {}",
            image.error.as_deref().unwrap_or("unknown error")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(status: Status, kernel: Option<&str>) -> ImageReport {
        let mut image = ImageReport::new("app-1", vec!["app".into()]);
        image.status = status;
        image.reference = Some("r:5000/app:1".into());
        image.kernel_reference = kernel.map(str::to_string);
        if kernel.is_some() {
            image.old_kernel_digest = Some("sha256:k1".into());
            image.new_kernel_digest = Some("sha256:k2".into());
        }
        image.old_digest = Some("sha256:old".into());
        image.new_digest = Some("sha256:new".into());
        if status == Status::Failed {
            image.error = Some("pull refused".into());
        }
        image
    }

    fn report(dry_run: bool, images: Vec<ImageReport>) -> Report {
        let failures = failures(&images);
        Report {
            dry_run,
            images,
            failures,
        }
    }

    #[test]
    fn one_line_per_image_and_a_verdict() {
        let cases = [
            (false, Status::Changed, None, "app-1: changed: r:5000/app:1 sha256:old -> sha256:new (kernel file kept)\n"),
            (false, Status::Changed, Some("r:5000/k:1"), "app-1: changed: r:5000/app:1 sha256:old -> sha256:new (kernel from r:5000/k:1 sha256:k1 -> sha256:k2)\n"),
            (true, Status::Changed, None, "app-1: would change: r:5000/app:1 (recorded digest sha256:old -> registry sha256:new; kernel file kept)\n"),
            (true, Status::Unknown, None, "app-1: would be pulled: r:5000/app:1; recorded digest sha256:old (install skopeo to see the registry's)\n"),
            (false, Status::Unchanged, None, "app-1: up to date: r:5000/app:1 sha256:new\nall up to date\n"),
            (false, Status::Skipped, None, "app-1: not from a registry; pull it again with firecracker pull --force\nall up to date\n"),
            (false, Status::Failed, None, "app-1: failed: pull refused\n"),
        ];
        for (dry_run, status, kernel, want) in cases {
            let got = table(&report(dry_run, vec![image(status, kernel)]));
            assert_eq!(got, want, "{status:?}");
        }
    }

    #[test]
    fn local_images_and_an_empty_registry_say_so() {
        let mut local = image(Status::Unknown, None);
        local.reference = Some("localhost/app:1".into());
        local.old_image_id = Some("b".repeat(64));
        assert_eq!(
            table(&report(true, vec![local])),
            "app-1: would be looked up in local storage: localhost/app:1 (recorded image id \
             bbbbbbbbbbbb)\n"
        );
        assert_eq!(
            table(&report(false, Vec::new())),
            "no VM flakes are registered: nothing to update\n"
        );
    }

    #[test]
    fn running_vms_are_named_and_json_has_every_key() {
        let mut changed = image(Status::Changed, None);
        changed.running = vec!["app@one".into()];
        let old = |reason: Option<&str>| Replaced {
            id: "a".repeat(64),
            reference: "r:5000/app:1".into(),
            removed: reason.is_none(),
            reason: reason.map(str::to_string),
        };
        changed.replaced = vec![old(None), old(Some("it is still named x:1"))];
        let report = report(false, vec![changed, image(Status::Failed, None)]);
        let text = table(&report);
        assert!(
            text.contains("\n  VM app@one keeps running on the old image until it ends"),
            "{text}"
        );
        assert!(
            text.contains("\n  removed the old image aaaaaaaaaaaa (r:5000/app:1) from podman's storage\n  kept the old image aaaaaaaaaaaa (r:5000/app:1): it is still named x:1\n"),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(json["failures"][0], "VM image app-1: pull refused");
        assert_eq!(json["images"][0]["status"], "changed");
        assert_eq!(json["images"][0]["running"][0], "app@one");
        assert_eq!(json["images"][0]["replaced"][0]["removed"], true);
        assert_eq!(
            json["images"][0]["replaced"][1]["reason"],
            "it is still named x:1"
        );
        assert!(json["images"][0]["kernel_reference"].is_null());
        assert_eq!(json["images"][1]["error"], "pull refused");
    }
}
