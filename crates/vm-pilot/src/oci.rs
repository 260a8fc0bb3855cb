// SPDX-License-Identifier: MIT
//! What a VM image made from an OCI (container) image remembers of where it came from.
//!
//! A VM image pulled with `--oci` keeps one small JSON file beside its rootfs: the image
//! reference it was made from, the digest and image id podman resolved it to, the same for
//! a kernel taken from an image, and the parts of the image configuration a guest call
//! needs (entrypoint, command, environment, working directory). Pulling again compares the
//! digest with it (same digest: nothing to do), `show` and `list` print it, and a flake
//! registered with `--target /` runs what it names, as a container flake would.
//!
//! The file chooses what every call of the image's flakes runs (with `--target /`), its
//! environment and its user, so it is trusted only as far as a flake template is: it and
//! every directory on its path must belong to root or the caller and be writable by
//! nobody else (a directory by others only with the sticky bit; see [`crate::trust`], which
//! checks a VM's kernel and rootfs the same way); a record another user could have
//! written is refused, not used. It is read as hostile all the same: only a regular file,
//! not through a symlink, and at most [`RECORD_MAX`] bytes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The record's file name in an image directory.
pub const RECORD_FILE: &str = "oci-image.json";
/// The most bytes of a record read; an image configuration's environment and command are
/// a few KiB at most.
pub const RECORD_MAX: u64 = 1 << 20;

/// Where one part of a VM image came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The image reference as given (`registry.example.com/app:1.2`).
    pub reference: String,
    /// The manifest digest the reference resolved to (`sha256:...`); `None` for an image
    /// that exists only in local storage (built, never pushed or pulled).
    #[serde(default)]
    pub digest: Option<String>,
    /// The image id (the digest of its configuration), which identifies the content
    /// whether or not the image came from a registry.
    pub image_id: String,
}

/// The parts of an OCI image configuration a call into the VM uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `Env`, as `KEY=VALUE`.
    #[serde(default)]
    pub env: Vec<String>,
    /// `WorkingDir`; `None` when unset or empty.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `User`; `None` when unset or empty.
    #[serde(default)]
    pub user: Option<String>,
}

/// The record of a VM image made from an OCI image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciRecord {
    /// The image the rootfs was made from.
    pub rootfs: Origin,
    /// The image the kernel was taken from; `None` when it came from a file or URL.
    #[serde(default)]
    pub kernel: Option<Origin>,
    /// The rootfs image's configuration.
    #[serde(default)]
    pub config: ImageConfig,
}

/// Why a record cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Reading or writing failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The record's path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Someone other than root and the caller may have written the record.
    #[error("{} may have been written by another user: {reason}; it chooses what the VM runs, so it is not used: {hint}", path.display())]
    Untrusted {
        /// The record's path.
        path: PathBuf,
        /// Who may write it.
        reason: String,
        /// The fix.
        hint: String,
    },
    /// The file is not a record.
    #[error("{} is not a VM image record ({reason}); pull the image again", path.display())]
    Invalid {
        /// The record's path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Reads the record of the image in `dir`; `None` when the image has none (it was not made
/// from an OCI image).
pub fn read(dir: &Path) -> Result<Option<OciRecord>, RecordError> {
    let path = dir.join(RECORD_FILE);
    let invalid = |reason: String| RecordError::Invalid {
        path: path.clone(),
        reason,
    };
    let io = |action, source| RecordError::Io {
        action,
        path: path.clone(),
        source,
    };
    let file = match open_nofollow(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io("open", err)),
    };
    let meta = file.metadata().map_err(|e| io("read", e))?;
    if !meta.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    trusted(&path, &meta)?;
    let mut bytes = Vec::new();
    file.take(RECORD_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io("read", e))?;
    if bytes.len() as u64 > RECORD_MAX {
        return Err(invalid(format!("larger than {RECORD_MAX} bytes")));
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| invalid(e.to_string()))
}

/// Writes `record` into `dir` whole: a reader sees the old record or the new one.
pub fn write(dir: &Path, record: &OciRecord) -> Result<(), RecordError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = dir.join(RECORD_FILE);
    let staged = dir.join(format!(".{RECORD_FILE}.new"));
    let io = |action, source| RecordError::Io {
        action,
        path: path.clone(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| RecordError::Invalid {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let _ = std::fs::remove_file(&staged);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&staged)
        .map_err(|e| io("write", e))?;
    // 0644 whatever the umask: who may write the record chooses what calls run.
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(|e| io("write", e))?;
    file.write_all(&bytes).map_err(|e| io("write", e))?;
    file.sync_all().map_err(|e| io("write", e))?;
    std::fs::rename(&staged, &path).map_err(|e| io("write", e))
}

/// Refuses a record at `path` (its metadata `meta`, read from the open file) that someone
/// other than root or the caller owns or may write, or whose path they may change
/// ([`crate::trust`]).
fn trusted(path: &Path, meta: &std::fs::Metadata) -> Result<(), RecordError> {
    let untrusted = |distrust: crate::trust::Distrust| RecordError::Untrusted {
        path: path.to_path_buf(),
        reason: distrust.reason,
        hint: distrust.hint,
    };
    crate::trust::file(path, meta).map_err(untrusted)?;
    crate::trust::check("record", path).map_err(|err| match err {
        crate::trust::TrustError::Untrusted { distrust, .. } => untrusted(distrust),
        crate::trust::TrustError::Io { path, source, .. } => RecordError::Io {
            action: "check",
            path,
            source,
        },
    })
}

fn open_nofollow(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> OciRecord {
        OciRecord {
            rootfs: Origin {
                reference: "127.0.0.1:5000/app:1".into(),
                digest: Some(format!("sha256:{}", "a".repeat(64))),
                image_id: "b".repeat(64),
            },
            kernel: None,
            config: ImageConfig {
                entrypoint: vec!["/bin/app".into()],
                cmd: vec!["--help".into()],
                env: vec!["PATH=/bin".into()],
                working_dir: Some("/srv".into()),
                user: None,
            },
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_none());
        write(dir.path(), &record()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(record()));
    }

    #[test]
    fn records_others_may_write_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &record()).unwrap();
        let path = dir.path().join(RECORD_FILE);
        let mode = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        for file_mode in [0o666, 0o646, 0o664, 0o620] {
            mode(&path, file_mode);
            let err = read(dir.path()).unwrap_err().to_string();
            assert!(err.contains("others may write it"), "{file_mode:o}: {err}");
        }
        mode(&path, 0o644);
        for dir_mode in [0o777, 0o775, 0o757] {
            mode(dir.path(), dir_mode);
            let err = read(dir.path()).unwrap_err().to_string();
            assert!(err.contains("chmod go-w"), "{dir_mode:o}: {err}");
        }
        // Sticky: others cannot replace a file they do not own.
        mode(dir.path(), 0o1777);
        assert_eq!(read(dir.path()).unwrap(), Some(record()));
        mode(dir.path(), 0o755);
        assert_eq!(read(dir.path()).unwrap(), Some(record()));
        // Another user's record (when the test may give it away).
        if std::os::unix::fs::chown(&path, Some(65534), None).is_ok() {
            let err = read(dir.path()).unwrap_err().to_string();
            assert!(err.contains("belongs to uid 65534"), "{err}");
        }
    }

    #[test]
    fn links_fifos_junk_and_huge_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RECORD_FILE);
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        assert!(read(dir.path()).is_err());
        std::fs::remove_file(&path).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(read(dir.path())
            .unwrap_err()
            .to_string()
            .contains("regular"));
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "{not json").unwrap();
        assert!(read(dir.path()).unwrap_err().to_string().contains("pull"));
        std::fs::write(&path, vec![b' '; usize::try_from(RECORD_MAX).unwrap() + 1]).unwrap();
        assert!(read(dir.path()).unwrap_err().to_string().contains("larger"));
    }
}
