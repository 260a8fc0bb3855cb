// SPDX-License-Identifier: MIT
//! `flake-ctl import`: registers the flakes of an export archive on this host.
//!
//! The import runs in two halves. The first touches nothing outside a private staging
//! directory: it unpacks and verifies every member against the manifest, then checks every
//! flake, app path and VM image for conflicts. Only then the second half loads container
//! images, installs VM images and registers the flakes, recording an undo step for each;
//! when any step fails, the steps taken are undone in reverse, so a failed import leaves
//! the host as it was (images that were already present are never removed).

use std::collections::BTreeSet;
use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, ensure, Context as _, Result};
use flakes::config::raw::RawFlake;
use flakes::register::{app_name, remove_app, Registration};
use flakes::{FlakeName, Mode, Registry};
use podman_pilot::Engine;

use super::archive::{self, FlakeEntry, Staged};
use crate::cli::ImportArgs;
use crate::context::Context;

/// One flake, checked and ready to register.
struct Planned<'a> {
    entry: &'a FlakeEntry,
    name: FlakeName,
    yaml: String,
    fragments: Vec<(String, String)>,
    vm_dir: Option<PathBuf>,
}

/// Runs the import.
pub fn run(args: &ImportArgs, ctx: &Context) -> Result<ExitCode> {
    let mode = Context::mode(args.user);
    let registry = ctx.settings.registry(mode);
    let images_dir = vm_pilot::images_dir(&ctx.settings, mode);
    let file = ctx.absolute(&args.file);
    let staged = archive::stage(&file, &std::env::temp_dir())?;
    let plans = plan(&staged, &registry, &images_dir, args.force)?;
    let mut undo = Undo::default();
    let target = Target {
        registry: &registry,
        images_dir: &images_dir,
        force: args.force,
        mode,
    };
    let result = commit(&plans, &staged, &target, ctx, &mut undo);
    if result.is_ok() {
        undo.finish();
    }
    drop(undo);
    result?;
    for plan in &plans {
        println!(
            "imported {} ({})",
            plan.entry.app.display(),
            plan.entry.engine
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks every flake against this host before anything is changed.
fn plan<'a>(
    staged: &'a Staged,
    registry: &Registry,
    images_dir: &Path,
    force: bool,
) -> Result<Vec<Planned<'a>>> {
    check_images(staged)?;
    let mut names = BTreeSet::new();
    let mut plans = Vec::new();
    for entry in &staged.manifest.flakes {
        let name = app_name(&entry.app)?;
        ensure!(
            name.as_str() == entry.name && names.insert(entry.name.clone()),
            "archive flake '{}' does not match its app path {} or appears twice; refusing the \
             archive",
            entry.name,
            entry.app.display()
        );
        ensure!(
            matches!(entry.engine.as_str(), "podman" | "firecracker"),
            "archive flake '{}' has unknown engine '{}'",
            entry.name,
            entry.engine
        );
        plans.push(plan_one(entry, name, staged, images_dir, force)?);
    }
    for plan in &plans {
        let registration = Registration {
            registry,
            app: plan.entry.app.clone(),
            pilot: PathBuf::new(),
            yaml: String::new(),
            force,
        };
        registration.check()?;
    }
    Ok(plans)
}

fn plan_one<'a>(
    entry: &'a FlakeEntry,
    name: FlakeName,
    staged: &Staged,
    images_dir: &Path,
    force: bool,
) -> Result<Planned<'a>> {
    let mut yaml = staged.text(&entry.yaml)?;
    let mut fragments = Vec::new();
    for (file, member) in &entry.fragments {
        archive::check_member_name(file)?;
        ensure!(
            !file.contains('/') && file.ends_with(".yaml"),
            "archive fragment '{file}' of flake '{}' is not a NAME.d/*.yaml file name",
            entry.name
        );
        fragments.push((file.clone(), staged.text(member)?));
    }
    let mut vm_dir = None;
    if let Some(vm) = &entry.vm_image {
        let dir = vm_pilot::image_dir(images_dir, &vm.name)?;
        if dir.exists() && !force {
            bail!(
                "VM image '{}' already exists in {}; pass --force to replace it",
                vm.name,
                images_dir.display()
            );
        }
        for what in vm.files.keys() {
            ensure!(
                archive::VM_FILES.contains(&what.as_str()),
                "archive VM image '{}' holds unknown file '{what}'",
                vm.name
            );
        }
        yaml = rewrite_vm_paths(&yaml, &dir)?;
        for (_, text) in &mut fragments {
            *text = rewrite_vm_paths(text, &dir)?;
        }
        vm_dir = Some(dir);
    }
    let config = PathBuf::from(format!("{}.yaml", entry.name));
    let texts: Vec<(PathBuf, String)> = fragments
        .iter()
        .map(|(file, text)| {
            (
                PathBuf::from(format!("{}.d/{file}", entry.name)),
                text.clone(),
            )
        })
        .collect();
    let raw = flakes::config::load::parse_raw(&config, &yaml, &texts)?;
    check_consistent(entry, &raw)?;
    flakes::config::validate_raw(name.clone(), &config, raw)?;
    Ok(Planned {
        entry,
        name,
        yaml,
        fragments,
        vm_dir,
    })
}

/// The flake's merged YAML agrees with its manifest entry: the same app path and engine,
/// and every container image it names (and no other) travels in the archive.
fn check_consistent(entry: &FlakeEntry, raw: &RawFlake) -> Result<()> {
    let (engine, app) = match (&raw.container, &raw.vm) {
        (Some(c), _) => ("podman", c.host_app_path.as_deref()),
        (None, Some(v)) => ("firecracker", v.host_app_path.as_deref()),
        (None, None) => ("none", None),
    };
    ensure!(
        engine == entry.engine && app.map(Path::new) == Some(entry.app.as_path()),
        "archive flake '{}': its YAML does not match the manifest (engine {engine}, app {}); \
         refusing the archive",
        entry.name,
        app.unwrap_or("none")
    );
    Ok(())
}

/// Container images the manifest lists must be images some flake of it names.
fn check_images(staged: &Staged) -> Result<()> {
    let mut named = BTreeSet::new();
    for entry in &staged.manifest.flakes {
        let fragments = entry
            .fragments
            .iter()
            .map(|(file, member)| Ok((PathBuf::from(file), staged.text(member)?)))
            .collect::<Result<Vec<_>>>()?;
        let yaml = Path::new(&entry.yaml);
        let raw = flakes::config::load::parse_raw(yaml, &staged.text(&entry.yaml)?, &fragments)?;
        if let Some(c) = raw.container {
            named.extend(
                c.name
                    .into_iter()
                    .chain(c.base_container)
                    .chain(c.layers.into_iter().flatten()),
            );
        }
    }
    for image in &staged.manifest.container_images {
        ensure!(
            named.contains(&image.image),
            "archive image {} is used by none of its flakes; refusing the archive",
            image.image
        );
        archive::check_saved_image(staged.file(&image.member)?, &image.image)?;
    }
    Ok(())
}

/// Points a flake file's VM image paths at this host's image directory `dir`.
fn rewrite_vm_paths(text: &str, dir: &Path) -> Result<String> {
    let mut doc: yaml_serde::Value =
        yaml_serde::from_str(text).context("a flake file of the archive is not YAML")?;
    let Some(fc) = doc
        .get_mut("vm")
        .and_then(|v| v.get_mut("runtime"))
        .and_then(|v| v.get_mut("firecracker"))
    else {
        return Ok(text.to_string());
    };
    let mut changed = false;
    for (key, file) in [
        ("rootfs_image_path", "rootfs"),
        ("kernel_image_path", "kernel"),
        ("initrd_path", "initrd"),
    ] {
        if let Some(value) = fc.get_mut(key).filter(|v| v.as_str().is_some()) {
            *value = yaml_serde::Value::String(dir.join(file).display().to_string());
            changed = true;
        }
    }
    if !changed {
        return Ok(text.to_string());
    }
    Ok(yaml_serde::to_string(&doc)?)
}

/// Where an import goes.
struct Target<'a> {
    registry: &'a Registry,
    images_dir: &'a Path,
    force: bool,
    mode: Mode,
}

fn commit(
    plans: &[Planned<'_>],
    staged: &Staged,
    target: &Target<'_>,
    ctx: &Context,
    undo: &mut Undo,
) -> Result<()> {
    let Target {
        registry,
        images_dir,
        force,
        mode,
    } = *target;
    if !staged.manifest.container_images.is_empty() {
        let podman = ctx.podman(mode)?;
        load_images(&podman, staged, force, undo)?;
    }
    for plan in plans {
        if let (Some(dir), Some(vm)) = (&plan.vm_dir, &plan.entry.vm_image) {
            install_vm(dir, vm, staged, images_dir, undo)?;
        }
        register(plan, registry, force, ctx, undo)?;
    }
    Ok(())
}

/// `podman load`s each image that is not present (or every image with `--force`).
fn load_images(podman: &Engine, staged: &Staged, force: bool, undo: &mut Undo) -> Result<()> {
    for image in &staged.manifest.container_images {
        let present = podman
            .image_exists(&image.image)
            .succeeds()
            .unwrap_or(false);
        if present && !force {
            continue;
        }
        podman
            .load(staged.file(&image.member)?)
            .run()
            .with_context(|| format!("cannot load container image {}", image.image))?;
        let loaded = podman
            .image_exists(&image.image)
            .succeeds()
            .unwrap_or(false);
        ensure!(
            loaded,
            "the archive's image member for {} did not load as that name; export it again",
            image.image
        );
        if !present {
            undo.steps
                .push(Step::Image(podman.clone(), image.image.clone()));
        }
    }
    Ok(())
}

/// Copies the image's files into a staging directory beside `dir` and renames it there.
fn install_vm(
    dir: &Path,
    vm: &archive::VmImageEntry,
    staged: &Staged,
    images_dir: &Path,
    undo: &mut Undo,
) -> Result<()> {
    std::fs::create_dir_all(images_dir)
        .with_context(|| format!("cannot create {}", images_dir.display()))?;
    let tmp = images_dir.join(format!(".{}.import.{}", vm.name, std::process::id()));
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    undo.steps.push(Step::RemoveTree(tmp.clone()));
    for (what, member) in &vm.files {
        let path = tmp.join(what);
        std::fs::copy(staged.file(member)?, &path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        // Installed image files are 0644 whatever the archive or the umask said, as pulled ones.
        std::fs::set_permissions(&path, Permissions::from_mode(0o644))
            .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    }
    std::fs::set_permissions(&tmp, Permissions::from_mode(0o755))
        .with_context(|| format!("cannot set the mode of {}", tmp.display()))?;
    if dir.exists() {
        let old = images_dir.join(format!(".{}.replaced.{}", vm.name, std::process::id()));
        std::fs::rename(dir, &old).with_context(|| format!("cannot move {}", dir.display()))?;
        undo.steps.push(Step::Restore(old, dir.to_path_buf()));
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("cannot install {}", dir.display()))?;
    undo.steps.push(Step::RemoveTree(dir.to_path_buf()));
    Ok(())
}

fn register(
    plan: &Planned<'_>,
    registry: &Registry,
    force: bool,
    ctx: &Context,
    undo: &mut Undo,
) -> Result<()> {
    let pilot = match plan.entry.engine.as_str() {
        "podman" => ctx.pilot("podman-pilot")?,
        _ => ctx.pilot("firecracker-pilot")?,
    };
    let fragments_dir = registry.fragments_dir(&plan.name);
    if force && fragments_dir.exists() {
        let old = registry
            .dir()
            .join(format!(".{}.d.replaced.{}", plan.name, std::process::id()));
        std::fs::rename(&fragments_dir, &old)
            .with_context(|| format!("cannot move {}", fragments_dir.display()))?;
        undo.steps.push(Step::Restore(old, fragments_dir.clone()));
    }
    if force {
        keep_replaced(plan, registry, undo)?;
    }
    let registration = Registration {
        registry,
        app: plan.entry.app.clone(),
        pilot,
        yaml: plan.yaml.clone(),
        force,
    };
    registration.commit()?;
    undo.steps.push(Step::Unregister(
        registry.clone(),
        plan.entry.app.clone(),
        plan.entry.engine == "podman",
    ));
    for (file, text) in &plan.fragments {
        let path = fragments_dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Keeps a copy of the registration `--force` replaces, so that a failed import puts it
/// back.
fn keep_replaced(plan: &Planned<'_>, registry: &Registry, undo: &mut Undo) -> Result<()> {
    let config = registry.config_path(&plan.name);
    let backup = if config.is_file() {
        let backup = registry.dir().join(format!(
            ".{}.yaml.replaced.{}",
            plan.name,
            std::process::id()
        ));
        std::fs::copy(&config, &backup)
            .with_context(|| format!("cannot copy {}", config.display()))?;
        Some(backup)
    } else {
        None
    };
    let link = std::fs::read_link(&plan.entry.app).ok();
    undo.steps.push(Step::RestoreFlake {
        config,
        backup,
        app: plan.entry.app.clone(),
        link,
    });
    Ok(())
}

/// One undoable step of an import.
enum Step {
    /// Remove a container image this import loaded.
    Image(Engine, String),
    /// Remove a directory this import created.
    RemoveTree(PathBuf),
    /// Move a replaced directory back (`from` -> `to`); on success, delete `from`.
    Restore(PathBuf, PathBuf),
    /// Put back the YAML and app symlink of a registration `--force` replaced.
    RestoreFlake {
        config: PathBuf,
        backup: Option<PathBuf>,
        app: PathBuf,
        link: Option<PathBuf>,
    },
    /// Remove a registration this import made (podman flake when true).
    Unregister(Registry, PathBuf, bool),
}

/// Undo log of an import: runs its steps in reverse on drop unless finished.
#[derive(Default)]
struct Undo {
    steps: Vec<Step>,
}

impl Undo {
    /// The import succeeded: drop what was replaced and keep everything else.
    fn finish(&mut self) {
        for step in self.steps.drain(..) {
            match step {
                Step::Restore(old, _) => {
                    let _ = std::fs::remove_dir_all(old);
                }
                Step::RestoreFlake {
                    backup: Some(backup),
                    ..
                } => {
                    let _ = std::fs::remove_file(backup);
                }
                _ => {}
            }
        }
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        // Best effort while unwinding an error: the error itself is what gets reported.
        while let Some(step) = self.steps.pop() {
            match step {
                Step::Image(podman, image) => {
                    let _ = podman.image_remove(&image).run();
                }
                Step::RemoveTree(dir) => {
                    let _ = std::fs::remove_dir_all(dir);
                }
                Step::Restore(old, to) => {
                    let _ = std::fs::remove_dir_all(&to);
                    let _ = std::fs::rename(old, to);
                }
                Step::RestoreFlake {
                    config,
                    backup,
                    app,
                    link,
                } => {
                    if let Some(backup) = backup {
                        let _ = std::fs::rename(backup, config);
                    }
                    if let Some(link) = link {
                        let _ = std::fs::remove_file(&app);
                        let _ = std::os::unix::fs::symlink(link, app);
                    }
                }
                Step::Unregister(registry, app, podman) => {
                    let engine = if podman { "podman" } else { "firecracker" };
                    let _ = remove_app(&registry, &app, true, engine);
                }
            }
        }
    }
}
