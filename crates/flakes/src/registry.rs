// SPDX-License-Identifier: MIT
//! A registration directory (`flakes_dir`): `NAME.yaml` plus optional `NAME.d/` per flake.
//!
//! Changes to a directory are serialised by an exclusive `flock` on its lock file
//! `.registry.lock` ([`Registry::lock`]): the check that a flake name is free and the rename
//! that claims it happen under one hold, so two registrations of one name cannot both
//! succeed. The lock file is private to the directory's writer (mode 0600): a lock on the
//! directory itself could be taken by any user who can read it, who could then stall root's
//! registrations for as long as they liked. A registration stages its YAML as
//! `.NAME.yaml.PID.tmp` under that hold; one whose writer was killed is collected by the
//! next holder ([`Registry::clean_staged`]).

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::config::{load_flake, ConfigError, Flake};
use crate::host::Mode;
use crate::names::FlakeName;

/// Errors while looking up registrations.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No registry holds the flake.
    #[error("no flake named '{name}' is registered (looked for {}); register it with flake-ctl",
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" and "))]
    NotFound {
        /// The flake name.
        name: String,
        /// Files looked for.
        searched: Vec<PathBuf>,
    },
    /// The registration directory cannot be listed.
    #[error("cannot list flakes in {}: {source}", dir.display())]
    List {
        /// Directory involved.
        dir: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The flake's configuration is broken.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// An exclusive hold on a registration directory; released when dropped or when the
/// holder dies.
#[derive(Debug)]
pub struct RegistryLock {
    _file: File,
}

/// The lock file of a registration directory (hidden, and not a `.yaml`: never a flake).
pub const LOCK_FILE: &str = ".registry.lock";

/// One registration directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    dir: PathBuf,
    mode: Mode,
}

impl Registry {
    /// A registry rooted at `dir`.
    pub fn new(dir: PathBuf, mode: Mode) -> Self {
        Registry { dir, mode }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// System or user registrations.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// `NAME.yaml` of flake `name`.
    pub fn config_path(&self, name: &FlakeName) -> PathBuf {
        self.dir.join(format!("{name}.yaml"))
    }

    /// `NAME.d/` of flake `name`.
    pub fn fragments_dir(&self, name: &FlakeName) -> PathBuf {
        self.dir.join(format!("{name}.d"))
    }

    /// Takes the directory's exclusive lock, waiting for a concurrent holder. The directory
    /// must exist.
    pub fn lock(&self) -> std::io::Result<RegistryLock> {
        let file = self.open_lock()?;
        flock(&file, FlockOperation::LockExclusive)?;
        Ok(RegistryLock { _file: file })
    }

    /// Takes the directory's lock if nobody holds it and the caller may write it.
    pub fn try_lock(&self) -> Option<RegistryLock> {
        let file = self.open_lock().ok()?;
        flock(&file, FlockOperation::NonBlockingLockExclusive).ok()?;
        Some(RegistryLock { _file: file })
    }

    /// Opens (creating, mode 0600, never through a symlink) the lock file.
    fn open_lock(&self) -> std::io::Result<File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0))
            .open(self.dir.join(LOCK_FILE))
    }

    /// The name a registration of `name` stages its YAML under before renaming it into place.
    pub fn staged_path(&self, name: &FlakeName) -> PathBuf {
        self.dir
            .join(format!(".{name}.yaml.{}.tmp", std::process::id()))
    }

    /// Removes YAML files staged by registrations that never finished (killed writers).
    /// Every writer stages under the lock, so while `_held` is ours every staged file is
    /// stale. Best effort: what cannot be removed stays hidden and harmless.
    pub fn clean_staged(&self, _held: &RegistryLock) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let file = entry.file_name();
            let staged = file
                .to_str()
                .is_some_and(|f| f.starts_with('.') && f.ends_with(".tmp") && f.contains(".yaml."));
            if staged && entry.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// True when `NAME.yaml` exists.
    pub fn contains(&self, name: &FlakeName) -> bool {
        self.config_path(name).is_file()
    }

    /// Loads and validates flake `name`.
    pub fn load(&self, name: &FlakeName) -> Result<Flake, RegistryError> {
        Ok(load_flake(name.clone(), &self.config_path(name))?)
    }

    /// Names of all registered flakes, sorted. The name is the file name minus `.yaml` (the
    /// original cut at the first dot, listing `python3.11` as `python3`).
    pub fn names(&self) -> Result<Vec<FlakeName>, RegistryError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(RegistryError::List {
                    dir: self.dir.clone(),
                    source,
                })
            }
        };
        let mut names: Vec<FlakeName> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let file = e.file_name();
                let stem = file.to_str()?.strip_suffix(".yaml")?.to_string();
                FlakeName::new(&stem).ok()
            })
            .collect();
        names.sort();
        Ok(names)
    }
}

/// Finds flake `name` in `registries`, first match wins.
pub fn find(registries: &[Registry], name: &FlakeName) -> Result<Flake, RegistryError> {
    holder(registries, name)?.load(name)
}

/// The first of `registries` that holds flake `name` (the one [`find`] loads it from).
pub fn holder<'r>(
    registries: &'r [Registry],
    name: &FlakeName,
) -> Result<&'r Registry, RegistryError> {
    registries
        .iter()
        .find(|registry| registry.contains(name))
        .ok_or_else(|| RegistryError::NotFound {
            name: name.to_string(),
            searched: registries.iter().map(|r| r.config_path(name)).collect(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Engine;

    const FLAKE: &str = "container:\n  name: localhost/busybox\n  host_app_path: /usr/bin/a\n";

    fn write(dir: &Path, file: &str, text: &str) {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn system_registration_shadows_user_registration() {
        let sys = tempfile::tempdir().unwrap();
        let usr = tempfile::tempdir().unwrap();
        write(sys.path(), "a.yaml", FLAKE);
        write(usr.path(), "a.yaml", &FLAKE.replace("busybox", "other"));
        write(usr.path(), "b.yaml", FLAKE);
        let regs = [
            Registry::new(sys.path().into(), Mode::System),
            Registry::new(usr.path().into(), Mode::User),
        ];
        let a = find(&regs, &FlakeName::new("a").unwrap()).unwrap();
        assert!(matches!(a.engine, Engine::Container(ref c) if c.image == "localhost/busybox"));
        assert!(find(&regs, &FlakeName::new("b").unwrap()).is_ok());
        let err = find(&regs, &FlakeName::new("c").unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.yaml") && err.contains("flake-ctl"), "{err}");
    }

    #[test]
    fn the_lock_excludes_a_second_holder_and_cleans_staged_files() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path().into(), Mode::System);
        write(dir.path(), ".a.yaml.4242.tmp", FLAKE);
        write(dir.path(), "a.yaml", FLAKE);
        let held = reg.lock().unwrap();
        assert!(reg.try_lock().is_none());
        let lock = std::fs::metadata(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&lock.permissions()) & 0o777,
            0o600,
            "only the directory's writer may take the lock"
        );
        reg.clean_staged(&held);
        assert!(!dir.path().join(".a.yaml.4242.tmp").exists());
        assert!(dir.path().join("a.yaml").exists());
        drop(held);
        assert!(reg.try_lock().is_some());
    }

    #[test]
    fn names_keep_dots_and_skip_other_files() {
        let dir = tempfile::tempdir().unwrap();
        for file in [
            "python3.11.yaml",
            "aws.yaml",
            "aws.d/x.yaml",
            "notes.txt",
            ".hidden.yaml",
        ] {
            write(dir.path(), file, FLAKE);
        }
        let reg = Registry::new(dir.path().into(), Mode::System);
        let names: Vec<String> = reg.names().unwrap().iter().map(|n| n.to_string()).collect();
        assert_eq!(names, ["aws", "python3.11"]);
    }
}
