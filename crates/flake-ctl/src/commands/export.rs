// SPDX-License-Identifier: MIT
//! `flake-ctl export`: one tar file that carries flakes to a host without a registry.
//!
//! Per flake it holds `NAME.yaml`, the `NAME.d/` fragments, the app path, and either the
//! container images (each `podman save`d once, however many flakes share it) or the VM
//! image files. Everything is gathered into a private staging directory and hashed first,
//! so the manifest (the first member) can name every member's size and sha256.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use flakes::config::load::load_raw;
use flakes::config::raw::RawFlake;
use flakes::{FlakeName, Mode, Registry};

use super::archive::{self, FlakeEntry, ImageEntry, Manifest, VmImageEntry};
use crate::cli::ExportArgs;
use crate::context::Context;
use vm_pilot::pull::GUEST_CHANNEL_FILE;

/// Members and their source files, collected before the archive is written.
#[derive(Default)]
struct Collect {
    sources: BTreeMap<String, PathBuf>,
    images: Vec<ImageEntry>,
}

/// Writes the archive.
pub fn run(args: &ExportArgs, ctx: &Context) -> Result<ExitCode> {
    let mode = Context::mode(args.user);
    let registry = ctx.settings.registry(mode);
    let out = ctx.absolute(&args.output);
    let parent = out.parent().unwrap_or(Path::new("/"));
    let scratch = Scratch::new(parent)?;
    let mut collect = Collect::default();
    let mut flakes = Vec::new();
    for name in &args.names {
        flakes.push(flake_entry(name, &registry, &mut collect, &scratch, ctx)?);
    }
    let mut members = BTreeMap::new();
    for (name, source) in &collect.sources {
        members.insert(name.clone(), archive::digest_file(source)?);
    }
    let manifest = Manifest {
        version: archive::VERSION,
        flakes,
        container_images: collect.images,
        members,
    };
    let staged_out = scratch.0.join("archive.tar");
    archive::write(&staged_out, &manifest, &collect.sources)?;
    std::fs::rename(&staged_out, &out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "exported {} flake(s) to {}",
        args.names.len(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn flake_entry(
    name: &str,
    registry: &Registry,
    collect: &mut Collect,
    scratch: &Scratch,
    ctx: &Context,
) -> Result<FlakeEntry> {
    let flake = FlakeName::new(name).with_context(|| format!("'{name}' is not a flake name"))?;
    let config = registry.config_path(&flake);
    if !config.is_file() {
        bail!(
            "no flake named '{name}' is registered in {}; see flake-ctl list",
            registry.dir().display()
        );
    }
    let raw = load_raw(&config)?;
    let yaml = format!("flakes/{name}.yaml");
    collect.sources.insert(yaml.clone(), config);
    let fragments = fragments(name, &registry.fragments_dir(&flake), collect)?;
    let (engine, app, vm_image) = match (&raw.container, &raw.vm) {
        (Some(c), _) => {
            save_images(&raw, registry.mode(), collect, scratch, ctx)?;
            ("podman", c.host_app_path.clone(), None)
        }
        (None, Some(v)) => {
            let image = vm_files(name, &raw, collect)?;
            ("firecracker", v.host_app_path.clone(), Some(image))
        }
        (None, None) => bail!("flake '{name}' names neither a container nor a vm"),
    };
    let app = app.with_context(|| format!("flake '{name}' records no host_app_path"))?;
    Ok(FlakeEntry {
        name: name.to_string(),
        engine: engine.to_string(),
        app: PathBuf::from(app),
        yaml,
        fragments,
        vm_image,
    })
}

/// The regular files in `NAME.d/` (links and directories there are left out).
fn fragments(name: &str, dir: &Path, collect: &mut Collect) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type()?.is_file() || archive::check_member_name(&file).is_err() {
            continue;
        }
        let member = format!("flakes/{name}.d/{file}");
        collect.sources.insert(member.clone(), entry.path());
        out.insert(file, member);
    }
    Ok(out)
}

/// `podman save`s each of the flake's images not saved yet.
fn save_images(
    raw: &RawFlake,
    mode: Mode,
    collect: &mut Collect,
    scratch: &Scratch,
    ctx: &Context,
) -> Result<()> {
    let Some(container) = &raw.container else {
        return Ok(());
    };
    let images = container
        .name
        .iter()
        .chain(container.base_container.iter())
        .chain(container.layers.iter().flatten());
    let podman = ctx.podman(mode)?;
    for image in images {
        if collect.images.iter().any(|i| &i.image == image) {
            continue;
        }
        let member = format!("images/{}.tar", collect.images.len());
        let file = scratch.0.join(format!("image{}.tar", collect.images.len()));
        // podman save -o FILE IMAGE
        podman
            .podman()
            .args(["save", "--quiet", "-o"])
            .arg(&file)
            .arg(image)
            .run()
            .with_context(|| format!("cannot save container image {image}"))?;
        collect.sources.insert(member.clone(), file);
        collect.images.push(ImageEntry {
            image: image.clone(),
            member,
        });
    }
    Ok(())
}

/// The VM image files the flake's (merged) configuration names.
fn vm_files(name: &str, raw: &RawFlake, collect: &mut Collect) -> Result<VmImageEntry> {
    let vm = raw.vm.as_ref().context("not a vm flake")?;
    let fc = vm.runtime.as_ref().and_then(|r| r.firecracker.as_ref());
    let paths = [
        ("rootfs", fc.and_then(|f| f.rootfs_image_path.clone())),
        ("kernel", fc.and_then(|f| f.kernel_image_path.clone())),
        ("initrd", fc.and_then(|f| f.initrd_path.clone())),
    ];
    let image = vm
        .name
        .clone()
        .filter(|n| vm_pilot::image_dir(Path::new("/"), n).is_ok())
        .unwrap_or_else(|| name.to_string());
    let mut files = BTreeMap::new();
    for (what, path) in paths {
        let Some(path) = path else { continue };
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "flake '{name}': its {what} {} is missing; pull the VM image first",
                path.display()
            );
        }
        let member = format!("vm/{image}/{what}");
        collect.sources.insert(member.clone(), path);
        files.insert(what.to_string(), member);
    }
    // The marker saying which protocol the guest init speaks sits beside a pulled rootfs.
    let rootfs = fc
        .and_then(|f| f.rootfs_image_path.as_deref())
        .map(Path::new);
    let marker = GUEST_CHANNEL_FILE;
    if let Some(path) = rootfs
        .and_then(Path::parent)
        .map(|d| d.join(marker))
        .filter(|p| p.is_file())
    {
        let member = format!("vm/{image}/{marker}");
        collect.sources.insert(member.clone(), path);
        files.insert(marker.to_string(), member);
    }
    Ok(VmImageEntry { name: image, files })
}

/// A private directory for saved images and the archive being written, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(parent: &Path) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = parent.join(format!(".flake-export.{}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
