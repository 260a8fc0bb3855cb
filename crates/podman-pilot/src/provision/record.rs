// SPDX-License-Identifier: MIT
//! The cache record of an assembled flake: which image, built from which inputs and which
//! host files, valid while the image store's index is unchanged.
//!
//! Plain `key value` lines (one `listed PATH` line per host dependency; listed paths never
//! contain a newline); a record that cannot be read is treated as absent, which only costs
//! a verification on the next launch.

use std::path::{Path, PathBuf};

use super::{hostfiles, ProvisionError};

/// A cache record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Fingerprint of the provisioning config and include files.
    pub fingerprint: u64,
    /// Cache key of the assembly without host files (fingerprint plus input image IDs).
    pub key: u64,
    /// The image to launch.
    pub image: String,
    /// The assembly without host files (the image itself when nothing is listed).
    pub stage: String,
    /// Digest of the listed host files' identities the image was built from.
    pub hosts: u64,
    /// Host files listed by the input images.
    pub listed: Vec<PathBuf>,
    /// The image store's index file.
    pub index: PathBuf,
    /// Its modification time when the record was written.
    pub stamp: String,
}

impl Record {
    /// Reads a record; `None` when absent or unreadable.
    pub fn load(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
                .map(str::to_string)
        };
        let hex = |key: &str| u64::from_str_radix(&field(key)?, 16).ok();
        let mut listed = Vec::new();
        for entry in text.lines().filter_map(|l| l.strip_prefix("listed ")) {
            if hostfiles::entry_problem(entry).is_some() {
                return None;
            }
            listed.push(PathBuf::from(entry));
        }
        Some(Record {
            fingerprint: hex("fingerprint")?,
            key: hex("key")?,
            image: field("image")?,
            stage: field("stage")?,
            hosts: hex("hosts")?,
            listed,
            index: PathBuf::from(field("index")?),
            stamp: field("stamp")?,
        })
    }

    /// True while the record describes the current inputs and store (host files aside).
    pub fn fresh(&self, fingerprint: u64) -> bool {
        self.fingerprint == fingerprint && stamp(&self.index) == self.stamp
    }

    /// Writes the record atomically.
    pub fn save(&self, path: &Path) -> Result<(), ProvisionError> {
        let mut text = format!(
            "fingerprint {:016x}\nkey {:016x}\nimage {}\nstage {}\nhosts {:016x}\nindex {}\nstamp {}\n",
            self.fingerprint,
            self.key,
            self.image,
            self.stage,
            self.hosts,
            self.index.display(),
            self.stamp
        );
        for entry in &self.listed {
            text.push_str("listed ");
            text.push_str(&entry.display().to_string());
            text.push('\n');
        }
        let staged = path.with_extension(format!("record.{}", std::process::id()));
        let io = |action, source| ProvisionError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        std::fs::write(&staged, text).map_err(|e| io("write", e))?;
        std::fs::rename(&staged, path).map_err(|e| io("write", e))
    }
}

/// The modification time of `path` in nanoseconds, or `missing`.
pub fn stamp(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(meta) => format!("{}.{:09}", meta.mtime(), meta.mtime_nsec()),
        Err(_) => "missing".into(),
    }
}
