// SPDX-License-Identifier: MIT
//! Provisioning: layered flakes (base + layers + delta), host includes and host
//! dependencies, assembled once into a local image and reused while the inputs are the same.
//!
//! The original copied every layer into each new container with `rsync` at every launch
//! (slow, losing file capabilities, root only). Here the instance's root filesystem is built
//! by podman itself (`podman build`, buildah's `COPY --from=IMAGE / /` per layer, which keeps
//! ownership, modes, symlinks, hard links and file capabilities), tagged
//! `localhost/flake-pilot/<flake>:<key>`, and launched like any plain image afterwards.
//!
//! Launch fast path, without any engine process: the cache record of the flake
//! (`<podman_ids_dir>/<uid>/cache/<flake>.record`) holds the fingerprint of the flake's
//! provisioning config and include files (paths, sizes, modification times), the
//! modification time of the image store's index, and the host files the images list with
//! the digest of their identities. While all are unchanged, the recorded image is used.
//! When the config or the store changed, the input images are inspected, the key
//! (fingerprint plus image IDs) is recomputed, and the image is rebuilt only when no image
//! with that key exists. Deletions made by an upper layer image are not carried over:
//! `COPY --from` copies files, it cannot express that a file of the base must disappear.
//!
//! Host dependencies (a delta flake always, a plain one with `check_host_dependencies`):
//! `/systemfiles` and `/removed` of every input image are read as lists of host paths and
//! checked (see [`hostfiles`]); each is read as a bounded tar stream, never copied out
//! whole (module `lists`). They are never executed unless the flake opts in with
//! `execute_systemfiles`; a script that is not run is no list and is skipped. The listed
//! host files that pass the host policy (module `policy`: only what any local user could
//! read, bounded in size) are copied beneath a staging directory (module `beneath`: no
//! write can leave it) into one more layer on top of the assembly, tagged
//! `<key>-<digest of the host files' identities>`. A changed host file changes the digest, so the next launch builds
//! that small layer again on the kept assembly below it; a file gone stops the launch
//! unless `%ignore_sync_error`.

mod beneath;
mod context;
pub mod hostfiles;
mod lists;
mod policy;
mod record;

use std::collections::BTreeSet;

use std::path::{Path, PathBuf};

use flakes::config::{ContainerFlake, Include};
use flakes::instance::InstanceError;
use flakes::process::ProcessError;
use flakes::FlakeName;

use crate::{Engine, PodmanError};
use context::BuildContext;
use record::Record;

/// 64-bit FNV-1a: stable across builds and platforms, enough to tell cache entries apart.
fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

pub use beneath::StageError;

/// Reads the regular file `name` directly inside `root` (an image's mount point), never
/// through a link that the image put there, at most `limit` bytes of UTF-8.
pub fn read_in_image(root: &Path, name: &str, limit: u64) -> Result<String, StageError> {
    beneath::read_beneath(root, name, limit)
}

/// Image repository of assembled flakes.
pub const ASSEMBLED_REPO: &str = "localhost/flake-pilot";
/// Label naming the flake an assembled image belongs to.
pub const ASSEMBLED_LABEL: &str = "io.flake-pilot.assembled";

/// Errors of provisioning.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// An include of the flake does not exist.
    #[error("{key} entry {} of flake '{flake}' does not exist; fix it in {}", path.display(), config.display())]
    MissingInclude {
        /// The flake.
        flake: String,
        /// `include.tar` or `include.path`.
        key: &'static str,
        /// The missing host path.
        path: PathBuf,
        /// The flake's configuration file.
        config: PathBuf,
    },
    /// An image name cannot be used.
    #[error("flake '{flake}': {source}")]
    BadImageName {
        /// The flake.
        flake: String,
        /// What is wrong with the name.
        source: flakes::image_ref::ImageRefError,
    },
    /// An image lists a host path that is not absolute and normal.
    #[error("image {image} of flake '{flake}' lists '{}' in /{list}: {reason}; only absolute \
        paths without '.', '..' or empty components are provisioned", entry.escape_debug())]
    BadHostEntry {
        /// The flake.
        flake: String,
        /// The image.
        image: String,
        /// `removed` or `systemfiles`.
        list: &'static str,
        /// The refused entry.
        entry: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// An image's list file cannot be read as a list.
    #[error("image {image} of flake '{flake}': /{list} {reason}")]
    BadHostList {
        /// The flake.
        flake: String,
        /// The image.
        image: String,
        /// `removed` or `systemfiles`.
        list: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A host file or include cannot be staged.
    #[error("flake '{flake}': cannot stage {}: {source}", path.display())]
    Stage {
        /// The flake.
        flake: String,
        /// The host path.
        path: PathBuf,
        /// Why.
        source: StageError,
    },
    /// An input image is neither present nor pullable.
    #[error("image {image} of flake '{flake}' is not available: {source}")]
    Unavailable {
        /// The flake.
        flake: String,
        /// The image.
        image: String,
        /// Why the pull failed.
        source: ProcessError,
    },
    /// Building the assembled image failed.
    #[error("assembling flake '{flake}' failed: {source}")]
    Build {
        /// The flake.
        flake: String,
        /// The failed command.
        source: ProcessError,
    },
    /// A host dependency listed by the image is missing (without `%ignore_sync_error`).
    #[error("host file {} listed in the image of flake '{flake}' does not exist; install it or call with %ignore_sync_error", path.display())]
    MissingHostFile {
        /// The flake.
        flake: String,
        /// The missing path.
        path: PathBuf,
    },
    /// A host file that an image lists is refused by the host policy (see the `policy` module);
    /// `%ignore_sync_error` does not override this.
    #[error("host file {} listed by the images of flake '{flake}' ({images}) is refused: {reason}; \
        images only get host files that any local user may read", path.display())]
    RefusedHostFile {
        /// The flake.
        flake: String,
        /// The input images whose lists are read.
        images: String,
        /// The listed path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Staging files failed.
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

/// What to assemble for one flake.
#[derive(Debug)]
pub struct Provisioner<'a> {
    /// The engine.
    pub engine: &'a Engine,
    /// The flake name.
    pub name: &'a FlakeName,
    /// The flake's main configuration file (for messages).
    pub config: &'a Path,
    /// The container settings.
    pub flake: &'a ContainerFlake,
    /// Host includes.
    pub include: &'a Include,
    /// Per-user cache directory for records and locks.
    pub cache_dir: PathBuf,
    /// Show engine output while assembling.
    pub progress: bool,
    /// Missing host dependencies are not an error.
    pub ignore_sync_error: bool,
}

impl Provisioner<'_> {
    /// The image to launch: the assembled one, built first if needed.
    pub fn image(&self) -> Result<String, PodmanError> {
        self.check_names()?;
        let fingerprint = context::fingerprint(self)?;
        let record_path = self.record_path();
        if let Some(image) = self.recorded(&record_path, fingerprint)? {
            return Ok(image);
        }
        self.prepare_cache_dir()?;
        collect_stale_work(&self.cache_dir);
        let _lock = self.lock()?;
        if let Some(image) = self.recorded(&record_path, fingerprint)? {
            return Ok(image);
        }
        self.assemble(&record_path, fingerprint)
    }

    /// Where the record of the flake's assembled image is kept.
    fn record_path(&self) -> PathBuf {
        self.cache_dir.join(format!("{}.record", self.name))
    }

    /// The recorded image, while config, store and listed host files are as recorded.
    fn recorded(&self, path: &Path, fingerprint: u64) -> Result<Option<String>, ProvisionError> {
        let Some(record) = Record::load(path).filter(|r| r.fresh(fingerprint)) else {
            return Ok(None);
        };
        let hosts = hostfiles::digest(self, &record.listed)?;
        Ok((hosts == record.hosts).then_some(record.image))
    }

    /// Builds what is missing (the assembly, then its host-file layer) and records it.
    fn assemble(&self, record_path: &Path, fingerprint: u64) -> Result<String, PodmanError> {
        let ids = self.input_ids()?;
        let key = context::key(fingerprint, &ids);
        let previous = Record::load(record_path);
        let stage = format!("{ASSEMBLED_REPO}/{}:{key:016x}", self.repo_name());
        let listed = match previous.as_ref().filter(|r| r.key == key) {
            Some(record) => record.listed.clone(),
            None if self.flake.provisions_host_files() => self.listed_host_files()?,
            None => Vec::new(),
        };
        let hosts = hostfiles::digest(self, &listed)?;
        if !self.engine.image_exists(&stage).succeeds()? {
            self.run_build(&BuildContext::stage(self)?, &stage)?;
        }
        let image = if listed.is_empty() {
            stage.clone()
        } else {
            let tag = format!("{stage}-{hosts:016x}");
            if !self.engine.image_exists(&tag).succeeds()? {
                self.run_build(&BuildContext::host_files(self, &stage, &listed)?, &tag)?;
            }
            tag
        };
        let (index, stamp) = self.store_index()?;
        let record = Record {
            fingerprint,
            key,
            image: image.clone(),
            stage,
            hosts,
            listed,
            index,
            stamp,
        };
        record.save(record_path)?;
        if let Some(previous) = previous {
            self.remove_outdated(&previous, &record);
        }
        Ok(image)
    }

    /// Removes the images of `previous` that `current` no longer uses (an image still in
    /// use by a running instance stays).
    fn remove_outdated(&self, previous: &Record, current: &Record) {
        let keep = [current.image.as_str(), current.stage.as_str()];
        let old: BTreeSet<&str> = [previous.image.as_str(), previous.stage.as_str()].into();
        for image in old.into_iter().filter(|i| !keep.contains(i)) {
            let _ = self
                .engine
                .podman()
                .args(["image", "rm", "--", image])
                .succeeds();
        }
    }

    fn check_names(&self) -> Result<(), ProvisionError> {
        for image in self.inputs() {
            flakes::image_ref::check(image).map_err(|source| ProvisionError::BadImageName {
                flake: self.name.to_string(),
                source,
            })?;
        }
        Ok(())
    }

    /// Images in application order: base (or the image itself), layers, delta.
    fn inputs(&self) -> Vec<&str> {
        match &self.flake.base {
            Some(base) => std::iter::once(base.as_str())
                .chain(self.flake.layers.iter().map(String::as_str))
                .chain(std::iter::once(self.flake.image.as_str()))
                .collect(),
            None => vec![self.flake.image.as_str()],
        }
    }

    /// Lower-case repository name for the flake (podman refuses upper case).
    fn repo_name(&self) -> String {
        self.name
            .as_str()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect()
    }

    /// Image IDs of the inputs, pulling the missing ones.
    fn input_ids(&self) -> Result<Vec<String>, PodmanError> {
        let mut ids = Vec::new();
        for image in self.inputs() {
            if !self.engine.image_exists(image).succeeds()? {
                self.pull(image)?;
            }
            let id = self
                .engine
                .podman()
                .args(["image", "inspect", "--format", "{{.Id}}", "--", image])
                .stdout()?;
            ids.push(id.trim().to_string());
        }
        Ok(ids)
    }

    fn pull(&self, image: &str) -> Result<(), PodmanError> {
        let result = if self.progress {
            self.engine.pull(image).status().map(|_| ())
        } else {
            self.engine.pull_with(&["--quiet"], image).run()
        };
        result.map_err(|source| {
            PodmanError::Provision(ProvisionError::Unavailable {
                flake: self.name.to_string(),
                image: image.to_string(),
                source,
            })
        })?;
        if !self.engine.image_exists(image).succeeds()? {
            let source = ProcessError::NotFound {
                program: format!("image {image} after pulling"),
            };
            return Err(ProvisionError::Unavailable {
                flake: self.name.to_string(),
                image: image.to_string(),
                source,
            }
            .into());
        }
        Ok(())
    }

    fn run_build(&self, context: &BuildContext, tag: &str) -> Result<(), PodmanError> {
        let label = format!("{ASSEMBLED_LABEL}={}", self.name);
        let build = self
            .engine
            .podman()
            .args([
                "build",
                "--force-rm",
                "--layers=false",
                "--label",
                &label,
                "-t",
                tag,
            ])
            .args((!self.progress).then_some("--quiet"))
            .arg("-f")
            .arg(context.containerfile())
            .arg("--")
            .arg(context.dir());
        let result = if self.progress {
            build.status().map(|_| ())
        } else {
            build.run()
        };
        result.map_err(|source| {
            ProvisionError::Build {
                flake: self.name.to_string(),
                source,
            }
            .into()
        })
    }

    /// Host paths listed in `/systemfiles` and `/removed` of the input images, checked,
    /// without duplicates, in order (a directory before what it contains).
    fn listed_host_files(&self) -> Result<Vec<PathBuf>, PodmanError> {
        let scratch = Scratch(tempdir_in(&self.cache_dir)?);
        let mut listed = BTreeSet::new();
        for (n, image) in self.inputs().into_iter().enumerate() {
            let id = self
                .engine
                .podman()
                .args(["create", "--replace", "--name", &self.scratch_name(n)])
                .args(["--entrypoint", "/", "--", image])
                .stdout()?;
            // `--replace` prints the name of a container it replaced before the new id.
            let id = id.lines().last().unwrap_or_default().trim().to_string();
            let lists = self.read_lists(image, &id, &scratch.0);
            // A container that cannot be removed fails the assembly, and the record goes,
            // so the next launch reads the lists again and replaces the container.
            let removed = self.engine.podman().args(["rm", "-f", "--", &id]).run();
            if removed.is_err() {
                let _ = std::fs::remove_file(self.record_path());
            }
            listed.extend(lists?);
            removed?;
        }
        Ok(listed.into_iter().collect())
    }

    /// The name of the container created to read the lists of input `n`. It is fixed per
    /// flake, caller and input and created with `--replace`, under the assembly lock: a
    /// container left by an earlier assembly (its `podman rm` failed, or the launcher was
    /// killed in between) is replaced by the next one, which removes it; with podman's
    /// random names such containers piled up for good.
    fn scratch_name(&self, n: usize) -> String {
        let uid = rustix::process::getuid().as_raw();
        format!("flake-pilot-lists-{}-{uid}-{n}", self.repo_name())
    }

    /// The entries of both lists of `image`, read through its created container `id`.
    fn read_lists(
        &self,
        image: &str,
        id: &str,
        scratch: &Path,
    ) -> Result<Vec<PathBuf>, PodmanError> {
        let mut entries = Vec::new();
        for list in hostfiles::LISTS {
            let Some(text) = self.read_list(image, id, list)? else {
                continue;
            };
            let text = if list == "systemfiles" && self.flake.execute_systemfiles {
                // Opted in by `execute_systemfiles: true`: the image's script runs on the
                // host, as the caller, and prints the list (`sh /systemfiles`).
                let target = scratch.join(format!("{id}-{list}"));
                std::fs::write(&target, &text).map_err(|source| ProvisionError::Io {
                    action: "write",
                    path: target.clone(),
                    source,
                })?;
                let path = Some(std::ffi::OsStr::new("/usr/bin:/bin"));
                let sh = flakes::process::resolve("sh", path)?;
                flakes::process::Cmd::new(sh).arg(&target).stdout()?
            } else {
                text
            };
            if text.starts_with("#!") {
                // A generator script that the flake did not opt in to run: not a list.
                tracing::info!(image, list, "not running the image's script");
                continue;
            }
            entries.extend(hostfiles::parse(self, image, list, &text)?);
        }
        Ok(entries)
    }

    /// The text of `/list` in container `id` of `image` (see [`lists`]), `None` without one.
    fn read_list(
        &self,
        image: &str,
        id: &str,
        list: &'static str,
    ) -> Result<Option<String>, PodmanError> {
        let cp = self
            .engine
            .podman()
            .args(["cp", "--", &format!("{id}:/{list}"), "-"]);
        lists::read(&cp).map_err(|e| match e {
            lists::ListError::Engine(source) => source.into(),
            lists::ListError::Refused(reason) => ProvisionError::BadHostList {
                flake: self.name.to_string(),
                image: image.to_string(),
                list,
                reason,
            }
            .into(),
        })
    }

    /// Modification time of the image store's index, and its path.
    fn store_index(&self) -> Result<(PathBuf, String), PodmanError> {
        let info = self
            .engine
            .podman()
            .args([
                "info",
                "--format",
                "{{.Store.GraphRoot}} {{.Store.GraphDriverName}}",
            ])
            .stdout()?;
        let (root, driver) = info
            .trim()
            .split_once(' ')
            .unwrap_or((info.trim(), "overlay"));
        let index = Path::new(root).join(format!("{driver}-images/images.json"));
        let stamp = record::stamp(&index);
        Ok((index, stamp))
    }

    fn prepare_cache_dir(&self) -> Result<(), ProvisionError> {
        std::fs::create_dir_all(&self.cache_dir).map_err(|source| ProvisionError::Io {
            action: "create",
            path: self.cache_dir.clone(),
            source,
        })
    }

    fn lock(&self) -> Result<std::fs::File, PodmanError> {
        let path = self.cache_dir.join(format!("{}.lock", self.name));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| InstanceError::Io {
                action: "open",
                path: path.clone(),
                source,
            })?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            InstanceError::Io {
                action: "lock",
                path,
                source: e.into(),
            }
        })?;
        Ok(file)
    }
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh private directory below `parent`.
fn tempdir_in(parent: &Path) -> Result<PathBuf, ProvisionError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = parent.join(format!("work-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| ProvisionError::Io {
        action: "create",
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// Removes the staging directories (`work-PID-*`) of launchers that are gone: one killed
/// while assembling (`kill -9`, a crash) cannot remove its own, and each holds a copy of
/// every include. A directory whose launcher pid is alive is left alone.
fn collect_stale_work(cache_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(cache_dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix("work-"))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests;
