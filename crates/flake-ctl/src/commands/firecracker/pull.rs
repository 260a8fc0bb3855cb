// SPDX-License-Identifier: MIT
//! `flake-ctl firecracker pull --name NAME (--kis-image URL | --rootfs URL --kernel URL
//! [--initrd URL] | --oci IMAGE (--kernel URL | --kernel-oci IMAGE)) [--force]
//! [--max-size SIZE] [--max-ratio RATIO]`: exit 0 when the image is installed and
//! verified (or, from an OCI image, already up to date), 1 with one line otherwise (the
//! original exited 200 on success and 0 on a checksum failure), 128 + N when signal N
//! interrupted it (its staging is removed).

use std::process::ExitCode;

use anyhow::Result;
use flakes::Mode;
use vm_pilot::pull::oci::{OciKernel, Podman};
use vm_pilot::pull::{pull_reporting, stall_timeout, Policy, Pull, Source};

use crate::cli::VmPullArgs;
use crate::context::Context;

/// Runs the pull.
pub fn run(args: &VmPullArgs, mode: Mode, ctx: &Context) -> Result<ExitCode> {
    let what = what(args, mode, ctx)?;
    let policy = Policy {
        max_size: args.max_size,
        max_ratio: args.max_ratio,
        stall_timeout: stall_timeout(ctx.pull_stall_timeout.as_deref())?,
        allow_http: ctx.insecure_transport,
    };
    let sci = ctx.sci();
    let images = vm_pilot::images_dir(&ctx.settings, mode);
    let pulled = pull_reporting(
        &images,
        &args.name,
        &what,
        args.force,
        sci.as_deref(),
        &policy,
    )?;
    if pulled.up_to_date {
        println!(
            "VM image {} is up to date ({})",
            args.name,
            pulled.dir.display()
        );
    } else {
        println!(
            "pulled VM image {} into {}",
            args.name,
            pulled.dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What the flags ask to pull.
fn what(args: &VmPullArgs, mode: Mode, ctx: &Context) -> Result<Pull> {
    let source = |address: &str, what| Source::parse(address, what, ctx.insecure_transport);
    Ok(
        match (&args.kis_image, &args.rootfs, &args.oci, &args.kernel) {
            (Some(kis), _, _, _) => Pull::Kis(source(kis, "--kis-image")?),
            (None, Some(rootfs), _, Some(kernel)) => Pull::Components {
                rootfs: source(rootfs, "--rootfs")?,
                kernel: source(kernel, "--kernel")?,
                initrd: args
                    .initrd
                    .as_deref()
                    .map(|i| source(i, "--initrd"))
                    .transpose()?,
            },
            (None, None, Some(image), kernel) => {
                let kernel = match (kernel, &args.kernel_oci) {
                    (Some(kernel), None) => OciKernel::Source(source(kernel, "--kernel")?),
                    (None, Some(image)) => OciKernel::Image(image.clone()),
                    _ => anyhow::bail!(
                        "--oci needs a kernel: give --kernel FILE|URL or --kernel-oci IMAGE"
                    ),
                };
                Pull::Oci {
                    image: image.clone(),
                    kernel,
                    podman: Podman::new(ctx.podman(mode)?.podman()),
                }
            }
            _ => anyhow::bail!("give --kis-image, --rootfs together with --kernel, or --oci"),
        },
    )
}
