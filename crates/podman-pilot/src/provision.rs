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
//! provisioning config and include files (paths, sizes, modification times) and the
//! modification time of the image store's index. While both are unchanged, the recorded
//! image is used. When either changed, the input images are inspected, the key (fingerprint
//! plus image IDs) is recomputed, and the image is rebuilt only when no image with that key
//! exists. Deletions made by an upper layer image are not carried over: `COPY --from`
//! copies files, it cannot express that a file of the base must disappear.
//!
//! `/systemfiles` and `/removed` of the assembled image are read as lists of host paths to
//! provision (never executed); the listed host files that exist are copied in.

mod context;
mod record;

use std::path::{Path, PathBuf};

use flakes::config::{ContainerFlake, Include};
use flakes::instance::InstanceError;
use flakes::process::ProcessError;
use flakes::FlakeName;

use crate::{Engine, PodmanError};
use context::BuildContext;
use record::Record;

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
    #[error("image name '{image}' of flake '{flake}' contains white space or control characters")]
    BadImageName {
        /// The flake.
        flake: String,
        /// The image name.
        image: String,
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
        let record_path = self.cache_dir.join(format!("{}.record", self.name));
        if let Some(image) = Record::load(&record_path).and_then(|r| r.fresh(fingerprint)) {
            return Ok(image);
        }
        self.prepare_cache_dir()?;
        collect_stale_work(&self.cache_dir);
        let _lock = self.lock()?;
        if let Some(image) = Record::load(&record_path).and_then(|r| r.fresh(fingerprint)) {
            return Ok(image);
        }
        let ids = self.input_ids()?;
        let tag = format!(
            "{ASSEMBLED_REPO}/{}:{:016x}",
            self.repo_name(),
            context::key(fingerprint, &ids)
        );
        if !self.engine.image_exists(&tag).succeeds()? {
            self.build(&tag)?;
        }
        let previous = Record::load(&record_path).map(|r| r.image);
        Record::new(fingerprint, tag.clone(), self.store_index()?).save(&record_path)?;
        if let Some(old) = previous.filter(|old| *old != tag) {
            let _ = self.engine.podman().args(["image", "rm", &old]).succeeds();
        }
        Ok(tag)
    }

    fn check_names(&self) -> Result<(), ProvisionError> {
        for image in self.inputs() {
            if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ProvisionError::BadImageName {
                    flake: self.name.to_string(),
                    image: image.to_string(),
                });
            }
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
                .args(["image", "inspect", "--format", "{{.Id}}", image])
                .stdout()?;
            ids.push(id.trim().to_string());
        }
        Ok(ids)
    }

    fn pull(&self, image: &str) -> Result<(), PodmanError> {
        let pull = self.engine.pull(image);
        let result = if self.progress {
            pull.status().map(|_| ())
        } else {
            pull.arg("--quiet").stdout().map(|_| ())
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

    fn build(&self, tag: &str) -> Result<(), PodmanError> {
        let context = BuildContext::stage(self)?;
        let first = if self.flake.check_host_dependencies {
            format!("{tag}-stage")
        } else {
            tag.to_string()
        };
        self.run_build(&context, &first)?;
        if self.flake.check_host_dependencies {
            let result = self.add_host_dependencies(&first, tag);
            let _ = self
                .engine
                .podman()
                .args(["image", "rm", &first])
                .succeeds();
            result?;
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
                "-f",
            ])
            .arg(context.containerfile())
            .arg(context.dir());
        let result = if self.progress {
            build.status().map(|_| ())
        } else {
            build.arg("--quiet").stdout().map(|_| ())
        };
        result.map_err(|source| {
            ProvisionError::Build {
                flake: self.name.to_string(),
                source,
            }
            .into()
        })
    }

    fn add_host_dependencies(&self, stage: &str, tag: &str) -> Result<(), PodmanError> {
        let listed = self.listed_host_files(stage)?;
        let context = BuildContext::host_files(self, stage, &listed)?;
        self.run_build(&context, tag)
    }

    /// Paths listed in the image's `/systemfiles` and `/removed`, read through a created
    /// (never started) container.
    fn listed_host_files(&self, image: &str) -> Result<Vec<PathBuf>, PodmanError> {
        let podman = || self.engine.podman();
        let id = podman()
            .args(["create", "--entrypoint", "/", image])
            .stdout()?;
        let id = id.trim().to_string();
        let scratch = tempdir_in(&self.cache_dir)?;
        let mut listed = Vec::new();
        for file in ["systemfiles", "removed"] {
            let target = scratch.join(file);
            if podman()
                .args(["cp", &format!("{id}:/{file}")])
                .arg(&target)
                .succeeds()?
            {
                let text = if file == "systemfiles" && self.flake.execute_systemfiles {
                    // Opted in by `execute_systemfiles: true`: the image's script runs on the
                    // host, as the caller, and prints the list (`sh /systemfiles`).
                    let path = Some(std::ffi::OsStr::new("/usr/bin:/bin"));
                    let sh = flakes::process::resolve("sh", path)?;
                    flakes::process::Cmd::new(sh).arg(&target).stdout()?
                } else {
                    std::fs::read_to_string(&target).unwrap_or_default()
                };
                listed.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| l.starts_with('/'))
                        .map(PathBuf::from),
                );
            }
        }
        let _ = podman().args(["rm", "-f", &id]).succeeds();
        let _ = std::fs::remove_dir_all(&scratch);
        Ok(listed)
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
