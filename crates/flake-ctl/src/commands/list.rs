// SPDX-License-Identifier: MIT
//! `flake-ctl list [--user] [--format table|json|csv]`: the registered flakes.
//!
//! A flake whose configuration does not load is still listed (engine `invalid`), its error
//! goes to stderr, and the exit code is 1, so one broken file neither hides the others nor
//! passes unnoticed in scripts.
//!
//! The digest column shows what a flake's content is fixed to: the digest of a pinned
//! container flake (`--container NAME@sha256:...`) and the OCI digest a VM image was made
//! from. JSON adds the current local digest of unpinned container flakes, read with one
//! `podman image inspect` for all of them (null when podman cannot say, e.g. an image is
//! not pulled yet). For a VM flake whose kernel came from an OCI image, JSON names that
//! image and its digest too (`kernel_oci_image`, `kernel_digest`).

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use flakes::config::{Engine, Target};
use flakes::{Flake, Registry};
use serde::Serialize;

use crate::cli::{Format, ListArgs};
use crate::commands::podman::inspect::inspect_all;
use crate::context::Context;
use crate::output::{render, Row};

/// One listed flake. The JSON keys are those of the original (`target`, not
/// `target_app_path`).
#[derive(Debug, Serialize)]
pub struct FlakeRow {
    name: String,
    engine: Option<String>,
    target: Option<String>,
    host_app_path: Option<String>,
    config: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The manifest digest of the flake's image (see the module documentation).
    digest: Option<String>,
    /// The flake's image reference is pinned to `digest`.
    pinned: bool,
    /// For a VM flake whose kernel was taken from an OCI image: that image's reference.
    kernel_oci_image: Option<String>,
    /// And the manifest digest it resolved to.
    kernel_digest: Option<String>,
    /// `digest` is what the flake runs whatever happens to tags (pinned, or a VM image).
    #[serde(skip)]
    fixed_digest: bool,
    /// The image reference of an unpinned container flake, whose local digest JSON shows.
    #[serde(skip)]
    image: Option<String>,
}

impl Row for FlakeRow {
    const HEADERS: &'static [&'static str] = &[
        "NAME",
        "ENGINE",
        "TARGET APP PATH",
        "HOST APP PATH",
        "CONFIG",
        "DIGEST",
    ];

    fn cells(&self) -> Vec<Option<String>> {
        vec![
            Some(self.name.clone()),
            self.engine.clone(),
            self.target.clone(),
            self.host_app_path.clone(),
            Some(self.config.clone()),
            self.fixed_digest.then(|| self.digest.clone()).flatten(),
        ]
    }
}

/// Runs the listing.
pub fn run(args: &ListArgs, ctx: &Context) -> Result<ExitCode> {
    let registry = ctx.settings.registry(Context::mode(args.user));
    // Registrations killed mid-way leave staged files; collect them when nobody registers.
    if let Some(held) = registry.try_lock() {
        registry.clean_staged(&held);
    }
    let mode = Context::mode(args.user);
    let mut rows = rows(&registry, &vm_pilot::images_dir(&ctx.settings, mode))?;
    if args.format == Format::Json {
        local_digests(&mut rows, ctx, mode);
    }
    let title = format!(
        "Flake applications registered in {}",
        registry.dir().display()
    );
    print!(
        "{}",
        render(&rows, args.format, &title, "No application(s) registered")
    );
    let broken: Vec<&String> = rows.iter().filter_map(|r| r.error.as_ref()).collect();
    for error in &broken {
        eprintln!("flake-ctl: {error}");
    }
    Ok(if broken.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Fills in the local digests of unpinned container flakes, with one engine call.
fn local_digests(rows: &mut [FlakeRow], ctx: &Context, mode: flakes::Mode) {
    let mut images: Vec<&str> = rows.iter().filter_map(|r| r.image.as_deref()).collect();
    images.sort_unstable();
    images.dedup();
    let Some(infos) = ctx
        .podman(mode)
        .ok()
        .and_then(|engine| inspect_all(&engine, &images))
    else {
        return;
    };
    let digests: HashMap<String, Option<String>> = images
        .iter()
        .map(|i| i.to_string())
        .zip(infos.into_iter().map(|i| i.digest))
        .collect();
    for row in rows {
        if let Some(image) = &row.image {
            row.digest = digests.get(image).cloned().flatten();
        }
    }
}

fn rows(registry: &Registry, vm_images: &Path) -> Result<Vec<FlakeRow>> {
    let mut rows = Vec::new();
    for name in registry.names()? {
        let config = registry.config_path(&name).display().to_string();
        let row = match registry.load(&name) {
            Ok(flake) => flake_row(&flake, config, vm_images),
            Err(err) => FlakeRow {
                name: name.to_string(),
                engine: Some("invalid".into()),
                target: None,
                host_app_path: None,
                config,
                error: Some(err.to_string()),
                digest: None,
                pinned: false,
                kernel_oci_image: None,
                kernel_digest: None,
                fixed_digest: false,
                image: None,
            },
        };
        rows.push(row);
    }
    Ok(rows)
}

fn flake_row(flake: &Flake, config: String, vm_images: &Path) -> FlakeRow {
    let (target, host) = match &flake.engine {
        Engine::Container(c) => (&c.target, &c.host_app_path),
        Engine::Vm(vm) => (&vm.target, &vm.host_app_path),
    };
    let target = match target {
        Target::ImageEntrypoint => "/".to_string(),
        Target::Program(p) => p.clone(),
        Target::FlakeName => flake.name.to_string(),
    };
    let (target, host) = (Some(target), host.as_ref().map(|p| p.display().to_string()));
    FlakeRow {
        name: flake.name.to_string(),
        engine: Some(flake.engine.label().to_string()),
        target,
        host_app_path: host,
        config,
        error: None,
        digest: None,
        pinned: false,
        kernel_oci_image: None,
        kernel_digest: None,
        fixed_digest: false,
        image: None,
    }
    .with_digest(&flake.engine, vm_images)
}

impl FlakeRow {
    /// The pinned digest of a container flake, or its reference for [`local_digests`];
    /// the OCI digest of a VM flake's image.
    fn with_digest(mut self, engine: &Engine, vm_images: &Path) -> Self {
        match engine {
            Engine::Container(c) => match flakes::image_ref::pinned_digest(&c.image) {
                Some(digest) => {
                    self.digest = Some(digest.to_string());
                    self.pinned = true;
                    self.fixed_digest = true;
                }
                None => self.image = Some(c.image.clone()),
            },
            Engine::Vm(vm) => {
                let record = vm_pilot::image_dir(vm_images, &vm.image)
                    .ok()
                    .and_then(|dir| vm_pilot::oci::read(&dir).ok().flatten());
                let kernel = record.as_ref().and_then(|r| r.kernel.clone());
                self.digest = record.and_then(|r| r.rootfs.digest);
                self.kernel_oci_image = kernel.as_ref().map(|k| k.reference.clone());
                self.kernel_digest = kernel.and_then(|k| k.digest);
                self.fixed_digest = true;
            }
        }
        self
    }
}
