// SPDX-License-Identifier: MIT
//! One-shot VMs started from a saved state instead of a boot.
//!
//! A one-shot VM spends most of its launch booting: the kernel, then the guest init, the
//! same work on every call. So the first launch of a flake saves its VM once the guest init
//! waits for its call, and every later launch restores that state and goes straight to the
//! call. Under software emulation that turns a boot of most of a second into a fraction of
//! it.
//!
//! **What must match.** A state is only valid for the exact VM it was saved from: the same
//! VMM binary, kernel, root image and initrd (down to their inode, size and change times),
//! the same command line (memory, vCPUs, kernel arguments, devices) and the same overlay
//! size. All of that is hashed into the state's file name, `NAME-KEY.vmstate`, so a change
//! to any of them simply finds no state and boots (and saves a new one, removing the
//! flake's older states).
//!
//! **What must differ.** Every restored copy would share the saved clock and random
//! generator, so the launcher sends the guest its clock and fresh entropy before the call
//! (`Resync`, see `sci`'s `resync` module). The overlay disk, which each one-shot launch
//! makes afresh with the flake's includes, is attached by the guest only after that: the
//! saved guest has never mounted one.
//!
//! **Where.** States are per user (`firecracker/states` beside the resume overlays), in a
//! directory only the user can read, each file only the user's: a state holds the guest's
//! memory, and QEMU trusts what it restores, so a state owned by anyone else or writable
//! by others is never used. A state is written into an unnamed file and linked under its
//! name only once whole and synced: a launcher killed while saving leaves nothing.
//!
//! **When it fails.** A state that cannot be restored (a VMM that refuses it, a guest that
//! does not answer, a guest kernel that cannot reseed) is replaced by a `.refused` mark
//! for its key, and that VM boots without saving for a day (the failure may have passed
//! by then: a full disk, a guest too slow to answer); any change to the VM is a new key,
//! and `flake-ctl firecracker remove` clears the marks with the states.
//! `FLAKE_VM_SAVED_STATES=off` turns all of this off.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Why a saved state is not used, or a VM not saved.
#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    /// The state exists but cannot be opened.
    #[error("cannot open the saved state {}: {source}; remove it to have it saved anew", path.display())]
    Open {
        /// The state file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The state or its directory belongs to someone else, or others may write it.
    #[error(
        "the saved state {} is not a file of this user alone in a directory only this user \
         may write; remove it, or make the directory mode 0700, to have it saved anew",
        path.display()
    )]
    Untrusted {
        /// The state file.
        path: PathBuf,
    },
    /// The states directory or the unnamed state file in it cannot be made.
    #[error("cannot save into {}: {source}; check that this user may write there", dir.display())]
    Directory {
        /// The states directory.
        dir: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The whole state could not be synced or linked under its name.
    #[error("cannot put the saved state {} in place: {source}; check the space left there", path.display())]
    Place {
        /// The state file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The VMM cannot save VMs.
    #[error("this VMM cannot save VM states")]
    Unsupported,
    /// QEMU did not save the VM.
    #[error(transparent)]
    Qemu(#[from] crate::qemu::QmpError),
}

/// The saved state a restore would use ([`open`]).
#[derive(Debug)]
pub enum SavedState {
    /// There is none: the VM boots, and may be saved.
    None,
    /// This one, fit to be restored.
    Open(File),
    /// One that must not be used, for this reason: the VM boots.
    Unusable(SavedError),
}

/// Environment variable that turns saved states off (`off` or `0`).
pub const ENV: &str = "FLAKE_VM_SAVED_STATES";
/// Suffix of a saved state file.
const SUFFIX: &str = ".vmstate";
/// Suffix of the mark of a key whose state could not be restored.
const REFUSED: &str = ".refused";

/// Whether the caller's environment allows saved states (`off`, `0`, `no` and `false`
/// turn them off).
pub fn enabled() -> bool {
    !matches!(
        std::env::var(ENV).as_deref(),
        Ok("off" | "0" | "no" | "false")
    )
}

/// The key of a VM described by the words `material` and running the files `files`; `None`
/// when one of the files cannot be looked at (then no state is used).
pub fn key(material: &[String], files: &[&Path]) -> Option<String> {
    let mut hash = Sha256::new();
    hash.update(env!("CARGO_PKG_VERSION"));
    for word in material {
        hash.update(u64::try_from(word.len()).unwrap_or(u64::MAX).to_le_bytes());
        hash.update(word.as_bytes());
    }
    for file in files {
        let meta = std::fs::metadata(file).ok()?;
        for value in [
            meta.dev(),
            meta.ino(),
            meta.size(),
            u64::try_from(meta.mtime_nsec()).unwrap_or(0),
            u64::try_from(meta.mtime()).unwrap_or(0),
            u64::try_from(meta.ctime_nsec()).unwrap_or(0),
            u64::try_from(meta.ctime()).unwrap_or(0),
        ] {
            hash.update(value.to_le_bytes());
        }
    }
    let digest = hash.finalize();
    Some(digest.iter().take(16).map(|b| format!("{b:02x}")).collect())
}

/// The state file of `flake` with `key` in `dir`.
pub fn path(dir: &Path, flake: &str, key: &str) -> PathBuf {
    dir.join(format!("{flake}-{key}{SUFFIX}"))
}

/// The mark saying the state at `path` could not be restored.
fn refused_mark(path: &Path) -> PathBuf {
    path.with_extension(REFUSED.trim_start_matches('.'))
}

/// How long a refusal holds. A failure may pass (a disk that was full while saving, a
/// machine so loaded that the guest did not answer in time), so a key is tried again once
/// its mark is this old; a failure that stays costs one more try a day.
const REFUSAL_HOLDS: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// Whether the state at `path` was refused lately: its VM boots without saving. A mark
/// that has expired is removed.
pub fn refused(path: &Path) -> bool {
    let mark = refused_mark(path);
    let Ok(meta) = std::fs::metadata(&mark) else {
        return false;
    };
    // A mark whose time cannot be told (or lies in the future) holds.
    let expired = meta
        .modified()
        .ok()
        .and_then(|set| set.elapsed().ok())
        .is_some_and(|age| age >= REFUSAL_HOLDS);
    if expired {
        let _ = std::fs::remove_file(&mark);
    }
    !expired
}

/// Marks the state at `path` refused and removes it, if it still is `state` (another
/// launcher may have put a new one in its place meanwhile, which is left alone); `None`
/// refuses whatever is there, or the key when there is nothing.
pub fn refuse(path: &Path, state: Option<&File>) {
    let same = |state: &File| {
        let (Ok(open), Ok(named)) = (state.metadata(), std::fs::metadata(path)) else {
            return false;
        };
        (open.dev(), open.ino()) == (named.dev(), named.ino())
    };
    if state.is_none_or(same) {
        let _ = std::fs::write(refused_mark(path), "");
        let _ = std::fs::remove_file(path);
    }
}

/// Opens the state at `path` for a restore: [`SavedState::Unusable`] when it or its
/// directory belongs to someone else or others may write it.
pub fn open(path: &Path) -> SavedState {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let file = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(rustix::io::Errno::NOENT) => return SavedState::None,
        Err(e) => {
            return SavedState::Unusable(SavedError::Open {
                path: path.to_path_buf(),
                source: e.into(),
            })
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let trusted = |meta: std::fs::Metadata, others: u32| {
        meta.uid() == rustix::process::geteuid().as_raw() && meta.mode() & others == 0
    };
    let file_ok = file
        .metadata()
        .is_ok_and(|meta| meta.is_file() && trusted(meta, 0o077));
    let dir_ok = std::fs::metadata(dir).is_ok_and(|meta| trusted(meta, 0o022));
    if file_ok && dir_ok {
        SavedState::Open(file)
    } else {
        SavedState::Unusable(SavedError::Untrusted {
            path: path.to_path_buf(),
        })
    }
}

/// The states and marks of `flake` in `dir`.
fn files_of(dir: &Path, flake: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let key_of = |name: &str| {
        let rest = name.strip_prefix(flake)?.strip_prefix('-')?;
        rest.strip_suffix(SUFFIX)
            .or_else(|| rest.strip_suffix(REFUSED))
            .map(str::to_string)
    };
    entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .and_then(key_of)
                .is_some_and(|key| key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect()
}

/// Removes the states and marks of `flake` in `dir`; returns how many went.
pub fn remove(dir: &Path, flake: &str) -> usize {
    files_of(dir, flake)
        .into_iter()
        .filter(|path| std::fs::remove_file(path).is_ok())
        .count()
}

/// A state being saved: an unnamed file (`O_TMPFILE`, mode 0600) in the states directory,
/// linked under its name once whole, so no launcher ever sees half a state and one killed
/// while saving leaves nothing behind.
#[derive(Debug)]
pub struct Saving {
    /// Where the VMM writes.
    pub file: File,
    /// The state's name.
    pub path: PathBuf,
}

impl Saving {
    /// Prepares saving to `path`: its directory (private to the user) and the file.
    pub fn new(path: PathBuf) -> Result<Self, SavedError> {
        use rustix::fs::{Mode, OFlags};
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let dir = path.parent().unwrap_or(Path::new("."));
        let fail = |source| SavedError::Directory {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(fail)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
        let file = rustix::fs::open(
            dir,
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(|e| fail(e.into()))?;
        Ok(Saving {
            file: File::from(file),
            path,
        })
    }

    /// Puts the whole state in place (synced first: a torn state after a crash would only
    /// be refused by the VMM, but cost a boot) and removes the flake's other states and
    /// marks (the mark of this key, set meanwhile by another launcher, stays). A state
    /// another launcher has put there first is kept.
    pub fn finish(self, flake: &str) -> Result<PathBuf, SavedError> {
        use std::os::fd::AsRawFd;
        let fail = |source| SavedError::Place {
            path: self.path.clone(),
            source,
        };
        self.file.sync_all().map_err(fail)?;
        let proc_path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        match rustix::fs::linkat(
            rustix::fs::CWD,
            proc_path.as_str(),
            rustix::fs::CWD,
            &self.path,
            rustix::fs::AtFlags::SYMLINK_FOLLOW,
        ) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(fail(e.into())),
        }
        if let Some(dir) = self.path.parent() {
            let mark = refused_mark(&self.path);
            files_of(dir, flake)
                .into_iter()
                .filter(|path| *path != self.path && *path != mark)
                .for_each(|path| drop(std::fs::remove_file(path)));
        }
        Ok(self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_every_word_and_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("kernel");
        std::fs::write(&kernel, "k").unwrap();
        let words = vec!["-m".to_string(), "256".to_string()];
        let first = key(&words, &[&kernel]).unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(key(&words, &[&kernel]).unwrap(), first, "stable");
        let other_words = vec!["-m".to_string(), "512".to_string()];
        assert_ne!(key(&other_words, &[&kernel]).unwrap(), first);
        // Word boundaries count: "-m256" is not "-m" "256".
        assert_ne!(key(&["-m256".to_string()], &[&kernel]).unwrap(), first);
        std::fs::write(&kernel, "kernel, rebuilt").unwrap();
        assert_ne!(key(&words, &[&kernel]).unwrap(), first, "a changed file");
        assert_eq!(key(&words, &[&dir.path().join("gone")]), None);
    }

    /// An update swaps in a rootfs built beside the old one: a new file, even when its
    /// size and modification time are the old one's (as a rebuild from the same tree may
    /// make them). A state of the old rootfs must not be restored onto it.
    #[test]
    fn a_rootfs_replaced_by_an_update_is_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::write(&rootfs, "tree one").unwrap();
        let words = vec!["-m".to_string(), "256".to_string()];
        let old = key(&words, &[&rootfs]).unwrap();
        let mtime = std::fs::metadata(&rootfs).unwrap().modified().unwrap();
        let staged = dir.path().join("rootfs.new");
        std::fs::write(&staged, "tree two").unwrap();
        File::options()
            .write(true)
            .open(&staged)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        std::fs::rename(&staged, &rootfs).unwrap();
        assert_eq!(
            std::fs::metadata(&rootfs).unwrap().modified().unwrap(),
            mtime
        );
        assert_ne!(key(&words, &[&rootfs]).unwrap(), old);
    }

    #[test]
    fn only_the_flakes_own_states_and_marks_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let key = "0123456789abcdef0123456789abcdef";
        let mine = path(dir.path(), "app", key);
        let older = path(dir.path(), "app", &key.replace('0', "f"));
        let other = path(dir.path(), "app-two", key);
        let unrelated = dir.path().join("app-notes.vmstate");
        for file in [&mine, &older, &other, &unrelated] {
            std::fs::write(file, "").unwrap();
        }
        refuse(&older, None);
        assert!(refused(&older) && !older.exists());
        assert_eq!(remove(dir.path(), "app"), 2, "the state and the mark");
        assert!(!mine.exists() && !refused(&older));
        assert!(other.exists() && unrelated.exists());
    }

    #[test]
    fn a_refusal_holds_for_a_day_and_then_the_key_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let state = path(dir.path(), "app", "00000000000000000000000000000000");
        refuse(&state, None);
        assert!(refused(&state), "fresh");
        let mark = File::options()
            .write(true)
            .open(refused_mark(&state))
            .unwrap();
        let now = std::time::SystemTime::now();
        mark.set_modified(now - REFUSAL_HOLDS + std::time::Duration::from_secs(60))
            .unwrap();
        assert!(refused(&state), "not a day old yet");
        mark.set_modified(now - REFUSAL_HOLDS).unwrap();
        assert!(!refused(&state), "a day old");
        assert!(!refused_mark(&state).exists(), "the expired mark is gone");
    }

    #[test]
    fn a_refused_state_that_was_replaced_meanwhile_stays() {
        let dir = tempfile::tempdir().unwrap();
        let state = path(dir.path(), "app", "00000000000000000000000000000000");
        std::fs::write(&state, "old").unwrap();
        let opened = File::open(&state).unwrap();
        std::fs::remove_file(&state).unwrap();
        std::fs::write(&state, "new").unwrap();
        refuse(&state, Some(&opened));
        assert_eq!(std::fs::read(&state).unwrap(), b"new");
        assert!(!refused(&state), "the new state is not marked");
        refuse(&state, Some(&File::open(&state).unwrap()));
        assert!(!state.exists() && refused(&state));
    }

    #[test]
    fn a_state_appears_whole_under_its_name_and_a_dropped_one_leaves_nothing() {
        use std::io::Write as _;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let states = dir.path().join("states");
        let key = "00000000000000000000000000000000";
        let mut saving = Saving::new(path(&states, "app", key)).unwrap();
        saving.file.write_all(b"state").unwrap();
        assert!(!saving.path.exists());
        let done = saving.finish("app").unwrap();
        assert_eq!(std::fs::read(&done).unwrap(), b"state");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&states), 0o700);
        assert_eq!(mode(&done), 0o600);
        assert!(matches!(open(&done), SavedState::Open(_)));
        let mut dropped = Saving::new(path(&states, "app", &key.replace('0', "1"))).unwrap();
        dropped.file.write_all(b"half").unwrap();
        drop(dropped);
        assert_eq!(std::fs::read_dir(&states).unwrap().count(), 1);
        // Saved by another launcher first: that one is kept, and so is a mark of its key
        // (another launcher refused it meanwhile); other keys' files go.
        let older = path(&states, "app", &key.replace('0', "2"));
        std::fs::write(&older, "").unwrap();
        refuse(&done, None);
        let mut late = Saving::new(done.clone()).unwrap();
        late.file.write_all(b"late").unwrap();
        std::fs::write(&done, "state").unwrap();
        late.finish("app").unwrap();
        assert_eq!(std::fs::read(&done).unwrap(), b"state");
        assert!(refused(&done) && !older.exists());
    }

    #[test]
    fn states_others_may_write_are_not_used() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let states = dir.path().join("states");
        std::fs::create_dir(&states).unwrap();
        std::fs::set_permissions(&states, std::fs::Permissions::from_mode(0o700)).unwrap();
        let state = path(&states, "app", "00000000000000000000000000000000");
        assert!(matches!(open(&state), SavedState::None), "no state");
        std::fs::write(&state, "x").unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(open(&state), SavedState::Open(_)));
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o666)).unwrap();
        let why = unusable(&state);
        assert!(why.contains("this user alone"), "{why}");
        assert!(why.contains(&state.display().to_string()), "{why}");
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&states, std::fs::Permissions::from_mode(0o777)).unwrap();
        let why = unusable(&state);
        assert!(
            why.contains("mode 0700"),
            "a directory others may write: {why}"
        );
    }

    /// Why the state at `path` is not used; panics when it is.
    fn unusable(path: &Path) -> String {
        match open(path) {
            SavedState::Unusable(why) => why.to_string(),
            other => panic!("{} is used: {other:?}", path.display()),
        }
    }

    #[test]
    fn a_damaged_state_says_which_file_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let state = path(dir.path(), "app", "00000000000000000000000000000000");
        // A symlink is never followed: the state cannot be opened.
        std::os::unix::fs::symlink("elsewhere", &state).unwrap();
        let why = unusable(&state);
        assert!(why.starts_with("cannot open the saved state "), "{why}");
        assert!(why.contains(&state.display().to_string()), "{why}");
        assert!(why.ends_with("remove it to have it saved anew"), "{why}");
        // A directory where the state should be is not a file of this user alone.
        std::fs::remove_file(&state).unwrap();
        std::fs::create_dir(&state).unwrap();
        assert!(unusable(&state).contains("not a file of this user alone"));
    }

    #[test]
    fn a_state_that_cannot_be_made_names_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("states");
        std::fs::write(&blocked, "a file, not a directory").unwrap();
        let why = Saving::new(path(&blocked, "app", "00000000000000000000000000000000"))
            .unwrap_err()
            .to_string();
        assert!(
            why.starts_with(&format!("cannot save into {}: ", blocked.display())),
            "{why}"
        );
        assert!(
            why.ends_with("check that this user may write there"),
            "{why}"
        );
    }
}
