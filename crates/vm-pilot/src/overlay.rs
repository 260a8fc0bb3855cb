// SPDX-License-Identifier: MIT
//! The writable overlay disk of a VM instance, with the flake's includes, made without root.
//!
//! The guest init mounts the disk and uses its `rootfs_upper/` as the upper layer of an
//! overlay on the read-only root, so a file at `rootfs_upper/etc/x` is the guest's
//! `/etc/x`. The original mounted rootfs and overlay on the host with sudo to copy the
//! includes in; here they are staged in a directory and the file system is made from it
//! with `mkfs.ext4 -d`, as the caller. The image is sparse (it costs only what is written)
//! and written under a temporary name, then renamed: a failure leaves no disk behind.
//! Files keep their modes; their owner is the caller, unless the caller is root and a tar
//! archive records owners.

use std::path::{Path, PathBuf};

use flakes::config::Include;
use flakes::process::Cmd;
use flakes::size::ByteSize;

use crate::error::{Result, VmError};

/// Why the overlay disk of an instance could not be made.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// A staging directory could not be made.
    #[error("cannot prepare the overlay {}: cannot make {}: {source}; check the space and permissions there", overlay.display(), dir.display())]
    Staging {
        /// The overlay image.
        overlay: PathBuf,
        /// The directory.
        dir: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// An include could not be copied or unpacked.
    #[error("cannot prepare the overlay {}: include {}: {}; check the include of the flake", overlay.display(), include.display(), causes(source))]
    Include {
        /// The overlay image.
        overlay: PathBuf,
        /// The include (a path or a tar archive).
        include: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The finished image could not be put under its name.
    #[error("cannot prepare the overlay {}: {source}; check the space and permissions there", overlay.display())]
    Place {
        /// The overlay image.
        overlay: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// `err` and what it wraps (tar names the entry, its cause says what went wrong).
fn causes(err: &std::io::Error) -> String {
    let mut text = err.to_string();
    let mut next = std::error::Error::source(err);
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

/// Creates the overlay image `path` of `size` with `include` in its upper layer.
pub fn create(path: &Path, size: ByteSize, include: &Include, mkfs: &Path) -> Result<()> {
    let staging = sibling(path, "staging");
    let partial = sibling(path, "partial");
    let _ = std::fs::remove_dir_all(&staging);
    let _ = std::fs::remove_file(&partial);
    let result = stage(path, &staging, include)
        .map_err(VmError::from)
        .and_then(|()| {
            let mut options = String::from("lazy_itable_init=1,lazy_journal_init=1");
            if rustix::process::geteuid().is_root() {
                options.push_str(",root_owner=0:0");
            }
            Cmd::new(mkfs)
                .args(["-q", "-F", "-t", "ext4", "-m", "0", "-E", &options, "-d"])
                .arg(&staging)
                .arg(&partial)
                .arg(format!("{}k", size.bytes() / 1024))
                .run()?;
            // The guest's writable layer: only the caller reads or changes it, whatever
            // the umask (mkfs creates the file with the umask's mode).
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| OverlayError::Place {
                    overlay: path.to_path_buf(),
                    source,
                },
            )?;
            std::fs::rename(&partial, path).map_err(|source| {
                OverlayError::Place {
                    overlay: path.to_path_buf(),
                    source,
                }
                .into()
            })
        });
    let _ = std::fs::remove_dir_all(&staging);
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

/// Lays out `rootfs_upper/` (the includes) and `rootfs_work/` under `staging` for the
/// overlay image `overlay`.
fn stage(overlay: &Path, staging: &Path, include: &Include) -> Result<(), OverlayError> {
    let upper = staging.join("rootfs_upper");
    for dir in [&upper, &staging.join("rootfs_work")] {
        std::fs::create_dir_all(dir).map_err(|source| OverlayError::Staging {
            overlay: overlay.to_path_buf(),
            dir: dir.clone(),
            source,
        })?;
    }
    let fail = |include: &Path| {
        let include = include.to_path_buf();
        move |source| OverlayError::Include {
            overlay: overlay.to_path_buf(),
            include,
            source,
        }
    };
    for archive in &include.tar {
        let file = std::fs::File::open(archive).map_err(fail(archive))?;
        let mut tar = tar::Archive::new(file);
        tar.set_preserve_permissions(true);
        tar.set_preserve_ownerships(rustix::process::geteuid().is_root());
        tar.unpack(&upper).map_err(fail(archive))?;
    }
    for source in &include.path {
        let relative = source.strip_prefix("/").unwrap_or(source);
        copy_tree(source, &upper.join(relative)).map_err(fail(source))?;
    }
    Ok(())
}

/// Copies a file, symlink or directory tree (`cp -a` without owners).
fn copy_tree(source: &Path, target: &Path) -> std::io::Result<()> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let meta = std::fs::symlink_metadata(source)?;
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(source)?, target)
    } else if meta.is_dir() {
        std::fs::create_dir_all(target)?;
        for entry in std::fs::read_dir(source)? {
            let entry = entry?;
            copy_tree(&entry.path(), &target.join(entry.file_name()))?;
        }
        std::fs::set_permissions(target, meta.permissions())
    } else {
        std::fs::copy(source, target).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_are_staged_under_the_upper_layer() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("host/etc/app");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("conf"), "x=1").unwrap();
        std::os::unix::fs::symlink("conf", tree.join("link")).unwrap();
        let archive = dir.path().join("files.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&archive).unwrap());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o755);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        builder
            .append_data(&mut header, "usr/bin/tool", &b"#!sh\n"[..])
            .unwrap();
        builder.finish().unwrap();
        let include = Include {
            tar: vec![archive],
            path: vec![dir.path().join("host/etc/app")],
        };
        let staging = dir.path().join("staging");
        stage(&dir.path().join("overlay"), &staging, &include).unwrap();
        let upper = staging.join("rootfs_upper");
        assert_eq!(
            std::fs::read_to_string(upper.join("usr/bin/tool")).unwrap(),
            "#!sh\n"
        );
        let copied = upper
            .join(dir.path().strip_prefix("/").unwrap())
            .join("host/etc/app");
        assert_eq!(std::fs::read_to_string(copied.join("conf")).unwrap(), "x=1");
        assert_eq!(
            std::fs::read_link(copied.join("link")).unwrap(),
            Path::new("conf")
        );
        assert!(staging.join("rootfs_work").is_dir());
    }

    #[test]
    fn the_overlay_is_the_callers_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("overlay.ext4");
        let include = Include {
            tar: Vec::new(),
            path: Vec::new(),
        };
        let size = ByteSize::parse("8MiB").unwrap();
        create(&disk, size, &include, Path::new("/sbin/mkfs.ext4")).unwrap();
        let mode = std::fs::metadata(&disk).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "overlay mode {mode:o}");
    }

    #[test]
    fn a_missing_include_leaves_no_disk() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("overlay.ext4");
        let include = Include {
            tar: vec![dir.path().join("missing.tar")],
            path: Vec::new(),
        };
        let err = create(
            &disk,
            ByteSize::parse("8MiB").unwrap(),
            &include,
            Path::new("/sbin/mkfs.ext4"),
        )
        .unwrap_err()
        .to_string();
        let expected = format!(
            "cannot prepare the overlay {}: include {}: ",
            disk.display(),
            dir.path().join("missing.tar").display()
        );
        assert!(err.starts_with(&expected), "{err}");
        assert!(err.ends_with("; check the include of the flake"), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing left behind"
        );
    }
}
