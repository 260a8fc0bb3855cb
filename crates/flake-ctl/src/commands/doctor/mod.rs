// SPDX-License-Identifier: MIT
//! `flake-ctl doctor [--user] [--format table|json] [--boot-probe]`: checks the host for what
//! the registered flakes need, and says how to fix each problem.
//!
//! An admin who meets a broken host should not have to read launcher errors one call at a
//! time. Each check reports `ok`, `problem` or `note`: a missing tool or a broken setting is
//! a `problem` only when a registered flake of the mode needs it (podman for container
//! flakes, Firecracker or QEMU for VM flakes of that monitor), and a `note` otherwise, so
//! that a host which runs only container flakes is not failed for lacking KVM. The exit
//! code is 1 when any check is a `problem`, else 0.
//!
//! The checks reuse what the launchers and the other commands decide, rather than
//! restating it: the flake files go through `validate`'s checker, state directories
//! through [`flakes::instance::user_dir`], instance states through `podman show` and
//! `firecracker show`, and the accelerator choice through [`vm_pilot::qemu::default_accel`].
//! Nothing is changed on the host, except that a state base's per-user directory is made
//! when missing, as the first launch would make it. Without the boot probe, the checks take
//! well under two seconds; the probe is bounded (see [`kvm`]).

mod bounded;
mod host;
mod kvm;
mod world;

use std::process::ExitCode;

use anyhow::Result;
use flakes::config::vm::Vmm;
use flakes::config::{Engine, RunAs};
use flakes::{Flake, Mode};
use serde::Serialize;

use crate::cli::DoctorArgs;
use crate::context::Context;
use crate::output::{render, Row};

/// How a check came out; serialised lower-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine for what the registered flakes need.
    Ok,
    /// Something a registered flake needs is broken or missing.
    Problem,
    /// Worth knowing, but nothing registered depends on it.
    Note,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Problem => "problem",
            Status::Note => "note",
        }
    }

    /// `Problem` when `needed`, else `Note`.
    fn missing(needed: bool) -> Self {
        if needed {
            Status::Problem
        } else {
            Status::Note
        }
    }
}

/// One check's outcome; the JSON keys are part of the interface.
#[derive(Debug, Serialize)]
pub struct Finding {
    check: String,
    status: Status,
    detail: String,
    fix: Option<String>,
}

impl Finding {
    fn ok(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Finding {
            check: check.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn new(
        check: impl Into<String>,
        status: Status,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Finding {
            check: check.into(),
            status,
            detail: detail.into(),
            fix: Some(fix.into()).filter(|f: &String| !f.is_empty() && status != Status::Ok),
        }
    }
}

impl Row for Finding {
    const HEADERS: &'static [&'static str] = &["CHECK", "STATUS", "DETAIL", "FIX"];

    fn cells(&self) -> Vec<Option<String>> {
        vec![
            Some(self.check.clone()),
            Some(self.status.as_str().to_string()),
            Some(self.detail.clone()),
            self.fix.clone(),
        ]
    }
}

/// What the registered flakes of the mode need from the host.
#[derive(Debug, Default)]
pub struct Needs {
    /// The flakes that load.
    flakes: Vec<Flake>,
    /// Some flake runs in a container.
    podman: bool,
    /// Container flakes that run podman as root (reached through sudo by other users).
    root_flakes: Vec<String>,
    /// Some VM flake uses Firecracker.
    firecracker: bool,
    /// Some VM flake uses QEMU.
    qemu: bool,
    /// Some VM flake has an overlay disk (made with `mkfs.ext4`).
    overlay: bool,
}

impl Needs {
    fn of(flakes: Vec<Flake>, mode: Mode) -> Self {
        let mut needs = Needs::default();
        for flake in &flakes {
            match &flake.engine {
                Engine::Container(c) => {
                    needs.podman = true;
                    if mode == Mode::System && c.runtime.runas == RunAs::Root {
                        needs.root_flakes.push(flake.name.to_string());
                    }
                }
                Engine::Vm(vm) => {
                    match vm.runtime.vmm {
                        Vmm::Firecracker => needs.firecracker = true,
                        Vmm::Qemu => needs.qemu = true,
                    }
                    needs.overlay |= vm.runtime.overlay_size.is_some();
                }
            }
        }
        needs.flakes = flakes;
        needs
    }

    /// Some flake runs in a VM.
    fn vm(&self) -> bool {
        self.firecracker || self.qemu
    }
}

/// Runs every check; exit 1 when any is a problem.
pub fn run(args: &DoctorArgs, ctx: &Context) -> Result<ExitCode> {
    let mode = Context::mode(args.user);
    let registry = ctx.settings.registry(mode);
    let flakes = registry
        .names()
        .unwrap_or_default()
        .iter()
        .filter_map(|name| registry.load(name).ok())
        .collect();
    let needs = Needs::of(flakes, mode);
    let mut findings = host::checks(ctx, mode, &needs);
    findings.extend(kvm::checks(ctx, mode, &needs, args.boot_probe));
    findings.extend(world::checks(ctx, mode, &needs));
    let problems = findings
        .iter()
        .filter(|f| f.status == Status::Problem)
        .count();
    let title = format!(
        "Host checks for the flakes in {}: {problems} problem(s)",
        registry.dir().display()
    );
    print!(
        "{}",
        render(&findings, args.format, &title, "Nothing to check")
    );
    Ok(if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Splits a one-line error `what; how to fix it` into its two halves.
fn split_fix(message: &str) -> (String, String) {
    match message.split_once("; ") {
        Some((what, fix)) => (what.to_string(), fix.to_string()),
        None => (message.to_string(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fix_is_split_off_and_dropped_for_ok() {
        assert_eq!(
            split_fix("image x is missing; pull it"),
            ("image x is missing".into(), "pull it".into())
        );
        assert_eq!(split_fix("plain"), ("plain".into(), String::new()));
        assert!(Finding::new("c", Status::Ok, "d", "f").fix.is_none());
        assert!(Finding::new("c", Status::Note, "d", "").fix.is_none());
        assert_eq!(
            Finding::new("c", Status::Problem, "d", "f").fix.as_deref(),
            Some("f")
        );
    }

    #[test]
    fn json_keys_and_status_spelling() {
        let out = render(
            &[Finding::new(
                "podman",
                Status::Problem,
                "gone",
                "install it",
            )],
            crate::cli::Format::Json,
            "",
            "",
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v[0]["check"], "podman");
        assert_eq!(v[0]["status"], "problem");
        assert_eq!(v[0]["detail"], "gone");
        assert_eq!(v[0]["fix"], "install it");
    }
}
