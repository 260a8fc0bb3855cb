// SPDX-License-Identifier: MIT
//! Pulling VM images into the image registry: a KIWI "kis" archive, or a rootfs and kernel
//! (and optional initrd) given separately.
//!
//! Every pull is staged in a private directory next to the registry, verified, and only then
//! renamed into place; with `--force` the old image is swapped out in the same step and
//! deleted afterwards, so a failed or rejected pull leaves the previous image as it was (the
//! original deleted it before downloading). Plain `http://` is refused unless
//! `FLAKE_ALLOW_INSECURE_TRANSPORT` is set, as before.

pub(crate) mod checksum;
mod fetch;
mod install;
pub(crate) mod kis;

use std::path::{Path, PathBuf};

pub use fetch::{Source, INSECURE_ENV};

/// Errors of a pull.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The address cannot be used.
    #[error("{what} '{address}': {reason}")]
    Source {
        /// Which option.
        what: &'static str,
        /// The address given.
        address: String,
        /// Why it is refused.
        reason: String,
    },
    /// Downloading failed.
    #[error("cannot download {address}: {reason}")]
    Download {
        /// The address.
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// The archive is not a usable kis image.
    #[error("{archive} is not a kis image: {reason}")]
    NotKis {
        /// The archive's address.
        archive: String,
        /// What is wrong.
        reason: String,
    },
    /// The checksum does not match.
    #[error("checksum mismatch for the rootfs of {name}: expected {expected}, got {actual}; the previous image (if any) is unchanged")]
    Checksum {
        /// Image name.
        name: String,
        /// Recorded checksum.
        expected: String,
        /// Computed checksum.
        actual: String,
    },
    /// The image exists and `--force` was not given.
    #[error("VM image {name} already exists ({}); pass --force to replace it", dir.display())]
    Exists {
        /// Image name.
        name: String,
        /// Its directory.
        dir: PathBuf,
    },
    /// Preparing the rootfs failed.
    #[error("cannot prepare the rootfs of {name}: {reason}")]
    Prepare {
        /// Image name.
        name: String,
        /// What failed.
        reason: String,
    },
    /// A file operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        action: &'static str,
        /// Path involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

pub use install::{CONSOLE_FEATURE, GUEST_CHANNEL_FILE, RESYNC_FEATURE};

pub(crate) fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> PullError + 'a {
    move |source| PullError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What to pull.
#[derive(Debug, Clone)]
pub enum Pull {
    /// A kis archive.
    Kis(Source),
    /// Separate files.
    Components {
        /// Root filesystem image.
        rootfs: Source,
        /// Kernel.
        kernel: Source,
        /// Initrd.
        initrd: Option<Source>,
    },
}

/// Pulls `what` as image `name` into `images_dir`; returns the installed directory. `sci`
/// is the guest init installed into component rootfs images that lack one.
pub fn pull(
    images_dir: &Path,
    name: &str,
    what: &Pull,
    force: bool,
    sci: Option<&Path>,
) -> Result<PathBuf, PullError> {
    let target = crate::image_dir(images_dir, name).map_err(|e| PullError::Source {
        what: "--name",
        address: name.to_string(),
        reason: e.to_string(),
    })?;
    if target.exists() && !force {
        return Err(PullError::Exists {
            name: name.to_string(),
            dir: target,
        });
    }
    let staging = install::Staging::new(images_dir, name)?;
    match what {
        Pull::Kis(source) => kis::pull(source, staging.dir(), name)?,
        Pull::Components {
            rootfs,
            kernel,
            initrd,
        } => {
            fetch::fetch(rootfs, &staging.dir().join("rootfs"))?;
            fetch::fetch(kernel, &staging.dir().join("kernel"))?;
            if let Some(initrd) = initrd {
                fetch::fetch(initrd, &staging.dir().join("initrd"))?;
            }
            install::prepare_rootfs(&staging.dir().join("rootfs"), name, sci)?;
        }
    }
    install::mark_guest_channel(staging.dir())?;
    staging.commit(&target)?;
    Ok(target)
}
