// SPDX-License-Identifier: MIT
//! The staging directory of a pull and the atomic installation of what it holds.
//!
//! ```text
//! <images>/.pull-<name>-<pid>/   0700, the caller's
//!     lock                       flock: held by the pull for its whole life
//!     image/                     0755, the image; renamed to <images>/<name> when verified
//! ```
//!
//! A pull that dies, even by `kill -9`, leaves its staging directory behind with its lock
//! released by the kernel; the next pull removes every such directory it owns whose lock it
//! can take (a PID in the name is only for people: PIDs are reused, locks are not). The lock
//! file is created under another name and renamed into place once locked, so a `lock` that
//! can be taken always belongs to a dead pull. A staging directory without a lock (a pull
//! killed before it locked, or one from an older release) is removed once it is a minute
//! old. Releases before the lock moved an old image aside as `<images>/.old-<name>-<pid>`
//! and deleted it after the new one was in place; one such directory left by a killed pull
//! (a minute old, the caller's) is removed when `<name>` is installed, and put back as
//! `<name>` when it is not, since it then holds the only copy of the image. SIGINT, SIGTERM
//! and SIGHUP remove the active staging directory before the process
//! exits with 128 + the signal, as a native program killed by it would report.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use rustix::fs::{flock, FlockOperation};

use super::{io, PullError};

/// Prefix of staging directories in the image registry.
const PREFIX: &str = ".pull-";
/// Prefix of an image moved aside by the commit of older releases.
const OLD_PREFIX: &str = ".old-";
/// Age after which a staging directory without a lock is taken for abandoned.
const UNLOCKED_GRACE: Duration = Duration::from_secs(60);

/// A locked staging directory; removed when dropped (after a commit it holds only the lock
/// and, with `--force`, the replaced image).
#[derive(Debug)]
pub struct Staging {
    root: PathBuf,
    image: PathBuf,
    _lock: std::fs::File,
}

impl Staging {
    /// Creates and locks `<images_dir>/.pull-<name>-<pid>` with an empty `image/`.
    pub fn new(images_dir: &Path, name: &str) -> Result<Self, PullError> {
        // 0755 at most, whatever the umask: nobody else may add to the registry.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(images_dir)
            .map_err(io("create", images_dir))?;
        let root = images_dir.join(format!("{PREFIX}{name}-{}", std::process::id()));
        // Only a dead pull with our PID can have left this name behind.
        let _ = std::fs::remove_dir_all(&root);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&root)
            .map_err(io("create", &root))?;
        let lock = match publish_lock(&root) {
            Ok(lock) => lock,
            Err(err) => {
                let _ = std::fs::remove_dir_all(&root);
                return Err(err);
            }
        };
        watch_signals();
        set_active(Some(root.clone()));
        // From here on, dropping the value removes the directory.
        let staging = Staging {
            image: root.join("image"),
            root,
            _lock: lock,
        };
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&staging.image)
            .map_err(io("create", &staging.image))?;
        std::fs::set_permissions(&staging.image, std::fs::Permissions::from_mode(0o755))
            .map_err(io("set the mode of", &staging.image))?;
        Ok(staging)
    }

    /// The directory the image is assembled in.
    pub fn dir(&self) -> &Path {
        &self.image
    }

    /// Moves the staged image to `target`. An old image there is exchanged with it in one
    /// step (`RENAME_EXCHANGE`, so `target` is never missing) and removed with the staging
    /// directory; where the file system cannot exchange, it is moved aside first and put
    /// back if the new image cannot be moved in.
    pub fn commit(self, target: &Path) -> Result<(), PullError> {
        let installed = if target.symlink_metadata().is_ok() {
            match exchange(&self.image, target) {
                Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
                    self.replace_in_two_steps(target)
                }
                other => other.map_err(std::io::Error::from),
            }
        } else {
            std::fs::rename(&self.image, target)
        };
        installed.map_err(io("install", target))
    }

    fn replace_in_two_steps(&self, target: &Path) -> std::io::Result<()> {
        let old = self.root.join("old");
        std::fs::rename(target, &old)?;
        std::fs::rename(&self.image, target).inspect_err(|_| {
            let _ = std::fs::rename(&old, target);
        })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        set_active(None);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn exchange(a: &Path, b: &Path) -> rustix::io::Result<()> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        a,
        rustix::fs::CWD,
        b,
        rustix::fs::RenameFlags::EXCHANGE,
    )
}

/// Creates `root/lock.new`, locks it and renames it to `root/lock`.
fn publish_lock(root: &Path) -> Result<std::fs::File, PullError> {
    use std::os::unix::fs::OpenOptionsExt;
    let fresh = root.join("lock.new");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0))
        .open(&fresh)
        .map_err(io("create", &fresh))?;
    flock(&file, FlockOperation::LockExclusive).map_err(|e| PullError::Io {
        action: "lock",
        path: fresh.clone(),
        source: e.into(),
    })?;
    let lock = root.join("lock");
    std::fs::rename(&fresh, &lock).map_err(io("create", &lock))?;
    Ok(file)
}

/// Removes the staging directories in `images_dir` whose pulls are gone. Best effort: what
/// cannot be removed now is tried again by the next pull.
pub fn collect_stale(images_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(images_dir) else {
        return;
    };
    let me = rustix::process::geteuid().as_raw();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if file_name.starts_with(PREFIX) {
            collect_one(&entry.path(), me);
        } else if let Some(rest) = file_name.strip_prefix(OLD_PREFIX) {
            collect_old(images_dir, rest, me);
        }
    }
}

/// `<images>/.old-<rest>`, `rest` being `<name>-<pid>`: removed when `<name>` is installed,
/// renamed back to `<name>` when it is not; left alone while it may still be in use (under
/// a minute old), when it is someone else's or when `rest` is not of that form.
fn collect_old(images_dir: &Path, rest: &str, me: u32) {
    let Some((name, pid)) = rest.rsplit_once('-') else {
        return;
    };
    if name.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return;
    }
    let Ok(target) = crate::image_dir(images_dir, name) else {
        return;
    };
    let old = images_dir.join(format!("{OLD_PREFIX}{rest}"));
    let Ok(meta) = old.symlink_metadata() else {
        return;
    };
    let abandoned = meta
        .modified()
        .ok()
        .and_then(|m| m.elapsed().ok())
        .is_some_and(|age| age > UNLOCKED_GRACE);
    if !meta.is_dir() || meta.uid() != me || !abandoned {
        return;
    }
    if target.symlink_metadata().is_ok() {
        let _ = std::fs::remove_dir_all(&old);
    } else {
        // Never over an image that a pull installed in the meantime.
        let _ = rustix::fs::renameat_with(
            rustix::fs::CWD,
            &old,
            rustix::fs::CWD,
            &target,
            rustix::fs::RenameFlags::NOREPLACE,
        );
    }
}

fn collect_one(root: &Path, me: u32) {
    let Ok(meta) = root.symlink_metadata() else {
        return;
    };
    if !meta.is_dir() || meta.uid() != me {
        return;
    }
    match open_lock(&root.join("lock")) {
        Ok(lock) => {
            if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_ok() {
                let _ = std::fs::remove_dir_all(root);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let age = meta.modified().ok().and_then(|m| m.elapsed().ok());
            if age.is_some_and(|age| age > UNLOCKED_GRACE) {
                let _ = std::fs::remove_dir_all(root);
            }
        }
        Err(_) => {}
    }
}

/// Opens an existing lock file for `flock`, never through a link.
fn open_lock(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0))
        .open(path)
}

/// The staging directory a signal must remove.
static ACTIVE: Mutex<Option<PathBuf>> = Mutex::new(None);

fn set_active(root: Option<PathBuf>) {
    if let Ok(mut active) = ACTIVE.lock() {
        *active = root;
    }
}

/// Starts, once per process, the thread that turns SIGINT, SIGTERM and SIGHUP into the
/// removal of the active staging directory and an exit with 128 + the signal. Without it
/// (the handlers cannot be installed) a signal still ends the pull, and the next pull
/// removes what it left.
fn watch_signals() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM};
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
            return;
        };
        let _ = std::thread::Builder::new()
            .name("pull-signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    // Held until the exit: a pull ending now waits instead of racing us.
                    let active = ACTIVE.lock();
                    if let Ok(Some(root)) = active.as_deref() {
                        remove_now(root);
                    }
                    std::process::exit(128 + signal);
                }
            });
    });
}

/// Removes a staging directory that its pull may still be writing into: renamed first (the
/// pull then fails to create anything more in it), then removed.
fn remove_now(root: &Path) {
    let mut gone = root.as_os_str().to_owned();
    gone.push(".interrupted");
    let gone = PathBuf::from(gone);
    let doomed = if std::fs::rename(root, &gone).is_ok() {
        gone
    } else {
        root.to_path_buf()
    };
    let _ = std::fs::remove_dir_all(doomed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(images: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(images)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_live_staging_is_kept_and_a_dead_one_collected() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path();
        let live = Staging::new(images, "live").unwrap();
        // A dead pull: its lock file exists and nobody holds it.
        let dead = images.join(".pull-dead-1");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("lock"), "").unwrap();
        std::fs::create_dir(dead.join("image")).unwrap();
        std::fs::write(dead.join("image/rootfs"), "x").unwrap();
        // One being created right now: no lock yet, fresh.
        let fresh = images.join(".pull-fresh-2");
        std::fs::create_dir(&fresh).unwrap();
        // One without a lock that is minutes old (killed before it locked, or older code).
        let legacy = images.join(".pull-legacy-4");
        std::fs::create_dir(&legacy).unwrap();
        std::fs::File::open(&legacy)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(120))
            .unwrap();
        // An image is never touched, nor a dead pull of someone else (when we can make one).
        std::fs::create_dir(images.join("img")).unwrap();
        let theirs = images.join(".pull-theirs-3");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::write(theirs.join("lock"), "").unwrap();
        let chowned = std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).is_ok();
        collect_stale(images);
        let live_name = live
            .root
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut expected = vec![".pull-fresh-2".to_string(), live_name, "img".into()];
        if chowned {
            expected.push(".pull-theirs-3".into());
        }
        expected.sort();
        assert_eq!(staged(images), expected);
        drop(live);
        expected.retain(|e| !e.starts_with(".pull-live-"));
        assert_eq!(staged(images), expected);
    }

    #[test]
    fn commit_exchanges_with_the_old_image() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path();
        let target = images.join("img");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("rootfs"), "old").unwrap();
        let staging = Staging::new(images, "img").unwrap();
        std::fs::write(staging.dir().join("rootfs"), "new").unwrap();
        staging.commit(&target).unwrap();
        assert_eq!(std::fs::read(target.join("rootfs")).unwrap(), b"new");
        assert_eq!(
            std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        assert_eq!(staged(images), ["img"]);
    }

    fn age(path: &Path, seconds: u64) {
        std::fs::File::open(path)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(seconds))
            .unwrap();
    }

    #[test]
    fn images_moved_aside_by_older_releases_are_removed_or_put_back() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path();
        // Installed again after the move: the copy aside is debris.
        std::fs::create_dir(images.join("web-app")).unwrap();
        let debris = images.join(".old-web-app-41");
        std::fs::create_dir(&debris).unwrap();
        std::fs::write(debris.join("rootfs"), "old").unwrap();
        age(&debris, 120);
        // Killed between the two renames: the copy aside is the only one.
        let only = images.join(".old-db-42");
        std::fs::create_dir(&only).unwrap();
        std::fs::write(only.join("rootfs"), "db").unwrap();
        age(&only, 120);
        // Fresh (maybe a running pull of an older release), or not of the form: kept.
        std::fs::create_dir(images.join("cache")).unwrap();
        std::fs::create_dir(images.join(".old-cache-43")).unwrap();
        std::fs::create_dir(images.join(".old-cache-x")).unwrap();
        age(&images.join(".old-cache-x"), 120);
        collect_stale(images);
        assert_eq!(
            staged(images),
            [".old-cache-43", ".old-cache-x", "cache", "db", "web-app"]
        );
        assert_eq!(std::fs::read(images.join("db/rootfs")).unwrap(), b"db");
    }
}
