// SPDX-License-Identifier: MIT
//! VM images made from OCI (container) images: `flake-ctl firecracker pull --oci IMAGE`.
//!
//! Images are distributed through registries already; this turns one into a VM image
//! without a second channel. Steps, each its own function below: resolve the image (and a
//! kernel image) to an id and digest through podman, and refuse a configuration every
//! launch would refuse (`entry::check`); stop when the installed image was made
//! from the same reference, image id and kernel (a re-pull is then a manifest request,
//! no rebuild; a new manifest digest of the same content only updates the record);
//! otherwise, in the pull's staging directory, get the kernel, make the rootfs
//! from the image's tree (the `rootfs` module; only when the file, at its full size, fits
//! beside the space every pull leaves free), add what the guest init needs
//! (`install::prepare_rootfs`), check the file system with `e2fsck -fn`, write the
//! record ([`crate::oci`]) and commit. The old image stays in place until that commit, and
//! a failure anywhere leaves it as it was and removes the staging directory.
//!
//! An existing image is replaced without `--force` only when its record says it was made
//! from the same reference: that is an update. Any other image needs `--force`, and with
//! `--force` an unchanged image is made again (the way to repair one).

mod image;
mod kernel;
mod rootfs;

use std::io::Read;
use std::path::{Path, PathBuf};

use flakes::process::{Cmd, ProcessError};

use super::{fetch, install, staging, Policy, PullError, Source};
use crate::oci::{OciRecord, Origin, RecordError};

pub use image::names_registry;
pub use kernel::{CANDIDATES as KERNEL_PATHS, LABEL as KERNEL_CONTAINER_LABEL};
pub use rootfs::{EXTRA_BYTES, HEADROOM_PERCENT};

/// How podman is run: the base command (program and environment, such as the storage
/// configuration) and whether the caller is root; and skopeo, when installed, to ask a
/// registry which digest it serves (see `image`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Podman {
    base: Cmd,
    rootless: bool,
    skopeo: Option<PathBuf>,
}

impl Podman {
    /// Podman run as `base` (`podman` with its environment, no arguments), by the caller.
    pub fn new(base: Cmd) -> Self {
        Podman {
            base,
            rootless: !rustix::process::geteuid().is_root(),
            skopeo: None,
        }
    }

    /// The same, with skopeo at `skopeo` (`None`: not installed).
    #[must_use]
    pub fn with_skopeo(mut self, skopeo: Option<PathBuf>) -> Self {
        self.skopeo = skopeo;
        self
    }

    fn cmd(&self) -> Cmd {
        self.base.clone()
    }

    /// skopeo with podman's environment, when it is installed.
    fn skopeo(&self) -> Option<Cmd> {
        let skopeo = self.skopeo.as_deref()?;
        Some(image::skopeo_cmd(&self.base, skopeo))
    }

    fn program(&self) -> &Path {
        self.base.program()
    }
}

/// Where the kernel of an OCI-made VM image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OciKernel {
    /// A file or URL, as for component pulls.
    Source(Source),
    /// The kernel file inside this OCI image (see [`KERNEL_PATHS`]).
    Image(String),
}

/// Why a VM image cannot be made from an OCI image.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The reference is not one podman takes.
    #[error("{0}; name an image like registry.example.com/app:1.0 or localhost/app")]
    BadReference(flakes::image_ref::ImageRefError),
    /// `podman pull` failed.
    #[error("cannot pull {image}: {source}; check the name, and that podman reaches its registry (podman pull {image})")]
    Pull {
        /// The reference.
        image: String,
        /// What podman said.
        source: ProcessError,
    },
    /// The registry could not be asked which digest it serves.
    #[error("cannot ask the registry which digest it serves for {image}: {source}; check that skopeo reaches it as podman does (skopeo inspect docker://{image})")]
    Registry {
        /// The reference.
        image: String,
        /// What skopeo said.
        source: ProcessError,
    },
    /// The registry serves another image than the one just pulled.
    #[error("the registry now serves {digest} for {image}, not the image just pulled (the tag moved meanwhile); pull again")]
    Moved {
        /// The reference.
        image: String,
        /// The digest the registry serves.
        digest: String,
    },
    /// Another podman call failed.
    #[error("podman failed on {image}: {source}")]
    Podman {
        /// The reference.
        image: String,
        /// What podman said.
        source: ProcessError,
    },
    /// Podman's description of the image cannot be used.
    #[error("podman describes {image} in a way this release cannot read: {reason}")]
    Inspect {
        /// The reference.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// The image's configuration holds what no call into a VM can carry.
    #[error("the configuration of {image} cannot be run in a VM: {reason}; fix its Entrypoint, Cmd, Env, WorkingDir or User and pull again")]
    Config {
        /// The reference.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// The image's tree cannot be mounted or measured.
    #[error("cannot read the tree of {image}: {source}")]
    Mount {
        /// The reference.
        image: String,
        /// What failed.
        source: ProcessError,
    },
    /// `mkfs.ext4 -d` failed.
    #[error("cannot make the rootfs of VM image {name} from {image}: {source}; if the disk is full, make room in {} and pull again", dir.display())]
    Build {
        /// The VM image.
        name: String,
        /// The reference.
        image: String,
        /// The image registry.
        dir: PathBuf,
        /// What failed.
        source: ProcessError,
    },
    /// The registry's file system has no room for the rootfs besides its reserve.
    #[error("the rootfs of VM image {name} from {image} may take {needed} bytes, but {} has {free} bytes free and a pull leaves the last {reserve} of them alone; make room there and pull again", dir.display())]
    NoRoom {
        /// The VM image.
        name: String,
        /// The reference.
        image: String,
        /// The image registry.
        dir: PathBuf,
        /// The size of the rootfs file.
        needed: u64,
        /// Bytes free.
        free: u64,
        /// Bytes a pull leaves free.
        reserve: u64,
    },
    /// `e2fsck -fn` found the new rootfs broken.
    #[error("the rootfs made for VM image {name} from {image} fails e2fsck: {source}; the previous image (if any) is unchanged")]
    Verify {
        /// The VM image.
        name: String,
        /// The reference.
        image: String,
        /// What e2fsck said.
        source: ProcessError,
    },
    /// The kernel image holds none of the kernel paths.
    #[error("{image} holds no kernel: tried /boot/vmlinux, /boot/vmlinuz, /vmlinux and /vmlinuz (links are followed inside the image only); put the kernel at /boot/vmlinux")]
    NoKernel {
        /// The kernel image.
        image: String,
    },
    /// The exported tree of the kernel image cannot be read.
    #[error("cannot read the exported tree of {image}: {reason}")]
    Export {
        /// The kernel image.
        image: String,
        /// What failed.
        reason: String,
    },
    /// A host tool is missing.
    #[error("{0} (package e2fsprogs)")]
    Tool(ProcessError),
    /// The record cannot be read or written.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// What a pull from an OCI image did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new image was installed.
    Installed,
    /// The installed image was made from the same image and kernel: nothing was rebuilt
    /// (the record may now name another manifest digest of the same content).
    UpToDate,
}

/// One OCI pull: the image, its kernel, and podman.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The rootfs image reference.
    pub image: &'a str,
    /// The kernel.
    pub kernel: &'a OciKernel,
    /// Podman.
    pub podman: &'a Podman,
}

/// The rest of a pull: where to, under which name, and within which limits.
#[derive(Debug, Clone, Copy)]
pub struct Install<'a> {
    /// The image registry.
    pub images_dir: &'a Path,
    /// The image's directory in it.
    pub target: &'a Path,
    /// The image's name.
    pub name: &'a str,
    /// Replace an image not made from this reference.
    pub force: bool,
    /// The guest init to install.
    pub sci: Option<&'a Path>,
    /// Size limits.
    pub policy: &'a Policy,
}

/// Makes (or keeps, when unchanged) VM image `to.name` from `req`.
pub fn pull(req: Request<'_>, to: Install<'_>) -> Result<Outcome, PullError> {
    // Refused before podman pulls anything.
    let installed = installed_record(to.target, req.image);
    if installed.is_none() && to.target.symlink_metadata().is_ok() && !to.force {
        return Err(PullError::Exists {
            name: to.name.to_string(),
            dir: to.target.to_path_buf(),
        });
    }
    let rootfs = image::resolve(req.podman, req.image)?;
    // What every launch would refuse is refused here, before it replaces a working image.
    crate::entry::check(&rootfs.config).map_err(|reason| OciError::Config {
        image: req.image.to_string(),
        reason,
    })?;
    let kernel = match req.kernel {
        OciKernel::Image(reference) => Some(image::resolve(req.podman, reference)?),
        OciKernel::Source(_) => None,
    };
    let record = OciRecord {
        rootfs: rootfs.origin.clone(),
        kernel: kernel.as_ref().map(|k| k.origin.clone()),
        config: rootfs.config.clone(),
    };
    let staging = staging::Staging::new(to.images_dir, to.name)?;
    let kernel_file = staging.dir().join("kernel");
    if let OciKernel::Source(source) = req.kernel {
        fetch::fetch(source, &kernel_file, to.policy)?;
    }
    // --force rebuilds an unchanged image too: the way to repair one.
    let kept =
        installed.filter(|old| !to.force && unchanged(old, &record, to.target, &kernel_file));
    if let Some(old) = kept {
        if old != record {
            // Same content under another manifest digest (a tag moved to a recompressed
            // manifest, or a record of an earlier release holding the digest of a local
            // manifest): the record follows the registry, the rootfs stays.
            crate::oci::write(to.target, &record).map_err(OciError::from)?;
        }
        return Ok(Outcome::UpToDate);
    }
    if let Some(kernel) = &kernel {
        let reference = kernel.origin.reference.as_str();
        kernel::extract(req.podman, kernel.id(), reference, &kernel_file, to.policy)?;
    }
    make_rootfs(req, to, &rootfs, staging.dir())?;
    crate::oci::write(staging.dir(), &record).map_err(OciError::from)?;
    staging.commit(to.target)?;
    Ok(Outcome::Installed)
}

/// The record of the image at `target` when it was made from `reference`.
fn installed_record(target: &Path, reference: &str) -> Option<OciRecord> {
    // An unreadable record makes the image one not known to be ours: --force decides.
    let record = crate::oci::read(target).ok().flatten();
    record.filter(|r| r.rootfs.reference == reference)
}

/// Whether the image at `target`, recorded as `old`, is what `new` would make: same image
/// (reference and id), same kernel (reference and id, or for a file or URL the same bytes
/// as the one just fetched to `kernel`), and its files in place. The manifest digest is
/// not compared: the image id is the digest of the configuration, which names every
/// layer's content, so the same id is the same tree whichever manifest carried it.
fn unchanged(old: &OciRecord, new: &OciRecord, target: &Path, kernel: &Path) -> bool {
    let files = ["rootfs", "kernel"]
        .iter()
        .all(|f| target.join(f).symlink_metadata().is_ok_and(|m| m.is_file()));
    let same_kernel = match (&old.kernel, &new.kernel) {
        (Some(old), Some(new)) => same_image(old, new),
        (None, None) => same_bytes(&target.join("kernel"), kernel),
        _ => false,
    };
    files && same_kernel && same_image(&old.rootfs, &new.rootfs) && old.config == new.config
}

/// Whether two origins name the same reference and the same content.
fn same_image(old: &Origin, new: &Origin) -> bool {
    old.reference == new.reference && old.image_id == new.image_id
}

/// Whether two files hold the same bytes (false when either cannot be read).
fn same_bytes(a: &Path, b: &Path) -> bool {
    let (Ok(mut a), Ok(mut b)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    if a.metadata().map(|m| m.len()).ok() != b.metadata().map(|m| m.len()).ok() {
        return false;
    }
    let (mut x, mut y) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let Ok(n) = read_full(&mut a, &mut x) else {
            return false;
        };
        let Ok(m) = read_full(&mut b, &mut y) else {
            return false;
        };
        if n != m || x[..n] != y[..m] {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Makes `dir/rootfs` from the tree of `image`, prepares it for the guest init and checks
/// it.
fn make_rootfs(
    req: Request<'_>,
    to: Install<'_>,
    image: &image::Resolved,
    dir: &Path,
) -> Result<(), PullError> {
    let reference = image.origin.reference.as_str();
    let usage = rootfs::measure(req.podman, image.id(), reference)?;
    if usage.fs_bytes() > to.policy.max_size {
        return Err(PullError::TooLarge {
            what: format!(
                "the rootfs of {reference} ({} bytes with headroom)",
                usage.fs_bytes()
            ),
            limit: to.policy.max_size,
        });
    }
    room(to, reference, usage.fs_bytes(), dir)?;
    let out = dir.join("rootfs");
    let mkfs = tool("mkfs.ext4")?;
    rootfs::build(req.podman, image.id(), usage, &mkfs, &out).map_err(|source| {
        OciError::Build {
            name: to.name.to_string(),
            image: reference.to_string(),
            dir: to.images_dir.to_path_buf(),
            source,
        }
    })?;
    seal(&out)?;
    install::prepare_rootfs(&out, to.name, to.sci)?;
    install::mark_guest_channel(dir, to.name)?;
    verify(&out, to.name, reference)
}

/// Refuses to start `mkfs.ext4` unless the rootfs file fits into `dir`'s file system with
/// the reserve every pull leaves free (see `limited`) to spare. Component pulls check the
/// space while they stream; `mkfs.ext4` cannot be watched like that, so the check is made
/// before, for the file's whole size (`needed`), which it can never take more of.
fn room(to: Install<'_>, reference: &str, needed: u64, dir: &Path) -> Result<(), PullError> {
    let Some(space) = super::limited::space(dir) else {
        return Ok(());
    };
    if space.fits(needed) {
        return Ok(());
    }
    Err(OciError::NoRoom {
        name: to.name.to_string(),
        image: reference.to_string(),
        dir: to.images_dir.to_path_buf(),
        needed,
        free: space.free,
        reserve: space.reserve,
    }
    .into())
}

/// Gives the rootfs `mkfs.ext4` made mode 0644. It created the file with 0666 less the
/// caller's umask, so under `umask 0` (or 002) anyone (or the group) could have written a
/// system image's rootfs once it is installed; every other file a pull writes has a fixed
/// mode already (the `limited` module). The file is still in the private staging
/// directory, so nobody can have opened it meanwhile.
fn seal(rootfs: &Path) -> Result<(), PullError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(rootfs)
        .map_err(super::io("open", rootfs))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(super::io("set the mode of", rootfs))
}

/// `e2fsck -fn`: the file system is whole, or the pull fails before anything is replaced.
fn verify(rootfs: &Path, name: &str, reference: &str) -> Result<(), PullError> {
    Cmd::new(tool("e2fsck")?)
        .args(["-f", "-n"])
        .arg(rootfs)
        .run()
        .map_err(|source| {
            OciError::Verify {
                name: name.to_string(),
                image: reference.to_string(),
                source,
            }
            .into()
        })
}

/// An e2fsprogs program, looked up where Debian and others install it.
fn tool(program: &str) -> Result<PathBuf, PullError> {
    let path = std::ffi::OsStr::new("/usr/sbin:/sbin:/usr/bin:/bin");
    Ok(flakes::process::resolve(program, Some(path)).map_err(OciError::Tool)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::ImageConfig;

    fn record(digest: &str, kernel: Option<&str>) -> OciRecord {
        let origin = |reference: &str, d: &str| Origin {
            reference: reference.into(),
            digest: Some(format!("sha256:{}", d.repeat(64))),
            image_id: d.repeat(64),
        };
        OciRecord {
            rootfs: origin("reg:5000/app:1", digest),
            kernel: kernel.map(|k| origin("reg:5000/kernel:1", k)),
            config: ImageConfig::default(),
        }
    }

    fn image_dir(kernel: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rootfs"), "fs").unwrap();
        std::fs::write(dir.path().join("kernel"), kernel).unwrap();
        dir
    }

    #[test]
    fn only_the_same_image_and_kernel_are_unchanged() {
        let installed = image_dir(b"k1");
        let fetched = tempfile::tempdir().unwrap();
        let same = fetched.path().join("same");
        let other = fetched.path().join("other");
        std::fs::write(&same, "k1").unwrap();
        std::fs::write(&other, "k2").unwrap();
        let target = installed.path();
        let old = record("a", None);
        assert!(unchanged(&old, &record("a", None), target, &same));
        assert!(!unchanged(&old, &record("a", None), target, &other));
        assert!(!unchanged(&old, &record("b", None), target, &same));
        assert!(!unchanged(&old, &record("a", Some("c")), target, &same));
        let old = record("a", Some("c"));
        assert!(unchanged(&old, &record("a", Some("c")), target, &same));
        assert!(!unchanged(&old, &record("a", Some("d")), target, &same));
        assert!(!unchanged(&old, &record("a", None), target, &same));
        // Another manifest digest of the same content (same image id) is no change.
        let mut moved = record("a", Some("c"));
        moved.rootfs.digest = Some(format!("sha256:{}", "f".repeat(64)));
        if let Some(kernel) = moved.kernel.as_mut() {
            kernel.digest = None;
        }
        assert!(unchanged(&old, &moved, target, &same));
        std::fs::remove_file(target.join("rootfs")).unwrap();
        assert!(!unchanged(&old, &record("a", Some("c")), target, &same));
    }

    #[test]
    fn files_compare_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        std::fs::write(&a, "same").unwrap();
        std::fs::write(&b, "same").unwrap();
        std::fs::write(&c, "sam").unwrap();
        assert!(same_bytes(&a, &b));
        assert!(!same_bytes(&a, &c));
        assert!(!same_bytes(&a, &dir.path().join("missing")));
    }
}
