// SPDX-License-Identifier: MIT
//! The guest fixtures of `scripts/vm-fixtures.sh` are real: the Firecracker binary runs, the
//! guest kernel boots under QEMU's microvm machine (TCG), and a kis archive made from them
//! pulls and registers.
//!
//! Runs when `FLAKE_VM_FIXTURES` names the fixture directory (`make test` does); required when
//! `FLAKE_TEST_REQUIRE_VM=1` (`make ci` does).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::path::PathBuf;
use std::process::Command;

use util::World;

fn fixtures() -> Option<PathBuf> {
    let dir = std::env::var_os("FLAKE_VM_FIXTURES").map(PathBuf::from);
    let ready = dir
        .as_ref()
        .is_some_and(|d| d.join("kernel/bzImage").is_file() && d.join("rootfs.ext4").is_file());
    if !ready {
        let required = std::env::var("FLAKE_TEST_REQUIRE_VM").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "VM fixtures missing in {dir:?}: run scripts/vm-fixtures.sh"
        );
        util::note_skip("no VM fixtures (set FLAKE_VM_FIXTURES after scripts/vm-fixtures.sh)");
        return None;
    }
    dir
}

#[test]
fn firecracker_binary_is_the_pinned_release() {
    let Some(dir) = fixtures() else { return };
    let out = Command::new(dir.join("bin/firecracker"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("v1.12.1"),
        "{out:?}"
    );
}

#[test]
fn guest_kernel_boots_under_qemu_microvm() {
    let Some(dir) = fixtures() else { return };
    let out = Command::new("timeout")
        .args([
            "90",
            "qemu-system-x86_64",
            "-M",
            "microvm,x-option-roms=off,pit=on,pic=on,rtc=on,acpi=off",
        ])
        .args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "128",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
        ])
        .args([
            "-nographic",
            "-serial",
            "stdio",
            "-display",
            "none",
            "-no-reboot",
            "-kernel",
        ])
        .arg(dir.join("kernel/bzImage"))
        .args([
            "-append",
            "console=ttyS0 reboot=t panic=-1 root=/dev/vda ro quiet",
            "-drive",
        ])
        .arg(format!(
            "id=root,file={},format=raw,if=none,readonly=on",
            dir.join("rootfs.ext4").display()
        ))
        .args(["-device", "virtio-blk-device,drive=root"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FLAKE-GUEST-UP"),
        "guest never ran its init: {text}"
    );
}

#[test]
fn kis_archive_of_the_fixtures_pulls_and_registers() {
    let Some(dir) = fixtures() else { return };
    let w = World::new();
    let tree = w.path("kis");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::copy(dir.join("rootfs.ext4"), tree.join("guest.x86_64.raw")).unwrap();
    std::fs::copy(dir.join("kernel/vmlinux"), tree.join("guest.kernel")).unwrap();
    let sum = Command::new("sha256sum")
        .arg(tree.join("guest.x86_64.raw"))
        .output()
        .unwrap();
    let sha = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    std::fs::write(tree.join("guest.sha256"), format!("{sha}\n")).unwrap();
    let archive = w.path("guest.tar.xz");
    let made = Command::new("tar")
        .arg("-cJf")
        .arg(&archive)
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()
        .unwrap();
    assert!(made.success());
    w.ctl(&[
        "firecracker",
        "--user",
        "pull",
        "--name",
        "guest",
        "--kis-image",
        &archive.display().to_string(),
    ])
    .success();
    let installed = w.home.join(".config/flakes/firecracker/images/guest");
    assert_eq!(
        std::fs::metadata(installed.join("kernel")).unwrap().len(),
        std::fs::metadata(dir.join("kernel/vmlinux")).unwrap().len()
    );
    let app = w.bin.join("guestsh").display().to_string();
    w.ctl(&[
        "firecracker",
        "--user",
        "register",
        "--vm",
        "guest",
        "--app",
        &app,
        "--target",
        "/bin/sh",
        "--overlay-size",
        "64MiB",
        "--vmm",
        "qemu",
    ])
    .success();
    let list = w.ctl(&["list", "--user", "--format", "csv"]);
    assert!(
        list.stdout().contains("guestsh,firecracker,/bin/sh"),
        "{list}"
    );
}
