// SPDX-License-Identifier: MIT
//! Fingerprints of provisioning inputs, and the staged build context (Containerfile plus
//! the host files it copies in).

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::beneath::{StageError, Staging};
use super::policy::HostPolicy;
use super::{fnv, tempdir_in, ProvisionError, Provisioner, FNV_OFFSET};

/// Fingerprint of everything but the images' contents: names, options and the include
/// files' paths, sizes, modes and modification times (recursively for directories).
pub fn fingerprint(p: &Provisioner<'_>) -> Result<u64, ProvisionError> {
    let mut text = format!(
        "inputs={:?};hostdeps={};execute={};",
        p.inputs(),
        p.flake.provisions_host_files(),
        p.flake.execute_systemfiles
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
    staging: Staging,
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

    fn new(p: &Provisioner<'_>) -> Result<Self, ProvisionError> {
        let dir = tempdir_in(&p.cache_dir)?;
        let staging = Staging::create(&dir).map_err(|e| stage_error(p, &dir, e))?;
        Ok(BuildContext { dir, staging })
    }

    /// Base, layers and delta, then the includes.
    pub fn stage(p: &Provisioner<'_>) -> Result<Self, ProvisionError> {
        let context = BuildContext::new(p)?;
        let inputs = p.inputs();
        let mut file = format!("FROM {}\n", inputs[0]);
        for image in &inputs[1..] {
            let _ = writeln!(file, "COPY --from={image} / /");
        }
        for (i, tar) in p.include.tar.iter().enumerate() {
            let name = format!("include-{i}.tar");
            context
                .staging
                .link_or_copy(tar, &name)
                .map_err(|e| stage_error(p, tar, e))?;
            // ADD unpacks a local archive (plain, gzip, bzip2 or xz) into the target.
            let _ = writeln!(file, "ADD {name} /");
        }
        if !p.include.path.is_empty() {
            let paths = context.subtree(p, "paths")?;
            for path in &p.include.path {
                paths
                    .copy(path, relative(path), true, None)
                    .map_err(|e| stage_error(p, path, e))?;
            }
            file.push_str("COPY paths/ /\n");
        }
        context.write(p, &file)?;
        Ok(context)
    }

    /// `FROM stage` plus the listed host files that exist (each copied as itself: a file, a
    /// link, or a directory without its contents, as `rsync --files-from` did).
    pub fn host_files(
        p: &Provisioner<'_>,
        stage: &str,
        listed: &[PathBuf],
    ) -> Result<Self, ProvisionError> {
        let context = BuildContext::new(p)?;
        let host = context.subtree(p, "host")?;
        let policy = HostPolicy::default();
        for path in listed {
            match host.copy(path, relative(path), false, Some(&policy)) {
                Ok(()) => {}
                Err(StageError::Refused { reason, .. }) => {
                    return Err(ProvisionError::RefusedHostFile {
                        flake: p.name.to_string(),
                        images: p.inputs().join(", "),
                        path: path.clone(),
                        reason,
                    })
                }
                Err(e) if e.is_missing_source() && p.ignore_sync_error => {}
                Err(e) if e.is_missing_source() => {
                    return Err(ProvisionError::MissingHostFile {
                        flake: p.name.to_string(),
                        path: path.clone(),
                    })
                }
                Err(e) => return Err(stage_error(p, path, e)),
            }
        }
        context.write(p, &format!("FROM {stage}\nCOPY host/ /\n"))?;
        Ok(context)
    }

    fn subtree(&self, p: &Provisioner<'_>, name: &str) -> Result<Staging, ProvisionError> {
        let dir = self.dir.join(name);
        Staging::create(&dir).map_err(|e| stage_error(p, &dir, e))
    }

    fn write(&self, p: &Provisioner<'_>, containerfile: &str) -> Result<(), ProvisionError> {
        self.staging
            .write_new("Containerfile", containerfile)
            .map_err(|e| stage_error(p, &self.containerfile(), e))
    }
}

fn stage_error(p: &Provisioner<'_>, path: &Path, source: StageError) -> ProvisionError {
    ProvisionError::Stage {
        flake: p.name.to_string(),
        path: path.to_path_buf(),
        source,
    }
}

/// An absolute host path as a path relative to `/`.
fn relative(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}
