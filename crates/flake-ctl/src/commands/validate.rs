// SPDX-License-Identifier: MIT
//! `flake-ctl validate [--user] [--format table|json] [NAME|FILE]...`: the launcher's checks
//! on flake files and their `NAME.d/` fragments, without launching anything.
//!
//! The files go through the loader the launchers use ([`flakes::config::check`]), so a file
//! that validates here loads there. On top of that, what a launch would find missing only
//! when it is already under way is checked now: the container images (base and layers too)
//! in the engine's storage, the VM's kernel, rootfs and initrd files (present, and
//! changeable by nobody but root and the caller: [`vm_pilot::trust`]), the record of a VM
//! image made from an OCI image (sound, and naming a program for `target_app_path: /`),
//! and the include files.
//! Every problem is reported, each with the file to fix and, where known, its line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use flakes::config::check::{check_flake, Checked, Problem};
use flakes::config::{Engine, Flake};
use flakes::names::FlakeName;
use flakes::{Mode, Registry};
use serde::Serialize;

use crate::cli::ValidateArgs;
use crate::context::Context;
use crate::output::{render, Row};

/// One reported problem; the JSON keys are part of the interface.
#[derive(Debug, Serialize)]
pub struct ProblemRow {
    file: String,
    line: Option<usize>,
    flake: String,
    pub(crate) problem: String,
}

impl Row for ProblemRow {
    const HEADERS: &'static [&'static str] = &["FILE", "LINE", "FLAKE", "PROBLEM"];

    fn cells(&self) -> Vec<Option<String>> {
        vec![
            Some(self.file.clone()),
            self.line.map(|l| l.to_string()),
            Some(self.flake.clone()),
            Some(self.problem.clone()),
        ]
    }
}

/// Runs the check; exit 1 when anything is wrong.
pub fn run(args: &ValidateArgs, ctx: &Context) -> Result<ExitCode> {
    let mode = Context::mode(args.user);
    let registry = ctx.settings.registry(mode);
    let targets = if args.flakes.is_empty() {
        registry
            .names()?
            .into_iter()
            .map(|name| Target::Flake(registry.config_path(&name), name))
            .collect()
    } else {
        args.flakes
            .iter()
            .map(|arg| target(arg, &registry, ctx))
            .collect::<Vec<_>>()
    };
    let checker = Checker {
        podman: ctx
            .podman(mode)
            .map_err(|err| flakes::report::one_line(err.as_ref())),
        mode,
    };
    let mut rows = Vec::new();
    for target in &targets {
        rows.extend(checker.target(target));
    }
    let title = format!("Checked {} flake(s)", targets.len());
    print!(
        "{}",
        render(&rows, args.format, &title, "No problems found")
    );
    Ok(if rows.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What one command-line argument names.
pub(crate) enum Target {
    /// A flake's main file, with the flake's name.
    Flake(PathBuf, FlakeName),
    /// An argument that names nothing checkable.
    Unknown(String, String),
}

/// A path (it has a `/` or ends in `.yaml`/`.yml`) is a file; anything else a registered name.
fn target(arg: &str, registry: &Registry, ctx: &Context) -> Target {
    let looks_like_file = arg.contains('/') || arg.ends_with(".yaml") || arg.ends_with(".yml");
    if !looks_like_file {
        return match FlakeName::new(arg) {
            Ok(name) if registry.contains(&name) => {
                Target::Flake(registry.config_path(&name), name)
            }
            Ok(_) => Target::Unknown(
                arg.into(),
                format!(
                    "no flake {arg} is registered in {}; give a registered name or a file path",
                    registry.dir().display()
                ),
            ),
            Err(err) => Target::Unknown(arg.into(), err.to_string()),
        };
    }
    let path = owner(&ctx.absolute(Path::new(arg)));
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    match FlakeName::new(stem) {
        Ok(name) => Target::Flake(path, name),
        Err(err) => Target::Unknown(arg.into(), format!("the file name is no flake name: {err}")),
    }
}

/// A fragment `NAME.d/X.yaml` stands for its flake `NAME.yaml`: it is only meaningful merged.
fn owner(path: &Path) -> PathBuf {
    let main = path
        .parent()
        .filter(|dir| dir.extension().is_some_and(|e| e == "d"))
        .map(|dir| dir.with_extension("yaml"))
        .filter(|main| main.is_file());
    main.unwrap_or_else(|| path.to_path_buf())
}

/// Checks targets against the engines of one mode (`doctor` checks the registered flakes
/// with it too).
pub(crate) struct Checker {
    /// The engine that holds the images, or why it cannot be used.
    pub(crate) podman: Result<podman_pilot::Engine, String>,
    pub(crate) mode: Mode,
}

impl Checker {
    pub(crate) fn target(&self, target: &Target) -> Vec<ProblemRow> {
        match target {
            Target::Unknown(arg, why) => vec![ProblemRow {
                file: arg.clone(),
                line: None,
                flake: arg.clone(),
                problem: why.clone(),
            }],
            Target::Flake(path, name) => {
                let checked = check_flake(name.clone(), path);
                let mut problems = checked.problems.clone();
                if let Some(flake) = &checked.flake {
                    problems.extend(self.references(flake, &checked));
                }
                problems
                    .into_iter()
                    .map(|p| ProblemRow {
                        file: p.file.display().to_string(),
                        line: p.line,
                        flake: name.to_string(),
                        problem: p.problem,
                    })
                    .collect()
            }
        }
    }

    /// What the flake refers to outside its files and that a launch would miss.
    fn references(&self, flake: &Flake, checked: &Checked) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut missing = |text: &str, problem: String| {
            let (file, line) = checked.locate(text);
            problems.push(Problem {
                file,
                line,
                problem,
            });
        };
        for (key, paths) in [
            ("include.tar", &flake.include.tar),
            ("include.path", &flake.include.path),
        ] {
            for path in paths.iter().filter(|p| !p.exists()) {
                let shown = path.display().to_string();
                missing(
                    &shown,
                    format!("{key} {shown} does not exist; create it or remove the entry"),
                );
            }
        }
        match &flake.engine {
            Engine::Container(c) => {
                let images = std::iter::once(&c.image).chain(&c.base).chain(&c.layers);
                for image in images {
                    if let Some(problem) = self.container_image(image) {
                        missing(image, problem);
                    }
                }
            }
            Engine::Vm(vm) => {
                let rt = &vm.runtime;
                let files = [
                    ("kernel", Some(&rt.kernel)),
                    ("rootfs", Some(&rt.rootfs)),
                    ("initrd", rt.initrd.as_ref()),
                ];
                for (what, path) in files {
                    if let Some(path) = path.filter(|p| !p.is_file()) {
                        let shown = path.display().to_string();
                        missing(
                            &shown,
                            format!(
                                "the {what} {shown} of VM image {} is missing; pull the image again (flake-ctl firecracker pull --name {} ... --force)",
                                vm.image, vm.image
                            ),
                        );
                    }
                }
                // What another user may have changed refuses the launch.
                for (what, path) in vm_pilot::trust::vm_files(vm) {
                    if let Err(err) = vm_pilot::trust::check(what, &path) {
                        missing(&path.display().to_string(), err.to_string());
                    }
                }
                // What the image's record gives a call (an OCI-made image), as the launch
                // reads it.
                let command =
                    vm_pilot::entry::GuestCommand::for_flake(vm, flake.name.as_str(), &flake.path);
                if let Err(err) = command {
                    let at = match err {
                        vm_pilot::entry::EntryError::NoEntry { .. } => "target_app_path".into(),
                        _ => rt.rootfs.display().to_string(),
                    };
                    missing(&at, err.to_string());
                }
            }
        }
        problems
    }

    /// A problem when `image` is not in the engine's storage (or cannot be asked for).
    fn container_image(&self, image: &str) -> Option<String> {
        let podman = match &self.podman {
            Ok(podman) => podman,
            Err(err) => return Some(format!("cannot check image {image}: {err}")),
        };
        match podman.image_exists(image).succeeds() {
            Ok(true) => None,
            Ok(false) => Some(format!(
                "container image {image} is missing; pull it with flake-ctl podman{} pull --uri {image}",
                if self.mode == Mode::User { " --user" } else { "" }
            )),
            Err(err) => Some(format!("cannot check image {image}: {err}")),
        }
    }
}
