// SPDX-License-Identifier: MIT
//! Whether a file that chooses what a VM runs may have been changed by another user.
//!
//! A VM's kernel, rootfs and initrd, the `guest-channel` marker beside its rootfs and the
//! record of an image made from an OCI image decide what runs in a VM started by root or
//! by the caller. Such a file is trusted only when nobody but root and the caller can
//! change it or what its path names: the file belongs to one of them and neither its group
//! nor others may write it, and every directory on the way from `/` belongs to one of them
//! and is writable by nobody else, unless it has the sticky bit (as `/tmp` has: then others
//! may add names to it but not replace the ones root or the caller own). Symbolic links on
//! the way are followed, and each must belong to root or the caller too.
//!
//! The check is by path, and it is enough: a path whose every component only root and the
//! caller may change cannot be made to name another file by anyone else between the check
//! and the VMM's own open. Passing the VMM an open descriptor (`/proc/self/fd/N`) instead
//! would protect against nobody the check does not already exclude, and would put a
//! varying descriptor number into the QEMU command line that keys saved VM states.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// How many symbolic links a path may pass through, as the kernel allows (`ELOOP`).
const MAX_LINKS: u32 = 40;

/// Why a file of a VM is not trusted.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// Someone other than root and the caller may change the file or what its path names.
    #[error("{what} {} may be changed by another user: {}; {}", path.display(), distrust.reason, distrust.hint)]
    Untrusted {
        /// What the file is (`rootfs`, `kernel`, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Who may change it, and the fix.
        distrust: Distrust,
    },
    /// The file or a directory on its way could not be looked at.
    #[error("cannot check {what} {}: {source}", path.display())]
    Io {
        /// What the file is.
        what: &'static str,
        /// The path that could not be looked at.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// Who besides root and the caller may change a file, and how to stop that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distrust {
    /// Who may change it (`others may write it (mode 666)`).
    pub reason: String,
    /// The fix (`run chmod go-w FILE`).
    pub hint: String,
}

/// Checks `path` and every directory and link on its way (see the module doc); a path
/// that does not exist passes, as far as it goes (whoever could create it is trusted), and
/// is left to its user to report.
pub fn check(what: &'static str, path: &Path) -> Result<(), TrustError> {
    let io = |path: &Path, source| TrustError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let untrusted = |distrust| TrustError::Untrusted {
        what,
        path: path.to_path_buf(),
        distrust,
    };
    let absolute = match path.is_absolute() {
        true => path.to_path_buf(),
        false => std::env::current_dir().map_err(|e| io(path, e))?.join(path),
    };
    let root = Path::new("/");
    let meta = std::fs::metadata(root).map_err(|e| io(root, e))?;
    directory(root, &meta).map_err(untrusted)?;
    let mut pending = components(&absolute);
    let mut at = PathBuf::from("/");
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            at.pop();
            continue;
        }
        let next = at.join(&name);
        let meta = match std::fs::symlink_metadata(&next) {
            Ok(meta) => meta,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(io(&next, err)),
        };
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(io(&next, std::io::Error::from_raw_os_error(libc::ELOOP)));
            }
            link(&next, &meta).map_err(untrusted)?;
            let target = std::fs::read_link(&next).map_err(|e| io(&next, e))?;
            if target.is_absolute() {
                at = PathBuf::from("/");
            }
            pending.extend(components(&target));
            continue;
        }
        match pending.is_empty() {
            true => file(&next, &meta),
            false => directory(&next, &meta),
        }
        .map_err(untrusted)?;
        at = next;
    }
    Ok(())
}

/// The normal and `..` components of `path`, last first (a stack to pop from).
fn components(path: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    names.reverse();
    names
}

/// Whether `uid` is root or the caller.
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

/// The file itself (`meta`, of `path`, not followed): root's or the caller's, and
/// writable by neither group nor others.
pub fn file(path: &Path, meta: &std::fs::Metadata) -> Result<(), Distrust> {
    let shown = path.display();
    if !trusted_owner(meta.uid()) {
        return Err(Distrust {
            reason: format!("it belongs to uid {}", meta.uid()),
            hint: format!(
                "pull the image again as the user who runs it, or run chown root {shown}"
            ),
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(Distrust {
            reason: format!("others may write it (mode {:o})", meta.mode() & 0o7777),
            hint: format!("run chmod go-w {shown}, or pull the image again"),
        });
    }
    Ok(())
}

/// A directory on the way: root's or the caller's, and writable by nobody else unless it
/// is sticky.
fn directory(path: &Path, meta: &std::fs::Metadata) -> Result<(), Distrust> {
    let shown = path.display();
    if !trusted_owner(meta.uid()) {
        return Err(Distrust {
            reason: format!("its directory {shown} belongs to uid {}", meta.uid()),
            hint: "keep the image in a directory that only root or its user may change".into(),
        });
    }
    if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
        return Err(Distrust {
            reason: format!(
                "others may replace it (its directory {shown} has mode {:o})",
                meta.mode() & 0o7777
            ),
            hint: format!("run chmod go-w {shown}"),
        });
    }
    Ok(())
}

/// A symbolic link on the way: root's or the caller's (its own mode means nothing; its
/// directory was checked before it).
fn link(path: &Path, meta: &std::fs::Metadata) -> Result<(), Distrust> {
    if trusted_owner(meta.uid()) {
        return Ok(());
    }
    Err(Distrust {
        reason: format!(
            "the link {} on its way belongs to uid {}",
            path.display(),
            meta.uid()
        ),
        hint: "point the flake at the image's own files".into(),
    })
}

/// The files of `flake`'s VM that choose what it runs, named: kernel, rootfs, initrd and
/// the guest init's marker beside the rootfs.
pub fn vm_files(flake: &flakes::config::vm::VmFlake) -> Vec<(&'static str, PathBuf)> {
    let runtime = &flake.runtime;
    let mut files = vec![
        ("kernel", runtime.kernel.clone()),
        ("rootfs", runtime.rootfs.clone()),
    ];
    files.extend(runtime.initrd.clone().map(|initrd| ("initrd", initrd)));
    let marker = runtime
        .rootfs
        .with_file_name(crate::pull::GUEST_CHANNEL_FILE);
    files.push(("guest init marker", marker));
    files
}

/// Checks every file of [`vm_files`]; the first one not trusted refuses the launch.
pub fn check_vm(flake: &flakes::config::vm::VmFlake) -> Result<(), TrustError> {
    vm_files(flake)
        .iter()
        .try_for_each(|(what, path)| check(what, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A private directory under the temporary directory, as the tests' files need.
    fn image() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rootfs");
        std::fs::write(&file, "root").unwrap();
        mode(&file, 0o644);
        (dir, file)
    }

    #[test]
    fn files_only_root_and_the_caller_may_change_pass() {
        let (dir, file) = image();
        check("rootfs", &file).unwrap();
        check("rootfs", &dir.path().join("missing")).unwrap();
        mode(&file, 0o600);
        check("rootfs", &file).unwrap();
    }

    #[test]
    fn a_writable_file_or_directory_is_refused() {
        let (dir, file) = image();
        for (file_mode, dir_mode, needle) in [
            (0o666, 0o700, "others may write it (mode 666)"),
            (0o664, 0o700, "others may write it (mode 664)"),
            (0o644, 0o777, "has mode 777"),
            (0o644, 0o770, "has mode 770"),
        ] {
            mode(&file, file_mode);
            mode(dir.path(), dir_mode);
            let err = check("rootfs", &file).unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains("chmod go-w"), "{err}");
            assert!(err.starts_with("rootfs "), "{err}");
        }
        mode(dir.path(), 0o1777);
        mode(&file, 0o644);
        check("rootfs", &file).unwrap();
    }

    #[test]
    fn links_are_followed_and_checked_on_both_sides() {
        let (dir, file) = image();
        let other = tempfile::tempdir().unwrap();
        let linked = other.path().join("link");
        std::os::unix::fs::symlink(&file, &linked).unwrap();
        check("rootfs", &linked).unwrap();
        mode(dir.path(), 0o777);
        assert!(check("rootfs", &linked).is_err(), "the target's directory");
        mode(dir.path(), 0o700);
        mode(other.path(), 0o777);
        assert!(check("rootfs", &linked).is_err(), "the link's directory");
        mode(other.path(), 0o700);
        let relative = other.path().join("up");
        std::os::unix::fs::symlink(
            Path::new("..").join(dir.path().file_name().unwrap()),
            &relative,
        )
        .unwrap();
        check("rootfs", &relative.join("rootfs")).unwrap();
        let looped = other.path().join("loop");
        std::os::unix::fs::symlink(&looped, &looped).unwrap();
        assert!(matches!(
            check("rootfs", &looped),
            Err(TrustError::Io { .. })
        ));
    }
}
