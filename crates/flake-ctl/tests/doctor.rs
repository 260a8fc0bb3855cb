// SPDX-License-Identifier: MIT
//! `flake-ctl doctor` against the real host: a clean private flake world passes and lists
//! every check; a dangling app link, a flake whose container image or VM image files are
//! missing, and an instance state base others may write to each fail with a fix; the JSON
//! form parses with its documented keys; the KVM boot probe ends within its bound.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use util::{unique, World, IMAGE};

/// The boot probe's bound (`PROBE_BOUND` in the doctor), plus QEMU's start and the rest of
/// the checks on a loaded machine.
const PROBE_LIMIT: Duration = Duration::from_secs(4 + 4);

/// `doctor --format json ARGS`: exit code, findings and how long it took.
fn doctor(world: &World, args: &[&str]) -> (i32, Vec<Value>, Duration) {
    let mut all = vec!["doctor", "--format", "json"];
    all.extend(args);
    let run = world.ctl(&all);
    let findings: Value = serde_json::from_str(&run.stdout())
        .unwrap_or_else(|e| panic!("doctor printed no JSON array ({e}):{run}"));
    let findings = findings.as_array().unwrap().clone();
    for finding in &findings {
        let mut keys: Vec<&str> = finding
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["check", "detail", "fix", "status"], "{finding}");
        let status = finding["status"].as_str().unwrap();
        assert!(["ok", "problem", "note"].contains(&status), "{finding}");
        if status == "problem" {
            let fix = finding["fix"].as_str().unwrap_or_default();
            assert!(!fix.is_empty(), "a problem without a fix: {finding}");
        }
    }
    (run.code(), findings, run.elapsed)
}

/// The findings of check `check`.
fn of<'a>(findings: &'a [Value], check: &str) -> Vec<&'a Value> {
    findings.iter().filter(|f| f["check"] == check).collect()
}

/// The findings whose status is `problem`.
fn problems(findings: &[Value]) -> Vec<&Value> {
    findings
        .iter()
        .filter(|f| f["status"] == "problem")
        .collect()
}

/// A world with one registered container flake on the test image; its app path.
fn container_world(name: &str) -> (World, PathBuf) {
    let world = World::new();
    let app = world.register(name, "/bin/true", &[]);
    (world, app)
}

#[test]
fn clean_world_passes_and_lists_every_check() {
    require_podman!();
    let name = unique("doctor-clean");
    let (world, app) = container_world(&name);
    let (code, findings, elapsed) = doctor(&world, &[]);
    assert_eq!(code, 0, "{findings:#?}");
    assert!(problems(&findings).is_empty(), "{findings:#?}");
    let ids = world.path("ids").display().to_string();
    let app_check = format!("app {}", app.display());
    let flake_check = format!("flake {name}");
    for check in [
        "podman",
        "tini",
        "sudo",
        "firecracker",
        "qemu-system-x86_64",
        "vhost-device-vsock",
        "mkfs.ext4",
        "debugfs",
        "kvm",
        "guest boot",
        "flakes directory",
        &format!("state {ids}"),
        &flake_check,
        &app_check,
        "instances",
    ] {
        assert_eq!(of(&findings, check).len(), 1, "no {check}: {findings:#?}");
    }
    assert_eq!(of(&findings, "podman")[0]["status"], "ok");
    assert_eq!(of(&findings, &app_check)[0]["status"], "ok");
    // Only container flakes are registered: missing VM tools are notes, not failures.
    for check in ["firecracker", "kvm", "guest boot"] {
        assert_ne!(of(&findings, check)[0]["status"], "problem");
    }
    eprintln!("doctor took {elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "doctor took {elapsed:?}");
    // The table form says the same for people.
    let table = world.ctl(&["doctor"]);
    table.success();
    assert!(table.stdout().contains("0 problem(s)"), "{table}");
}

#[test]
fn dangling_app_link_is_a_problem_with_a_fix() {
    require_podman!();
    let (world, app) = container_world(&unique("doctor-link"));
    let check = format!("app {}", app.display());
    // The launcher the link points to is gone.
    std::fs::remove_file(&app).unwrap();
    std::os::unix::fs::symlink(world.path("gone/podman-pilot"), &app).unwrap();
    let (code, findings, _) = doctor(&world, &[]);
    assert_eq!(code, 1, "{findings:#?}");
    let found = of(&findings, &check);
    assert_eq!(found[0]["status"], "problem", "{findings:#?}");
    assert!(found[0]["detail"].as_str().unwrap().contains("dangling"));
    assert!(found[0]["fix"].as_str().unwrap().contains("--force"));
    // The link itself is gone.
    std::fs::remove_file(&app).unwrap();
    let (code, findings, _) = doctor(&world, &[]);
    assert_eq!(code, 1, "{findings:#?}");
    assert_eq!(of(&findings, &check)[0]["status"], "problem");
}

#[test]
fn missing_container_image_is_a_problem_with_a_fix() {
    require_podman!();
    let name = unique("doctor-image");
    let (world, _) = container_world(&name);
    let file = world.flakes.join(format!("{name}.yaml"));
    let missing = format!("localhost/{name}-gone:latest");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(IMAGE), "{text}");
    std::fs::write(&file, text.replace(IMAGE, &missing)).unwrap();
    let (code, findings, _) = doctor(&world, &[]);
    assert_eq!(code, 1, "{findings:#?}");
    let found = of(&findings, &format!("flake {name}"));
    assert_eq!(found.len(), 1, "{findings:#?}");
    assert_eq!(found[0]["status"], "problem");
    assert!(found[0]["detail"].as_str().unwrap().contains(&missing));
    assert!(found[0]["fix"].as_str().unwrap().contains("pull --uri"));
}

/// A QEMU VM flake on `kernel` and `rootfs`.
fn qemu_flake(world: &World, name: &str, kernel: &Path, rootfs: &Path) {
    let text = format!(
        "vm:\n  name: {name}\n  target_app_path: /bin/true\n  runtime:\n    vmm: qemu\n    \
         firecracker:\n      rootfs_image_path: {}\n      kernel_image_path: {}\n",
        rootfs.display(),
        kernel.display()
    );
    std::fs::create_dir_all(&world.flakes).unwrap();
    std::fs::write(world.flakes.join(format!("{name}.yaml")), text).unwrap();
}

#[test]
fn missing_vm_image_files_are_a_problem_with_a_fix() {
    let world = World::new();
    let name = unique("doctor-vm");
    let gone = world.path("images/gone");
    qemu_flake(&world, &name, &gone.join("kernel"), &gone.join("rootfs"));
    let (code, findings, _) = doctor(&world, &[]);
    assert_eq!(code, 1, "{findings:#?}");
    let found = of(&findings, &format!("flake {name}"));
    assert_eq!(found.len(), 2, "kernel and rootfs: {findings:#?}");
    for finding in found {
        assert_eq!(finding["status"], "problem");
        assert!(finding["fix"]
            .as_str()
            .unwrap()
            .contains("firecracker pull"));
    }
}

#[test]
fn state_dir_writable_by_others_is_a_problem_with_a_fix() {
    require_podman!();
    let (world, _) = container_world(&unique("doctor-state"));
    let ids = world.path("ids");
    std::fs::create_dir_all(&ids).unwrap();
    std::fs::set_permissions(&ids, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, findings, _) = doctor(&world, &[]);
    assert_eq!(code, 1, "{findings:#?}");
    let found = of(&findings, &format!("state {}", ids.display()));
    assert_eq!(found[0]["status"], "problem", "{findings:#?}");
    assert!(found[0]["detail"]
        .as_str()
        .unwrap()
        .contains("writable by others"));
    assert!(found[0]["fix"].as_str().unwrap().contains("chmod"));
    // Group-writable is as bad: a member of the group could swap what is in it.
    std::fs::set_permissions(&ids, std::fs::Permissions::from_mode(0o770)).unwrap();
    let (code, _, _) = doctor(&world, &[]);
    assert_eq!(code, 1);
    // Fixed as the message says, the world is clean again.
    std::fs::set_permissions(&ids, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (code, findings, _) = doctor(&world, &[]);
    assert_eq!(code, 0, "{findings:#?}");
}

#[test]
fn kvm_boot_probe_finishes_within_its_bound() {
    let Some(fixtures) = std::env::var_os("FLAKE_VM_FIXTURES").map(PathBuf::from) else {
        util::skip("needs FLAKE_VM_FIXTURES (a guest kernel) for the boot probe");
        return;
    };
    let world = World::new();
    let name = unique("doctor-kvm");
    qemu_flake(
        &world,
        &name,
        &fixtures.join("kernel/bzImage"),
        &fixtures.join("rootfs.ext4"),
    );
    let (_, findings, elapsed) = doctor(&world, &["--boot-probe"]);
    eprintln!("doctor with the boot probe took {elapsed:?}");
    assert!(elapsed < PROBE_LIMIT, "took {elapsed:?}: {findings:#?}");
    let boot = of(&findings, "guest boot");
    assert_eq!(boot.len(), 1, "{findings:#?}");
    let detail = boot[0]["detail"].as_str().unwrap();
    eprintln!("guest boot: {} ({detail})", boot[0]["status"]);
    if detail.starts_with("not probed") {
        util::note_skip(&format!("the boot probe did not run here: {detail}"));
    }
    // A QEMU flake falls back to emulation, so a failed KVM probe is only a note for it.
    assert_ne!(boot[0]["status"], "problem", "{findings:#?}");
}

/// The unprivileged test user (`ROOTLESS_USER=flaketest scripts/setup-host.sh`).
const USER: &str = "flaketest";

/// Runs `script` as [`USER`] with a login environment; `None` (and a visible skip) when
/// there is no such user.
fn as_user(script: &str) -> Option<std::process::Output> {
    let exists = std::process::Command::new("id")
        .arg(USER)
        .output()
        .is_ok_and(|o| o.status.success());
    if !exists {
        util::skip(&format!(
            "no user {USER} (run ROOTLESS_USER={USER} scripts/setup-host.sh)"
        ));
        return None;
    }
    let out = std::process::Command::new("su")
        .args(["-", USER, "-c", script])
        .output()
        .unwrap();
    Some(out)
}

/// A directory every user can read, with flake-ctl in `bin/` (the build tree may be
/// private) and a system flake world whose one flake runs podman as root.
fn shared_world(flake: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("flake-doctor-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (bin, flakes) = (dir.path().join("bin"), dir.path().join("flakes"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&flakes).unwrap();
    std::fs::copy(util::bin_dir().join("flake-ctl"), bin.join("flake-ctl")).unwrap();
    let yaml = format!("container:\n  name: {IMAGE}\n  runtime:\n    runas: root\n");
    std::fs::write(flakes.join(format!("{flake}.yaml")), yaml).unwrap();
    let config = dir.path().join("flakes.yml");
    std::fs::write(
        &config,
        format!("generic:\n  flakes_dir: {}\n", flakes.display()),
    )
    .unwrap();
    (dir, bin, config)
}

/// What root's sudo says of `USER` running `podman` as root without a password.
fn sudo_allows(podman: &Path) -> bool {
    std::process::Command::new("sudo")
        .args(["-n", "-l", "-U", USER, "--"])
        .arg(podman)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The sudo finding of `doctor` run by [`USER`] on the system flakes of `config`, with
/// `path_dir` first on `PATH`.
fn sudo_finding_as_user(ctl: &Path, config: &Path, path_dir: Option<&Path>) -> Option<Value> {
    let path = path_dir.map_or(String::new(), |d| format!("PATH={}:$PATH ", d.display()));
    let script = format!(
        "{path}FLAKES_CONFIG={} {} doctor --format json",
        config.display(),
        ctl.display()
    );
    let out = as_user(&script)?;
    let findings: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    let sudo = findings
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "sudo")
        .cloned();
    Some(sudo.unwrap_or_else(|| panic!("no sudo check: {findings:#}")))
}

#[test]
fn sudo_rule_for_runas_root_flakes_is_probed_for_other_users() {
    let Ok(podman) = std::process::Command::new("sh")
        .args(["-c", "command -v podman"])
        .output()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
    else {
        util::skip("no podman");
        return;
    };
    let (dir, bin, config) = shared_world(&unique("doctor-sudo"));
    let ctl = bin.join("flake-ctl");
    // The podman on PATH, as the launcher would call it through sudo.
    let Some(found) = sudo_finding_as_user(&ctl, &config, None) else {
        return;
    };
    let want = if sudo_allows(&podman) {
        "ok"
    } else {
        "problem"
    };
    assert_eq!(found["status"], want, "{found:#}");
    // A podman binary that no sudoers rule names: the probe, asked without a prompt,
    // must say so and name the rule.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(&podman, other.join("podman")).unwrap();
    assert!(
        !sudo_allows(&other.join("podman")),
        "a rule covers the copy"
    );
    let found = sudo_finding_as_user(&ctl, &config, Some(&other)).unwrap();
    assert_eq!(found["status"], "problem", "{found:#}");
    let fix = found["fix"].as_str().unwrap();
    assert!(
        fix.contains(&format!("NOPASSWD: {}", other.join("podman").display())),
        "{fix}"
    );
}

#[test]
fn user_mode_checks_subordinate_ids_and_the_runtime_directory() {
    let dir = tempfile::Builder::new()
        .prefix("flake-doctor-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ctl = dir.path().join("flake-ctl");
    std::fs::copy(util::bin_dir().join("flake-ctl"), &ctl).unwrap();
    let run = |env: &str| -> Option<Vec<Value>> {
        let script = format!("{env} {} doctor --user --format json", ctl.display());
        let out = as_user(&script)?;
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
        Some(v.as_array().unwrap().clone())
    };
    let Some(findings) = run("XDG_RUNTIME_DIR=/run/user/$(id -u)") else {
        return;
    };
    for check in [
        "rootless /etc/subuid",
        "rootless /etc/subgid",
        "runtime directory",
    ] {
        let found = of(&findings, check);
        assert_eq!(found.len(), 1, "no {check}: {findings:#?}");
        if check == "runtime directory" && found[0]["status"] != "ok" {
            util::note_skip(&format!(
                "{USER} has no private /run/user/UID: {}",
                found[0]
            ));
            continue;
        }
        assert_eq!(found[0]["status"], "ok", "{findings:#?}");
    }
    let findings = run("unset XDG_RUNTIME_DIR;").unwrap();
    let found = of(&findings, "runtime directory");
    assert_ne!(found[0]["status"], "ok", "{findings:#?}");
    assert!(found[0]["fix"].as_str().unwrap().contains("/run/user/"));
}

#[test]
fn stale_instances_are_notes_that_do_not_fail_the_host() {
    if !util::is_root() {
        util::skip("the instance directory is made for uid 0");
        return;
    }
    let world = World::new();
    let instance = world.path("ids/0/.vm/doctorvm@4242");
    std::fs::create_dir_all(&instance).unwrap();
    // pid 1 lives, but is not this instance's VMM: the instance is stale, as show says.
    std::fs::write(instance.join("vmm.pid"), "1").unwrap();
    let (code, findings, _) = doctor(&world, &[]);
    let found = of(&findings, "instance doctorvm@4242");
    assert_eq!(found.len(), 1, "{findings:#?}");
    assert_eq!(found[0]["status"], "note");
    assert!(found[0]["detail"].as_str().unwrap().contains("stale"));
    assert_eq!(code, 0, "{findings:#?}");
}
