// SPDX-License-Identifier: MIT
//! What flake-pilot keeps on the host: the flakes directory, the instance state bases, the
//! registered flakes (their files, images and app links) and leftover instances.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use flakes::config::Engine;
use flakes::register::PILOT_NAMES;
use flakes::{Flake, Mode};

use super::{split_fix, Finding, Needs, Status};
use crate::commands::validate::{Checker, Target};
use crate::commands::{firecracker, podman};
use crate::context::Context;

/// The checks of what is on disk.
pub fn checks(ctx: &Context, mode: Mode, needs: &Needs) -> Vec<Finding> {
    let mut out = vec![flakes_dir(ctx, mode)];
    out.extend(state_dirs(ctx, mode, needs));
    out.extend(flake_files(ctx, mode));
    out.extend(needs.flakes.iter().filter_map(app_link));
    out.extend(stale_instances(ctx, mode));
    out
}

/// The registration directory: others must not be able to add flakes to it.
fn flakes_dir(ctx: &Context, mode: Mode) -> Finding {
    const CHECK: &str = "flakes directory";
    let dir = ctx.settings.flakes_dir(mode);
    let shown = dir.display();
    let meta = match std::fs::metadata(&dir) {
        Ok(meta) => meta,
        Err(_) => {
            return Finding::ok(
                CHECK,
                format!("{shown} does not exist yet; the first registration makes it"),
            )
        }
    };
    let owner = if mode == Mode::System {
        0
    } else {
        ctx.settings.caller.uid
    };
    if !meta.is_dir() {
        return Finding::new(
            CHECK,
            Status::Problem,
            format!("{shown} is not a directory"),
            "move it away, or set flakes_dir to a directory",
        );
    }
    if meta.mode() & 0o022 != 0 || (meta.uid() != owner && meta.uid() != 0) {
        return Finding::new(
            CHECK,
            Status::Problem,
            format!(
                "{shown} (uid {}, mode {:o}) lets others register flakes that run for whoever \
                 calls them",
                meta.uid(),
                meta.mode() & 0o7777
            ),
            format!("chown {owner} {shown} && chmod go-w {shown}"),
        );
    }
    Finding::ok(CHECK, format!("{shown}, mode {:o}", meta.mode() & 0o7777))
}

/// The instance state bases, checked as the launchers check them before every launch.
fn state_dirs(ctx: &Context, mode: Mode, needs: &Needs) -> Vec<Finding> {
    let podman_ids = ctx.settings.podman_ids_dir(mode);
    let vm_ids = ctx.settings.firecracker_ids_dir();
    if vm_ids == podman_ids {
        return vec![state_dir(ctx, &podman_ids, needs.podman || needs.vm())];
    }
    vec![
        state_dir(ctx, &podman_ids, needs.podman),
        state_dir(ctx, &vm_ids, needs.vm()),
    ]
}

/// One state base: missing (made at the first launch) or safe for the caller's instances.
fn state_dir(ctx: &Context, base: &Path, needed: bool) -> Finding {
    let check = format!("state {}", base.display());
    if std::fs::symlink_metadata(base).is_err() {
        return Finding::ok(check, "does not exist yet; the first launch makes it");
    }
    let uid = ctx.settings.caller.uid;
    match flakes::instance::user_dir(base, uid) {
        Ok(dir) => Finding::ok(
            check,
            format!("instances of uid {uid} go to {}", dir.path().display()),
        ),
        Err(err) => {
            let (what, fix) = split_fix(&err.to_string());
            Finding::new(check, Status::missing(needed), what, fix)
        }
    }
}

/// Every registered flake through `validate`'s checks: its files, images and includes.
fn flake_files(ctx: &Context, mode: Mode) -> Vec<Finding> {
    let registry = ctx.settings.registry(mode);
    let checker = Checker {
        podman: ctx
            .podman(mode)
            .map_err(|err| flakes::report::one_line(err.as_ref())),
        mode,
    };
    let mut out = Vec::new();
    for name in registry.names().unwrap_or_default() {
        let check = format!("flake {name}");
        let target = Target::Flake(registry.config_path(&name), name);
        let problems = checker.target(&target);
        if problems.is_empty() {
            out.push(Finding::ok(
                &check,
                "its files, images and includes are in place",
            ));
        }
        for row in problems {
            let (what, fix) = split_fix(&row.problem);
            out.push(Finding::new(&check, Status::Problem, what, fix));
        }
    }
    out
}

/// The flake's app path: a symlink to an installed launcher.
fn app_link(flake: &Flake) -> Option<Finding> {
    let (app, engine) = match &flake.engine {
        Engine::Container(c) => (c.host_app_path.as_ref()?, "podman"),
        Engine::Vm(vm) => (vm.host_app_path.as_ref()?, "firecracker"),
    };
    let check = format!("app {}", app.display());
    let reregister = format!(
        "register it again with flake-ctl {engine} register ... --app {} --force, or remove it \
         with flake-ctl {engine} remove --app {} --force",
        app.display(),
        app.display()
    );
    let Ok(meta) = std::fs::symlink_metadata(app) else {
        let what = format!("flake {} has no app link at {}", flake.name, app.display());
        return Some(Finding::new(check, Status::Problem, what, reregister));
    };
    if !meta.file_type().is_symlink() {
        let what = format!("{} is not a link to a launcher", app.display());
        return Some(Finding::new(check, Status::Problem, what, reregister));
    }
    let target = std::fs::read_link(app).unwrap_or_default();
    Some(link_target(check, app, &target, reregister))
}

/// A link's target: an existing launcher.
fn link_target(check: String, app: &Path, target: &Path, reregister: String) -> Finding {
    let is_pilot = target
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| PILOT_NAMES.contains(&n));
    let shown = target.display();
    if !app.exists() {
        let what = format!("{} is dangling: {shown} is gone", app.display());
        let fix =
            format!("reinstall flake-pilot (make install) so {shown} exists, or {reregister}");
        return Finding::new(check, Status::Problem, what, fix);
    }
    if !is_pilot {
        let what = format!("{} points to {shown}, which is no launcher", app.display());
        return Finding::new(check, Status::Problem, what, reregister);
    }
    Finding::ok(check, format!("links to {shown}"))
}

/// Instances whose container or VMM is gone: harmless (the next call starts afresh), but
/// worth knowing after a crash.
fn stale_instances(ctx: &Context, mode: Mode) -> Vec<Finding> {
    let podman_ids = ctx.settings.podman_ids_dir(mode);
    let vm_ids = ctx.settings.firecracker_ids_dir();
    let mut out: Vec<Finding> = podman::show::rows(ctx, mode)
        .into_iter()
        .filter(|row| row.status == "stale")
        .map(|row| stale(&row.name, &row.user, "its container is gone", &podman_ids))
        .collect();
    out.extend(
        firecracker::show::rows(ctx)
            .into_iter()
            .filter(|row| row.status == "stale")
            .map(|row| {
                stale(
                    &row.name,
                    &row.user,
                    "its VMM is gone; its console log is kept",
                    &vm_ids,
                )
            }),
    );
    if out.is_empty() {
        out.push(Finding::ok("instances", "no stale instance"));
    }
    out
}

fn stale(name: &str, user: &str, why: &str, base: &Path) -> Finding {
    Finding::new(
        format!("instance {name}"),
        Status::Note,
        format!("stale instance of {user}: {why}"),
        format!(
            "nothing needed: the next call starts it afresh; or remove its directory below {}",
            base.display()
        ),
    )
}
