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
//! directory only the user can read: a state holds the guest's memory. A state that cannot
//! be restored (a VMM that refuses it) is removed, and the launch boots instead.
//! `FLAKE_VM_SAVED_STATES=off` turns all of this off.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Environment variable that turns saved states off (`off` or `0`).
pub const ENV: &str = "FLAKE_VM_SAVED_STATES";
/// Suffix of a saved state file.
const SUFFIX: &str = ".vmstate";

/// Whether the caller's environment allows saved states.
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

/// The states of `flake` in `dir`.
fn states_of(dir: &Path, flake: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|n| n.strip_prefix(flake))
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|key| key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect()
}

/// Removes the states of `flake` in `dir`, except `keep`; returns how many went.
pub fn remove(dir: &Path, flake: &str, keep: Option<&Path>) -> usize {
    states_of(dir, flake)
        .into_iter()
        .filter(|path| Some(path.as_path()) != keep)
        .filter(|path| std::fs::remove_file(path).is_ok())
        .count()
}

/// A state being saved: a temporary file beside its final name, renamed into place once
/// whole (a launcher restoring meanwhile never sees half a state).
#[derive(Debug)]
pub struct Saving {
    /// Where the VMM writes.
    pub temporary: PathBuf,
    /// The state's name.
    pub path: PathBuf,
}

impl Saving {
    /// Prepares saving to `path`: its directory (private to the user) and a temporary name.
    pub fn new(path: PathBuf) -> std::io::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{}.tmp", std::process::id()));
        Ok(Saving {
            temporary: path.with_file_name(name),
            path,
        })
    }

    /// Puts the whole state in place (synced first: a torn state after a crash would
    /// only be refused by the VMM, but costs a boot), and removes the flake's other states.
    pub fn finish(self, flake: &str) -> std::io::Result<PathBuf> {
        std::fs::File::open(&self.temporary)?.sync_all()?;
        std::fs::rename(&self.temporary, &self.path)?;
        if let Some(dir) = self.path.parent() {
            remove(dir, flake, Some(&self.path));
        }
        Ok(self.path.clone())
    }
}

impl Drop for Saving {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.temporary);
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

    #[test]
    fn only_the_flakes_own_states_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let key = "0123456789abcdef0123456789abcdef";
        let mine = path(dir.path(), "app", key);
        let older = path(dir.path(), "app", &key.replace('0', "f"));
        let other = path(dir.path(), "app-two", key);
        let unrelated = dir.path().join("app-notes.vmstate");
        for file in [&mine, &older, &other, &unrelated] {
            std::fs::write(file, "").unwrap();
        }
        assert_eq!(remove(dir.path(), "app", Some(&mine)), 1);
        assert!(mine.exists() && !older.exists() && other.exists() && unrelated.exists());
        assert_eq!(remove(dir.path(), "app", None), 1);
        assert!(!mine.exists() && other.exists());
    }

    #[test]
    fn a_state_appears_whole_under_its_name_and_a_dropped_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let states = dir.path().join("states");
        let key = "00000000000000000000000000000000";
        let saving = Saving::new(path(&states, "app", key)).unwrap();
        std::fs::write(&saving.temporary, "state").unwrap();
        assert!(!saving.path.exists());
        let done = saving.finish("app").unwrap();
        assert_eq!(std::fs::read(&done).unwrap(), b"state");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&states).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let dropped = Saving::new(path(&states, "app", &key.replace('0', "1"))).unwrap();
        std::fs::write(&dropped.temporary, "half").unwrap();
        let temporary = dropped.temporary.clone();
        drop(dropped);
        assert!(!temporary.exists());
        assert_eq!(std::fs::read_dir(&states).unwrap().count(), 1);
    }
}
