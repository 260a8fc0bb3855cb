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
use vm_pilot::pull::{pull_reporting, stall_timeout, Policy, Pull, Pulled, Source};

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
                let kernel = KernelArgs {
                    file: kernel.as_deref(),
                    image: args.kernel_oci.as_deref(),
                };
                oci_what(image, kernel, mode, ctx)?
            }
            _ => anyhow::bail!("give --kis-image, --rootfs together with --kernel, or --oci"),
        },
    )
}

/// The kernel flags that go with `--oci`.
#[derive(Debug, Clone, Copy)]
pub struct KernelArgs<'a> {
    /// `--kernel`.
    pub file: Option<&'a str>,
    /// `--kernel-oci`.
    pub image: Option<&'a str>,
}

/// The pull of OCI image `image` with `kernel`.
fn oci_what(image: &str, kernel: KernelArgs<'_>, mode: Mode, ctx: &Context) -> Result<Pull> {
    let kernel = match (kernel.file, kernel.image) {
        (Some(file), None) => {
            OciKernel::Source(Source::parse(file, "--kernel", ctx.insecure_transport)?)
        }
        (None, Some(image)) => OciKernel::Image(image.to_string()),
        _ => anyhow::bail!("--oci needs a kernel: give --kernel FILE|URL or --kernel-oci IMAGE"),
    };
    Ok(Pull::Oci {
        image: image.to_string(),
        kernel,
        podman: Podman::new(ctx.podman(mode)?.podman())
            .with_skopeo(crate::commands::remote::skopeo(ctx)),
    })
}

/// Pulls OCI image `image` as VM image `name` (or finds it up to date), as `register
/// --oci` does before it registers; an image of that name made otherwise is not replaced.
pub fn oci(
    name: &str,
    image: &str,
    kernel: KernelArgs<'_>,
    max_size: u64,
    mode: Mode,
    ctx: &Context,
) -> Result<()> {
    let what = oci_what(image, kernel, mode, ctx)?;
    let pulled = oci_pull(name, &what, max_size, mode, ctx)?;
    let state = if pulled.up_to_date {
        "up to date"
    } else {
        "pulled"
    };
    println!("VM image {name} from {image}: {state}");
    Ok(())
}

/// Pulls `what` (a [`Pull::Oci`]) as VM image `name` without `--force`, up to
/// `max_size` bytes: the step `register --oci` and `firecracker update` share with `pull`.
pub fn oci_pull(
    name: &str,
    what: &Pull,
    max_size: u64,
    mode: Mode,
    ctx: &Context,
) -> Result<Pulled> {
    let policy = Policy {
        max_size,
        stall_timeout: stall_timeout(ctx.pull_stall_timeout.as_deref())?,
        allow_http: ctx.insecure_transport,
        ..Policy::default()
    };
    let sci = ctx.sci();
    let images = vm_pilot::images_dir(&ctx.settings, mode);
    Ok(pull_reporting(
        &images,
        name,
        what,
        false,
        sci.as_deref(),
        &policy,
    )?)
}

/// The VM image name for `image` when `--vm` is not given: its last path component and
/// tag, joined by `-` (`registry:5000/team/app:1.2` is `app-1.2`), digest left out.
pub fn name_for(image: &str) -> Result<String> {
    flakes::image_ref::check(image)?;
    let name = image.split_once('@').map_or(image, |(name, _)| name);
    let last = name.rsplit('/').next().unwrap_or(name);
    let name: String = last
        .chars()
        .map(|c| if c == ':' { '-' } else { c })
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect();
    anyhow::ensure!(
        !name.is_empty() && !name.starts_with('.'),
        "cannot make a VM image name from {image}; give one with --vm"
    );
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_image_names_come_from_the_last_component_and_tag() {
        let digest = format!("sha256:{}", "a".repeat(64));
        for (image, name) in [
            (
                "registry.example.com:5000/team/app:1.2".to_string(),
                "app-1.2",
            ),
            ("localhost/busybox".to_string(), "busybox"),
            ("busybox:latest".to_string(), "busybox-latest"),
            (format!("reg/app@{digest}"), "app"),
            (format!("reg/app:2@{digest}"), "app-2"),
        ] {
            assert_eq!(name_for(&image).unwrap(), name, "{image}");
        }
        assert!(name_for("--privileged").is_err());
    }
}
