// SPDX-License-Identifier: MIT
//! Fingerprints of provisioning inputs, and the staged build context (Containerfile plus
//! the host files it copies in).

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{tempdir_in, ProvisionError, Provisioner};

/// 64-bit FNV-1a: stable across builds and platforms, enough to tell cache entries apart.
fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Fingerprint of everything but the images' contents: names, options and the include
/// files' paths, sizes, modes and modification times (recursively for directories).
pub fn fingerprint(p: &Provisioner<'_>) -> Result<u64, ProvisionError> {
    let mut text = format!(
        "inputs={:?};hostdeps={};",
        p.inputs(),
        p.flake.check_host_dependencies
    );
    for tar in &p.include.tar {
        describe(p, "include.tar", tar, &mut text)?;
    }
    for path in &p.include.path {
        describe(p, "include.path", path, &mut text)?;
    }
    Ok(fnv(FNV_OFFSET, text.as_bytes()))
}

/// The cache key: the fingerprint plus the IDs of the input images.
pub fn key(fingerprint: u64, image_ids: &[String]) -> u64 {
    image_ids
        .iter()
        .fold(fnv(FNV_OFFSET, &fingerprint.to_le_bytes()), |h, id| {
            fnv(h, id.as_bytes())
        })
}

fn describe(
    p: &Provisioner<'_>,
    key: &'static str,
    path: &Path,
    out: &mut String,
) -> Result<(), ProvisionError> {
    let meta = std::fs::symlink_metadata(path).map_err(|_| ProvisionError::MissingInclude {
        flake: p.name.to_string(),
        key,
        path: path.to_path_buf(),
        config: p.config.to_path_buf(),
    })?;
    let _ = write!(
        out,
        "{}:{}:{}:{}.{};",
        path.display(),
        meta.len(),
        meta.mode(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|source| ProvisionError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            describe(p, key, &entry, out)?;
        }
    }
    Ok(())
}

/// A staged build context, removed when dropped.
#[derive(Debug)]
pub struct BuildContext {
    dir: PathBuf,
}

impl Drop for BuildContext {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl BuildContext {
    /// The context directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its Containerfile.
    pub fn containerfile(&self) -> PathBuf {
        self.dir.join("Containerfile")
    }

    /// Base, layers and delta, then the includes.
    pub fn stage(p: &Provisioner<'_>) -> Result<Self, ProvisionError> {
        let context = BuildContext {
            dir: tempdir_in(&p.cache_dir)?,
        };
        let inputs = p.inputs();
        let mut file = format!("FROM {}\n", inputs[0]);
        for image in &inputs[1..] {
            let _ = writeln!(file, "COPY --from={image} / /");
        }
        for (i, tar) in p.include.tar.iter().enumerate() {
            let name = format!("include-{i}.tar");
            context.copy_file(tar, &context.dir.join(&name))?;
            // ADD unpacks a local archive (plain, gzip, bzip2 or xz) into the target.
            let _ = writeln!(file, "ADD {name} /");
        }
        if !p.include.path.is_empty() {
            for path in &p.include.path {
                context.copy_tree(path, &context.dir.join("paths").join(relative(path)))?;
            }
            file.push_str("COPY paths/ /\n");
        }
        context.write(&file)?;
        Ok(context)
    }

    /// `FROM stage` plus the listed host files that exist.
    pub fn host_files(
        p: &Provisioner<'_>,
        stage: &str,
        listed: &[PathBuf],
    ) -> Result<Self, ProvisionError> {
        let context = BuildContext {
            dir: tempdir_in(&p.cache_dir)?,
        };
        let mut file = format!("FROM {stage}\n");
        let root = context.dir.join("host");
        std::fs::create_dir_all(&root).map_err(|source| ProvisionError::Io {
            action: "create",
            path: root.clone(),
            source,
        })?;
        for path in listed {
            if std::fs::symlink_metadata(path).is_err() {
                if p.ignore_sync_error {
                    continue;
                }
                return Err(ProvisionError::MissingHostFile {
                    flake: p.name.to_string(),
                    path: path.clone(),
                });
            }
            context.copy_tree(path, &root.join(relative(path)))?;
        }
        file.push_str("COPY host/ /\n");
        context.write(&file)?;
        Ok(context)
    }

    fn write(&self, containerfile: &str) -> Result<(), ProvisionError> {
        let path = self.containerfile();
        std::fs::write(&path, containerfile).map_err(|source| ProvisionError::Io {
            action: "write",
            path,
            source,
        })
    }

    fn copy_file(&self, from: &Path, to: &Path) -> Result<(), ProvisionError> {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|source| ProvisionError::Io {
                action: "create",
                path: parent.into(),
                source,
            })?;
        }
        // A hard link avoids copying large archives; fall back to a copy across filesystems.
        if std::fs::hard_link(from, to).is_ok() {
            return Ok(());
        }
        std::fs::copy(from, to)
            .map(|_| ())
            .map_err(|source| ProvisionError::Io {
                action: "copy",
                path: from.into(),
                source,
            })
    }

    /// `cp -a`-like copy keeping symlinks and modes (`cp -a FROM TO`).
    fn copy_tree(&self, from: &Path, to: &Path) -> Result<(), ProvisionError> {
        let io = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| ProvisionError::Io {
                action,
                path,
                source,
            }
        };
        let meta = std::fs::symlink_metadata(from).map_err(io("inspect", from))?;
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(from).map_err(io("read", from))?;
            std::os::unix::fs::symlink(target, to).map_err(io("create", to))
        } else if meta.is_dir() {
            std::fs::create_dir_all(to).map_err(io("create", to))?;
            std::fs::set_permissions(to, meta.permissions()).map_err(io("chmod", to))?;
            for entry in std::fs::read_dir(from).map_err(io("read", from))? {
                let entry = entry.map_err(io("read", from))?;
                self.copy_tree(&entry.path(), &to.join(entry.file_name()))?;
            }
            Ok(())
        } else {
            std::fs::copy(from, to)
                .map(|_| ())
                .map_err(io("copy", from))
        }
    }
}

/// An absolute host path as a path relative to `/`.
fn relative(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}
