// SPDX-License-Identifier: MIT
//! Pulling VM images into the image registry: a KIWI "kis" archive, or a rootfs and kernel
//! (and optional initrd) given separately.
//!
//! Every pull is staged in a private directory next to the registry, verified, and only then
//! renamed into place; with `--force` the old image is swapped out in the same step and
//! deleted afterwards, so a failed or rejected pull leaves the previous image as it was (the
//! original deleted it before downloading). Plain `http://` is refused unless
//! `FLAKE_ALLOW_INSECURE_TRANSPORT` is `1` or `true`.
//!
//! Everything a download or an archive supplies is hostile until checked: every download and
//! the unpacked members together are bounded by [`Policy::max_size`] while they stream (the
//! original wrote 10.5 GB from a 3.4 MB archive before its checksum failed), a server that
//! stops sending fails the pull after [`Policy::stall_timeout`], and every file lands with
//! mode 0644 or 0755 whatever the archive says. A compressed archive may in addition not
//! unpack to more than [`Policy::max_ratio`] times the compressed bytes read (past a floor
//! of [`Policy::EXPANSION_FLOOR`]), which stops a bomb long before the size limit. A
//! staging directory is locked by its pull; one whose pull died (even by `kill -9`) is
//! removed by the next pull (and by `firecracker remove`), and SIGINT, SIGTERM or SIGHUP
//! remove it before the process ends. Addresses are printed without userinfo or query.

pub(crate) mod checksum;
mod expansion;
mod fetch;
mod framing;
mod http;
mod install;
pub(crate) mod kis;
mod limited;
pub mod oci;
mod redact;
mod staging;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use fetch::{Source, INSECURE_ENV};

/// Environment variable: seconds a download may go without data before it fails.
pub const STALL_ENV: &str = "FLAKE_PULL_STALL_TIMEOUT";

/// How much a pull may take and how long it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Bytes any one download, and all members unpacked from an archive together, may
    /// reach.
    pub max_size: u64,
    /// How many times its compressed size a compressed archive may unpack to, past the
    /// first [`Policy::EXPANSION_FLOOR`] bytes; 0 lifts the guard.
    pub max_ratio: u64,
    /// How long connecting, the response headers and every read of the body may wait.
    pub stall_timeout: Duration,
    /// Plain `http://` is allowed (also for redirects, except from `https://`).
    pub allow_http: bool,
}

impl Policy {
    /// The default size limit: 16 GiB. A microVM rootfs is typically 1 to 10 GiB (KIWI
    /// images, the fixtures of the tests are far less); 16 GiB takes any of them while it
    /// bounds what a hostile server or archive can write before the checksum is checked
    /// to a size most registries' file systems can hold. Bigger images pass --max-size.
    pub const DEFAULT_MAX_SIZE: u64 = 16 << 30;
    /// The default expansion ratio: 200. A rootfs compresses a few dozen times at most (a
    /// 4 GiB ext4 holding 750 MB: 17 times with gzip, 19 with zstd); a run of zeros 1000
    /// times with gzip and far more with zstd (the 3.4 MB archive that wrote 10.5 GB
    /// expanded 3000 times). With it that archive stops after 1.7 GB, not 10.5 GB.
    pub const DEFAULT_MAX_RATIO: u64 = 200;
    /// Bytes a compressed archive may unpack to whatever its ratio: small archives of
    /// sparse images (a 1 GiB ext4 holding 5 MB compresses 200 times and more) still pass.
    pub const EXPANSION_FLOOR: u64 = 1 << 30;
    /// The default stall timeout.
    pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_size: Self::DEFAULT_MAX_SIZE,
            max_ratio: Self::DEFAULT_MAX_RATIO,
            stall_timeout: Self::DEFAULT_STALL_TIMEOUT,
            allow_http: false,
        }
    }
}

/// Whether a value of [`INSECURE_ENV`] allows plain http: only `1` or `true` (any case), so
/// `=0`, `=false` or an empty value do not.
pub fn insecure_allowed(value: Option<&OsStr>) -> bool {
    value
        .and_then(OsStr::to_str)
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The stall timeout from a value of [`STALL_ENV`] (whole seconds, 1 to 86400), the default
/// when unset or empty.
pub fn stall_timeout(value: Option<&str>) -> Result<Duration, PullError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(Policy::DEFAULT_STALL_TIMEOUT),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|s| (1..=86_400).contains(s))
            .map(Duration::from_secs)
            .ok_or_else(|| PullError::StallTimeout(text.to_string())),
    }
}

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
    /// Making a VM image from an OCI image failed.
    #[error(transparent)]
    Oci(Box<oci::OciError>),
    /// Preparing the rootfs failed.
    #[error("cannot prepare the rootfs of {name}: {reason}")]
    Prepare {
        /// Image name.
        name: String,
        /// What failed.
        reason: String,
    },
    /// A download or the unpacked archive is larger than the size limit.
    #[error("{what} exceeds the size limit of {limit} bytes; pass --max-size to raise it")]
    TooLarge {
        /// What grew too large, with its address.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// A compressed archive unpacks to more than the expansion ratio allows.
    #[error("{what} unpacks to more than {ratio} times its compressed size (past the first {} GiB), far more than a VM image; pass --max-ratio to raise the limit if it is one", Policy::EXPANSION_FLOOR >> 30)]
    Expansion {
        /// What expanded, with its address.
        what: String,
        /// The ratio.
        ratio: u64,
    },
    /// The file system of the registry is down to the space kept free for the system.
    #[error("stopped writing into {}: its file system is down to the last {reserve} bytes, which a pull leaves free; make room there and pull again", dir.display())]
    NoSpace {
        /// The directory being written.
        dir: PathBuf,
        /// The space left free.
        reserve: u64,
    },
    /// The server sent nothing, or next to nothing, for the stall timeout.
    #[error("cannot download {address}: {what} for {seconds} s; check the server, or set FLAKE_PULL_STALL_TIMEOUT to wait longer")]
    Stalled {
        /// The address.
        address: String,
        /// What the server did: `no data`, or `less than 1 KiB/s`.
        what: &'static str,
        /// The stall timeout.
        seconds: u64,
    },
    /// [`STALL_ENV`] is not a number of seconds.
    #[error("FLAKE_PULL_STALL_TIMEOUT '{0}' is not a number of seconds from 1 to 86400; write it like 30")]
    StallTimeout(String),
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

impl From<oci::OciError> for PullError {
    fn from(err: oci::OciError) -> Self {
        // Boxed: the variant would make every pull result as large as its largest error.
        PullError::Oci(Box::new(err))
    }
}

pub use install::{ANNOUNCE_FEATURE, CONSOLE_FEATURE, GUEST_CHANNEL_FILE, RESYNC_FEATURE};

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
    /// The tree of an OCI (container) image, with a kernel from a file, a URL or another
    /// OCI image (see [`oci`]).
    Oci {
        /// The image reference.
        image: String,
        /// Where the kernel comes from.
        kernel: oci::OciKernel,
        /// How podman is run.
        podman: oci::Podman,
    },
}

/// What a pull left installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The image's directory.
    pub dir: PathBuf,
    /// The image was already what the pull would make (a re-pull of an unchanged OCI
    /// image): nothing was changed.
    pub up_to_date: bool,
}

/// Removes what dead pulls left in `images_dir` (staging directories, images moved aside
/// by older releases); best effort. Every pull does it first; `firecracker remove` too.
pub fn collect_stale(images_dir: &Path) {
    staging::collect_stale(images_dir);
}

/// Pulls `what` as image `name` into `images_dir` within `policy`; returns the installed
/// directory. `sci` is the guest init installed into component rootfs images that lack one.
/// Staging directories that earlier pulls left behind are removed first.
pub fn pull(
    images_dir: &Path,
    name: &str,
    what: &Pull,
    force: bool,
    sci: Option<&Path>,
    policy: &Policy,
) -> Result<PathBuf, PullError> {
    pull_reporting(images_dir, name, what, force, sci, policy).map(|p| p.dir)
}

/// [`pull`], saying whether the image was already up to date.
pub fn pull_reporting(
    images_dir: &Path,
    name: &str,
    what: &Pull,
    force: bool,
    sci: Option<&Path>,
    policy: &Policy,
) -> Result<Pulled, PullError> {
    staging::collect_stale(images_dir);
    let target = crate::image_dir(images_dir, name).map_err(|e| PullError::Source {
        what: "--name",
        address: name.to_string(),
        reason: e.to_string(),
    })?;
    if let Pull::Oci {
        image,
        kernel,
        podman,
    } = what
    {
        let req = oci::Request {
            image,
            kernel,
            podman,
        };
        let to = oci::Install {
            images_dir,
            target: &target,
            name,
            force,
            sci,
            policy,
        };
        let up_to_date = oci::pull(req, to)? == oci::Outcome::UpToDate;
        return Ok(Pulled {
            dir: target,
            up_to_date,
        });
    }
    if target.exists() && !force {
        return Err(PullError::Exists {
            name: name.to_string(),
            dir: target,
        });
    }
    let staging = staging::Staging::new(images_dir, name)?;
    match what {
        Pull::Kis(source) => kis::pull(source, staging.dir(), name, policy)?,
        Pull::Components {
            rootfs,
            kernel,
            initrd,
        } => {
            fetch::fetch(rootfs, &staging.dir().join("rootfs"), policy)?;
            fetch::fetch(kernel, &staging.dir().join("kernel"), policy)?;
            if let Some(initrd) = initrd {
                fetch::fetch(initrd, &staging.dir().join("initrd"), policy)?;
            }
            install::prepare_rootfs(&staging.dir().join("rootfs"), name, sci)?;
        }
        // Handled above, before the existence check.
        Pull::Oci { .. } => {}
    }
    install::mark_guest_channel(staging.dir(), name)?;
    staging.commit(&target)?;
    Ok(Pulled {
        dir: target,
        up_to_date: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_1_or_true_allow_http() {
        for (value, allowed) in [
            (None, false),
            (Some(""), false),
            (Some("0"), false),
            (Some("false"), false),
            (Some("no"), false),
            (Some("yes"), false),
            (Some(" 1"), false),
            (Some("1"), true),
            (Some("true"), true),
            (Some("TRUE"), true),
            (Some("True"), true),
        ] {
            assert_eq!(
                insecure_allowed(value.map(OsStr::new)),
                allowed,
                "{value:?}"
            );
        }
    }

    #[test]
    fn stall_timeouts() {
        assert_eq!(stall_timeout(None).unwrap(), Policy::DEFAULT_STALL_TIMEOUT);
        assert_eq!(
            stall_timeout(Some("")).unwrap(),
            Policy::DEFAULT_STALL_TIMEOUT
        );
        assert_eq!(stall_timeout(Some("5")).unwrap(), Duration::from_secs(5));
        for bad in ["0", "-1", "soon", "1.5", "86401"] {
            let err = stall_timeout(Some(bad)).unwrap_err().to_string();
            assert!(err.contains(STALL_ENV) && err.contains(bad), "{err}");
        }
        assert!(Policy::DEFAULT_STALL_TIMEOUT <= Duration::from_secs(60));
    }
}
