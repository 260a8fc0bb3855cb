// SPDX-License-Identifier: MIT
//! `flake-ctl firecracker pull --name NAME (--kis-image URL | --rootfs URL --kernel URL
//! [--initrd URL]) [--force] [--max-size SIZE] [--max-ratio RATIO]`: exit 0 when the image is installed and
//! verified, 1 with one line otherwise (the original exited 200 on success and 0 on a
//! checksum failure), 128 + N when signal N interrupted it (its staging is removed).

use std::process::ExitCode;

use anyhow::Result;
use flakes::Mode;
use vm_pilot::pull::{pull, stall_timeout, Policy, Pull, Source};

use crate::cli::VmPullArgs;
use crate::context::Context;

/// Runs the pull.
pub fn run(args: &VmPullArgs, mode: Mode, ctx: &Context) -> Result<ExitCode> {
    let source = |address: &str, what| Source::parse(address, what, ctx.insecure_transport);
    let what = match (&args.kis_image, &args.rootfs, &args.kernel) {
        (Some(kis), _, _) => Pull::Kis(source(kis, "--kis-image")?),
        (None, Some(rootfs), Some(kernel)) => Pull::Components {
            rootfs: source(rootfs, "--rootfs")?,
            kernel: source(kernel, "--kernel")?,
            initrd: args
                .initrd
                .as_deref()
                .map(|i| source(i, "--initrd"))
                .transpose()?,
        },
        _ => anyhow::bail!("give --kis-image, or --rootfs together with --kernel"),
    };
    let policy = Policy {
        max_size: args.max_size,
        max_ratio: args.max_ratio,
        stall_timeout: stall_timeout(ctx.pull_stall_timeout.as_deref())?,
        allow_http: ctx.insecure_transport,
    };
    let sci = ctx.sci();
    let images = vm_pilot::images_dir(&ctx.settings, mode);
    let dir = pull(
        &images,
        &args.name,
        &what,
        args.force,
        sci.as_deref(),
        &policy,
    )?;
    println!("pulled VM image {} into {}", args.name, dir.display());
    Ok(ExitCode::SUCCESS)
}
