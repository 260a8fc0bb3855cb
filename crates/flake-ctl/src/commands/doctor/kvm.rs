// SPDX-License-Identifier: MIT
//! `/dev/kvm` and whether a guest can actually boot under it.
//!
//! An openable `/dev/kvm` is not enough: a software nested hypervisor may offer one on
//! which Linux guests crawl or never come up, which is why the accelerator choice of
//! [`vm_pilot::qemu::default_accel`] also wants the CPU's `vmx`/`svm` flag. The boot probe
//! settles it: QEMU's microvm machine with `-accel kvm` boots a real guest kernel without a
//! root disk, and a kernel that gets as far as failing to mount its root (its panic, with
//! `-no-reboot`, ends QEMU) has booted. The probe is killed after [`PROBE_BOUND`], so it
//! never holds the doctor up for longer; it runs only when a VM flake is registered or
//! `--boot-probe` asks for it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flakes::config::Engine;
use flakes::Mode;

use super::bounded::{self, Ended};
use super::{Finding, Needs, Status};
use crate::context::Context;

/// The longest the boot probe may take. A kernel reaches its root mount in well under a
/// second under hardware KVM (and in about 0.6 s even emulated, on the machines measured).
pub const PROBE_BOUND: Duration = Duration::from_secs(4);

/// What a kernel prints once it has booted as far as mounting its root.
const BOOTED_MARKS: [&str; 2] = ["VFS: ", "Kernel panic"];

/// The KVM device check and the boot probe.
pub fn checks(ctx: &Context, mode: Mode, needs: &Needs, asked: bool) -> Vec<Finding> {
    // Opening it read-write is what a VMM does first; the descriptor is closed at once.
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let mut out = vec![device(ctx, needs, usable)];
    out.push(if !(asked || needs.vm()) {
        Finding::new(
            "guest boot",
            Status::Note,
            "not probed: no VM flake is registered",
            "run flake-ctl doctor --boot-probe to boot a guest under KVM",
        )
    } else if !usable {
        Finding::new(
            "guest boot",
            Status::missing(needs.firecracker),
            "not probed: /dev/kvm is not usable",
            "",
        )
    } else {
        probe(ctx, mode, needs)
    });
    out
}

/// `/dev/kvm` present, openable, and backed by hardware virtualisation.
fn device(ctx: &Context, needs: &Needs, usable: bool) -> Finding {
    const CHECK: &str = "kvm";
    let status = Status::missing(needs.firecracker);
    let emulated = if needs.qemu {
        "; QEMU flakes run emulated (TCG), much slower"
    } else {
        ""
    };
    if !Path::new("/dev/kvm").exists() {
        return Finding::new(
            CHECK,
            status,
            format!("/dev/kvm does not exist{emulated}"),
            "enable virtualisation in the firmware and load kvm_intel or kvm_amd (modprobe)",
        );
    }
    if !usable {
        return Finding::new(
            CHECK,
            status,
            format!(
                "{} may not open /dev/kvm{emulated}",
                ctx.settings.caller.name
            ),
            format!(
                "add the user to the kvm group (usermod -aG kvm {}) and log in again",
                ctx.settings.caller.name
            ),
        );
    }
    if vm_pilot::qemu::default_accel() != "kvm" {
        return Finding::new(
            CHECK,
            status,
            format!(
                "/dev/kvm opens, but the CPU shows no vmx or svm flag (a nested or software \
                 hypervisor), on which Linux guests may not run{emulated}"
            ),
            "expose hardware virtualisation to this machine (nested virtualisation), or use \
             --vmm qemu flakes, which fall back to emulation",
        );
    }
    Finding::ok(
        CHECK,
        "/dev/kvm is usable and the CPU has hardware virtualisation",
    )
}

/// Boots a kernel under KVM for at most [`PROBE_BOUND`].
fn probe(ctx: &Context, mode: Mode, needs: &Needs) -> Finding {
    const CHECK: &str = "guest boot";
    let status = Status::missing(needs.firecracker);
    let path = ctx.path_env.clone().unwrap_or_default();
    let Ok(qemu) = flakes::process::resolve("qemu-system-x86_64", Some(&path)) else {
        return Finding::new(
            CHECK,
            Status::Note,
            "not probed: the probe boots its guest with qemu-system-x86_64, which is missing",
            "apt install qemu-system-x86",
        );
    };
    let Some(kernel) = kernel(ctx, mode, needs) else {
        return Finding::new(
            CHECK,
            Status::Note,
            "not probed: no kernel of a registered VM flake or pulled VM image to boot",
            "pull a VM image (flake-ctl firecracker pull) and run flake-ctl doctor --boot-probe",
        );
    };
    let out = match bounded::run(command(&qemu, &kernel, "kvm"), PROBE_BOUND) {
        Ok(out) => out,
        Err(err) => {
            return Finding::new(
                CHECK,
                status,
                format!("cannot run {}: {err}", qemu.display()),
                "",
            )
        }
    };
    let booted = booted(&out.stdout);
    let ms = out.elapsed.as_millis();
    match (&out.ended, booted) {
        (Ended::Exited(_), true) => Finding::ok(
            CHECK,
            format!("{} booted under KVM in {ms} ms", kernel.display()),
        ),
        (Ended::TimedOut, _) => Finding::new(
            CHECK,
            status,
            format!(
                "{} did not boot under KVM within {} s (stopped after {ms} ms): guests are \
                 too slow or hang on this KVM",
                kernel.display(),
                PROBE_BOUND.as_secs()
            ),
            "use hardware KVM (nested virtualisation on a VM host), or --vmm qemu flakes with \
             FLAKE_QEMU_ACCEL=tcg",
        ),
        (Ended::Exited(_), false) => Finding::new(
            CHECK,
            status,
            format!(
                "{} did not boot under KVM: {}",
                kernel.display(),
                out.said()
                    .unwrap_or_else(|| "it printed no kernel messages".into())
            ),
            "check that the kernel is a bootable x86_64 image and QEMU can use /dev/kvm",
        ),
    }
}

/// Whether a guest's console output shows a kernel that booted as far as its root mount.
fn booted(console: &str) -> bool {
    BOOTED_MARKS.iter().any(|m| console.contains(m))
}

/// `qemu -M microvm -accel ACCEL` booting `kernel` without disks, its console on stdout.
fn command(qemu: &Path, kernel: &Path, accel: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(qemu);
    cmd.args(["-M", "microvm", "-accel", accel, "-m", "128"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-no-reboot", "-serial", "stdio", "-kernel"])
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1 reboot=t"]);
    cmd
}

/// A kernel to boot: a registered VM flake's, else a pulled VM image's, of those only
/// root and the caller may change ([`vm_pilot::trust`]).
fn kernel(ctx: &Context, mode: Mode, needs: &Needs) -> Option<PathBuf> {
    let registered = needs.flakes.iter().filter_map(|f| match &f.engine {
        Engine::Vm(vm) => Some(vm.runtime.kernel.clone()),
        Engine::Container(_) => None,
    });
    let images = vm_pilot::images_dir(&ctx.settings, mode);
    let pulled = std::fs::read_dir(&images)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|name| vm_pilot::find_image(&images, &name).ok())
        .map(|image| image.kernel);
    // A kernel another user may have changed is not booted as root, not even in a probe.
    registered
        .chain(pulled)
        .find(|k| k.is_file() && vm_pilot::trust::check("kernel", k).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe's guest and its verdict, on a real kernel under emulation: what the probe
    /// calls booted is what a kernel prints, and it gets there well within the bound.
    #[test]
    fn a_real_kernel_boots_to_its_root_mount_within_the_bound() {
        let fixtures = std::env::var_os("FLAKE_VM_FIXTURES").map(PathBuf::from);
        let kernel = fixtures.map(|f| f.join("kernel/bzImage"));
        let qemu =
            flakes::process::resolve("qemu-system-x86_64", std::env::var_os("PATH").as_deref());
        let (Some(kernel), Ok(qemu)) = (kernel.filter(|k| k.is_file()), qemu) else {
            eprintln!("SKIP: needs FLAKE_VM_FIXTURES with a kernel and qemu-system-x86_64");
            return;
        };
        let out = bounded::run(command(&qemu, &kernel, "tcg"), PROBE_BOUND).unwrap();
        assert!(matches!(out.ended, Ended::Exited(_)), "{out:?}");
        assert!(booted(&out.stdout), "{out:?}");
        assert!(!booted("Linux version 6.1\nbooting the kernel\n"));
    }
}
