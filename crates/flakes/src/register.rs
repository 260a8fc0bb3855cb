// SPDX-License-Identifier: MIT
//! Registering and removing a flake on disk: the app symlink, `NAME.yaml` and `NAME.d/`.
//!
//! Registration checks everything before it touches anything, then stages the new files
//! under temporary names and renames them into place. Every step records how to undo it;
//! on any error the steps taken so far are undone in reverse, so a failed registration
//! leaves no symlink, no YAML and no `NAME.d` behind (the original left both, and the next
//! attempt failed with "already exists").
//!
//! `--force` replaces only what is recognisably a flake: a symlink to a launcher, or a
//! dangling symlink. A real program at the app path is never replaced or removed.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::load::load_raw;
use crate::names::{FlakeName, NameError};
use crate::registry::Registry;

/// File names of the launchers an app symlink may point to.
pub const PILOT_NAMES: [&str; 2] = ["podman-pilot", "firecracker-pilot"];

/// Errors while registering or removing a flake.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The app path is not absolute.
    #[error("app path '{}' must be absolute, e.g. /usr/bin/{}", app.display(),
        app.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())]
    NotAbsolute {
        /// The app path.
        app: PathBuf,
    },
    /// The app path has no usable file name.
    #[error("app path '{}': {source}", app.display())]
    BadName {
        /// The app path.
        app: PathBuf,
        /// Why the name is refused.
        source: NameError,
    },
    /// Something exists at the app path and `--force` was not given.
    #[error("{} already exists; pass --force to replace a flake registration", app.display())]
    AppExists {
        /// The app path.
        app: PathBuf,
    },
    /// Something that is not a flake exists at the app path.
    #[error("refusing to touch {}: it is {what}, not a flake; choose another app path", app.display())]
    NotAFlake {
        /// The app path.
        app: PathBuf,
        /// What was found there.
        what: String,
    },
    /// Another app path already uses the flake name.
    #[error("flake '{name}' is already registered for {} ({}); remove it first or choose an app \
        path with another file name", other.display(), config.display())]
    NameTaken {
        /// The flake name.
        name: FlakeName,
        /// The app path it is registered for.
        other: PathBuf,
        /// Its configuration file.
        config: PathBuf,
    },
    /// The flake's configuration exists without the app symlink (or vice versa).
    #[error("flake '{name}' is already registered ({}); pass --force to replace it", config.display())]
    AlreadyRegistered {
        /// The flake name.
        name: FlakeName,
        /// Its configuration file.
        config: PathBuf,
    },
    /// Removal of an app that is not registered here.
    #[error("no registration for {} in {}; pass --force to clean up what is left", app.display(),
        dir.display())]
    NotRegistered {
        /// The app path.
        app: PathBuf,
        /// The registration directory.
        dir: PathBuf,
    },
    /// `remove` of one engine was asked to remove a flake of the other.
    #[error("flake '{name}' is a {engine} flake; remove it with flake-ctl {engine} {}remove \
        --app {}", if *user { "--user " } else { "" }, app.display())]
    WrongEngine {
        /// The flake name.
        name: FlakeName,
        /// The engine of its registration (`podman` or `firecracker`).
        engine: &'static str,
        /// The app path.
        app: PathBuf,
        /// A user registration.
        user: bool,
    },
    /// A filesystem operation failed.
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

/// Result alias for this module.
pub type Result<T, E = RegisterError> = std::result::Result<T, E>;

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RegisterError + 'a {
    move |source| RegisterError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The flake name of an app path: its file name, validated.
pub fn app_name(app: &Path) -> Result<FlakeName> {
    if !app.is_absolute() {
        return Err(RegisterError::NotAbsolute { app: app.into() });
    }
    let file = app
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    FlakeName::new(&file).map_err(|source| RegisterError::BadName {
        app: app.into(),
        source,
    })
}

/// What is at an app path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AppState {
    Missing,
    /// A symlink to one of the launchers, or a dangling one; holds the link target.
    FlakeLink(PathBuf),
    Other(String),
}

fn app_state(app: &Path) -> Result<AppState> {
    let meta = match std::fs::symlink_metadata(app) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(AppState::Missing),
        Err(source) => {
            return Err(RegisterError::Io {
                action: "inspect",
                path: app.into(),
                source,
            })
        }
    };
    if !meta.file_type().is_symlink() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "a regular file"
        };
        return Ok(AppState::Other(what.into()));
    }
    let target = std::fs::read_link(app).map_err(io("read the symlink", app))?;
    let is_pilot = target
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| PILOT_NAMES.contains(&n));
    let dangling = !app.exists();
    if is_pilot || dangling {
        Ok(AppState::FlakeLink(target))
    } else {
        Ok(AppState::Other(format!(
            "a symlink to {}",
            target.display()
        )))
    }
}

/// `host_app_path` recorded in an existing registration, if it can be read.
fn registered_app(config: &Path) -> Option<PathBuf> {
    let raw = load_raw(config).ok()?;
    let from_container = raw.container.and_then(|c| c.host_app_path);
    let from_vm = raw.vm.and_then(|v| v.host_app_path);
    from_container.or(from_vm).map(PathBuf::from)
}

/// The engine a registration is for, as `flake-ctl` names it (`podman` or `firecracker`);
/// `None` when the file cannot be read or names none.
pub fn registered_engine(config: &Path) -> Option<&'static str> {
    let raw = load_raw(config).ok()?;
    match (raw.container, raw.vm) {
        (Some(_), _) => Some("podman"),
        (None, Some(_)) => Some("firecracker"),
        (None, None) => None,
    }
}

/// A flake to register.
#[derive(Debug, Clone)]
pub struct Registration<'a> {
    /// Where the flake's YAML goes.
    pub registry: &'a Registry,
    /// Absolute app path on the host.
    pub app: PathBuf,
    /// Absolute path of the launcher the app symlink points to.
    pub pilot: PathBuf,
    /// The flake's YAML text.
    pub yaml: String,
    /// Replace an existing registration of this app path.
    pub force: bool,
}

impl Registration<'_> {
    /// Checks that the registration can proceed, without side effects.
    pub fn check(&self) -> Result<FlakeName> {
        let name = app_name(&self.app)?;
        match app_state(&self.app)? {
            AppState::Other(what) => {
                return Err(RegisterError::NotAFlake {
                    app: self.app.clone(),
                    what,
                })
            }
            AppState::FlakeLink(_) if !self.force => {
                return Err(RegisterError::AppExists {
                    app: self.app.clone(),
                })
            }
            AppState::FlakeLink(_) | AppState::Missing => {}
        }
        let config = self.registry.config_path(&name);
        if config.exists() {
            match registered_app(&config) {
                Some(other) if other != self.app => {
                    return Err(RegisterError::NameTaken {
                        name,
                        other,
                        config,
                    })
                }
                _ if !self.force => return Err(RegisterError::AlreadyRegistered { name, config }),
                _ => {}
            }
        }
        Ok(name)
    }

    /// Checks, then writes the registration atomically. The check and the write happen
    /// under the registry's lock, so of two registrations of one name only one succeeds.
    pub fn commit(&self) -> Result<FlakeName> {
        // Refusals that need no lock come before anything is created; the check is made
        // again under the lock, where it counts.
        self.check()?;
        let mut undo = Undo::default();
        let dir = self.registry.dir();
        undo.create_dirs(dir)?;
        let held = self.registry.lock().map_err(io("lock", dir))?;
        self.registry.clean_staged(&held);
        let written = self.check().and_then(|name| {
            self.write(&name, &mut undo)?;
            Ok(name)
        });
        if written.is_ok() {
            undo.disarm();
        }
        // A failed registration is undone while the lock is still held, so the undo cannot
        // take away what a concurrent registration of the same name makes next.
        drop(undo);
        drop(held);
        written
    }

    fn write(&self, name: &FlakeName, undo: &mut Undo) -> Result<()> {
        let staged_yaml = self.registry.staged_path(name);
        write_synced(&staged_yaml, &self.yaml)?;
        undo.push(Step::Remove(staged_yaml.clone()));
        let fragments = self.registry.fragments_dir(name);
        if !fragments.is_dir() {
            std::fs::create_dir(&fragments).map_err(io("create", &fragments))?;
            undo.push(Step::RemoveDir(fragments));
        }
        let app_dir = self.app.parent().unwrap_or(Path::new("/"));
        undo.create_dirs(app_dir)?;
        self.place_symlink(app_dir, name, undo)?;
        let config = self.registry.config_path(name);
        std::fs::rename(&staged_yaml, &config).map_err(io("write", &config))
    }

    /// Creates the symlink under a temporary name and renames it over the app path, which
    /// replaces an old flake symlink atomically.
    fn place_symlink(&self, app_dir: &Path, name: &FlakeName, undo: &mut Undo) -> Result<()> {
        let staged = app_dir.join(format!(".{name}.flake.{}.tmp", std::process::id()));
        remove_stale_links(app_dir, name);
        std::os::unix::fs::symlink(&self.pilot, &staged).map_err(io("create symlink", &staged))?;
        undo.push(Step::Remove(staged.clone()));
        let previous = match app_state(&self.app)? {
            AppState::FlakeLink(target) => Some(target),
            _ => None,
        };
        std::fs::rename(&staged, &self.app).map_err(io("create symlink", &self.app))?;
        undo.push(Step::RestoreLink {
            app: self.app.clone(),
            previous,
        });
        Ok(())
    }
}

/// Removes `.NAME.flake.PID.tmp` symlinks that registrations killed mid-way left in
/// `app_dir` (their PID is gone). Best effort, like the undo log.
fn remove_stale_links(app_dir: &Path, name: &FlakeName) {
    let Ok(entries) = std::fs::read_dir(app_dir) else {
        return;
    };
    let prefix = format!(".{name}.flake.");
    for entry in entries.filter_map(std::result::Result::ok) {
        let file = entry.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix)?.strip_suffix(".tmp"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let dead = !Path::new(&format!("/proc/{pid}")).exists();
        if dead && entry.file_type().is_ok_and(|t| t.is_symlink()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn write_synced(path: &Path, text: &str) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io("create", path))?;
    file.write_all(text.as_bytes()).map_err(io("write", path))?;
    file.sync_all().map_err(io("write", path))
}

/// One undoable step of a registration.
#[derive(Debug)]
enum Step {
    Remove(PathBuf),
    RemoveDir(PathBuf),
    RestoreLink {
        app: PathBuf,
        previous: Option<PathBuf>,
    },
}

/// Undo log: runs its steps in reverse when dropped, unless disarmed.
#[derive(Debug, Default)]
struct Undo {
    steps: Vec<Step>,
}

impl Undo {
    fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    /// `mkdir -p`, remembering which directories it created.
    fn create_dirs(&mut self, dir: &Path) -> Result<()> {
        let mut missing = Vec::new();
        let mut cursor = Some(dir);
        while let Some(d) = cursor.filter(|d| !d.exists()) {
            missing.push(d.to_path_buf());
            cursor = d.parent();
        }
        for d in missing.into_iter().rev() {
            match std::fs::create_dir(&d) {
                Ok(()) => self.push(Step::RemoveDir(d)),
                // Made by a concurrent registration meanwhile: theirs, not ours to undo.
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && d.is_dir() => {}
                Err(err) => return Err(io("create directory", &d)(err)),
            }
        }
        Ok(())
    }

    fn disarm(&mut self) {
        self.steps.clear();
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        // Best effort: an undo that fails leaves a file whose name starts with a dot and
        // says what it is; nothing better can be done while unwinding an error.
        while let Some(step) = self.steps.pop() {
            let _ = match step {
                Step::Remove(path) => std::fs::remove_file(path),
                // Only an empty directory: one this registration created may since hold a
                // concurrent registration's files.
                Step::RemoveDir(path) => std::fs::remove_dir(path),
                Step::RestoreLink {
                    app,
                    previous: None,
                } => std::fs::remove_file(app),
                Step::RestoreLink {
                    app,
                    previous: Some(target),
                } => {
                    let _ = std::fs::remove_file(&app);
                    std::os::unix::fs::symlink(target, app)
                }
            };
        }
    }
}

/// Removes the registration of `app` from `registry`, a flake of `engine` (`podman` or
/// `firecracker`).
///
/// Without `force` the app must be a symlink to a launcher and `NAME.yaml` must exist and
/// belong to this app path. With `force`, whatever is left of the registration is removed;
/// a real program at the app path is refused in both cases, and so is a flake of the other
/// engine (its instances are that engine's to stop).
pub fn remove_app(
    registry: &Registry,
    app: &Path,
    force: bool,
    engine: &'static str,
) -> Result<FlakeName> {
    let name = app_name(app)?;
    let _held = match registry.lock() {
        Ok(held) => Some(held),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(io("lock", registry.dir())(source)),
    };
    let config = registry.config_path(&name);
    if let Some(other) = registered_engine(&config).filter(|e| *e != engine) {
        return Err(RegisterError::WrongEngine {
            name,
            engine: other,
            app: app.into(),
            user: registry.mode() == crate::host::Mode::User,
        });
    }
    let state = app_state(app)?;
    if let AppState::Other(what) = state {
        return Err(RegisterError::NotAFlake {
            app: app.into(),
            what,
        });
    }
    if !force {
        let registered = config.is_file() && state != AppState::Missing;
        if !registered {
            return Err(RegisterError::NotRegistered {
                app: app.into(),
                dir: registry.dir().into(),
            });
        }
        if let Some(other) = registered_app(&config).filter(|other| other != app) {
            return Err(RegisterError::NameTaken {
                name,
                other,
                config,
            });
        }
    }
    if state != AppState::Missing {
        std::fs::remove_file(app).map_err(io("remove", app))?;
    }
    remove_if_present(&config, |p| std::fs::remove_file(p))?;
    remove_if_present(&registry.fragments_dir(&name), |p| {
        std::fs::remove_dir_all(p)
    })?;
    Ok(name)
}

fn remove_if_present(path: &Path, remove: fn(&Path) -> std::io::Result<()>) -> Result<()> {
    match remove(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(RegisterError::Io {
            action: "remove",
            path: path.into(),
            source: err,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
