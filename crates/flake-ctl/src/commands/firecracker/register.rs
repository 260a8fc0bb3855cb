// SPDX-License-Identifier: MIT
//! `flake-ctl firecracker register`: create an app path that runs a program in a VM.
//!
//! Everything is checked before anything is written: the image must have been pulled (a
//! rootfs and a kernel), `--overlay-size` must be a size (`20GiB`, `20G`, `20g`, `512MiB`,
//! `1.5GB`: the original accepted anything here and crashed at launch), and the YAML must
//! pass the launcher's validation. `--no-net` means no network device at all, and drops the
//! network boot arguments.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};
use flakes::config::raw::{RawFirecracker, RawFlake, RawInclude, RawSize, RawVm, RawVmRuntime};
use flakes::config::vm::DEFAULT_BOOT_ARGS;
use flakes::register::{app_name, Registration};
use flakes::size::ByteSize;
use flakes::Mode;

use crate::cli::{VmRegisterArgs, VmmArg};
use crate::commands::podman::register::to_yaml;
use crate::context::Context;
use crate::template::{self, Template};

/// Runs the registration.
pub fn run(args: &VmRegisterArgs, mode: Mode, ctx: &Context) -> Result<ExitCode> {
    let name = app_name(&args.app)?;
    // Before --oci pulls anything.
    check_flags(args)?;
    let vm = vm_image(args, mode, ctx)?;
    let image = vm_pilot::find_image(&vm_pilot::images_dir(&ctx.settings, mode), &vm)?;
    let registry = ctx.settings.registry(mode);
    let config = registry.config_path(&name);
    let template = template::load(template::Kind::Vm, ctx.settings.caller.uid)?;
    let raw = flake_document(args, &vm, &image, ctx, None)?;
    // The flags alone first, so that their mistakes are not blamed on a template.
    let plain = flakes::config::validate_raw(name.clone(), &config, raw.clone())?;
    let (raw, flake) = match &template {
        Some(template) => {
            let raw = flake_document(args, &vm, &image, ctx, Some(template))?;
            let flake = flakes::config::validate_raw(name.clone(), &config, raw.clone())
                .map_err(|e| template.invalid(e))?;
            (raw, flake)
        }
        None => (raw, plain),
    };
    // Files the launcher would refuse to boot: said now, before anything is written.
    if let flakes::config::Engine::Vm(vm_flake) = &flake.engine {
        vm_pilot::trust::check_vm(vm_flake)?;
    }
    let registration = Registration {
        registry: &registry,
        app: args.app.clone(),
        pilot: ctx.pilot("firecracker-pilot")?,
        yaml: to_yaml(&raw)?,
        force: args.force,
    };
    registration.commit()?;
    println!(
        "registered flake {name}: {} -> firecracker-pilot ({})",
        args.app.display(),
        config.display()
    );
    if !args.no_net {
        if let Some(note) = vm_pilot::tap::short_form_note(name.as_str()) {
            println!("{note}");
        }
    }
    if let Some(note) = vsock_device_note(args) {
        println!("{note}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The VM image to register on: `--vm`, or with `--oci` the image pulled (or found up to
/// date) from it, under `--vm` or a name made from the reference.
fn vm_image(args: &VmRegisterArgs, mode: Mode, ctx: &Context) -> Result<String> {
    let Some(oci) = &args.oci else {
        return args
            .vm
            .clone()
            .ok_or_else(|| anyhow::anyhow!("give --vm NAME or --oci IMAGE"));
    };
    let vm = match &args.vm {
        Some(vm) => vm.clone(),
        None => super::pull::name_for(oci)?,
    };
    let kernel = super::pull::KernelArgs {
        file: args.kernel.as_deref(),
        image: args.kernel_oci.as_deref(),
    };
    super::pull::oci(&vm, oci, kernel, args.max_size, mode, ctx)?;
    Ok(vm)
}

/// What to install when the admin chose vsock for QEMU VMs (`FLAKE_QEMU_CHANNEL=vsock`)
/// and QEMU's vsock device is missing: calls into the flake would fail.
fn vsock_device_note(args: &VmRegisterArgs) -> Option<String> {
    let vsock = std::env::var_os(vm_pilot::qemu::CHANNEL_ENV).is_some_and(|c| c == "vsock");
    if !vsock || !matches!(args.vmm, VmmArg::Qemu) {
        return None;
    }
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    path.push(":/usr/local/sbin:/usr/sbin:/sbin");
    if vm_pilot::qemu::device::find(&path).is_some() {
        return None;
    }
    Some(format!(
        "note: {}=vsock, but {} is not installed, so calls into this flake fail; install \
         it with {}",
        vm_pilot::qemu::CHANNEL_ENV,
        vm_pilot::qemu::device::PROGRAM,
        vm_pilot::qemu::device::INSTALL_HINT
    ))
}

/// The YAML document of the registration; the admin's template supplies the machine
/// settings the flags leave open.
fn flake_document(
    args: &VmRegisterArgs,
    vm: &str,
    image: &vm_pilot::VmImage,
    ctx: &Context,
    template: Option<&Template>,
) -> Result<RawFlake> {
    let target = target(args);
    if target == "/" {
        let dir = image.rootfs.parent().unwrap_or(Path::new("/"));
        vm_pilot::entry::require_entry_command(dir, vm, "--target /")?;
    }
    let path = |p: &Path| Some(p.display().to_string());
    let base = template
        .and_then(Template::firecracker)
        .cloned()
        .unwrap_or_default();
    let overlay_size = match &args.overlay_size {
        Some(size) => Some(RawSize::Text(size.clone())),
        None => base.overlay_size,
    };
    let firecracker = RawFirecracker {
        boot_args: Some(boot_args(args, base.boot_args)),
        overlay_size,
        rootfs_image_path: path(&image.rootfs),
        kernel_image_path: path(&image.kernel),
        initrd_path: image.initrd.as_deref().and_then(path),
        mem_size_mib: Some(base.mem_size_mib.unwrap_or(4096)),
        vcpu_count: Some(base.vcpu_count.unwrap_or(2)),
        cache_type: Some(base.cache_type.unwrap_or_else(|| "Writeback".into())),
    };
    let runtime = RawVmRuntime {
        runas: Some(args.run_as.clone().unwrap_or_else(|| "root".into())),
        resume: Some(args.resume),
        force_vsock: Some(args.force_vsock),
        vmm: Some(match args.vmm {
            VmmArg::Firecracker => "firecracker".into(),
            VmmArg::Qemu => "qemu".into(),
        }),
        network: args.no_net.then_some(false),
        idle_timeout: args.idle_timeout,
        firecracker: Some(firecracker),
    };
    Ok(RawFlake {
        include: Some(RawInclude {
            tar: ctx.includes(&args.include_tar, "--include-tar")?,
            path: ctx.includes(&args.include_path, "--include-path")?,
        }),
        container: None,
        vm: Some(RawVm {
            name: Some(vm.to_string()),
            target_app_path: Some(target),
            host_app_path: path(&args.app),
            base_vm: None,
            layers: None,
            runtime: Some(runtime),
        }),
    })
}

/// The program inside the VM: `--target`, else the app path.
fn target(args: &VmRegisterArgs) -> String {
    args.target
        .clone()
        .unwrap_or_else(|| args.app.display().to_string())
}

/// Checks the flags that need no image: the target and the overlay size.
fn check_flags(args: &VmRegisterArgs) -> Result<()> {
    let target = target(args);
    if !target.starts_with('/') {
        bail!("--target '{target}' must be an absolute program path inside the VM, or / for the image's entry command");
    }
    if let Some(size) = &args.overlay_size {
        ByteSize::parse(size).map_err(|e| anyhow::anyhow!("--overlay-size: {e}"))?;
    }
    Ok(())
}

/// The kernel command line (the template's, else the default one), adjusted for the options
/// as flake-ctl 3.1 did.
fn boot_args(args: &VmRegisterArgs, base: Option<Vec<String>>) -> Vec<String> {
    let base = base.unwrap_or_else(|| DEFAULT_BOOT_ARGS.iter().map(|a| a.to_string()).collect());
    let mut boot: Vec<String> = base
        .into_iter()
        .filter(|a| !(args.no_net && (a.starts_with("ip=") || a.starts_with("rd.neednet="))))
        .collect();
    if args.resume {
        boot.push("sci_resume=1".into());
    }
    if args.force_vsock {
        boot.push("sci_force_vsock=1".into());
    }
    boot
}
