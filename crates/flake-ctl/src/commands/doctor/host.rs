// SPDX-License-Identifier: MIT
//! The host's programs: podman and how it is set up, the container init that keeps exit
//! codes 126 and 127, sudo for `runas: root` flakes, and the VM monitors and disk tools.
//! Each is looked up the way the launcher that needs it looks it up.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use flakes::process::resolve;
use flakes::Mode;
use podman_pilot::INIT_PROGRAM;
use vm_pilot::qemu::{device, ChannelChoice, CHANNEL_ENV};

use super::{bounded, split_fix, Finding, Needs, Status};
use crate::context::Context;

/// How long `podman info` may take: it waits on podman's locks, which a hung podman holds.
const PODMAN_BOUND: Duration = Duration::from_secs(10);

/// The programs' checks.
pub fn checks(ctx: &Context, mode: Mode, needs: &Needs) -> Vec<Finding> {
    let mut out = vec![podman(ctx, mode, needs)];
    if mode == Mode::User {
        out.extend(rootless(ctx, needs));
    }
    out.push(tini(ctx, needs));
    out.extend(sudo(ctx, needs));
    out.extend(vm_tools(ctx, needs));
    out
}

/// podman present and answering `podman info`: its runtime, cgroup manager and storage.
fn podman(ctx: &Context, mode: Mode, needs: &Needs) -> Finding {
    const CHECK: &str = "podman";
    let status = Status::missing(needs.podman);
    let engine = match ctx.podman(mode) {
        Ok(engine) => engine,
        Err(err) => {
            let message = flakes::report::one_line(err.as_ref());
            return Finding::new(
                CHECK,
                status,
                message,
                "install podman (apt install podman)",
            );
        }
    };
    let cmd = engine.podman().args(["info", "--format", "json"]).command();
    let out = match bounded::run(cmd, PODMAN_BOUND) {
        Ok(out) if out.succeeded() => out,
        Ok(out) => {
            let detail = match out.ended {
                bounded::Ended::TimedOut => format!(
                    "podman info did not answer within {} s",
                    PODMAN_BOUND.as_secs()
                ),
                bounded::Ended::Exited(_) => format!(
                    "podman info failed: {}",
                    out.said().unwrap_or_else(|| "no message".into())
                ),
            };
            return Finding::new(CHECK, status, detail, PODMAN_FIX);
        }
        Err(err) => return Finding::new(CHECK, status, format!("cannot run podman: {err}"), ""),
    };
    let info: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    let text = |path: &str| {
        info.pointer(path)
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
            .to_string()
    };
    Finding::ok(
        CHECK,
        format!(
            "podman {}: runtime {}, cgroup manager {}, storage driver {}",
            text("/version/Version"),
            text("/host/ociRuntime/name"),
            text("/host/cgroupManager"),
            text("/store/graphDriverName")
        ),
    )
}

/// What usually makes podman fail on a host without systemd.
const PODMAN_FIX: &str = "run the failing podman command by hand; without systemd, set \
    runtime = \"runc\", cgroup_manager = \"cgroupfs\" and events_logger = \"file\" in \
    containers.conf";

/// Rootless podman: the caller's subordinate id ranges and runtime directory.
fn rootless(ctx: &Context, needs: &Needs) -> Vec<Finding> {
    let caller = &ctx.settings.caller;
    if caller.is_root() {
        return vec![Finding::new(
            "rootless",
            Status::Note,
            "root's own podman is not rootless: no subuid/subgid or runtime directory needed",
            "",
        )];
    }
    let mut out: Vec<Finding> = ["/etc/subuid", "/etc/subgid"]
        .into_iter()
        .map(|file| subids(file, &caller.name, caller.uid, needs.podman))
        .collect();
    out.push(runtime_dir(ctx, needs));
    out
}

/// An entry for `user` (by name or uid) in `file`.
fn subids(file: &str, user: &str, uid: u32, needed: bool) -> Finding {
    let check = format!("rootless {file}");
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let uid = uid.to_string();
    let entry = text.lines().find(|l| {
        l.split(':')
            .next()
            .is_some_and(|who| who == user || who == uid)
    });
    match entry {
        Some(line) => Finding::ok(check, format!("{file} has {line}")),
        None => Finding::new(
            check,
            Status::missing(needed),
            format!("{file} has no range for {user}, so rootless podman cannot map its users"),
            format!("add one, e.g. usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}"),
        ),
    }
}

/// `$XDG_RUNTIME_DIR`: set, and safe as the launchers demand (the caller's, mode 0700).
fn runtime_dir(ctx: &Context, needs: &Needs) -> Finding {
    const CHECK: &str = "runtime directory";
    let status = Status::missing(needs.podman);
    let uid = ctx.settings.caller.uid;
    match (
        &ctx.settings.caller.runtime_dir,
        std::env::var_os(flakes::host::RUNTIME_DIR_ENV),
    ) {
        (Some(dir), _) => Finding::ok(CHECK, format!("$XDG_RUNTIME_DIR is {}", dir.display())),
        (None, Some(given)) => Finding::new(
            CHECK,
            status,
            format!(
                "$XDG_RUNTIME_DIR ({}) is not a directory of yours with mode 0700, so instance \
                 state goes to the shared /tmp/flakes",
                PathBuf::from(given).display()
            ),
            format!("make it yours and private: chown {uid} DIR && chmod 0700 DIR"),
        ),
        (None, None) => Finding::new(
            CHECK,
            status,
            "$XDG_RUNTIME_DIR is not set: rootless podman and the instance state fall back to /tmp",
            format!(
                "log in through a session that sets it, or create /run/user/{uid} (owner you, \
                 mode 0700) and export XDG_RUNTIME_DIR=/run/user/{uid}"
            ),
        ),
    }
}

/// The static init that maps a missing target to 127 and an unrunnable one to 126, found
/// as podman-pilot finds it.
fn tini(ctx: &Context, needs: &Needs) -> Finding {
    const CHECK: &str = "tini";
    match resolve(INIT_PROGRAM, ctx.path_env.as_deref()) {
        Ok(path) => Finding::ok(CHECK, format!("{} is the containers' init", path.display())),
        Err(_) => Finding::new(
            CHECK,
            Status::missing(needs.podman),
            format!(
                "{INIT_PROGRAM} is not on PATH: podman's own init exits 1 where a missing or \
                 unrunnable target should give 127 or 126"
            ),
            "install it (apt install tini)",
        ),
    }
}

/// sudo for system flakes that run podman as root when other users call them.
fn sudo(ctx: &Context, needs: &Needs) -> Option<Finding> {
    const CHECK: &str = "sudo";
    if needs.root_flakes.is_empty() {
        return None;
    }
    let flakes = needs.root_flakes.join(", ");
    let podman = resolve("podman", ctx.path_env.as_deref())
        .unwrap_or_else(|_| PathBuf::from("/usr/bin/podman"));
    let rule = format!("USER ALL=(root) NOPASSWD: {}", podman.display());
    let Ok(sudo) = resolve("sudo", ctx.path_env.as_deref()) else {
        let status = Status::missing(!ctx.settings.caller.is_root());
        return Some(Finding::new(
            CHECK,
            status,
            format!(
                "sudo is not installed: users other than root cannot call {flakes} (runas: root)"
            ),
            format!("install sudo and add a sudoers rule {rule}"),
        ));
    };
    if ctx.settings.caller.is_root() {
        return Some(Finding::new(
            CHECK,
            Status::Note,
            format!("users other than root reach podman for {flakes} (runas: root) through sudo"),
            format!(
                "give each such user a sudoers rule {rule}; check one with sudo -l -U USER {}",
                podman.display()
            ),
        ));
    }
    Some(sudo_probe(&sudo, &podman, &flakes, &rule))
}

/// Asks sudo, without a prompt, whether the caller may run podman as root.
fn sudo_probe(
    sudo: &std::path::Path,
    podman: &std::path::Path,
    flakes: &str,
    rule: &str,
) -> Finding {
    let mut cmd = std::process::Command::new(sudo);
    cmd.args(["-n", "-l", "--"]).arg(podman);
    match bounded::run(cmd, PODMAN_BOUND) {
        Ok(out) if out.succeeded() => Finding::ok(
            "sudo",
            format!(
                "sudo lets you run {} as root for {flakes}",
                podman.display()
            ),
        ),
        Ok(out) => Finding::new(
            "sudo",
            Status::Problem,
            format!(
                "sudo does not let you run {} as root without a password, which {flakes} \
                 (runas: root) need{}",
                podman.display(),
                out.said().map(|s| format!(" ({s})")).unwrap_or_default()
            ),
            format!("ask the admin for a sudoers rule {rule}"),
        ),
        Err(err) => Finding::new(
            "sudo",
            Status::Problem,
            format!("cannot run sudo: {err}"),
            "",
        ),
    }
}

/// The VM monitors and disk tools, on the launcher's search path.
fn vm_tools(ctx: &Context, needs: &Needs) -> Vec<Finding> {
    let path = tools_path(ctx.path_env.clone());
    let vsock = std::env::var(CHANNEL_ENV)
        .ok()
        .and_then(|v| ChannelChoice::parse(&v).ok())
        == Some(ChannelChoice::Vsock);
    let mut out = vec![
        program(&path, "firecracker", needs.firecracker, FIRECRACKER_FIX),
        program(
            &path,
            "qemu-system-x86_64",
            needs.qemu,
            "apt install qemu-system-x86",
        ),
        program(&path, "mkfs.ext4", needs.overlay, "apt install e2fsprogs"),
        program(
            &path,
            "debugfs",
            false,
            "apt install e2fsprogs (firecracker pull needs it)",
        ),
    ];
    out.push(match device::find(&path) {
        Some(found) => Finding::ok(device::PROGRAM, found.display().to_string()),
        None => Finding::new(
            device::PROGRAM,
            Status::missing(needs.qemu && vsock),
            format!(
                "{} is not installed; QEMU VMs use it only with {CHANNEL_ENV}=vsock",
                device::PROGRAM
            ),
            device::INSTALL_HINT,
        ),
    });
    out
}

const FIRECRACKER_FIX: &str = "install the firecracker binary (a release from \
    github.com/firecracker-microvm/firecracker) on PATH, or register the VM flakes with --vmm qemu";

/// One program, found or missing.
fn program(path: &OsString, name: &str, needed: bool, fix: &str) -> Finding {
    match resolve(name, Some(path)) {
        Ok(found) => Finding::ok(name, found.display().to_string()),
        Err(err) => {
            let (what, _) = split_fix(&err.to_string());
            Finding::new(name, Status::missing(needed), what, fix)
        }
    }
}

/// The caller's `PATH` with the sbin directories after it, as firecracker-pilot searches.
fn tools_path(path: Option<OsString>) -> OsString {
    let mut path = path.unwrap_or_default();
    path.push(":/usr/local/sbin:/usr/sbin:/sbin");
    path
}
