// SPDX-License-Identifier: MIT
//! Instance identity and private, lockable state directories.
//!
//! Layout (the original's, extended to one directory per instance):
//!
//! ```text
//! <ids_dir>/                  mode 1777 (shared, sticky), default /tmp/flakes
//!   <uid>/                    mode 0700, owned by the caller
//!     <flake>[@<instance>]/   mode 0700: lock
//!       run/                  mode 0777: agent.sock; the only part mounted into the instance
//! ```
//!
//! `run/` is open to every user *inside* the instance because the app (and so the agent)
//! may run as any user there (`--user`, the image's `USER`); on the host it stays behind
//! the 0700 directories above it.
//!
//! Every level is checked with `lstat` before use: a symlink, a foreign owner, or a
//! world-writable directory without the sticky bit is refused, so another local user cannot
//! redirect or read an instance's socket. The per-instance `lock` file is taken with
//! `flock`, which the kernel drops when its holder dies: a `kill -9` at any point leaves no
//! lock behind, unlike the original's CID-file convention.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::names::{FlakeName, InstanceName};

/// Errors while preparing instance state.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// A state directory is unsafe to use.
    #[error("refusing to use {}: {reason}", path.display())]
    Unsafe {
        /// Directory involved.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
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
pub type Result<T, E = InstanceError> = std::result::Result<T, E>;

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> InstanceError + 'a {
    move |source| InstanceError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Which instance of which flake: `flake` or `flake@instance`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceKey {
    /// The flake.
    pub flake: FlakeName,
    /// The `@NAME`, if any.
    pub instance: Option<InstanceName>,
}

impl InstanceKey {
    /// The key as written in file names and listings: `flake` or `flake@instance`.
    pub fn label(&self) -> String {
        match &self.instance {
            Some(instance) => format!("{}@{instance}", self.flake),
            None => self.flake.to_string(),
        }
    }

    /// A podman container name for this key and caller: only `[A-Za-z0-9_.-]`, with a hash
    /// suffix whenever characters had to be replaced, so distinct keys never collide.
    pub fn container_name(&self, uid: u32) -> String {
        let label = self.label();
        let clean: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if clean == label {
            format!("flake-{clean}-u{uid}")
        } else {
            format!("flake-{clean}-{:08x}-u{uid}", fnv1a(label.as_bytes()))
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The private state directory of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    path: PathBuf,
}

/// The agent socket of the instance whose state directory is `dir`.
pub fn socket_in(dir: &Path) -> PathBuf {
    dir.join("run/agent.sock")
}

/// A held instance lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
}

impl StateDir {
    /// Creates (or checks) `<ids_dir>/<uid>/<key>/` for the calling user `uid`.
    pub fn prepare(ids_dir: &Path, uid: u32, key: &InstanceKey) -> Result<Self> {
        let private = user_dir(ids_dir, uid)?;
        let path = private.join(key.label());
        private_dir(&path, uid)?;
        let state = StateDir { path };
        shared_run_dir(&state.run_dir())?;
        Ok(state)
    }

    /// Creates (or checks) `<ids_dir>/<uid>/.vm/<label>/`, the private directory of a VM
    /// instance (hidden, so container listings never take it for a container instance).
    pub fn prepare_vm(ids_dir: &Path, uid: u32, label: &str) -> Result<Self> {
        let vms = user_dir(ids_dir, uid)?.join(".vm");
        private_dir(&vms, uid)?;
        let path = vms.join(label);
        private_dir(&path, uid)?;
        Ok(StateDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory shared with the instance (holds the agent socket).
    pub fn run_dir(&self) -> PathBuf {
        self.path.join("run")
    }

    /// The agent socket.
    pub fn socket(&self) -> PathBuf {
        socket_in(&self.path)
    }

    /// Takes the instance lock, waiting for a concurrent holder.
    pub fn lock(&self) -> Result<InstanceLock> {
        let path = self.path.join("lock");
        let file = lock_file(&path)?;
        flock(&file, FlockOperation::LockExclusive).map_err(|e| InstanceError::Io {
            action: "lock",
            path,
            source: e.into(),
        })?;
        Ok(InstanceLock { _file: file })
    }

    /// Removes the directory and everything in it.
    pub fn remove(self) -> Result<()> {
        match fs::remove_dir_all(&self.path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(InstanceError::Io {
                action: "remove",
                path: self.path,
                source: err,
            }),
            _ => Ok(()),
        }
    }
}

/// Opens (creating, mode 0600, never through a symlink) a file that is only ever `flock`ed.
pub fn lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0))
        .open(path)
        .map_err(io("open", path))
}

/// `<ids_dir>/<uid>/`, created and checked: the caller's private directory.
pub fn user_dir(ids_dir: &Path, uid: u32) -> Result<PathBuf> {
    shared_base(ids_dir)?;
    let private = ids_dir.join(uid.to_string());
    private_dir(&private, uid)?;
    Ok(private)
}

/// `<ids_dir>/<uid>/.cache/`: records of assembled images (flake names never start with a
/// dot, so it cannot clash with an instance).
pub fn cache_dir(ids_dir: &Path, uid: u32) -> Result<PathBuf> {
    let dir = user_dir(ids_dir, uid)?.join(".cache");
    private_dir(&dir, uid)?;
    Ok(dir)
}

/// `<ids_dir>`: shared by all users, so it must be sticky when world-writable.
fn shared_base(dir: &Path) -> Result<()> {
    if fs::symlink_metadata(dir).is_err() {
        let created = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o1777)
            .create(dir);
        created.map_err(io("create", dir))?;
        // The umask may have cut the mode; set it explicitly.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o1777)).map_err(io("chmod", dir))?;
    }
    let meta = fs::symlink_metadata(dir).map_err(io("inspect", dir))?;
    let unsafe_dir = |reason: &str| InstanceError::Unsafe {
        path: dir.into(),
        reason: reason.into(),
    };
    if !meta.is_dir() {
        return Err(unsafe_dir(
            "it is not a directory (or is a symlink); remove it",
        ));
    }
    let mode = meta.mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(unsafe_dir(
            "it is world-writable without the sticky bit; run chmod 1777 on it",
        ));
    }
    Ok(())
}

/// `run/`: a real directory (not a symlink), writable by any user of the instance.
fn shared_run_dir(dir: &Path) -> Result<()> {
    checked_dir(dir, 0o777, None)
}

/// A directory only `uid` may enter.
fn private_dir(dir: &Path, uid: u32) -> Result<()> {
    checked_dir(dir, 0o700, Some(uid))
}

/// Creates `dir` with `mode` if missing, then checks that it is a real directory (owned by
/// `owner` when given) and sets `mode` when its permission bits differ.
fn checked_dir(dir: &Path, mode: u32, owner: Option<u32>) -> Result<()> {
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(InstanceError::Io {
                action: "create",
                path: dir.into(),
                source: err,
            })
        }
        _ => {}
    }
    let meta = fs::symlink_metadata(dir).map_err(io("inspect", dir))?;
    let unsafe_dir = |reason: String| InstanceError::Unsafe {
        path: dir.into(),
        reason,
    };
    if !meta.is_dir() {
        return Err(unsafe_dir(
            "it is not a directory (or is a symlink); remove it".into(),
        ));
    }
    if let Some(uid) = owner.filter(|uid| meta.uid() != *uid) {
        return Err(unsafe_dir(format!(
            "it belongs to uid {}, not {uid}; remove it",
            meta.uid()
        )));
    }
    if meta.mode() & 0o777 != mode {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io("chmod", dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(flake: &str, instance: Option<&str>) -> InstanceKey {
        InstanceKey {
            flake: FlakeName::new(flake).unwrap(),
            instance: instance.map(|i| InstanceName::new(i).unwrap()),
        }
    }

    fn uid() -> u32 {
        rustix::process::getuid().as_raw()
    }

    #[test]
    fn layout_and_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let ids = tmp.path().join("flakes");
        let state = StateDir::prepare(&ids, uid(), &key("app", Some("one"))).unwrap();
        assert_eq!(state.path(), ids.join(uid().to_string()).join("app@one"));
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&ids), 0o1777);
        assert_eq!(mode(&ids.join(uid().to_string())), 0o700);
        assert_eq!(mode(state.path()), 0o700);
        assert_eq!(mode(&state.run_dir()), 0o777);
        assert_eq!(state.socket(), state.path().join("run/agent.sock"));
    }

    #[test]
    fn loose_private_dir_is_tightened_and_unsafe_base_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ids = tmp.path().join("flakes");
        let private = ids.join(uid().to_string());
        fs::create_dir_all(&private).unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o755)).unwrap();
        StateDir::prepare(&ids, uid(), &key("app", None)).unwrap();
        assert_eq!(fs::metadata(&private).unwrap().mode() & 0o777, 0o700);

        fs::set_permissions(&ids, fs::Permissions::from_mode(0o777)).unwrap();
        let err = StateDir::prepare(&ids, uid(), &key("app", None)).unwrap_err();
        assert!(err.to_string().contains("chmod 1777"), "{err}");
    }

    #[test]
    fn symlinked_state_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ids = tmp.path().join("flakes");
        fs::create_dir_all(ids.join(uid().to_string())).unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, ids.join(uid().to_string()).join("app")).unwrap();
        let err = StateDir::prepare(&ids, uid(), &key("app", None)).unwrap_err();
        assert!(matches!(err, InstanceError::Unsafe { .. }), "{err}");
    }

    #[test]
    fn lock_excludes_a_second_holder_until_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::prepare(tmp.path(), uid(), &key("app", None)).unwrap();
        let held = state.lock().unwrap();
        let other = state.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _lock = other.lock().unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "lock not exclusive"
        );
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        waiter.join().unwrap();
    }

    #[test]
    fn container_names_are_valid_and_distinct() {
        let plain = key("aws", None).container_name(0);
        assert_eq!(plain, "flake-aws-u0");
        let a = key("a", Some("b=c")).container_name(1000);
        let b = key("a", Some("b@c")).container_name(1000);
        assert_ne!(a, b);
        for name in [a, b, key("x+y", None).container_name(0)] {
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)),
                "{name}"
            );
        }
    }
}
