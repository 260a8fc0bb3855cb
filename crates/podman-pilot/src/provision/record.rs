// SPDX-License-Identifier: MIT
//! The cache record of an assembled flake: which image, built from which inputs, valid while
//! the image store's index is unchanged.
//!
//! Plain `key value` lines; a record that cannot be read is treated as absent, which only
//! costs a verification on the next launch.

use std::path::{Path, PathBuf};

use super::ProvisionError;

/// A cache record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Fingerprint of the provisioning config and include files.
    pub fingerprint: u64,
    /// The assembled image.
    pub image: String,
    /// The image store's index file.
    pub index: PathBuf,
    /// Its modification time when the record was written.
    pub stamp: String,
}

impl Record {
    /// A record for `image` built from inputs with `fingerprint`.
    pub fn new(fingerprint: u64, image: String, (index, stamp): (PathBuf, String)) -> Self {
        Record {
            fingerprint,
            image,
            index,
            stamp,
        }
    }

    /// Reads a record; `None` when absent or unreadable.
    pub fn load(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
                .map(str::to_string)
        };
        Some(Record {
            fingerprint: u64::from_str_radix(&field("fingerprint")?, 16).ok()?,
            image: field("image")?,
            index: PathBuf::from(field("index")?),
            stamp: field("stamp")?,
        })
    }

    /// The image, when the record still describes the current inputs and store.
    pub fn fresh(self, fingerprint: u64) -> Option<String> {
        (self.fingerprint == fingerprint && stamp(&self.index) == self.stamp).then_some(self.image)
    }

    /// Writes the record atomically.
    pub fn save(&self, path: &Path) -> Result<(), ProvisionError> {
        let text = format!(
            "fingerprint {:016x}\nimage {}\nindex {}\nstamp {}\n",
            self.fingerprint,
            self.image,
            self.index.display(),
            self.stamp
        );
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
